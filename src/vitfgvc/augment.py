"""Attention-guided augmentation (training only): attention erasing and attention cropping.

Maps are ``[B, h, w]`` attention maps normalised to a max of 1 (see
:mod:`vitfgvc.attention`); images are ``[B, C, H, W]`` (already normalised, so 0 is
the mean colour). Each image is augmented with probability ``p``, decided per image
from ``generator``; an explicit ``apply: Tensor[B] bool`` overrides that decision
(and then no decision is drawn), e.g. when the training loop draws the decisions per
sample itself so that they do not depend on how a batch is split across processes.
No function modifies its inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vitfgvc.localize import FULL_BOX, crop_resize, mask_boxes

__all__ = ["attention_crop", "attention_crop_boxes", "attention_erase"]


def _rand(n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` uniform draws in [0, 1) on the generator's device (CPU by default)."""
    return torch.rand(n, generator=generator, device=generator.device if generator is not None else "cpu")


def _decide(n: int, p: float, generator: torch.Generator | None, apply: Tensor | None, device) -> Tensor:
    if apply is not None:
        if apply.shape != (n,):
            raise ValueError(f"apply must be a bool tensor of shape ({n},), got {tuple(apply.shape)}")
        return apply.to(device=device, dtype=torch.bool)
    return (_rand(n, generator) < p).to(device)


def attention_erase(
    images: Tensor,
    maps: Tensor,
    p: float,
    threshold: float,
    generator: torch.Generator | None = None,
    apply: Tensor | None = None,
) -> Tensor:
    """Per image with probability ``p``, zero every pixel whose attention exceeds ``threshold``.

    ``maps`` ``[B, h, w]`` are upsampled bilinearly (``align_corners=False``) to the
    images' size. Returns a new tensor.
    """
    b, _, h, w = images.shape
    selected = _decide(b, p, generator, apply, images.device)
    up = F.interpolate(maps.detach().unsqueeze(1).float(), size=(h, w), mode="bilinear", align_corners=False)
    erase = (up > threshold) & selected.view(b, 1, 1, 1)
    return images.masked_fill(erase, 0.0)


def attention_crop_boxes(
    maps: Tensor,
    p: float,
    threshold_range: tuple[float, float] = (0.4, 0.6),
    pad: float = 0.1,
    generator: torch.Generator | None = None,
    apply: Tensor | None = None,
) -> Tensor:
    """Attention-crop boxes ``[B, 4]`` (fractions, exclusive ends; see :mod:`vitfgvc.localize`).

    Per image with probability ``p``: the bounding box of the map cells above
    ``t * max(map)``, ``t`` uniform in ``threshold_range``, padded by ``pad`` times the
    box's width (height) on the left and right (top and bottom), clipped to [0, 1].
    Unselected images, and maps with no cell above the threshold (all zero), get the
    full box (0, 0, 1, 1). The thresholds are drawn for every image before the
    decisions, so the draws are the same whether or not ``apply`` is given.
    """
    maps = maps.detach().float()
    b = maps.shape[0]
    lo, hi = threshold_range
    t = (lo + (hi - lo) * _rand(b, generator)).to(maps.device)
    selected = _decide(b, p, generator, apply, maps.device)
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
    generator: torch.Generator | None = None,
    size: int | tuple[int, int] | None = None,
    apply: Tensor | None = None,
) -> Tensor:
    """Crop :func:`attention_crop_boxes` out of ``images`` and resize to ``size`` (default: the images' size).

    Unselected images are only resized (with their own size: returned unchanged).
    """
    boxes = attention_crop_boxes(maps, p, threshold_range, pad, generator=generator, apply=apply)
    return crop_resize(images, boxes.to(images.device), size if size is not None else tuple(images.shape[-2:]))
