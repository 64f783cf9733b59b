"""The standard image views, as the authors' fastai recipe built them, drawn per sample: what the data
loader's workers do, one item at a time.

The original read each image at full resolution and trained on
``RandomResizedCrop(448, min_scale=0.75)`` followed, on the batch, by fastai's
``aug_transforms()``: a flip, a warp, a rotation and a zoom merged into one
resampling with reflection padding, then brightness and contrast in logit space.
Its validation view was fastai's ``RandomResizedCrop`` at validation: the whole
image squashed to ``size + extra`` and centre-cropped to ``size``.

Here every random number is drawn from the sample's own generator (seeded by
``(seed, epoch, index)`` in the loader), never from a global RNG, so a sample is
the same whatever the workers, processes or resumes. Each draw follows fastai's
source (``fastai/vision/augment.py``): the ranges and the coin of each transform
are pinned by ``tests/test_transforms.py``.

Two ways to make a training view from the same draws (``runtime.augment``):
:func:`train_view` does everything here, per item (``per_sample``);
:func:`train_item` does only what must be per item (decode, the random resized crop,
every draw, the box) and returns the crop as ``uint8`` with the parameters of the rest,
which :mod:`vitfgvc.data.on_device` applies to the whole batch on the training device
(``device``, as fastai ran its ``aug_transforms``).

Conventions: images are ``[3, H, W]`` floats in [0, 1] (or PIL images before the
first resampling); boxes are ``xyxy`` in pixels of their canvas, pixel ``i``
spanning ``[i, i + 1]`` (torchvision's convention). A view returns its box in
fractions of the view, clipped to [0, 1]; a box that has left the view entirely
(nothing of it is inside after clipping) comes back as NaN, as an image without a
box does, so box metrics skip it rather than score an empty box.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..config import TransformSection

BILINEAR = InterpolationMode.BILINEAR
LOGIT_EPS = 1e-7  # fastai's logit clamps to [1e-7, 1 - 1e-7]


def to_uint8(img: Image.Image, *, channels_last: bool = False) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` uint8 (``channels_last``: ``[H, W, 3]``, as decoded, with no transposition)."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8))
    return x if channels_last else x.permute(2, 0, 1)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float in [0, 1]."""
    return to_uint8(img).float().div_(255)


def _boxes(box_xyxy: torch.Tensor, w: int, h: int) -> tv_tensors.BoundingBoxes | None:
    """One pixel box on a ``w`` x ``h`` canvas, or None when there is none (NaN)."""
    if torch.isnan(box_xyxy).any():
        return None
    return tv_tensors.BoundingBoxes(box_xyxy.view(1, 4).float(), format="XYXY", canvas_size=(h, w))


def _fractions(boxes: tv_tensors.BoundingBoxes | None, size: int) -> torch.Tensor:
    """The box in fractions of a ``size`` x ``size`` view, clipped; NaN if none or if it left the view."""
    if boxes is None:
        return torch.full((4,), float("nan"))
    box = (boxes.as_subclass(torch.Tensor)[0] / size).clamp(0, 1)
    if box[2] <= box[0] or box[3] <= box[1]:
        return torch.full((4,), float("nan"))
    return box


