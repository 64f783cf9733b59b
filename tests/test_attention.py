import numpy as np
import pytest
import torch

from vitfgvc.attention import last_layer, rollout

FUSE = {"mean": lambda a: a.mean(0), "max": lambda a: a.max(0), "min": lambda a: a.min(0)}


def random_attention(layers, b, heads, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(3 * torch.randn(b, heads, t, t, generator=g, dtype=torch.float64)).softmax(-1) for _ in range(layers)]


def reference_rollout(attn, head_fusion, discard_ratio, num_prefix_tokens, grid):
    """Abnar & Zuidema's rollout, one sample at a time, full matrix products."""
    maps = []
    for b in range(attn[0].shape[0]):
        r = None
        for layer in attn:
            a = FUSE[head_fusion](layer[b].numpy()).copy()
            t = a.shape[0]
            k = int(t * t * discard_ratio)
            lowest = np.argsort(a.reshape(-1), kind="stable")[:k]
            lowest = lowest[lowest % t != 0]  # never the CLS column
            a.reshape(-1)[lowest] = 0
            a = a + np.eye(t)
            a = a / a.sum(1, keepdims=True)
            r = a if r is None else a @ r
        m = r[0, num_prefix_tokens:].reshape(grid)
        maps.append(m / m.max())
    return torch.tensor(np.stack(maps))


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.3])
@pytest.mark.parametrize("num_prefix_tokens", [1, 2])
def test_rollout_matches_per_sample_loop(head_fusion, discard_ratio, num_prefix_tokens):
    attn = random_attention(layers=4, b=3, heads=5, t=num_prefix_tokens + 16)
    got = rollout(attn, head_fusion, discard_ratio, num_prefix_tokens)
    want = reference_rollout(attn, head_fusion, discard_ratio, num_prefix_tokens, (4, 4))
    assert got.shape == (3, 4, 4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got.flatten(1).amax(1), torch.ones(3, dtype=got.dtype))


def test_rollout_non_square_grid_and_float32():
    attn = random_attention(layers=3, b=2, heads=2, t=1 + 15, seed=1)
    want = reference_rollout(attn, "mean", 0.0, 1, (3, 5))
    got = rollout([a.float() for a in attn], grid=(3, 5))
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="square grid"):
        rollout(attn)
    with pytest.raises(ValueError, match="grid"):
        rollout(attn, grid=(4, 4))


def test_discard_ratio_keeps_the_cls_column():
    attn = random_attention(layers=3, b=2, heads=3, t=17, seed=2)
    for a in attn:  # make the attention to CLS the lowest entries: the first to go if unprotected
        a[..., 0] = 1e-4
    got = rollout(attn, discard_ratio=0.3)
    torch.testing.assert_close(got, reference_rollout(attn, "mean", 0.3, 1, (4, 4)))
    assert not torch.allclose(got, rollout(attn))


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("num_prefix_tokens", [1, 2])
def test_last_layer_matches_per_sample_loop(head_fusion, num_prefix_tokens):
    attn = random_attention(layers=3, b=3, heads=4, t=num_prefix_tokens + 9, seed=3)
    got = last_layer(attn, head_fusion, num_prefix_tokens)
    want = []
    for b in range(3):
        row = FUSE[head_fusion](attn[-1][b].numpy())[0, num_prefix_tokens:].reshape(3, 3)
        want.append(row / row.max())
    torch.testing.assert_close(got, torch.tensor(np.stack(want)))


def test_all_zero_map_stays_finite():
    attn = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    attn[..., 0] = 1.0  # every token attends only to CLS: nothing on the patches
    out = last_layer([attn])
    assert torch.equal(out, torch.zeros(2, 2, 2, dtype=torch.float64))


def test_bad_head_fusion():
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(random_attention(1, 1, 1, 5), head_fusion="median")


@pytest.mark.parametrize("fn", [rollout, last_layer])
def test_maps_are_float32_whatever_the_autocast_or_input_dtype(fn):
    attn = [a.float() for a in random_attention(layers=12, b=3, heads=4, t=1 + 64, seed=5)]
    want = fn([a.double() for a in attn], grid=(8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = fn(attn)
    assert under_autocast.dtype == torch.float32
    # float32 all the way (a bf16 rollout is off by ~6e-3 here)
    torch.testing.assert_close(under_autocast.double(), want, rtol=0, atol=1e-5)
    from_bf16 = fn([a.bfloat16() for a in attn])
    assert from_bf16.dtype == torch.float32
    # only the rounding of the bf16 inputs remains (8 bits: up to ~4e-3 near the peak)
    torch.testing.assert_close(from_bf16.double(), want, rtol=0, atol=5e-3)
    assert fn([a.double() for a in attn]).dtype == torch.float64
