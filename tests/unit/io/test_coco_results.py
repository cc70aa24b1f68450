"""COCO ground-truth and results files from records and predicted boxes."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from defectkit.errors import DataError
from defectkit.io.coco_results import (
    coco_detections,
    coco_ground_truth,
    write_coco_results,
)
from defectkit.sample import Record


def _records() -> list[Record]:
    return [
        Record("a.jpg", label=1, boxes=[("lesion", 10, 20, 40, 30)], meta={"width": 64, "height": 48}),
        Record("b.jpg", label=0, boxes=[], meta={"width": 64, "height": 48}),
    ]


def test_ground_truth_boxes_become_xywh_with_ids_in_order_and_empty_images_kept() -> None:
    gt = coco_ground_truth({"a.jpg": [("scar", 10, 20, 40, 30)], "b.jpg": []}, ["lesion", "scar"], {"a.jpg": (64, 48)})

    assert gt["images"] == [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 2, "file_name": "b.jpg"}]
    assert gt["categories"] == [{"id": 1, "name": "lesion"}, {"id": 2, "name": "scar"}]
    assert gt["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 20.0, 30.0, 10.0], "area": 300.0, "iscrowd": 0}
    ]


def test_detections_take_image_and_category_ids_from_the_ground_truth() -> None:
    gt = coco_ground_truth({"a.jpg": [], "b.jpg": []}, ["lesion"])
    results = coco_detections({"b.jpg": [("lesion", 0.25, 1, 2, 5, 8)]}, gt)
    assert results == [{"image_id": 2, "category_id": 1, "bbox": [1.0, 2.0, 4.0, 6.0], "score": 0.25}]


def test_detections_of_unknown_images_or_classes_are_refused() -> None:
    gt = coco_ground_truth({"a.jpg": []}, ["lesion"])
    with pytest.raises(DataError, match="'c.jpg', which is not among the ground-truth images"):
        coco_detections({"c.jpg": [("lesion", 0.5, 1, 2, 5, 8)]}, gt)
    with pytest.raises(DataError, match="a.jpg: box class 'scar' is not one of the categories"):
        coco_detections({"a.jpg": [("scar", 0.5, 1, 2, 5, 8)]}, gt)
    with pytest.raises(DataError, match=r"a.jpg: box .* is not \(class, score, x1, y1, x2, y2\)"):
        coco_detections({"a.jpg": [("lesion", 1, 2, 5, 8)]}, gt)


def test_written_files_load_in_pycocotools_and_perfect_predictions_score_one(tmp_path: Path) -> None:
    records = _records()
    gt_path, results_path = write_coco_results(
        tmp_path / "out", records, {"a.jpg": [("lesion", 0.9, 10, 20, 40, 30)]}, classes=["lesion"]
    )

    assert json.loads(gt_path.read_text())["images"][0] == {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coco_ground_truth.json", "coco_results.json"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[1] == pytest.approx(1.0)  # AP at IoU 0.5


def test_classes_default_to_the_sorted_names_found(tmp_path: Path) -> None:
    records = _records()
    gt_path, _ = write_coco_results(tmp_path, records, {"b.jpg": [("acne", 0.4, 1, 1, 3, 3)]})
    assert [c["name"] for c in json.loads(gt_path.read_text())["categories"]] == ["acne", "lesion"]


def test_predictions_for_an_image_outside_the_records_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'z.jpg', which is not among the ground-truth images"):
        write_coco_results(tmp_path, _records(), {"z.jpg": [("lesion", 0.4, 1, 1, 3, 3)]}, classes=["lesion"])
    assert not any(tmp_path.iterdir())