# ---------------------------------------------------------------- random resized crop
def rrc_box(w: int, h: int, scale, ratio, g: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameters, drawn from ``g``: (left, top, right, bottom) in pixels.

    ``scale`` bounds the crop's area as a fraction of the image's, ``ratio`` its aspect
    (width / height) in the image's own pixels; the crop is later squashed to a square.
    """
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=g).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            return left, top, left + cw, top + ch
    # fallback: the central crop at the nearest allowed aspect ratio
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def random_resized_crop(img: Image.Image, boxes, size: int, t: TransformSection, g: torch.Generator):
    """A seeded crop of the stored image's own pixels, squashed to ``size`` x ``size`` (PIL, bilinear)."""
    left, top, right, bottom = rrc_box(img.width, img.height, t.rrc_scale, t.rrc_ratio, g)
    crop = dict(top=top, left=left, height=bottom - top, width=right - left, size=[size, size])
    img = F.resized_crop(img, **crop, interpolation=BILINEAR)
    return img, None if boxes is None else _resized_crop_box(boxes, left, top, right - left, bottom - top, size)


def _resized_crop_box(boxes: tv_tensors.BoundingBoxes, left: int, top: int, width: int, height: int,
                      size: int) -> tv_tensors.BoundingBoxes:
    """torchvision's ``resized_crop`` of XYXY boxes, as plain arithmetic (its dispatch costs more than the
    arithmetic): moved to the crop, clamped to it, scaled to ``size`` x ``size``."""
    b = boxes.as_subclass(torch.Tensor)
    x = (b[:, 0::2] - left).clamp_(0, width).mul_(size / width)
    y = (b[:, 1::2] - top).clamp_(0, height).mul_(size / height)
    out = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    return tv_tensors.BoundingBoxes(out, format="XYXY", canvas_size=(size, size))


# ------------------------------------------------------------------- evaluation view
def extra_pixels(size: int, fraction: float) -> int:
    """fastai's validation margin: ``ceil(size * fraction / 8) * 8`` (64 for 448 at 0.14)."""
    return math.ceil(size * fraction / 8) * 8


def eval_view(img: Image.Image, box_xyxy: torch.Tensor | None, size: int,
              t: TransformSection, *, as_uint8: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation view ``[3, size, size]`` in [0, 1] (``as_uint8``: ``[size, size, 3]`` ``uint8``, as
    :func:`train_item` gives its crop) and its box (fractions).

    ``center_crop`` (fastai's RandomResizedCrop at validation): the whole image squashed
    to ``size + extra`` square, then the central ``size`` x ``size``; ``squash``: the
    whole image squashed to ``size`` x ``size``.
    """
    boxes = None if box_xyxy is None else _boxes(box_xyxy, img.width, img.height)
    big = size if t.eval_view == "squash" else size + extra_pixels(size, t.eval_extra)
    img = F.resize(img, [big, big], interpolation=BILINEAR)
    boxes = None if boxes is None else F.resize(boxes, [big, big])
    if big != size:
        img = F.center_crop(img, [size, size])
        boxes = None if boxes is None else F.center_crop(boxes, [size, size])
    return (to_uint8(img, channels_last=True) if as_uint8 else to_tensor(img)), _fractions(boxes, size)


# ----------------------------------------------------- flip, rotation, zoom and warp
@dataclass(frozen=True)
class AffineDraw:
    """One sample's geometric draws (fastai's Flip, Rotate, Zoom, Warp); neutral values when a coin says no."""

    flip: bool
    rotate_deg: float                  # 0: no rotation
    zoom: float                        # 1: no zoom; > 1 zooms in
    zoom_centre: tuple[float, float]   # (column, row) in [0, 1] of the room the zoom leaves
    warp: tuple[float, float]          # (x, y) magnitudes; 0: no warp on that axis

    @property
    def resamples(self) -> bool:
        """Whether anything but a flip (which needs no resampling) is on."""
        return self.rotate_deg != 0 or self.zoom != 1 or self.warp != (0.0, 0.0)


def draw_affine(t: TransformSection, g: torch.Generator) -> AffineDraw:
    """Draw flip (p ``hflip``) and, each with its own coin (p ``affine_p``), rotation, zoom, warp x, warp y.

    As fastai: rotation uniform in [-max_rotate, max_rotate] degrees; zoom uniform in
    ``zoom`` with a centre uniform in [0, 1]^2; each warp axis uniform in
    [-max_warp, max_warp]. Eleven uniforms are drawn whatever the coins say.
    """
    u = torch.rand(11, generator=g, dtype=torch.float64).tolist()
    p = t.affine_p
    rotate = (2 * u[2] - 1) * t.max_rotate if u[1] < p else 0.0
    zoom = t.zoom[0] + u[4] * (t.zoom[1] - t.zoom[0]) if u[3] < p else 1.0
    warp_x = (2 * u[8] - 1) * t.max_warp if u[7] < p else 0.0
    warp_y = (2 * u[10] - 1) * t.max_warp if u[9] < p else 0.0
    return AffineDraw(u[0] < t.hflip, rotate, zoom, (u[5], u[6]), (warp_x, warp_y))


def _perspective_points(d: AffineDraw, size: int) -> tuple[list[list[float]], list[list[float]]]:
    """torchvision's ``(startpoints, endpoints)`` of fastai's combined flip-rotate-zoom-warp, in pixels.

    fastai samples the output point ``o`` (coordinates in [-1, 1], align_corners) from
    the input at ``W(A o)`` with ``A = flip @ rotate @ zoom`` and ``W`` the perspective
    that takes the warped corners ``T`` to the image corners. ``W∘A`` therefore takes
    ``A⁻¹ T`` to the image corners: in torchvision's words, the image corners
    (startpoints) land at ``A⁻¹ T`` (endpoints).
    """
    f = -1.0 if d.flip else 1.0
    th = math.radians(d.rotate_deg)
    s = 1 / d.zoom
    col, row = ((1 - s) * (2 * c - 1) for c in d.zoom_centre)
    flip = torch.tensor([[f, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    rotate = torch.tensor([[math.cos(th), math.sin(th), 0], [-math.sin(th), math.cos(th), 0], [0, 0, 1]],
                          dtype=torch.float64)
    zoom = torch.tensor([[s, 0, col], [0, s, row], [0, 0, 1]], dtype=torch.float64)
    a = flip @ rotate @ zoom
    wx, wy = d.warp
    corners = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64)
    warped = torch.tensor([[-1 - wy, -1 - wx], [-1 + wy, 1 + wx], [1 + wy, -1 + wx], [1 - wy, 1 - wx]],
                          dtype=torch.float64)
    ends = torch.linalg.solve(a, torch.cat([warped, torch.ones(4, 1, dtype=torch.float64)], 1).T).T[:, :2]

    def pixels(n: torch.Tensor) -> list[list[float]]:  # align_corners: -1 and 1 are the outer pixel centres
        return (0.5 + (n + 1) * (size - 1) / 2).tolist()

    return pixels(corners), pixels(ends)


def _reflect_pad(x: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """Reflection padding of any width (one reflection may not exceed the side, so repeat)."""
    while left or top or right or bottom:
        h, w = x.shape[-2:]
        step = [min(left, w - 1), min(top, h - 1), min(right, w - 1), min(bottom, h - 1)]
        x = F.pad(x, step, padding_mode="reflect")
        left, top, right, bottom = (a - b for a, b in zip((left, top, right, bottom), step))
    return x


def affine(x: torch.Tensor, boxes, d: AffineDraw):
    """Apply one sample's flip/rotate/zoom/warp to a square ``[3, S, S]`` image and its box, in ONE resampling.

    The image is reflection-padded by just what the transform reaches outside it, then
    resampled once by torchvision's bilinear ``perspective`` and cropped back to ``S``;
    fastai's ``grid_sample(padding_mode='reflection')`` gives the same pixels. The box
    goes through the same ``perspective`` (its corners mapped, boxed and clipped).
    """
    size = x.shape[-1]
    if not d.resamples:
        return (F.horizontal_flip(x) if d.flip else x), affine_box(boxes, d, size)
    start, end = _perspective_points(d, size)
    # where the view's corners come from in the input: the inverse map, i.e. the points swapped
    # (float corners: integer keypoints come back truncated, a pixel short of the padding a corner needs)
    view = tv_tensors.KeyPoints([[0.0, 0.0], [size, 0.0], [size, size], [0.0, size]], canvas_size=(size, size))
    source = F.perspective(view, startpoints=end, endpoints=start).as_subclass(torch.Tensor)
    lo, hi = source.amin(0), source.amax(0)
    # bilinear reads pixels floor(p - 0.5) and the next one
    left, top = (max(0, -math.floor(v - 0.5)) for v in lo.tolist())
    right, bottom = (max(0, math.floor(v - 0.5) + 2 - size) for v in hi.tolist())
    padded = _reflect_pad(x, left, top, right, bottom)
    start_p, end_p = ([[px + left, py + top] for px, py in pts] for pts in (start, end))  # the padded frame
    x = F.crop(F.perspective(padded, startpoints=start_p, endpoints=end_p, interpolation=BILINEAR),
               top, left, size, size)
    return x, affine_box(boxes, d, size, (start, end))


def affine_box(boxes, d: AffineDraw, size: int, points=None):
    """The box through one sample's flip/rotate/zoom/warp of a ``size`` x ``size`` view (None stays None)."""
    if boxes is None:
        return None
    if not d.resamples:
        return F.horizontal_flip(boxes) if d.flip else boxes
    start, end = points or _perspective_points(d, size)
    return _perspective_box(boxes, start, end, size)


def _perspective_box(boxes: tv_tensors.BoundingBoxes, start, end, size: int) -> tv_tensors.BoundingBoxes:
    """torchvision's ``perspective`` of XYXY boxes (the image corners ``start`` land at ``end``), as plain
    arithmetic: the box's corners mapped, boxed and clamped to the ``size`` x ``size`` view."""
    src = torch.tensor(start, dtype=torch.float64)
    dst = torch.tensor(end, dtype=torch.float64)
    rows = []  # the homography taking start to end, h33 = 1
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist()):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
    h = torch.cat([torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), dst.flatten()),
                   torch.ones(1, dtype=torch.float64)]).view(3, 3)
    b = boxes.as_subclass(torch.Tensor).double()
    corners = b[:, [[0, 1], [2, 1], [2, 3], [0, 3]]].reshape(-1, 2)
    mapped = torch.cat([corners, torch.ones(len(corners), 1, dtype=torch.float64)], 1) @ h.T
    xy = (mapped[:, :2] / mapped[:, 2:]).view(-1, 4, 2)
    out = torch.cat([xy.amin(1), xy.amax(1)], 1).clamp_(0, size).float()
    return tv_tensors.BoundingBoxes(out, format="XYXY", canvas_size=(size, size))


