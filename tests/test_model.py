import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vitfgvc.attention import rollout
from vitfgvc.model import FGVCViT, build_model, reset_final_norm

from .conftest import ROOT, subprocess_env

NAME = "vit_tiny_patch16_224"
SMALL = {"depth": 2}  # 2 blocks, 64 px: 4x4 patches, T = 17


def small_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(NAME, 5, img_size=64, kwargs={**SMALL, **kwargs})


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def fused_flags(model):
    """Per attention module: does it run timm's own forward with fused attention?"""
    return [m.fused_attn and "forward" not in vars(m) for m in model.encoder.modules() if hasattr(m, "fused_attn")]


def test_head_features_and_geometry(images):
    model = small_model().eval()
    assert isinstance(model, FGVCViT)
    lin1, act, lin2 = model.head
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (192, 192, 5) and isinstance(act, nn.ReLU)
    assert model.grid == (4, 4) and model.num_prefix_tokens == 1
    with torch.no_grad():
        feats = model.forward_features(images)
        cls = model.encoder.forward_features(images)[:, 0]  # final-norm CLS token
        logits = model(images)
    torch.testing.assert_close(feats, cls)
    torch.testing.assert_close(logits, model.forward_head(feats))
    assert logits.shape == (2, 5)


def test_capture_shapes_rows_and_input_dependence(images):
    model = small_model().eval()
    with torch.no_grad():
        _, attn = model(images, capture_attn=True)
        _, attn_other = model(images.flip(-1), capture_attn=True)
    assert len(attn) == 2
    for a, b in zip(attn, attn_other):
        assert a.shape == (2, 3, 17, 17)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 17))
        assert (a >= 0).all()
        assert not torch.allclose(a, b)


def test_capture_matches_fused_output_and_restores_fused_attention(images, monkeypatch):
    model = small_model().eval()
    assert all(fused_flags(model))
    sdpa_calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: sdpa_calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        fused = model(images)
        assert len(sdpa_calls) == 2  # the plain forward runs timm's fused attention
        captured, _ = model(images, capture_attn=True)
        assert len(sdpa_calls) == 2  # the capture forward is explicit
        again = model(images)
    assert len(sdpa_calls) == 4  # fused again afterwards
    torch.testing.assert_close(captured, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, fused)
    assert all(fused_flags(model))


def test_capture_restores_fused_attention_after_an_error():
    model = small_model()
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 2, 64, 64), capture_attn=True)  # wrong number of channels
    assert all(fused_flags(model))


def test_capture_with_grad_checkpointing_in_train_mode(images):
    grads, maps = [], []
    for ckpt in (False, True):
        model = small_model(seed=1).train()
        model.set_grad_checkpointing(ckpt)
        assert model.grad_checkpointing == ckpt and not model.encoder.grad_checkpointing  # ours, never timm's
        logits, attn = model(images, capture_attn=True)
        assert len(attn) == 2
        F.cross_entropy(logits, torch.tensor([0, 3])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        maps.append(rollout([a.detach() for a in attn]))
        assert all(fused_flags(model))
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
    assert grads[1]["encoder.blocks.0.attn.qkv.weight"].abs().sum() > 0
    torch.testing.assert_close(maps[1], maps[0])


def test_captured_attention_is_before_dropout(images):
    model = small_model(attn_drop_rate=0.5).train()
    _, attn = model(images, capture_attn=True)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(2, 3, 17))


def test_fused_forward_with_grad_checkpointing_still_trains(images):
    model = build_model(NAME, 5, img_size=64, kwargs=SMALL, grad_checkpointing=True).train()
    model(images).sum().backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_prefix_tokens_register_model(images):
    model = small_model(reg_tokens=4).eval()
    assert model.num_prefix_tokens == 5 and model.grid == (4, 4)
    with torch.no_grad():
        fused = model(images)
        logits, attn = model(images, capture_attn=True)
    torch.testing.assert_close(logits, fused, atol=1e-5, rtol=1e-5)
    assert attn[0].shape == (2, 3, 21, 21)
    maps = rollout(attn, num_prefix_tokens=model.num_prefix_tokens, grid=model.grid)
    assert maps.shape == (2, 4, 4)


def test_norm_param_names():
    model = small_model()
    names = model.norm_param_names()
    params = dict(model.named_parameters())
    assert set(names) <= params.keys()
    assert {"encoder.norm.weight", "encoder.norm.bias", "encoder.blocks.1.norm2.weight"} <= set(names)
    assert not any(n.startswith("head.") or ".attn." in n or ".mlp." in n for n in names)
    assert len(names) == 2 * (2 * 2 + 1)  # norm1, norm2 per block and the final norm


