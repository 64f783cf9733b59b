"""Attention-guided augmentation (training only): attention erasing and attention cropping.

Maps are ``[B, h, w]`` attention maps normalised to a max of 1 (see
:mod:`vitfgvc.attention`); images are ``[B, C, H, W]`` (already normalised, so 0 is
the mean colour). Every random choice is read off per-image uniforms in [0, 1) that
the caller passes (``u_apply``: image ``i`` is augmented when ``u_apply[i] < p``),
so that a training loop can take them from each sample's own seeded draws and the
result does not depend on how a batch is split across processes. Left out, they
are drawn from torch's global generator. No function modifies its inputs.

These run inside the multistage model's forward pass, on a stage's attention; the image
augmentation before the model lives in :mod:`vitfgvc.data.per_item` (per item, in the
loader's workers) and :mod:`vitfgvc.data.on_device` (batched, on the training device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vitfgvc.localize import FULL_BOX, crop_resize, mask_boxes

__all__ = ["attention_crop", "attention_crop_boxes", "attention_erase"]


def _uniforms(u: Tensor | None, n: int, name: str, device) -> Tensor:
    """``u`` checked to be ``[n]``, or ``n`` fresh draws from the global generator; on ``device``."""
    if u is None:
        return torch.rand(n, device=device)
    if u.shape != (n,):
        raise ValueError(f"{name} must be [{n}] uniforms (one per image), got shape {tuple(u.shape)}")
    return u.to(device)


def attention_erase(
    images: Tensor,
    maps: Tensor,
    p: float,
    threshold: float,
    u_apply: Tensor | None = None,
) -> Tensor:
    """Per image with probability ``p`` (``u_apply < p``), zero every pixel whose attention exceeds ``threshold``.

    ``maps`` ``[B, h, w]`` are upsampled bilinearly (``align_corners=False``) to the
    images' size. Returns a new tensor.
    """
    b, _, h, w = images.shape
    selected = _uniforms(u_apply, b, "u_apply", images.device) < p
    up = F.interpolate(maps.detach().unsqueeze(1).float(), size=(h, w), mode="bilinear", align_corners=False)
    erase = (up > threshold) & selected.view(b, 1, 1, 1)
    return images.masked_fill(erase, 0.0)


def attention_crop_boxes(
    maps: Tensor,
    p: float,
    threshold_range: tuple[float, float] = (0.4, 0.6),
    pad: float = 0.1,
    u_apply: Tensor | None = None,
    u_threshold: Tensor | None = None,
) -> Tensor:
    """Attention-crop boxes ``[B, 4]`` (fractions, exclusive ends; see :mod:`vitfgvc.localize`).

    Per image with probability ``p`` (``u_apply < p``): the bounding box of the map
    cells above ``t * max(map)``, ``t = lo + (hi - lo) * u_threshold`` in
    ``threshold_range``, padded by ``pad`` times the box's width (height) on the left
    and right (top and bottom), clipped to [0, 1]. Unselected images, and maps with no
    cell above the threshold (all zero), get the full box (0, 0, 1, 1).
    """
    maps = maps.detach().float()
    b = maps.shape[0]
    lo, hi = threshold_range
    t = lo + (hi - lo) * _uniforms(u_threshold, b, "u_threshold", maps.device)
    selected = _uniforms(u_apply, b, "u_apply", maps.device) < p
    # an empty region (all-zero map) gives the full box
    boxes = mask_boxes(maps > (t * maps.flatten(1).amax(1)).view(b, 1, 1))
    side = torch.cat([boxes[:, 2:] - boxes[:, :2]] * 2, dim=1)
    boxes = (boxes + pad * side * boxes.new_tensor([-1, -1, 1, 1])).clamp(0.0, 1.0)
    return torch.where(selected.unsqueeze(1), boxes, boxes.new_tensor(FULL_BOX).expand(b, 4))


def attention_crop(
    images: Tensor,
    maps: Tensor,
    p: float,
    threshold_range: tuple[float, float] = (0.4, 0.6),
    pad: float = 0.1,
    size: int | tuple[int, int] | None = None,
    u_apply: Tensor | None = None,
    u_threshold: Tensor | None = None,
) -> Tensor:
    """Crop :func:`attention_crop_boxes` out of ``images`` and resize to ``size`` (default: the images' size).

    Unselected images are only resized (with their own size: returned unchanged).
    """
    boxes = attention_crop_boxes(maps, p, threshold_range, pad, u_apply=u_apply, u_threshold=u_threshold)
    return crop_resize(images, boxes.to(images.device), size if size is not None else tuple(images.shape[-2:]))