def perspective_coefficients(d: AffineDraw, size: int, points=None) -> list[float]:
    """The 8 coefficients ``(a, b, c, d, e, f, g, h)`` of one sample's resampling, as torchvision's
    ``perspective`` computes them (float32 values): the output pixel ``(x, y)`` (pixel ``i`` spanning
    ``[i, i + 1]``) reads the input at ``((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1))``.

    torchvision's ``_get_perspective_coeffs`` to the bit (the same system, its rows passing through float32 as
    there, the same least-squares driver), built as one tensor instead of sixteen row assignments: per item
    in the loader's workers, its construction cost more than the solve."""
    start, end = points or _perspective_points(d, size)
    rows = []
    for (x, y), (u, v) in zip(end, start):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
    a = torch.tensor(rows, dtype=torch.float32).double()
    b = torch.tensor(start, dtype=torch.float64).view(8)
    return torch.linalg.lstsq(a, b, driver="gels").solution.to(torch.float32).tolist()


# --------------------------------------------------------------------------- lighting
@dataclass(frozen=True)
class LightingDraw:
    """One sample's lighting draws (fastai's Brightness, Contrast); neutral values when a coin says no."""

    brightness: float   # 0.5: unchanged
    contrast: float     # 1: unchanged


def draw_lighting(t: TransformSection, g: torch.Generator) -> LightingDraw:
    """Brightness and contrast, each with its own coin (p ``lighting_p``), four uniforms always drawn.

    As fastai: brightness uniform in ``0.5 * (1 ± max_lighting)``; contrast log-uniform
    in ``[1 - max_lighting, 1 / (1 - max_lighting)]``.
    """
    u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
    m = t.max_lighting
    brightness = 0.5 * (1 - m) + u[1] * m if u[0] < t.lighting_p else 0.5
    log_c = math.log(1 - m)
    contrast = math.exp(log_c - u[3] * 2 * log_c) if u[2] < t.lighting_p else 1.0
    return LightingDraw(brightness, contrast)


