"""Image-level metrics and the F1-optimal threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from defectkit.evaluation.classification import ImageClassification


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

