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
    "FOOTPRINTS",
    "SMALL_COMPONENTS",
    "binary_closing",
    "compose_boxes",
    "crop_resize",
    "mask_boxes",
    "nms_top_k",
    "object_boxes",
    "part_boxes",
    "random_boxes",
    "threshold_mean",
    "threshold_mean_std",
    "threshold_otsu",
]

FULL_BOX = (0.0, 0.0, 1.0, 1.0)
_EIGHT_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED[1] = True  # 8-neighbours within a map, never across the batch


# ------------------------------------------------------------------ thresholds
def threshold_mean(maps_bhw: Tensor) -> Tensor:
    """Per-map threshold ``[B]``: the mean (as ``skimage.filters.threshold_mean``)."""
    return maps_bhw.mean(dim=(1, 2))


def threshold_mean_std(maps_bhw: Tensor, k: float = 1.0) -> Tensor:
    """Per-map threshold ``[B]``: mean + ``k`` x standard deviation (population) of the map's cells.

    Tighter than the mean where the attention is peaked: with ``k = 1`` a box keeps the
    cells about one spread above the average instead of every above-average cell.
    """
    x = maps_bhw.detach().flatten(1).float()
    return x.mean(1) + k * x.std(1, correction=0)


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


_THRESHOLDS = {"mean": threshold_mean, "otsu": threshold_otsu, "mean_std": threshold_mean_std}


# ----------------------------------------------------------------- morphology
FOOTPRINTS = ("square", "cross")


def _max_filter(x: Tensor, size: int, footprint: str, fill: float, mirrored: bool) -> Tensor:
    """Max of ``x [B, 1, h, w]`` over a ``size``-wide square or cross; outside the map counts as ``fill``."""
    a, b = (size - 1) // 2, size // 2
    if mirrored:
        a, b = b, a
    if footprint == "square":
        return F.max_pool2d(F.pad(x, (a, b, a, b), value=fill), size, stride=1)
    # the cross is the union of the centre row and column: the larger of a row and a column pass
    rows = F.max_pool2d(F.pad(x, (a, b, 0, 0), value=fill), (1, size), stride=1)
    cols = F.max_pool2d(F.pad(x, (0, 0, a, b), value=fill), (size, 1), stride=1)
    return torch.maximum(rows, cols)


def binary_closing(mask_bhw: Tensor, size: int, footprint: str = "square") -> Tensor:
    """Closing of boolean masks ``[B, h, w]`` with a ``size``-wide ``square`` or ``cross`` footprint.

    ``cross``: the centre row and column of the square (odd ``size`` only); at 3 it is
    skimage's default footprint (``closing(mask)``, connectivity 1). Pixels outside the
    map count as background for the dilation and foreground for the erosion (skimage's
    ``mode="ignore"``), so closing never removes mask pixels; for these symmetric odd
    footprints that equals skimage's default ``mode="reflect"``. ``size`` 0 or 1 returns
    the mask unchanged.
    """
    if footprint not in FOOTPRINTS:
        raise ValueError(f"footprint must be one of {', '.join(FOOTPRINTS)}, got {footprint!r}")
    if size <= 1:
        return mask_bhw
    if footprint == "cross" and size % 2 == 0:
        raise ValueError(f"a cross footprint needs an odd size (a centre row and column), got {size}")
    x = mask_bhw.unsqueeze(1).float()
    # even squares reach one cell further forward in the dilation and backward in the
    # erosion (skimage's padded, then mirrored footprint)
    dilated = _max_filter(x, size, footprint, 0.0, mirrored=False)
    eroded = -_max_filter(-dilated, size, footprint, -1.0, mirrored=True)
    return eroded.squeeze(1) > 0.5


