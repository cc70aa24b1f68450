"""Box metrics (COCO mAP, best-threshold F1) on hand-computable cases, and the boxes of eval records."""

from __future__ import annotations

import numpy as np
import pytest

from defectkit.errors import ConfigError
from defectkit.evaluation.detection import DetectionF1, DetectionMAP, best_f1
from defectkit.evaluation.records import make_eval_record
from defectkit.registry import METRICS, build
from defectkit.sample import Instance, Record, Sample

BOX_A = [0, 0, 10, 10]
BOX_B = [20, 20, 30, 30]
BOX_C = [40, 0, 50, 10]
# The COCO AP of a class whose precision is 1 up to recall 0.5 and 0 beyond: 51 of the 101 recall points.
HALF_RECALL_AP = 51 / 101


def _eval(key: str, gt: list, pred: list, **extra) -> dict:
    return {"key": key, "label": int(bool(gt)), "boxes": {"gt": gt, "pred": pred}, **extra}


def _compute(metric_cls, records: list[dict], classes=("lesion",), **options) -> dict[str, float]:
    metric = metric_cls(classes=list(classes), **options)
    for record in records:
        metric.update(record)
    return metric.compute()


def test_perfect_predictions_score_one() -> None:
    records = [
        _eval("a.jpg", [["lesion", *BOX_A], ["lesion", *BOX_B]], [["lesion", 0.9, *BOX_A], ["lesion", 0.6, *BOX_B]]),
        _eval("b.jpg", [], []),
    ]
    assert _compute(DetectionMAP, records) == {"map50": 1.0, "map50_95": 1.0, "map50.lesion": 1.0}
    assert _compute(DetectionF1, records) == {"f1.lesion": 1.0, "f1_threshold.lesion": 0.6, "mean_f1": 1.0}


def test_false_positive_scored_above_the_true_positive_halves_ap_and_sets_the_threshold() -> None:
    # Ranked: a false positive on the empty image b, then the hit on a: precision 1/2 at recall 1.
    records = [
        _eval("a.jpg", [["lesion", *BOX_A]], [["lesion", 0.8, *BOX_A]]),
        _eval("b.jpg", [], [["lesion", 0.9, *BOX_B]]),
    ]
    assert _compute(DetectionMAP, records)["map50"] == pytest.approx(0.5)
    # Keeping both: TP 1, FP 1, FN 0 -> F1 2/3; keeping only the 0.9 box gives F1 0.
    assert _compute(DetectionF1, records) == pytest.approx(
        {"f1.lesion": 2 / 3, "f1_threshold.lesion": 0.8, "mean_f1": 2 / 3}
    )


def test_missed_box_on_an_image_without_predictions_counts() -> None:
    records = [
        _eval("a.jpg", [["lesion", *BOX_A]], [["lesion", 0.9, *BOX_A]]),
        _eval("b.jpg", [["lesion", *BOX_B]], []),
    ]
    assert _compute(DetectionMAP, records)["map50"] == pytest.approx(HALF_RECALL_AP)
    # TP 1, FP 0, FN 1 -> F1 2/3.
    assert _compute(DetectionF1, records)["f1.lesion"] == pytest.approx(2 / 3)


def test_two_classes_are_scored_apart_and_averaged() -> None:
    records = [
        _eval("a.jpg", [["papule", *BOX_A], ["nodule", *BOX_B]], [["papule", 0.9, *BOX_A], ["nodule", 0.7, *BOX_C]]),
    ]
    classes = ("papule", "nodule")
    ap = _compute(DetectionMAP, records, classes)
    assert (ap["map50.papule"], ap["map50.nodule"], ap["map50"]) == (1.0, 0.0, 0.5)
    f1 = _compute(DetectionF1, records, classes)
    # The nodule box never overlaps: no threshold gives a positive F1, so none is reported.
    assert f1 == {"f1.papule": 1.0, "f1_threshold.papule": 0.9, "f1.nodule": 0.0, "mean_f1": 0.5}


