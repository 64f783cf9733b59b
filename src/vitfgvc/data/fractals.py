"""``fractals``: FractalDB-style categories drawn from iterated function systems, a pretraining source.

Formula-driven supervised pretraining (Kataoka et al., ACCV 2020; Nakashima et al.,
AAAI 2022): a category is an IFS code, ``n`` affine maps ``x -> A_i x + t_i`` with
their six parameters drawn uniformly in [-1, 1] and map ``i`` chosen with
probability proportional to ``|det A_i|``; its points come from the chaos game. A
drawn code is kept as a category only when its attractor fills at least
``fill_rate`` of a ``FILL_GRID``-square grid over its bounding box (the papers' filter:
it rejects codes that collapse onto a line or a few points). An instance perturbs its
category's code as the papers do: one parameter of one map scaled by a factor drawn in
``[1 - variation, 1 + variation]``. The points are drawn white on black at a random
place and size of the canvas, like a digit of :mod:`vitfgvc.data.digits`, so the
pretraining sees an object on an empty background; the box is the drawing's ink. No
natural image, no digit and no label is shared with the target task.

Everything is seeded: the codes depend only on the seed, image ``i`` of a split only on
(seed, split, i).
"""

from __future__ import annotations

import numpy as np

from ..config import FractalConfig

FILL_GRID = 32           # cells per side of the grid the filling rate is measured on
_SPLIT_ID = {"train": 0, "test": 1}
_TAG = 0x46524143        # "FRAC": the generator's streams differ from every other seeded draw of the project


def class_names(n: int) -> list[str]:
    return [f"fractal{c:03d}" for c in range(n)]


def chaos_game(code_n6: np.ndarray, rng: np.random.Generator, points: int, chains: int = 500,
               warmup: int = 20) -> np.ndarray:
    """``points`` points ``[P, 2]`` of the attractor of ``code_n6`` (rows a, b, c, d, e, f: ``A = [[a, b], [c, d]]``,
    ``t = (e, f)``), from ``chains`` parallel chaos games after ``warmup`` steps; NaN where a map is not contractive
    enough to keep the points finite."""
    det = np.abs(code_n6[:, 0] * code_n6[:, 3] - code_n6[:, 1] * code_n6[:, 2])
    p = det / det.sum() if det.sum() > 0 else np.full(len(code_n6), 1 / len(code_n6))
    steps = warmup + -(-points // chains)
    pick = rng.choice(len(code_n6), size=(steps, chains), p=p)
    x = np.zeros((chains, 2))
    out = np.empty((steps - warmup, chains, 2))
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(steps):
            m = code_n6[pick[s]]
            x = np.stack([m[:, 0] * x[:, 0] + m[:, 1] * x[:, 1] + m[:, 4],
                          m[:, 2] * x[:, 0] + m[:, 3] * x[:, 1] + m[:, 5]], axis=1)
            if s >= warmup:
                out[s - warmup] = x
    return out.reshape(-1, 2)[:points]


def _normalised(points: np.ndarray) -> np.ndarray | None:
    """The points scaled into [0, 1]^2 by their longer side and centred; None when degenerate or diverging."""
    if not np.isfinite(points).all() or np.abs(points).max() > 1e6:
        return None
    lo, hi = points.min(0), points.max(0)
    extent = float((hi - lo).max())
    if extent < 1e-9:
        return None
    return (points - lo) / extent + (1 - (hi - lo) / extent) / 2


def filling_rate(points: np.ndarray) -> float:
    """Share of the ``FILL_GRID`` x ``FILL_GRID`` cells over the points' bounding square that hold a point."""
    xy = _normalised(points)
    if xy is None:
        return 0.0
    cells = np.minimum((xy * FILL_GRID).astype(int), FILL_GRID - 1)
    return len(np.unique(cells[:, 0] * FILL_GRID + cells[:, 1])) / FILL_GRID ** 2


def category_codes(cfg: FractalConfig, seed: int, max_draws: int = 200_000) -> list[np.ndarray]:
    """``cfg.classes`` IFS codes ``[n, 6]`` (one per category) whose attractors fill at least ``cfg.fill_rate``."""
    rng = np.random.default_rng([seed, _TAG])
    codes = []
    for _ in range(max_draws):
        n = int(rng.integers(cfg.maps[0], cfg.maps[1] + 1))
        code = rng.uniform(-1, 1, size=(n, 6))
        if filling_rate(chaos_game(code, rng, cfg.points // 4)) >= cfg.fill_rate:
            codes.append(code)
            if len(codes) == cfg.classes:
                return codes
    raise ValueError(f"fractals: only {len(codes)} of {cfg.classes} IFS codes filled {cfg.fill_rate} of the grid in "
                     f"{max_draws} draws; lower fill_rate")


def render(codes: list[np.ndarray], split: str, index: int, canvas: int, cfg: FractalConfig,
           seed: int) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """Image ``index`` of ``split``: (uint8 image [canvas, canvas], label, ink box x0, y0, x1, y1). Labels cycle
    through the categories, so every split is balanced."""
    rng = np.random.default_rng([seed, _TAG, _SPLIT_ID[split], index])
    label = index % len(codes)
    xy = None
    for _try in range(10):  # a perturbation that breaks the attractor is drawn again
        code = codes[label].copy()
        i, j = int(rng.integers(len(code))), int(rng.integers(6))
        code[i, j] *= rng.uniform(1 - cfg.variation, 1 + cfg.variation)
        pts = chaos_game(code, rng, cfg.points)
        if filling_rate(pts) >= cfg.fill_rate / 2:
            xy = _normalised(pts)
            break
    if xy is None:  # the category's own code, which passed the filter
        xy = _normalised(chaos_game(codes[label], rng, cfg.points))
    if rng.random() < 0.5:  # FractalDB's flip: the same category either way round
        xy[:, 0] = 1 - xy[:, 0]
    size = int(rng.integers(cfg.object_size[0], min(cfg.object_size[1], canvas) + 1))
    x, y = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
    cells = np.minimum((xy * size).astype(int), size - 1)
    counts = np.zeros((size, size), np.float32)
    np.add.at(counts, (cells[:, 1], cells[:, 0]), 1.0)
    ink = np.clip(np.log1p(counts) / np.log1p(max(float(np.percentile(counts[counts > 0], 90)), 1.0)), 0, 1)
    out = np.zeros((canvas, canvas), np.float32)
    out[y:y + size, x:x + size] = ink
    ys, xs = np.nonzero(ink > 0)
    box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
    return (out * 255 + 0.5).astype(np.uint8), label, box
