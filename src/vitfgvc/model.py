"""The encoder (any timm ViT) and the paper's head, with optional attention capture.

``FGVCViT(x)`` returns logits; ``FGVCViT(x, capture_attn=True)`` also returns the
per-layer softmax attention probabilities ``list[Tensor[B, heads, T, T]]`` (before
dropout) that :mod:`vitfgvc.attention` turns into maps. Capture is switched on for
one call only: timm's fused attention (``F.scaled_dot_product_attention``) never
materialises the probabilities, so during that call (:func:`capture_attention`) each
timm ``Attention`` module runs an explicit forward that records them; on exit the
modules run timm's own (fused) forward again.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import timm
import torch
import torch.utils.checkpoint
from timm.layers import Attention, maybe_add_mask, resolve_self_attn_mask
from timm.models import load_checkpoint
from torch import Tensor, nn

__all__ = ["FGVCViT", "build_model", "capture_attention", "load_encoder_weights", "norm_param_names",
           "reset_final_norm"]


# Inference capture computes the attention in chunks of samples whose [heads, T, T]
# buffer stays below glibc's largest mmap threshold (32 MiB): the buffer is then reused
# from the heap instead of being mapped, page-faulted and unmapped at every layer,
# which on a CPU costs more than the softmax itself (ViT-B/16 at 384: 16 MiB a sample).
_CHUNK_BYTES = 24 << 20

FUSIONS = ("mean", "max", "min")
FINAL_NORMS = ("fresh", "pretrained")
# what the block-by-block forward (checkpointing, capture) reads of a timm VisionTransformer
_VIT_PARTS = ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm")


def _fuse(attn_bhtt: Tensor, fuse: str | None) -> Tensor:
    if fuse is None:
        return attn_bhtt
    if fuse == "mean":
        return attn_bhtt.mean(1, keepdim=True)
    return attn_bhtt.amax(1, keepdim=True) if fuse == "max" else attn_bhtt.amin(1, keepdim=True)


def _explicit_forward(
    attn_mod: Attention,
    x: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    *,
    store: list[Tensor] | None,
    fuse: str | None = None,
) -> Tensor:
    """timm's ``Attention.forward`` with the probabilities computed explicitly and appended to ``store``.

    ``fuse`` (mean | max | min) stores the heads fused, ``[B, 1, T, T]``, instead of all of them.
    The scores, the softmax, the head fusion and ``attn @ v`` run in float32 with autocast
    off, whatever the autocast or the model's dtype (the maps and the boxes are read off
    these probabilities; bf16 keeps 3 significant digits of a 1/T-sized number); the
    output returns to the dtype of ``v``. In float32 the casts are no-ops.
    """
    m = attn_mod
    b, n, _ = x.shape
    gate = m.gate(x).sigmoid() if getattr(m, "gate", None) is not None else None
    q, k, v = m.qkv(x).reshape(b, n, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = m.q_norm(q), m.k_norm(k)
    out_dtype = v.dtype
    work = torch.promote_types(q.dtype, torch.float32)
    mask = resolve_self_attn_mask(n, q.new_empty((), dtype=work), attn_mask, is_causal)  # an additive bias in `work`
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    per_sample = m.num_heads * n * n * work.itemsize  # the [heads, T, T] buffer of one sample
    step = b if grad or x.device.type != "cpu" else max(1, _CHUNK_BYTES // per_sample)
    outs, kept = [], []
    with torch.autocast(x.device.type, enabled=False):
        for i in range(0, b, step):
            qi, ki, vi = (t[i:i + step].to(work) for t in (q, k, v))
            attn = (qi * m.scale) @ ki.transpose(-2, -1)
            attn = maybe_add_mask(attn, mask[i:i + step] if mask is not None and mask.dim() == 4
                                  and mask.shape[0] == b else mask)
            # without autograd, softmax in place: one buffer instead of two
            attn = attn.softmax(-1) if grad else torch.softmax(attn, -1, out=attn)
            if store is not None:
                kept.append(_fuse(attn, fuse))
            outs.append((m.attn_drop(attn) @ vi).to(out_dtype))
    if store is not None:
        store.append(kept[0] if len(kept) == 1 else torch.cat(kept))
    x = (outs[0] if len(outs) == 1 else torch.cat(outs)).transpose(1, 2).reshape(b, n, m.num_heads * m.head_dim)
    x = m.norm(x)
    if gate is not None:
        x = x * gate
    return m.proj_drop(m.proj(x))


@contextlib.contextmanager
def capture_attention(module: nn.Module, store: list[Tensor] | None, fuse: str | None = None
                      ) -> Iterator[list[Tensor] | None]:
    """Run the timm ``Attention`` layers inside ``module`` explicitly; append their probabilities to ``store``.

    ``store=None`` only switches the explicit forward on (used when a checkpointed
    block is recomputed in the backward pass, so that it saves the same tensors as
    its forward did). The modules' own forward is back on exit.
    """
    mods = [m for m in module.modules() if type(m).forward is Attention.forward]  # subclasses may differ
    if not mods:
        raise ValueError(f"{type(module).__name__} has no timm Attention layer whose probabilities can be captured")
    for m in mods:
        m.forward = functools.partial(_explicit_forward, m, store=store, fuse=fuse)
    try:
        yield store
    finally:
        for m in mods:
            del m.forward  # the instance attribute: the class's (fused) forward shows again


def norm_param_names(module: nn.Module, prefix: str = "") -> list[str]:
    """Names of the parameters of every normalisation layer in ``module`` (LayerNorm, RmsNorm, ...).

    Phase 1 of the training trains these (and the head) while the rest of the encoder is frozen.
    """
    names = []
    for mod_name, mod in module.named_modules(prefix=prefix.rstrip(".")):
        # timm's norm layers (LayerNorm, RmsNorm, LayerNorm2d, ...) all carry "Norm" in the class name
        if "Norm" in type(mod).__name__:
            names += [f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False)]
    return names


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into a timm encoder built with ``num_classes=0``.

    ``.npz``: an original JAX/big_vision ViT checkpoint, through timm's own loader.
    ``.safetensors`` / ``.pth`` / ``.pt``: a state dict, bare or nested under ``"model"``
    or ``"state_dict"`` (read with ``weights_only=True``), passed through the model's
    checkpoint filter (which resizes position embeddings to the encoder's grid); the
    checkpoint's classifier is dropped. Raises ``FileNotFoundError`` or ``RuntimeError``
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors", ".pth", ".pt"):
        raise ValueError(f"{path}: unsupported weights format {suffix!r} (expected .safetensors, .pth, .pt or .npz)")
    module_filter = getattr(sys.modules[type(encoder).__module__], "checkpoint_filter_fn", None)

    def filter_fn(state_dict: dict, model: nn.Module) -> dict:
        if module_filter is not None:
            state_dict = module_filter(state_dict, model)
        # the encoder has no classifier (num_classes=0): drop the checkpoint's
        classifiers = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
        classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
        own = model.state_dict().keys()
        prefixes = tuple(c + "." for c in classifiers)
        return {k: v for k, v in state_dict.items() if k in own or not k.startswith(prefixes)}

    try:
        load_checkpoint(encoder, str(path), use_ema=False, strict=True, filter_fn=filter_fn, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is re-raised naming the file
        raise RuntimeError(f"{path}: cannot load these weights into {type(encoder).__name__}: {exc}") from exc


def reset_final_norm(encoder: nn.Module) -> list[str]:
    """Re-initialise the encoder's final norm: ``norm``, and ``fc_norm`` where it is a norm layer. Returns their names.

    A ViT pooling the CLS token normalises with ``norm``; one pooling by average with
    ``fc_norm`` (``norm`` then is an identity). Layers without parameters are skipped.
    """
    names = []
    for name in ("norm", "fc_norm"):
        layer = getattr(encoder, name, None)
        if layer is not None and any(True for _ in layer.parameters()) and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
            names.append(name)
    return names


class FGVCViT(nn.Module):
    """A timm ViT encoder and the paper's head ``Linear(d, d) -> ReLU -> Linear(d, C)``.

    The head reads the encoder's pooled features: for a standard ViT the CLS token
    after the final norm. One encoder and one head serve every stage.

    Attributes:
        encoder: the timm model (``num_classes=0``).
        head: the classification head.
        num_prefix_tokens: CLS + register/distillation tokens before the patch tokens.
        grid: the patch grid ``(gh, gw)`` at the encoder's ``img_size``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        d = encoder.num_features
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, num_classes))
        self.grad_checkpointing = False

    @property
    def num_prefix_tokens(self) -> int:
        return self.encoder.num_prefix_tokens

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.encoder.patch_embed.grid_size)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every encoder block in training, always non-reentrant.

        The model checkpoints the blocks itself instead of through timm's ``checkpoint_seq``,
        which turns reentrant when ``TIMM_REENTRANT_CKPT`` is set: reentrant checkpointing
        gives no gradient to a block whose input needs none, so in the frozen phase (patch
        and position embeddings frozen) the block norms would not train.
        """
        missing = [a for a in _VIT_PARTS if not hasattr(self.encoder, a)]
        if enable and missing:
            raise ValueError(f"gradient checkpointing needs a timm VisionTransformer-like encoder; "
                             f"{type(self.encoder).__name__} has no {', '.join(missing)}")
        self.grad_checkpointing = enable
        self.encoder.set_grad_checkpointing(False)

    def norm_param_names(self) -> list[str]:
        """Names (in ``self.named_parameters()``) of the encoder's normalisation parameters."""
        return norm_param_names(self.encoder, prefix="encoder.")

    def _tokens(self, x: Tensor, store: list[Tensor] | None = None, fuse: str | None = None) -> Tensor:
        """The encoder's final-norm tokens ``[B, T, d]``; with a ``store`` the attention is captured into it."""
        enc = self.encoder
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            if store is None:
                return enc.forward_features(x)
            with capture_attention(enc, store, fuse):
                return enc.forward_features(x)
        x = enc.norm_pre(enc.patch_drop(enc._pos_embed(enc.patch_embed(x))))
        for blk in enc.blocks:
            if store is None:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
                continue
            # the recomputation in the backward pass must save the same tensors as the forward:
            # the explicit path in both passes, recording only in the first
            contexts = lambda b=blk: (capture_attention(b, store, fuse), capture_attention(b, None))  # noqa: E731
            x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False, context_fn=contexts)
        return enc.norm(x)

    def forward_features(self, x: Tensor, capture_attn: bool | str = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Pooled features ``[B, d]`` (the final-norm CLS token), and the attention if asked.

        ``capture_attn``: ``True`` for every head's probabilities ``[B, heads, T, T]`` per
        layer; a head fusion (``"mean"``, ``"max"``, ``"min"``) for ``[B, 1, T, T]``, fused as
        the layer runs (what the rollout needs, at a fraction of the memory). The
        probabilities are float32 whatever the autocast.
        """
        if not capture_attn:
            return self.encoder.forward_head(self._tokens(x), pre_logits=True)
        fuse = None if capture_attn is True else capture_attn
        if fuse is not None and fuse not in FUSIONS:
            raise ValueError(f"capture_attn must be True or one of {FUSIONS}, got {capture_attn!r}")
        store: list[Tensor] = []
        tokens = self._tokens(x, store, fuse)
        return self.encoder.forward_head(tokens, pre_logits=True), store

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits ``[B, C]`` from pooled features ``[B, d]``."""
        return self.head(features)

    def forward(self, x: Tensor, capture_attn: bool | str = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits ``[B, C]``; with ``capture_attn`` also the attention per layer (see :meth:`forward_features`)."""
        if not capture_attn:
            return self.forward_head(self.forward_features(x))
        features, attn = self.forward_features(x, capture_attn=capture_attn)
        return self.forward_head(features), attn


def build_model(
    name: str,
    num_classes: int,
    *,
    img_size: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
    kwargs: dict | None = None,
    grad_checkpointing: bool = False,
    final_norm: str = "pretrained",
) -> FGVCViT:
    """An :class:`FGVCViT` over ``timm.create_model(name, num_classes=0, img_size=img_size, **kwargs)``.

    Pretrained weights come from timm's hub tag (``pretrained=True``, e.g.
    ``vit_base_patch16_384.orig_in21k_ft_in1k``) or from a local file ``weights``
    (see :func:`load_encoder_weights`); not both. ``final_norm="fresh"`` re-initialises
    the encoder's final norm after loading them (as the original, which put a new
    ``LayerNorm`` between the encoder and the head); ``"pretrained"`` keeps the loaded one.
    """
    if pretrained and weights is not None:
        raise ValueError("give either pretrained=True (timm hub) or a local weights file, not both")
    if final_norm not in FINAL_NORMS:
        raise ValueError(f"final_norm must be one of {FINAL_NORMS}, got {final_norm!r}")
    encoder = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=img_size, **(kwargs or {}))
    if weights is not None:
        load_encoder_weights(encoder, weights)
    if final_norm == "fresh":
        reset_final_norm(encoder)
    model = FGVCViT(encoder, num_classes)
    model.set_grad_checkpointing(grad_checkpointing)
    return model