def test_a_box_right_class_wrong_class_does_not_match() -> None:
    records = [_eval("a.jpg", [["papule", *BOX_A]], [["nodule", 0.9, *BOX_A]])]
    assert _compute(DetectionF1, records, ("papule", "nodule")) == {"f1.papule": 0.0, "mean_f1": 0.0}


def test_each_ground_truth_box_matches_one_prediction_only() -> None:
    records = [_eval("a.jpg", [["lesion", *BOX_A]], [["lesion", 0.9, *BOX_A], ["lesion", 0.8, *BOX_A]])]
    # The duplicate is a false positive: the best threshold keeps only the first box.
    assert _compute(DetectionF1, records) == {"f1.lesion": 1.0, "f1_threshold.lesion": 0.9, "mean_f1": 1.0}
    assert _compute(DetectionMAP, records)["map50"] == pytest.approx(1.0)


def test_overlap_below_the_iou_threshold_is_a_miss_and_a_false_positive() -> None:
    shifted = [4, 0, 14, 10]  # IoU with BOX_A: 60 / 140 = 0.43
    records = [_eval("a.jpg", [["lesion", *BOX_A]], [["lesion", 0.9, *shifted]])]
    assert _compute(DetectionF1, records)["f1.lesion"] == 0.0
    assert _compute(DetectionF1, records, iou_threshold=0.4)["f1.lesion"] == 1.0
    assert _compute(DetectionMAP, records)["map50"] == 0.0


def test_images_with_errors_or_without_box_ground_truth_are_left_out() -> None:
    records = [
        _eval("a.jpg", [["lesion", *BOX_A]], [["lesion", 0.9, *BOX_A]]),
        _eval("broken.jpg", [["lesion", *BOX_B]], [], error="cannot decode"),
        {"key": "unannotated.jpg", "label": None, "boxes": {"gt": None, "pred": [["lesion", 0.95, *BOX_B]]}},
        {"key": "no_boxes.jpg", "label": 0},
    ]
    assert _compute(DetectionMAP, records)["map50"] == 1.0
    assert _compute(DetectionF1, records)["f1.lesion"] == 1.0


def test_predictions_of_classes_outside_the_evaluated_ones_are_not_scored() -> None:
    records = [_eval("a.jpg", [["lesion", *BOX_A]], [["lesion", 0.5, *BOX_A], ["freckle", 0.9, *BOX_B]])]
    assert _compute(DetectionMAP, records)["map50"] == 1.0
    assert _compute(DetectionF1, records)["f1.lesion"] == 1.0


def test_no_predictions_at_all_scores_zero_and_no_ground_truth_scores_nothing() -> None:
    missed = [_eval("a.jpg", [["lesion", *BOX_A]], [])]
    assert _compute(DetectionMAP, missed) == {"map50": 0.0, "map50_95": 0.0, "map50.lesion": 0.0}
    assert _compute(DetectionF1, missed) == {"f1.lesion": 0.0, "mean_f1": 0.0}
    empty = [_eval("a.jpg", [], [["lesion", 0.9, *BOX_A]])]
    assert _compute(DetectionMAP, empty) == {}
    assert _compute(DetectionF1, empty) == {}


def test_classes_default_to_those_in_the_ground_truth() -> None:
    records = [_eval("a.jpg", [["papule", *BOX_A]], [["papule", 0.9, *BOX_A]])]
    assert _compute(DetectionMAP, records, classes=())["map50.papule"] == 1.0
    assert _compute(DetectionF1, records, classes=())["f1.papule"] == 1.0


def test_map50_95_is_lower_than_map50_for_a_loose_box() -> None:
    loose = [0, 0, 10, 13]  # IoU 100 / 130 = 0.77: a hit up to IoU 0.75 only
    records = [_eval("a.jpg", [["lesion", *BOX_A]], [["lesion", 0.9, *loose]])]
    result = _compute(DetectionMAP, records)
    assert result["map50"] == 1.0
    assert result["map50_95"] == pytest.approx(6 / 10)  # thresholds 0.50 .. 0.75 of 0.50 .. 0.95


