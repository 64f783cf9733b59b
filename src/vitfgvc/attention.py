"""Attention maps from captured ViT attention: rollout (Abnar & Zuidema, 2020) and last layer.

Input: the per-layer softmax probabilities ``Sequence[Tensor[B, heads, T, T]]`` that
``FGVCViT(x, capture_attn=True)`` returns. Output: ``Tensor[B, gh, gw]``, the CLS
token's attention over the patch tokens, each map divided by its max (so in [0, 1]).
Maps are computed in float32 (float64 stays float64) with autocast off, whatever the
dtype of the probabilities or the autocast around the call: a bf16 product of twelve
row-stochastic matrices keeps too few digits to place a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["fuse_heads", "last_layer", "rollout"]


def fuse_heads(attn_bhtt: Tensor, head_fusion: str = "mean") -> Tensor:
    """``[B, heads, T, T] -> [B, T, T]`` by mean, max or min over the heads."""
    if head_fusion == "mean":
        return attn_bhtt.mean(1)
    if head_fusion == "max":
        return attn_bhtt.amax(1)
    if head_fusion == "min":
        return attn_bhtt.amin(1)
    raise ValueError(f"head_fusion must be mean, max or min, got {head_fusion!r}")


def _discard_lowest(attn_btt: Tensor, ratio: float) -> Tensor:
    """Zero the lowest ``ratio`` fraction of each matrix's entries, never in the CLS column (0)."""
    b, t, _ = attn_btt.shape
    k = int(t * t * ratio)
    if k == 0:
        return attn_btt
    flat = attn_btt.reshape(b, t * t)
    idx = flat.topk(k, dim=1, largest=False).indices
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view(b, t, t)
    drop[:, :, 0] = False
    return attn_btt.masked_fill(drop, 0.0)


def _to_grid(cls_row_bt: Tensor, num_prefix_tokens: int, grid: tuple[int, int] | None) -> Tensor:
    """CLS row over all tokens ``[B, T]`` -> patch map ``[B, gh, gw]`` divided by its max."""
    patches = cls_row_bt[:, num_prefix_tokens:]
    n = patches.shape[1]
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"{n} patch tokens (T={cls_row_bt.shape[1]}, num_prefix_tokens={num_prefix_tokens}) "
                "do not form a square grid: pass grid=(gh, gw)"
            )
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {tuple(grid)} does not hold the {n} patch tokens")
    maps = patches.reshape(-1, *grid)
    peak = maps.amax(dim=(1, 2), keepdim=True)
    return maps / peak.clamp_min(torch.finfo(maps.dtype).tiny)  # an all-zero map stays zero


def rollout(
    attn: Sequence[Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Attention rollout ``[B, gh, gw]`` from per-layer probabilities ``[B, heads, T, T]`` (first layer first).

    Per layer: fuse the heads, optionally zero the lowest ``discard_ratio`` fraction of
    entries (never the CLS column), add the identity and row-normalise to get ``A_l``.
    ``R = A_L @ ... @ A_1``; the map is R's CLS row over the patch tokens (prefix
    tokens skipped), reshaped to ``grid`` (a square grid is inferred when None).
    """
    if not len(attn):
        raise ValueError("rollout needs the attention of at least one layer")
    # Only R's CLS row is needed: e0^T A_L ... A_1 is a row vector times matrices from
    # the last layer down, O(L T^2) instead of the O(L T^3) of the full product.
    row = None
    dtype = torch.promote_types(attn[0].dtype, torch.float32)
    with torch.autocast(attn[0].device.type, enabled=False):
        for a in reversed(attn):
            a = fuse_heads(a.to(dtype), head_fusion)  # one layer at a time in float32
            if discard_ratio > 0:
                a = _discard_lowest(a, discard_ratio)
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = a / a.sum(-1, keepdim=True)
            row = a[:, 0] if row is None else torch.bmm(row.unsqueeze(1), a).squeeze(1)
        return _to_grid(row, num_prefix_tokens, grid)


def last_layer(
    attn: Sequence[Tensor],
    head_fusion: str = "mean",
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """The CLS row of the last layer's fused attention over the patches, ``[B, gh, gw]``, max-normalised."""
    if not len(attn):
        raise ValueError("last_layer needs the attention of at least one layer")
    last = attn[-1]
    with torch.autocast(last.device.type, enabled=False):
        last = last.to(torch.promote_types(last.dtype, torch.float32))
        return _to_grid(fuse_heads(last, head_fusion)[:, 0], num_prefix_tokens, grid)
