"""Image-level metrics and the F1-optimal threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from defectkit.evaluation.classification import ImageClassification, best_f1_threshold


def _metric(labels, scores=None, preds=None) -> ImageClassification:
    metric = ImageClassification()
    for i, label in enumerate(labels):
        record = {"key": f"{i}.png", "label": int(label)}
        if scores is not None:
            record["score"] = float(scores[i])
        if preds is not None:
            record["pred"] = int(preds[i])
        metric.update(record)
    return metric


def test_auroc_ap_and_macro_f1_match_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.random(200) + 0.3 * labels
    preds = (scores > 0.6).astype(int)
    out = _metric(labels, scores, preds).compute()
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    assert out["image_f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert out["image_accuracy"] == pytest.approx((labels == preds).mean())
    assert out["image_recall_defect"] == pytest.approx(preds[labels == 1].mean())
    assert out["image_precision_defect"] == pytest.approx(labels[preds == 1].mean())


def test_any_nonzero_label_counts_as_defect():
    labels = [0, 0, 2, 3]
    scores = [0.1, 0.2, 0.8, 0.9]
    assert _metric(labels, scores).compute()["image_auroc"] == pytest.approx(1.0)


def test_errored_and_unlabelled_records_are_ignored():
    metric = _metric([0, 1], [0.1, 0.9], [0, 1])
    metric.update({"key": "bad.png", "label": 1, "score": 0.0, "pred": 0, "error": "decode failed"})
    metric.update({"key": "u.png", "label": None, "score": 0.0, "pred": 1})
    out = metric.compute()
    assert out["image_auroc"] == 1.0
    assert out["image_accuracy"] == 1.0


def test_auroc_is_omitted_when_only_one_class_is_present():
    out = _metric([1, 1, 1], [0.2, 0.5, 0.9], [1, 1, 0]).compute()
    assert "image_auroc" not in out and "image_ap" not in out
    assert out["image_recall_defect"] == pytest.approx(2 / 3)


def test_reset_forgets_records():
    metric = _metric([0, 1], [0.1, 0.9], [0, 1])
    metric.reset()
    assert metric.compute() == {}


def test_best_f1_threshold_separates_separable_data_between_scores():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.3, 0.35, 0.7, 0.9])
    threshold, f1 = best_f1_threshold(labels, scores)
    assert f1 == pytest.approx(1.0)
    assert threshold == pytest.approx((0.35 + 0.7) / 2)
    assert ((scores >= threshold).astype(int) == labels).all()


def test_best_f1_threshold_is_unaffected_by_input_order():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 10 + [1] * 10)
    scores = np.concatenate([rng.uniform(0, 0.4, 10), rng.uniform(0.6, 1, 10)])
    order = rng.permutation(20)
    threshold, f1 = best_f1_threshold(labels[order], scores[order])
    assert f1 == pytest.approx(1.0)
    assert scores[labels == 0].max() < threshold < scores[labels == 1].min()


def test_best_f1_threshold_returns_the_f1_it_achieves():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 60)
    scores = rng.random(60) + 0.4 * labels
    threshold, f1 = best_f1_threshold(labels, scores)
    preds = (scores >= threshold).astype(int)
    assert f1 == pytest.approx(f1_score(labels, preds, average="macro"))
    # No other cut does better.
    for cut in np.unique(scores):
        assert f1_score(labels, (scores >= cut).astype(int), average="macro") <= f1 + 1e-12


def test_best_f1_threshold_never_splits_tied_scores():
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.5, 0.5, 0.2, 0.9])
    threshold, _ = best_f1_threshold(labels, scores)
    assert threshold != 0.5
    preds = (scores >= threshold).astype(int)
    assert preds[0] == preds[1]