def lighting(x: torch.Tensor, d: LightingDraw) -> torch.Tensor:
    """fastai's lighting: ``sigmoid((logit(x) + logit(brightness)) * contrast)``, x in [0, 1]."""
    if d.brightness == 0.5 and d.contrast == 1.0:
        return x
    shift = math.log(d.brightness / (1 - d.brightness))
    return torch.sigmoid((torch.logit(x, eps=LOGIT_EPS) + shift) * d.contrast)


# -------------------------------------------------------------------- training view
def train_view(img: Image.Image, box_xyxy: torch.Tensor | None, size: int, t: TransformSection,
               g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The training view ``[3, size, size]`` in [0, 1] and its box (fractions), every draw from ``g``.

    Random resized crop of the stored image to ``size``, then flip/rotate/zoom/warp in
    one resampling, then brightness and contrast (fastai's item, then batch transforms).
    """
    boxes = None if box_xyxy is None else _boxes(box_xyxy, img.width, img.height)
    img, boxes = random_resized_crop(img, boxes, size, t, g)
    x, boxes = affine(to_tensor(img), boxes, draw_affine(t, g))
    x = lighting(x, draw_lighting(t, g))
    return x, _fractions(boxes, size)


class Aug(enum.IntEnum):
    """The columns of a training item's augmentation parameters (:func:`train_item`), float64."""

    RESAMPLE = 0   # 1: resample with COEFFS (rotation, zoom or warp is on; a flip is then part of the map)
    FLIP = 1       # 1: a horizontal flip and nothing else geometric
    COEFFS = 2     # this and the next 7: perspective_coefficients
    LIGHT = 10     # 1: brightness and contrast are on
    SHIFT = 11     # logit(brightness)
    CONTRAST = 12


NUM_AUG = Aug.CONTRAST + 1


def identity_aug() -> torch.Tensor:
    """Parameters that change nothing: an evaluation item's, or a view already made per sample."""
    p = torch.zeros(NUM_AUG, dtype=torch.float64)
    p[Aug.CONTRAST] = 1.0
    return p


def train_item(img: Image.Image, box_xyxy: torch.Tensor | None, size: int, t: TransformSection,
               g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What :func:`train_view` does per item, and the rest as parameters: the random resized crop as ``uint8``
    ``[size, size, 3]`` (channels last: the layout the decoder gives, turned on the device), its box after every
    transform (fractions), the augmentation parameters (:class:`Aug`) and the additive noise (``transform.noise``
    x a standard normal draw; None when off). The same draws from ``g``, in the same order, as :func:`train_view`."""
    boxes = None if box_xyxy is None else _boxes(box_xyxy, img.width, img.height)
    img, boxes = random_resized_crop(img, boxes, size, t, g)
    geometry, light = draw_affine(t, g), draw_lighting(t, g)
    p = [0.0] * NUM_AUG
    points = None
    if geometry.resamples:
        points = _perspective_points(geometry, size)
        p[Aug.RESAMPLE] = 1.0
        p[Aug.COEFFS:Aug.COEFFS + 8] = perspective_coefficients(geometry, size, points)
    elif geometry.flip:
        p[Aug.FLIP] = 1.0
    p[Aug.CONTRAST] = 1.0
    if (light.brightness, light.contrast) != (0.5, 1.0):
        p[Aug.LIGHT] = 1.0
        p[Aug.SHIFT] = math.log(light.brightness / (1 - light.brightness))
        p[Aug.CONTRAST] = light.contrast
    noise = t.noise * torch.randn((3, size, size), generator=g) if t.noise > 0 else None
    box = _fractions(affine_box(boxes, geometry, size, points), size)
    return to_uint8(img, channels_last=True), box, torch.tensor(p, dtype=torch.float64), noise
