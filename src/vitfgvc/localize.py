"""Object and part boxes from attention maps, and cutting boxes out of images.

Every box here is ``(x0, y0, x1, y1)`` in fractions of the width and height of the map
or image it refers to, with x1 and y1 exclusive: a box covering map cells c0..c1
(inclusive) along x is ``x0 = c0 / w``, ``x1 = (c1 + 1) / w``. Boxes stay in [0, 1].
Everything is batched over the leading dimension.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor
from torchvision.ops import roi_align

__all__ = [
    "binary_closing",
    "compose_boxes",
    "crop_resize",
    "mask_boxes",
    "nms_top_k",
    "object_boxes",
    "part_boxes",
    "random_boxes",
    "threshold_mean",
    "threshold_otsu",
]

FULL_BOX = (0.0, 0.0, 1.0, 1.0)
_EIGHT_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED[1] = True  # 8-neighbours within a map, never across the batch


# ------------------------------------------------------------------ thresholds
def threshold_mean(maps_bhw: Tensor) -> Tensor:
    """Per-map threshold ``[B]``: the mean (as ``skimage.filters.threshold_mean``)."""
    return maps_bhw.mean(dim=(1, 2))


def threshold_otsu(maps_bhw: Tensor, nbins: int = 256) -> Tensor:
    """Per-map Otsu threshold ``[B]``, as ``skimage.filters.threshold_otsu`` on each map.

    Computed in float64 with numpy's histogram binning (edges over [min, max], the
    last bin closed). A flat map's threshold is its value.
    """
    x = maps_bhw.detach().flatten(1).double()
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    flat = (hi == lo).squeeze(1)
    span = torch.where(flat.unsqueeze(1), torch.ones_like(hi), hi - lo)
    # numpy: edges = lo + arange(n + 1) * (span / n), last edge = hi; index by scaling,
    # then correct by one bin where rounding put a value on the wrong side of an edge
    edges = torch.arange(nbins + 1, dtype=x.dtype, device=x.device) * (span / nbins) + lo
    edges[:, -1] = hi.squeeze(1)
    idx = ((x - lo) / span * nbins).long().clamp_(0, nbins - 1)
    idx -= (x < edges.gather(1, idx)).long()
    idx += ((x >= edges.gather(1, idx + 1)) & (idx != nbins - 1)).long()
    counts = torch.zeros(x.shape[0], nbins, dtype=x.dtype, device=x.device).scatter_add_(1, idx, torch.ones_like(x))
    centers = (edges[:, :-1] + edges[:, 1:]) / 2
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    m1 = (counts * centers).cumsum(1) / w1
    m2 = (counts * centers).flip(1).cumsum(1).flip(1) / w2
    var12 = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    thr = centers.gather(1, var12.argmax(1, keepdim=True)).squeeze(1)
    return torch.where(flat, lo.squeeze(1), thr).to(maps_bhw.dtype)  # flat maps: var12 is NaN, unused


_THRESHOLDS = {"mean": threshold_mean, "otsu": threshold_otsu}


# ----------------------------------------------------------------- morphology
def binary_closing(mask_bhw: Tensor, size: int) -> Tensor:
    """Closing of boolean masks ``[B, h, w]`` with a ``size`` x ``size`` square footprint.

    Pixels outside the map count as background for the dilation and foreground for
    the erosion (skimage's ``mode="ignore"``), so closing never removes mask pixels.
    ``size`` 0 or 1 returns the mask unchanged.
    """
    if size <= 1:
        return mask_bhw
    x = mask_bhw.unsqueeze(1).float()
    lo, hi = (size - 1) // 2, size // 2
    # even footprints reach one cell further forward in the dilation and backward in
    # the erosion (skimage's padded, then mirrored footprint)
    dilated = F.max_pool2d(F.pad(x, (lo, hi, lo, hi), value=0.0), size, stride=1)
    eroded = -F.max_pool2d(F.pad(-dilated, (hi, lo, hi, lo), value=-1.0), size, stride=1)
    return eroded.squeeze(1) > 0.5


def _component_at(mask_bhw: Tensor, seed_b: Tensor) -> Tensor:
    """The 8-connected component of each mask that holds the flat index ``seed`` (empty if off-mask).

    One ``scipy.ndimage.label`` call labels the whole batch on the CPU (the structure
    connects cells within a map only): ~0.2 ms for 8 maps of 24x24 and ~2 ms for
    128x128, where an iterative torch propagation needs up to hundreds of steps.
    """
    labels, _ = ndimage.label(mask_bhw.cpu().numpy(), structure=_EIGHT_CONNECTED)
    labels = torch.from_numpy(labels).to(mask_bhw.device)
    at_seed = labels.flatten(1).gather(1, seed_b.unsqueeze(1)).view(-1, 1, 1)
    return (labels == at_seed) & (at_seed > 0)


def mask_boxes(mask_bhw: Tensor) -> Tensor:
    """Bounding boxes ``[B, 4]`` of boolean masks ``[B, h, w]``; an empty mask gives (0, 0, 1, 1)."""
    _, h, w = mask_bhw.shape
    rows, cols = mask_bhw.any(2), mask_bhw.any(1)
    y0 = rows.int().argmax(1)
    y1 = h - rows.flip(1).int().argmax(1)
    x0 = cols.int().argmax(1)
    x1 = w - cols.flip(1).int().argmax(1)
    return torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=1)


def random_boxes(
    n: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` random boxes ``[n, 4]`` like RandomResizedCrop: area fraction in ``scale``, log-uniform aspect ``ratio``.

    Sides above 1 are clipped to 1 (instead of torchvision's retries). Drawn on the
    generator's device (CPU by default).
    """
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(n, 4, generator=generator, device=device, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    bw = (area * log_r.exp()).sqrt().clamp(max=1.0)
    bh = (area / log_r.exp()).sqrt().clamp(max=1.0)
    x0, y0 = (1 - bw) * u[:, 2], (1 - bh) * u[:, 3]
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1).float()


def object_boxes(
    maps: Tensor,
    threshold: str = "mean",
    closing: int = 3,
    min_area: float = 0.0,
    fallback: str = "full",
    generator: torch.Generator | None = None,
) -> Tensor:
    """The object box ``[B, 4]`` of each attention map ``[B, h, w]``.

    Binarise each map (pixels > its ``mean`` or ``otsu`` threshold), close the mask
    with a ``closing`` x ``closing`` square (0 or 1 = off), take the 8-connected
    component (diagonal neighbours join, as in ``skimage.measure.label``'s 2-D default)
    holding the map's maximum (the first in row-major order on ties) and return its
    bounding box. The labelling runs on the CPU (one scipy call for the batch; CUDA
    maps make one small round trip). When that component is empty (flat or all-zero map) or
    smaller than ``min_area`` (a fraction of the map's cells), fall back to the whole
    map (``"full"``: (0, 0, 1, 1)) or to a :func:`random_boxes` box (``"random"``,
    drawn for every map from ``generator`` so the draws do not depend on which maps
    fall back).
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [B, h, w], got shape {tuple(maps.shape)}")
    if threshold not in _THRESHOLDS:
        raise ValueError(f"threshold must be one of {', '.join(_THRESHOLDS)}, got {threshold!r}")
    if fallback not in ("full", "random"):
        raise ValueError(f"fallback must be full or random, got {fallback!r}")
    maps = maps.detach()
    b, h, w = maps.shape
    mask = maps > _THRESHOLDS[threshold](maps).view(b, 1, 1)
    mask = binary_closing(mask, closing)
    region = _component_at(mask, maps.flatten(1).argmax(1))
    area = region.flatten(1).sum(1)
    ok = (area > 0) & (area >= min_area * h * w)
    boxes = mask_boxes(region)
    if fallback == "full":
        spare = boxes.new_tensor(FULL_BOX).expand(b, 4)
    else:
        spare = random_boxes(b, generator=generator).to(boxes.device)
    return torch.where(ok.unsqueeze(1), boxes, spare)


# ---------------------------------------------------------------------- parts
def _window_scores(maps_b1hw: Tensor, kernel: tuple[int, int], pool: str, gem_p: float) -> Tensor:
    """Score ``[B, H-kh+1, W-kw+1]`` of every window at stride 1."""
    kh, kw = kernel

    def window_mean(x):
        # a summed-area table: four lookups per window whatever its size (float64 keeps the
        # differences of large running sums exact enough that equal windows stay tied)
        s = F.pad(x.squeeze(1).double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
        total = s[:, kh:, kw:] - s[:, :-kh, kw:] - s[:, kh:, :-kw] + s[:, :-kh, :-kw]
        return (total / (kh * kw)).to(x.dtype)

    if pool == "avg":
        return window_mean(maps_b1hw)
    if pool == "max":  # a column pass then a row pass
        return F.max_pool2d(F.max_pool2d(maps_b1hw, (kh, 1), stride=1), (1, kw), stride=1).squeeze(1)
    if pool == "gem":
        return window_mean(maps_b1hw.clamp(min=1e-6).pow(gem_p)).pow(1.0 / gem_p)
    raise ValueError(f"pool must be avg, max or gem, got {pool!r}")


def _box_iou_one(boxes_bn4: Tensor, box_b4: Tensor) -> Tensor:
    """IoU ``[B, N]`` of every box with one box per batch item (same units, exclusive ends)."""
    ix = (torch.minimum(boxes_bn4[..., 2], box_b4[:, None, 2]) - torch.maximum(boxes_bn4[..., 0], box_b4[:, None, 0]))
    iy = (torch.minimum(boxes_bn4[..., 3], box_b4[:, None, 3]) - torch.maximum(boxes_bn4[..., 1], box_b4[:, None, 1]))
    inter = ix.clamp(min=0) * iy.clamp(min=0)
    area = (boxes_bn4[..., 2] - boxes_bn4[..., 0]) * (boxes_bn4[..., 3] - boxes_bn4[..., 1])
    area_one = ((box_b4[:, 2] - box_b4[:, 0]) * (box_b4[:, 3] - box_b4[:, 1])).unsqueeze(1)
    return inter / (area + area_one - inter)


def nms_top_k(boxes_bn4: Tensor, scores_bn: Tensor, iou: float, k: int) -> Tensor:
    """Indices ``[B, k]`` of the first ``k`` boxes greedy NMS keeps, per batch item.

    Greedy NMS (as ``torchvision.ops.nms``: the best box suppresses boxes with
    IoU > ``iou``) stopped after ``k`` picks, which are decided by the first k rounds
    alone. Equal scores go to the lower index. When fewer than ``k`` boxes survive,
    the remaining picks are the best not-yet-picked suppressed boxes (and, if even
    those run out, repeats of the best box), so there are always ``k``.
    """
    b, n = scores_bn.shape
    alive = torch.ones(b, n, dtype=torch.bool, device=scores_bn.device)
    unpicked = alive.clone()
    rows = torch.arange(b, device=scores_bn.device)
    picks = []
    for _ in range(k):
        # tiers: alive (and unpicked) > suppressed but unpicked > picked
        tier = alive.long() + unpicked.long()
        best_tier = tier.amax(1, keepdim=True)
        idx = scores_bn.masked_fill(tier != best_tier, -math.inf).argmax(1)
        picks.append(idx)
        unpicked[rows, idx] = False
        # compared in float64 like torchvision's kernel, so that an IoU equal to the
        # threshold up to float32 rounding is decided the same way
        alive &= unpicked & (_box_iou_one(boxes_bn4, boxes_bn4[rows, idx]).double() <= iou)
    return torch.stack(picks, dim=1)


def part_boxes(
    maps: Tensor,
    window: float = 1 / 3,
    k: int = 2,
    iou: float = 0.1,
    pool: str = "avg",
    gem_p: float = 3.0,
) -> Tensor:
    """The ``k`` most attended, little-overlapping windows ``[B, k, 4]`` of maps ``[B, H, W]``, best first.

    Windows of ``round(window * H)`` x ``round(window * W)`` cells (at least 1) are
    scored at stride 1 by ``avg``, ``max`` or ``gem`` pooling (generalised mean with
    exponent ``gem_p``), then :func:`nms_top_k` at IoU ``iou`` picks ``k`` of them.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [B, H, W], got shape {tuple(maps.shape)}")
    b, h, w = maps.shape
    kh, kw = max(1, min(h, round(window * h))), max(1, min(w, round(window * w)))
    maps = maps.detach().float()
    scores = _window_scores(maps.unsqueeze(1), (kh, kw), pool, gem_p)
    nh, nw = scores.shape[1:]
    ys, xs = torch.meshgrid(
        torch.arange(nh, device=maps.device, dtype=torch.float32),
        torch.arange(nw, device=maps.device, dtype=torch.float32),
        indexing="ij",
    )
    cells = torch.stack([xs, ys, xs + kw, ys + kh], dim=-1).view(1, nh * nw, 4).expand(b, -1, -1)
    picks = nms_top_k(cells, scores.flatten(1), iou, k)
    rows = torch.arange(b, device=maps.device).unsqueeze(1)
    return cells[rows, picks] / maps.new_tensor([w, h, w, h])


# ------------------------------------------------------------------- cropping
def compose_boxes(parent_b4: Tensor, child: Tensor) -> Tensor:
    """Boxes given as fractions of a parent box -> fractions of the full image.

    ``parent_b4``: ``[B, 4]``; ``child``: ``[B, 4]`` or ``[B, k, 4]`` (same shape back).
    """
    p = parent_b4 if child.ndim == 2 else parent_b4.unsqueeze(1)
    size = torch.cat([p[..., 2:] - p[..., :2]] * 2, dim=-1)
    origin = torch.cat([p[..., :2]] * 2, dim=-1)
    return origin + child * size


def crop_resize(images: Tensor, boxes: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Cut fractional boxes out of ``images [B, C, H, W]`` and resize them to ``size``.

    ``boxes``: ``[B, 4]`` -> ``[B, C, s, s]``; ``[B, k, 4]`` (k boxes per image, e.g.
    the parts) -> ``[B, k, C, s, s]`` (``.flatten(0, 1)`` gives image-major
    ``[B*k, ...]``). ``size`` is an int (square) or ``(height, width)``. Bilinear
    ``roi_align`` (aligned, adaptive sampling: a box resized to its own pixel size
    reproduces the pixels exactly; a shrinking one averages ceil(ratio)^2 samples per
    output pixel). Differentiable w.r.t. ``images``.
    """
    if boxes.shape[0] != images.shape[0] or boxes.shape[-1] != 4 or boxes.ndim not in (2, 3):
        raise ValueError(f"boxes must be [B, 4] or [B, k, 4] for B={images.shape[0]}, got {tuple(boxes.shape)}")
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    b, c, h, w = images.shape
    per_image = 1 if boxes.ndim == 2 else boxes.shape[1]
    pixels = boxes.reshape(-1, 4).to(images.dtype) * images.new_tensor([w, h, w, h])
    batch_idx = torch.arange(b, device=images.device, dtype=images.dtype).repeat_interleave(per_image)
    rois = torch.cat([batch_idx.unsqueeze(1), pixels], dim=1)
    crops = roi_align(images, rois, output_size=out_hw, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return crops if boxes.ndim == 2 else crops.view(b, per_image, c, *out_hw)
