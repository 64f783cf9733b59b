"""Splits are seeded, deterministic and exactly stratified."""

from __future__ import annotations

import numpy as np

from vitfgvc.data.splits import stratified_holdout


def test_stratified_and_deterministic():
    labels = np.repeat(np.arange(5), [10, 20, 40, 3, 2])
    a = stratified_holdout(labels, 0.25, seed=0, salt="x")
    b = stratified_holdout(labels, 0.25, seed=0, salt="x")
    assert (a == b).all()
    per_class = [int(a[labels == c].sum()) for c in range(5)]
    assert per_class == [2, 5, 10, 1, 1]  # round(0.25 n), at least one held out, at least one kept


def test_seed_and_salt_change_the_choice_not_the_counts():
    labels = np.repeat(np.arange(3), 30)
    a = stratified_holdout(labels, 0.2, seed=0, salt="test")
    for other in (stratified_holdout(labels, 0.2, seed=1, salt="test"),
                  stratified_holdout(labels, 0.2, seed=0, salt="val")):
        assert (a != other).any()
        assert [other[labels == c].sum() for c in range(3)] == [a[labels == c].sum() for c in range(3)]


def test_zero_fraction_holds_out_nothing():
    assert not stratified_holdout([0, 0, 1, 1], 0.0, seed=0, salt="x").any()