# ---------------------------------------------------------------- local weights
def encoder_state(model):
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


def assert_same_encoder(state, model):
    got = (model.encoder if isinstance(model, FGVCViT) else model).state_dict()
    assert state.keys() == got.keys()
    for k in state:
        torch.testing.assert_close(got[k], state[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("fmt", ["pth", "pth_nested", "safetensors"])
def test_load_local_weights(tmp_path, fmt):
    state = encoder_state(small_model(seed=3))
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"model": state} if fmt == "pth_nested" else state, path)
    torch.manual_seed(4)
    loaded = build_model(NAME, 5, img_size=64, kwargs=SMALL, weights=path)
    assert_same_encoder(state, loaded)


def test_load_timm_checkpoint_with_classifier_and_other_img_size(tmp_path):
    torch.manual_seed(5)
    timm_model = timm.create_model(NAME, num_classes=1000, img_size=64, **SMALL)
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": timm_model.state_dict()}, path)
    model = build_model(NAME, 5, img_size=96, kwargs=SMALL, weights=path)
    assert model.grid == (6, 6) and model.encoder.pos_embed.shape == (1, 37, 192)
    # everything but the resized position embedding is the checkpoint's
    torch.testing.assert_close(model.encoder.blocks[1].mlp.fc2.weight, timm_model.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(model.encoder.pos_embed[:, 0], timm_model.pos_embed[:, 0])


def test_weights_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_model(NAME, 5, img_size=64, kwargs=SMALL, weights=missing)
    wrong = tmp_path / "wider.pth"
    torch.save(timm.create_model("vit_small_patch16_224", num_classes=0, img_size=64, depth=2).state_dict(), wrong)
    with pytest.raises(RuntimeError, match="wider.pth"):
        build_model(NAME, 5, img_size=64, kwargs=SMALL, weights=wrong)
    junk = tmp_path / "junk.npz"
    np.savez(junk, a=np.zeros(3))
    with pytest.raises(RuntimeError, match="junk.npz"):
        build_model(NAME, 5, img_size=64, kwargs=SMALL, weights=junk)
    with pytest.raises(ValueError, match="either"):
        build_model(NAME, 5, img_size=64, kwargs=SMALL, pretrained=True, weights=wrong)


@pytest.mark.parametrize("fuse", ["mean", "max", "min"])
def test_fused_capture_equals_fusing_every_head(images, fuse):
    model = small_model().eval()
    with torch.no_grad():
        logits_all, every = model(images, capture_attn=True)
        logits_fused, fused = model(images, capture_attn=fuse)
    torch.testing.assert_close(logits_fused, logits_all)
    reduce = {"mean": lambda a: a.mean(1, keepdim=True), "max": lambda a: a.amax(1, keepdim=True),
              "min": lambda a: a.amin(1, keepdim=True)}[fuse]
    for f, a in zip(fused, every):
        assert f.shape == (2, 1, 17, 17)
        torch.testing.assert_close(f, reduce(a))
    torch.testing.assert_close(rollout(fused, head_fusion=fuse), rollout(every, head_fusion=fuse))


def test_memory_chunked_capture_equals_one_batch(images, monkeypatch):
    import vitfgvc.model as model_mod

    model = small_model().eval()
    with torch.no_grad():
        logits, attn = model(images, capture_attn=True)
        monkeypatch.setattr(model_mod, "_CHUNK_BYTES", 1)  # one sample per chunk
        logits_chunked, attn_chunked = model(images, capture_attn=True)
    torch.testing.assert_close(logits_chunked, logits)
    for a, b in zip(attn_chunked, attn):
        torch.testing.assert_close(a, b)


def test_capture_rejects_an_unknown_fusion(images):
    with pytest.raises(ValueError, match="capture_attn must be True or one of"):
        small_model()(images, capture_attn="median")


# ------------------------------------------------------------------- precision
def test_captured_probabilities_are_float32_under_bf16_autocast(images, monkeypatch):
    """Under autocast the probabilities are the float32 softmax of the scores of autocast's own q and k."""
    import vitfgvc.model as model_mod

    model = small_model(seed=2).eval()
    blk = model.encoder.blocks[1].attn
    qkv_out = []
    blk.qkv.register_forward_hook(lambda mod, inp, out: qkv_out.append(out))
    chunks = []
    fuse = model_mod._fuse
    monkeypatch.setattr(model_mod, "_fuse", lambda a, f: chunks.append((a.shape[0], a.dtype)) or fuse(a, f))
    # two samples' float32 [heads, T, T] buffers a chunk (bf16 buffers would fit four)
    monkeypatch.setattr(model_mod, "_CHUNK_BYTES", 2 * 3 * 17 * 17 * 4)
    x = torch.cat([images, images.flip(-1)])  # 4 images
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, attn = model(x, capture_attn=True)
        maps = rollout(attn)
    assert logits.dtype == torch.bfloat16  # the rest of the model still runs in bf16
    assert all(a.dtype == torch.float32 for a in attn) and maps.dtype == torch.float32
    assert chunks == [(2, torch.float32)] * 4  # 2 layers x 2 chunks, the chunk sized for float32
    out = qkv_out[0]
    assert out.dtype == torch.bfloat16
    q, k, _ = out.double().reshape(4, 17, 3, 3, 64).permute(2, 0, 3, 1, 4)
    want = (q @ k.transpose(-2, -1) * 64 ** -0.5).softmax(-1)
    torch.testing.assert_close(attn[1].double(), want, rtol=0, atol=1e-6)  # bf16 probabilities: ~1e-3 off


def test_frozen_phase_norms_train_with_checkpointing_even_with_timm_reentrant(tmp_path):
    """TIMM_REENTRANT_CKPT=1 would make timm's checkpoint_seq reentrant: the block norms would get no gradient."""
    script = """
import json, timm, torch
from vitfgvc.model import build_model
assert timm.layers.use_reentrant_ckpt()  # the variable reached timm
torch.manual_seed(0)
model = build_model("vit_tiny_patch16_224", 5, img_size=64, kwargs={"depth": 2}, grad_checkpointing=True).train()
norms = set(model.norm_param_names())
for name, p in model.encoder.named_parameters():
    p.requires_grad_("encoder." + name in norms)
x = torch.randn(2, 3, 64, 64)
grads = {}
for capture in (False, "mean"):
    model.zero_grad(set_to_none=True)
    out = model(x, capture_attn=capture)
    (out if capture is False else out[0]).sum().backward()
    grads[str(capture)] = {n: p.grad is not None and bool(p.grad.abs().sum() > 0)
                           for n, p in model.named_parameters()}
print(json.dumps({"grads": grads, "norms": sorted(norms)}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(TIMM_REENTRANT_CKPT="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    norms = set(result["norms"])
    assert "encoder.blocks.0.norm1.weight" in norms and "encoder.norm.bias" in norms
    for capture, grads in result["grads"].items():
        got = {n for n, g in grads.items() if g and n.startswith("encoder.")}
        assert got == norms, (capture, sorted(norms ^ got))  # every norm, nothing else of the encoder
        assert all(g for n, g in grads.items() if n.startswith("head."))


# ------------------------------------------------------------------ final norm
def test_final_norm_fresh_resets_the_loaded_norm_only(tmp_path):
    torch.manual_seed(6)
    trained = timm.create_model(NAME, num_classes=0, img_size=64, **SMALL)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # a "pretrained" state whose norms are not at their initial values
    path = tmp_path / "w.pth"
    torch.save(trained.state_dict(), path)
    kept = build_model(NAME, 5, img_size=64, kwargs=SMALL, weights=path, final_norm="pretrained")
    fresh = build_model(NAME, 5, img_size=64, kwargs=SMALL, weights=path, final_norm="fresh")
    assert_same_encoder(trained.state_dict(), kept.encoder)
    torch.testing.assert_close(fresh.encoder.norm.weight, torch.ones(192))
    torch.testing.assert_close(fresh.encoder.norm.bias, torch.zeros(192))
    assert fresh.encoder.norm.eps == 1e-6  # as the original's nn.LayerNorm(768, eps=1e-6)
    state = trained.state_dict()
    for k, v in fresh.encoder.state_dict().items():
        if not k.startswith("norm."):
            torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)
    # an average-pooling ViT normalises in fc_norm (norm is an identity): that one is reset
    pooled = timm.create_model(NAME, num_classes=0, img_size=64, global_pool="avg", **SMALL)
    with torch.no_grad():
        pooled.fc_norm.weight.mul_(3.0)
    assert isinstance(pooled.norm, nn.Identity) and reset_final_norm(pooled) == ["fc_norm"]
    torch.testing.assert_close(pooled.fc_norm.weight, torch.ones(192))
    with pytest.raises(ValueError, match="final_norm must be one of"):
        build_model(NAME, 5, img_size=64, kwargs=SMALL, final_norm="new")
