"""``digits``: cluttered handwritten digits, a fine-grained task a laptop CPU can train.

Each sample is a square canvas holding one upscaled digit from scikit-learn's
bundled handwritten digits (1797 real 8x8 scans) at a random place and size,
among clutter fragments cut from other digits of the same pool. The label is the
digit; the box is the digit's ink. Train and test canvases are drawn from
disjoint source digits. Everything is seeded: canvas ``i`` of a split depends
only on (seed, split, i).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import SynthConfig
from .splits import stratified_holdout

CLASSES = [str(d) for d in range(10)]
_SPLIT_ID = {"train": 0, "test": 1}


def load_source(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``digits.csv.gz``: 64 pixel values (0..16) then the label, per row."""
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    if data.ndim != 2 or data.shape[1] != 65:
        raise ValueError(f"{path}: expected rows of 64 pixels and a label, got shape {data.shape}")
    return (data[:, :64].reshape(-1, 8, 8) / 16.0).astype(np.float32), data[:, 64].astype(int)


def source_pools(labels: np.ndarray, cfg: SynthConfig, seed: int) -> dict[str, np.ndarray]:
    test = stratified_holdout(labels, cfg.test_source_fraction, seed, "digits-sources")
    return {"train": np.flatnonzero(~test), "test": np.flatnonzero(test)}


def _upscale(cells: np.ndarray, w: int, h: int) -> np.ndarray:
    img = Image.fromarray(np.clip(cells * 255, 0, 255).astype(np.uint8))
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, split: str, index: int,
           canvas: int, cfg: SynthConfig, seed: int) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """Canvas ``index`` of ``split``: (uint8 image [canvas, canvas], label, ink box x0, y0, x1, y1)."""
    rng = np.random.default_rng([seed, _SPLIT_ID[split], index])
    out = np.zeros((canvas, canvas), np.float32)
    src = pool[rng.integers(len(pool))]
    size = int(rng.integers(cfg.digit_size[0], min(cfg.digit_size[1], canvas) + 1))
    x, y = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
    digit_area = (x, y, x + size, y + size)
    for _ in range(cfg.clutter):
        other = images[pool[rng.integers(len(pool))]]
        ch, cw = (int(v) for v in rng.integers(3, 6, size=2))  # a 3..5 x 3..5 cell piece of an 8x8 digit
        r0, c0 = int(rng.integers(0, 9 - ch)), int(rng.integers(0, 9 - cw))
        side = int(rng.integers(cfg.clutter_size[0], cfg.clutter_size[1] + 1))
        fw, fh = max(2, round(side * cw / max(ch, cw))), max(2, round(side * ch / max(ch, cw)))
        for _try in range(20):
            fx, fy = int(rng.integers(0, canvas - fw + 1)), int(rng.integers(0, canvas - fh + 1))
            if not _overlap((fx, fy, fx + fw, fy + fh), digit_area):
                piece = _upscale(other[r0:r0 + ch, c0:c0 + cw], fw, fh)
                np.maximum(out[fy:fy + fh, fx:fx + fw], piece, out=out[fy:fy + fh, fx:fx + fw])
                break
    digit = _upscale(images[src], size, size)
    np.maximum(out[y:y + size, x:x + size], digit, out=out[y:y + size, x:x + size])
    if cfg.noise > 0:
        out = np.clip(out + rng.normal(0, cfg.noise, out.shape).astype(np.float32), 0, 1)
    ys, xs = np.nonzero(digit > 0.2)
    box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
    return (out * 255 + 0.5).astype(np.uint8), int(labels[src]), box
