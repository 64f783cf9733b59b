"""The cluttered-digits dataset: seeded canvases, true boxes, disjoint train/test sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets

from vitfgvc.config import SynthConfig
from vitfgvc.data import digits

SOURCE = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


@pytest.fixture(scope="module")
def source():
    return digits.load_source(SOURCE)


def test_source_matches_sklearn(source):
    images, labels = source
    ref = sklearn.datasets.load_digits()
    assert images.shape == (1797, 8, 8)
    np.testing.assert_allclose(images * 16, ref.images)
    assert (labels == ref.target).all()


def test_pools_are_disjoint_and_stratified(source):
    _, labels = source
    pools = digits.source_pools(labels, SynthConfig(test_source_fraction=0.3), seed=0)
    assert not set(pools["train"]) & set(pools["test"])
    assert len(pools["train"]) + len(pools["test"]) == len(labels)
    for c in range(10):
        share = (labels[pools["test"]] == c).sum() / (labels == c).sum()
        assert abs(share - 0.3) < 0.01


def test_box_is_the_digit_ink(source):
    images, labels = source
    pool = np.arange(len(labels))
    cfg = SynthConfig(clutter=0)
    for i in range(20):
        img, label, box = digits.render(images, labels, pool, "train", i, 128, cfg, seed=0)
        ys, xs = np.nonzero(img > 0.2 * 255)
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 0 <= label <= 9


def test_clutter_stays_off_the_digit_and_renders_are_seeded(source):
    images, labels = source
    pool = np.arange(len(labels))
    cfg = SynthConfig(clutter=8)
    a = digits.render(images, labels, pool, "test", 3, 128, cfg, seed=0)
    b = digits.render(images, labels, pool, "test", 3, 128, cfg, seed=0)
    c = digits.render(images, labels, pool, "test", 3, 128, cfg, seed=1)
    assert (a[0] == b[0]).all() and a[1:] == b[1:]
    assert not (a[0] == c[0]).all()
    alone = digits.render(images, labels, pool, "test", 3, 128, SynthConfig(clutter=0), seed=0)
    x0, y0, x1, y1 = a[2]
    assert (a[0] > alone[0]).sum() > 50  # clutter was drawn ...
    assert (a[0][y0:y1, x0:x1] == alone[0][y0:y1, x0:x1]).all()  # ... but not over the digit