def _label(mask_bhw: Tensor) -> np.ndarray:
    """8-connected component labels ``[B, h, w]`` (0 = background), numbered in raster order over the batch.

    One ``scipy.ndimage.label`` call labels the whole batch on the CPU (the structure
    connects cells within a map only): ~0.2 ms for 8 maps of 24x24 and ~2 ms for
    128x128, where an iterative torch propagation needs up to hundreds of steps.
    """
    labels, _ = ndimage.label(mask_bhw.cpu().numpy(), structure=_EIGHT_CONNECTED)
    return labels


def _component_at(mask_bhw: Tensor, seed_b: Tensor) -> Tensor:
    """The 8-connected component of each mask that holds the flat index ``seed`` (empty if off-mask)."""
    labels = torch.from_numpy(_label(mask_bhw)).to(mask_bhw.device)
    at_seed = labels.flatten(1).gather(1, seed_b.unsqueeze(1)).view(-1, 1, 1)
    return (labels == at_seed) & (at_seed > 0)


def _best_component_boxes(maps_bhw: Tensor, mask_bhw: Tensor, min_cells: int) -> tuple[Tensor, Tensor]:
    """The original's rule: boxes ``[B, 4]`` and found ``[B]`` of the best component of at least ``min_cells`` cells.

    Every 8-connected component smaller than ``min_cells`` is dropped; of the others,
    the one whose bounding box holds the highest map value wins (the value is read
    over the whole box, as the original's ``attention_map[minr:maxr, minc:maxc].max()``;
    ties go to the first component in raster order, as its stable sort).
    """
    b, h, w = mask_bhw.shape
    labels = _label(mask_bhw)
    areas = np.bincount(labels.ravel())
    slices = ndimage.find_objects(labels)
    values = maps_bhw.detach().float().cpu().numpy()
    best = [None] * b
    score = np.full(b, -np.inf)
    for lab in np.flatnonzero(areas[1:] >= min_cells) + 1:
        sl = slices[lab - 1]
        i = sl[0].start
        peak = values[sl].max()
        if peak > score[i]:
            score[i], best[i] = peak, sl
    boxes = np.tile(np.asarray(FULL_BOX, dtype=np.float32), (b, 1))
    for i, sl in enumerate(best):
        if sl is not None:
            boxes[i] = (sl[2].start / w, sl[1].start / h, sl[2].stop / w, sl[1].stop / h)
    found = torch.tensor([sl is not None for sl in best], device=maps_bhw.device)
    return torch.from_numpy(boxes).to(maps_bhw.device), found


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
    u_n4: Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """Random boxes ``[n, 4]`` like RandomResizedCrop from uniforms ``u_n4 [n, 4]`` in [0, 1).

    The columns place, in turn, the area fraction in ``scale``, the aspect ratio
    (log-uniform) in ``ratio``, and the box's left and top edges. Sides above 1 are
    clipped to 1 (instead of torchvision's retries). ``random_boxes(torch.rand(n, 4))``
    draws ``n`` boxes.
    """
    if u_n4.ndim != 2 or u_n4.shape[1] != 4:
        raise ValueError(f"u_n4 must be [n, 4] uniforms, got shape {tuple(u_n4.shape)}")
    u = u_n4.double()
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    bw = (area * log_r.exp()).sqrt().clamp(max=1.0)
    bh = (area / log_r.exp()).sqrt().clamp(max=1.0)
    x0, y0 = (1 - bw) * u[:, 2], (1 - bh) * u[:, 3]
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1).float()


SMALL_COMPONENTS = ("fallback", "skip")


