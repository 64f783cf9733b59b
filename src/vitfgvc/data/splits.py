"""Seeded, exactly stratified hold-out splits."""

from __future__ import annotations

import zlib

import numpy as np


def stratified_holdout(labels, fraction: float, seed: int, salt: str) -> np.ndarray:
    """A boolean mask marking ``round(fraction * n_c)`` items of every class ``c``.

    Items are taken in the order given (callers sort them by a stable key, such as
    the source path, first); the choice depends only on ``labels``, ``fraction``,
    ``seed`` and ``salt``. A class with at least two items keeps at least one on
    each side when ``fraction`` > 0.
    """
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        mask[rng.permutation(idx)[:n]] = True
    return mask
