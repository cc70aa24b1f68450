"""Threshold selection shared by gates: the cut that maximises macro F1."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from defectkit.evaluation.thresholds import best_threshold


def test_best_threshold_separates_separable_data_between_scores():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.3, 0.35, 0.7, 0.9])
    threshold, f1 = best_threshold(scores, labels)
    assert f1 == pytest.approx(1.0)
    assert threshold == pytest.approx((0.35 + 0.7) / 2)
    assert ((scores > threshold).astype(int) == labels).all()


def test_best_threshold_is_unaffected_by_input_order():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 10 + [1] * 10)
    scores = np.concatenate([rng.uniform(0, 0.4, 10), rng.uniform(0.6, 1, 10)])
    order = rng.permutation(20)
    threshold, f1 = best_threshold(scores[order], labels[order])
    assert f1 == pytest.approx(1.0)
    assert scores[labels == 0].max() < threshold < scores[labels == 1].min()


def test_best_threshold_returns_the_f1_it_achieves():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 60)
    scores = rng.random(60) + 0.4 * labels
    threshold, f1 = best_threshold(scores, labels)
    preds = (scores > threshold).astype(int)
    assert f1 == pytest.approx(f1_score(labels, preds, average="macro"))
    # No other cut does better.
    for cut in np.unique(scores):
        assert f1_score(labels, (scores > cut).astype(int), average="macro") <= f1 + 1e-12


def test_best_threshold_never_splits_tied_scores():
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.5, 0.5, 0.2, 0.9])
    threshold, _ = best_threshold(scores, labels)
    assert threshold != 0.5
    preds = (scores > threshold).astype(int)
    assert preds[0] == preds[1]