def object_boxes(
    maps: Tensor,
    threshold: str = "mean",
    closing: int = 3,
    min_area: float = 0.0,
    fallback: str = "full",
    *,
    closing_footprint: str = "square",
    small_components: str = "fallback",
    u_fallback: Tensor | None = None,
    threshold_k: float = 1.0,
) -> Tensor:
    """The object box ``[B, 4]`` of each attention map ``[B, h, w]``.

    Binarise each map (pixels > its ``mean``, ``otsu`` or ``mean_std`` threshold, the last
    mean + ``threshold_k`` x std), close the mask
    (:func:`binary_closing` with a ``closing``-wide ``closing_footprint``; 0 or 1 = off)
    and box one 8-connected component (diagonal neighbours join, as in
    ``skimage.measure.label``'s 2-D default). Which one, by ``small_components``:

    - ``"fallback"``: the component holding the map's maximum (the first in row-major
      order on ties); when it is smaller than ``min_area`` (a fraction of the map's
      cells), no box is found.
    - ``"skip"`` (the original's rule): components smaller than ``min_area`` are
      dropped; of the rest, the one whose bounding box holds the highest map value.

    Where no box is found (also: a flat or all-zero map) the box is the whole map
    (``fallback="full"``) or a :func:`random_boxes` box from the per-map uniforms
    ``u_fallback [B, 4]`` (``"random"``; drawn from torch's global generator when not
    given). The labelling runs on the CPU (one scipy call for the batch; CUDA maps
    make one small round trip).
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [B, h, w], got shape {tuple(maps.shape)}")
    if threshold not in _THRESHOLDS:
        raise ValueError(f"threshold must be one of {', '.join(_THRESHOLDS)}, got {threshold!r}")
    if fallback not in ("full", "random"):
        raise ValueError(f"fallback must be full or random, got {fallback!r}")
    if small_components not in SMALL_COMPONENTS:
        raise ValueError(f"small_components must be one of {', '.join(SMALL_COMPONENTS)}, got {small_components!r}")
    maps = maps.detach()
    b, h, w = maps.shape
    thr = threshold_mean_std(maps, threshold_k) if threshold == "mean_std" else _THRESHOLDS[threshold](maps)
    mask = binary_closing(maps > thr.view(b, 1, 1), closing, closing_footprint)
    # the fewest cells that make min_area (robust to min_area * h * w landing a hair above an integer)
    min_cells = max(1, math.ceil(min_area * h * w - 1e-6))
    if small_components == "skip":
        boxes, ok = _best_component_boxes(maps, mask, min_cells)
    else:
        region = _component_at(mask, maps.flatten(1).argmax(1))
        ok = region.flatten(1).sum(1) >= min_cells
        boxes = mask_boxes(region)
    if fallback == "full":
        spare = boxes.new_tensor(FULL_BOX).expand(b, 4)
    else:
        u = torch.rand(b, 4) if u_fallback is None else u_fallback
        if u.shape != (b, 4):
            raise ValueError(f"u_fallback must be [{b}, 4] uniforms, got shape {tuple(u.shape)}")
        spare = random_boxes(u).to(boxes.device)
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
    output pixel). Differentiable w.r.t. ``images``. The ROIs (image index and box in
    pixels) are float32 whatever the images' dtype, and the crop runs in float32 for
    bf16/fp16 images (cast back after): bf16 holds integers exactly only up to 256, so
    a bf16 index would hand image 257 the crop of image 256.
    """
    if boxes.shape[0] != images.shape[0] or boxes.shape[-1] != 4 or boxes.ndim not in (2, 3):
        raise ValueError(f"boxes must be [B, 4] or [B, k, 4] for B={images.shape[0]}, got {tuple(boxes.shape)}")
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    b, c, h, w = images.shape
    per_image = 1 if boxes.ndim == 2 else boxes.shape[1]
    work = torch.promote_types(images.dtype, torch.float32)
    pixels = boxes.reshape(-1, 4).to(device=images.device, dtype=work) * torch.tensor(
        [w, h, w, h], dtype=work, device=images.device)
    batch_idx = torch.arange(b, device=images.device, dtype=work).repeat_interleave(per_image)
    rois = torch.cat([batch_idx.unsqueeze(1), pixels], dim=1)
    crops = roi_align(images.to(work), rois, output_size=out_hw, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    crops = crops.to(images.dtype)
    return crops if boxes.ndim == 2 else crops.view(b, per_image, c, *out_hw)