def test_max_detections_keeps_only_the_best_boxes_of_an_image() -> None:
    gt = [["lesion", *BOX_A], ["lesion", *BOX_B]]
    records = [_eval("a.jpg", gt, [["lesion", 0.9, *BOX_A], ["lesion", 0.8, *BOX_B]])]
    assert _compute(DetectionMAP, records, max_detections=1)["map50"] == pytest.approx(HALF_RECALL_AP)


def test_best_f1_cuts_only_between_different_scores() -> None:
    # Two predictions share a score, so a threshold keeps both or neither: the hit among them cannot
    # be kept without the miss (which would give F1 1.0). Keeping all: TP 2, FP 1 -> 0.8.
    f1, threshold = best_f1(np.array([0.9, 0.5, 0.5]), np.array([True, True, False]), 2)
    assert (f1, threshold) == (pytest.approx(0.8), 0.5)


def test_metrics_are_built_by_name_and_check_their_options() -> None:
    assert isinstance(build(METRICS, dict(type="DetectionMAP"), classes=["lesion"]), DetectionMAP)
    assert isinstance(build(METRICS, dict(type="DetectionF1", iou_threshold=0.3), classes=["lesion"]), DetectionF1)
    with pytest.raises(ConfigError, match="iou_threshold"):
        DetectionF1(iou_threshold=0)
    with pytest.raises(ConfigError, match="max_detections"):
        DetectionMAP(max_detections=0)


# -- evaluation records carry boxes in original image coordinates ---------------------------------


def test_eval_record_maps_predicted_boxes_back_to_original_coordinates() -> None:
    record = Record("a.jpg", label=1, boxes=[("lesion", 10, 20, 40, 30)])
    # Decoded at half size: the instance is in the reduced image.
    sample = Sample(record, image=np.zeros((50, 100, 3), np.uint8), original_size=(100, 200),
                    instances=[Instance("lesion", 0.87, (5, 10, 20, 15), 75.0)])
    boxes = make_eval_record(sample, ["lesion"])["boxes"]
    assert boxes == {"gt": [["lesion", 10.0, 20.0, 40.0, 30.0]], "pred": [["lesion", 0.87, 10.0, 20.0, 40.0, 30.0]]}


def test_eval_record_of_an_image_with_no_boxes_has_empty_ground_truth() -> None:
    sample = Sample(Record("b.jpg", label=0, boxes=[]), image=np.zeros((10, 10, 3), np.uint8))
    assert make_eval_record(sample, ["lesion"])["boxes"] == {"gt": [], "pred": []}


def test_eval_record_without_box_annotation_or_instances_has_no_boxes() -> None:
    sample = Sample(Record("c.jpg", label=1), image=np.zeros((10, 10, 3), np.uint8))
    assert "boxes" not in make_eval_record(sample, ["lesion"])
    unannotated = Sample(Record("d.jpg"), image=np.zeros((10, 10, 3), np.uint8),
                         instances=[Instance("lesion", 0.5, (1, 1, 4, 4), 9.0)])
    assert make_eval_record(unannotated, ["lesion"])["boxes"]["gt"] is None


def test_eval_record_of_a_failed_image_has_no_boxes() -> None:
    sample = Sample(Record("e.jpg", label=1, boxes=[("lesion", 1, 1, 4, 4)]), error="e.jpg: empty file")
    assert "boxes" not in make_eval_record(sample, ["lesion"])


def test_eval_records_feed_the_metrics_end_to_end() -> None:
    truth = [("lesion", 10, 20, 40, 30), ("lesion", 50, 50, 70, 80)]
    hits = [Instance("lesion", 0.9, box[1:], 0.0) for box in truth]
    samples = [
        Sample(Record("a.jpg", label=1, boxes=truth), image=np.zeros((100, 100, 3), np.uint8), instances=hits),
        Sample(Record("b.jpg", label=0, boxes=[]), image=np.zeros((100, 100, 3), np.uint8)),
    ]
    records = [make_eval_record(sample, ["lesion"]) for sample in samples]
    assert _compute(DetectionMAP, records)["map50"] == 1.0
    assert _compute(DetectionF1, records)["mean_f1"] == 1.0
