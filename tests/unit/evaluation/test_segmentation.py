"""Pixel-level metrics: data-set IoU and pooled pixel AUROC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from defectkit.evaluation.records import PIXEL_BINS, make_eval_record
from defectkit.evaluation.segmentation import (
    PixelAUROC,
    SegmentationIoU,
    auroc_from_histograms,
)
from defectkit.sample import Record, Sample


def _pixel_record(**classes):
    return {"key": "k", "pixel": {name: dict(zip(("intersection", "union"), v)) for name, v in classes.items()}}


def test_iou_totals_intersection_and_union_over_images_not_mean_of_ratios():
    metric = SegmentationIoU()
    metric.update(_pixel_record(scratch=(1, 2)))  # 0.5
    metric.update(_pixel_record(scratch=(9, 10)))  # 0.9
    out = metric.compute()
    assert out["iou.scratch"] == pytest.approx(10 / 12)
    assert out["miou"] == pytest.approx(10 / 12)


def test_miou_averages_classes_and_skips_classes_with_empty_union():
    metric = SegmentationIoU()
    metric.update(_pixel_record(scratch=(1, 4), dent=(3, 4), rust=(0, 0)))
    out = metric.compute()
    assert "iou.rust" not in out
    assert out["iou.scratch"] == pytest.approx(0.25)
    assert out["iou.dent"] == pytest.approx(0.75)
    assert out["miou"] == pytest.approx(0.5)


def test_iou_of_records_without_pixel_stats_is_empty():
    metric = SegmentationIoU()
    metric.update({"key": "a", "label": 0})
    assert metric.compute() == {}


def test_auroc_from_histograms_equals_sklearn_on_quantised_scores_with_ties():
    rng = np.random.default_rng(0)
    bins = 20
    labels = rng.integers(0, 2, 500)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 0.999)
    quantised = (scores * bins).astype(int)  # many ties per bin
    pos = np.bincount(quantised[labels == 1], minlength=bins)
    neg = np.bincount(quantised[labels == 0], minlength=bins)
    assert auroc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(labels, quantised))


def test_auroc_from_histograms_all_tied_is_one_half():
    assert auroc_from_histograms(np.array([0, 5, 0]), np.array([0, 7, 0])) == pytest.approx(0.5)


def test_auroc_from_histograms_without_positives_or_negatives_is_none():
    assert auroc_from_histograms(np.zeros(3), np.array([1, 2, 3])) is None
    assert auroc_from_histograms(np.array([1, 2, 3]), np.zeros(3)) is None


def _sample_with_map(prob: np.ndarray, truth: np.ndarray, name: str) -> Sample:
    polygons = []
    ys, xs = np.nonzero(truth)
    for y, x in zip(ys, xs):  # one tiny square polygon per ground-truth pixel
        polygons.append([[[x, y], [x, y], [x, y]]])
    record = Record(name, label=1, polygons={"defect": polygons})
    return Sample(record, image=np.zeros((*prob.shape, 3), np.uint8), prob_maps=prob[None].astype(np.float32), map_classes=["defect"])


def test_pixel_auroc_from_records_matches_sklearn_on_pooled_pixels():
    rng = np.random.default_rng(3)
    metric = PixelAUROC(["defect"])
    all_truth, all_scores = [], []
    for i in range(3):
        truth = rng.random((8, 8)) < 0.3
        prob = np.clip(rng.random((8, 8)) * 0.7 + 0.3 * truth, 0, 1).astype(np.float32)
        sample = _sample_with_map(prob, truth, f"{i}.png")
        record = make_eval_record(sample, ["defect"])
        assert record["problems"] == []
        metric.update(record)
        all_truth.append(truth.ravel())
        all_scores.append(np.clip((prob * PIXEL_BINS).astype(int), 0, PIXEL_BINS - 1).ravel())
    out = metric.compute()
    expected = roc_auc_score(np.concatenate(all_truth), np.concatenate(all_scores))
    assert out["pixel_auroc"] == pytest.approx(expected)
    assert "pixel_auroc.defect" not in out  # a single class gives only the mean key


def test_pixel_auroc_gives_per_class_values_when_several_classes():
    metric = PixelAUROC(["a", "b"])
    metric.update(
        {
            "pixel": {
                "a": {"pos_hist": [[9, 1]], "neg_hist": [[1, 1]]},  # perfect
                "b": {"pos_hist": [[1, 1]], "neg_hist": [[9, 1]]},  # inverted
            }
        }
    )
    out = metric.compute()
    assert out["pixel_auroc.a"] == 1.0
    assert out["pixel_auroc.b"] == 0.0
    assert out["pixel_auroc"] == 0.5


def test_pixel_auroc_without_histograms_is_empty():
    metric = PixelAUROC()
    metric.update({"pixel": {"a": {"intersection": 1, "union": 2}}})
    assert metric.compute() == {}
