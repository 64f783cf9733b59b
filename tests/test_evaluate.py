"""Evaluation metrics: the numpy implementations agree with scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, top_k_accuracy_score

from vitfgvc.evaluate import confusion, metrics, top_k_accuracy
from vitfgvc.predictions import Predictions


@pytest.mark.parametrize("seed", range(5))
def test_top_k_accuracy_is_scikit_learns_ties_included(seed):
    rng = np.random.default_rng(seed)
    classes, n = 12, 80
    labels = rng.integers(0, classes, n)
    scores = rng.integers(0, 3, (n, classes)).astype(float)  # coarse scores: many ties
    for k in (1, 5):
        assert top_k_accuracy(labels, scores, k) == pytest.approx(
            top_k_accuracy_score(labels, scores, k=k, labels=range(classes)))


def test_confusion_and_metrics_of_a_known_prediction():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(7)]
    labels = rng.integers(0, 7, 50)
    probs = rng.random((50, 7))
    pred = Predictions(np.arange(50), labels, {"a": probs, "combined": probs}, np.full((50, 4), np.nan), None)
    cm = confusion(pred, classes)
    np.testing.assert_array_equal(cm.to_numpy(), confusion_matrix(labels, probs.argmax(1), labels=range(7)))
    assert list(cm.index) == classes and list(cm.columns) == classes
    m = metrics(pred, classes)
    assert m["accuracy"] == m["accuracy_a"] == pytest.approx(100 * (probs.argmax(1) == labels).mean(), abs=1e-4)
    assert m["top5"] == pytest.approx(100 * top_k_accuracy_score(labels, probs, k=5, labels=range(7)), abs=1e-4)
    assert "box_iou" not in m  # no dataset boxes, no box metrics
