"""The training views' augmentation on the training device, one batch at a time (``runtime.augment: device``).

fastai ran its ``aug_transforms`` (flip, rotation, zoom, warp, lighting) on the GPU, on the
whole batch, after a per-item RandomResizedCrop on the CPU. Here the loader's workers do only
what must be per item (:func:`vitfgvc.data.per_item.train_item`: decode, the crop, every
random draw, the box) and hand over ``uint8`` crops (channels last, as decoded) with their parameters; :func:`batch_views`
then makes the views on the device:

1. the geometric transforms of each resampled image as one bilinear ``grid_sample`` of the batch,
   reading outside the image by reflection about the outer pixel centres (fastai's
   ``padding_mode='reflection'``; the per-item path pads by reflection, then resamples), the flip
   of the others by indexing;
2. brightness and contrast in logit space where their coins said so;
3. the ImageNet normalisation, then the additive noise drawn in the worker (``transform.noise``).

For the same seed the views equal :func:`vitfgvc.data.per_item.train_view`'s to float rounding
(``tests/test_transforms.py`` bounds the difference): only the resampling grid is computed
differently (from the same float32 coefficients, in the unpadded frame). Evaluation items
arrive as ``uint8`` with parameters that change nothing: only the normalisation runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .loader import IMAGENET_MEAN, IMAGENET_STD
from .per_item import LOGIT_EPS, Aug


def perspective_grids(coeffs: torch.Tensor, size: int) -> torch.Tensor:
    """``grid_sample`` grids ``[B, size, size, 2]`` (``align_corners=True``) of perspective coefficients
    ``[B, 8]`` (:func:`vitfgvc.data.per_item.perspective_coefficients`: output pixel ``(x, y)``, pixel ``i``
    spanning ``[i, i + 1]``, reads the input at the mapped point)."""
    c = coeffs.to(torch.float32)
    centres = torch.arange(size, device=c.device, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    x, y = x[None], y[None]
    a, b, cc, d, e, f, g, h = (c[:, i, None, None] for i in range(8))
    den = g * x + h * y + 1
    sx, sy = (a * x + b * y + cc) / den, (d * x + e * y + f) / den
    # pixel edges -> pixel indices (centre of pixel 0 at 0) -> [-1, 1] with -1 and 1 the outer pixel centres
    scale = 2 / (size - 1)
    return torch.stack([(sx - 0.5) * scale - 1, (sy - 0.5) * scale - 1], dim=-1)


def batch_views(images: torch.Tensor, aug: dict, device: torch.device) -> torch.Tensor:
    """The loader's batch on ``device`` as the model's input: ``uint8`` crops ``[B, H, W, 3]`` made into
    normalised views ``[B, 3, H, W]`` with their parameters (``aug["params"]`` ``[B, NUM_AUG]``, and
    ``aug["noise"]`` with ``transform.noise``); a float batch (views the workers finished,
    ``runtime.augment: per_sample``) is only moved."""
    if images.dtype != torch.uint8:
        return images.to(device, non_blocking=True)
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).to(torch.float32,
                                                                     memory_format=torch.contiguous_format).div_(255)
    p = aug["params"]  # on the CPU: which images need what is decided there, with no wait for the device

    def on_rows(column: Aug, fn) -> None:
        """``x[i] = fn(x[i], params[i])`` for the images ``i`` whose ``column`` is set (in place, all at once)."""
        nonlocal x
        picked = p[:, column] > 0
        if not picked.any():
            return
        if picked.all():
            x = fn(x, p.to(device, non_blocking=True))
            return
        rows = torch.nonzero(picked).flatten().to(device, non_blocking=True)
        x[rows] = fn(x[rows], p[picked].to(device, non_blocking=True))

    on_rows(Aug.FLIP, lambda v, q: v.flip(-1))
    on_rows(Aug.RESAMPLE, lambda v, q: TF.grid_sample(
        v, perspective_grids(q[:, Aug.COEFFS:Aug.COEFFS + 8], v.shape[-1]), mode="bilinear",
        padding_mode="reflection", align_corners=True))
    on_rows(Aug.LIGHT, lambda v, q: torch.sigmoid(
        (torch.logit(v, eps=LOGIT_EPS) + q[:, Aug.SHIFT].float().view(-1, 1, 1, 1))
        * q[:, Aug.CONTRAST].float().view(-1, 1, 1, 1)))
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if "noise" in aug:
        x = x + aug["noise"].to(device, non_blocking=True)
    return x
