"""Ground-truth and predicted boxes as COCO files: the ground-truth JSON and the results list that
pycocotools (and most detection tooling) evaluates.

Boxes come in as ``(class_name, x1, y1, x2, y2)`` ground truth and ``(class_name, score, x1, y1,
x2, y2)`` predictions per image key, in original image pixel-edge coordinates (what records and
evaluation records hold); they go out as COCO ``bbox`` ``[x, y, w, h]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defectkit.errors import DataError
from defectkit.io.atomic import atomic_write_json
from defectkit.sample import Record

GT_FILE = "coco_ground_truth.json"
RESULTS_FILE = "coco_results.json"

# Coordinates to a hundredth of a pixel and scores to 1e-6 keep files small without changing any IoU
# or ranking that matters.
COORD_DECIMALS = 2
SCORE_DECIMALS = 6


def coco_ground_truth(
    gt_boxes: Mapping[str, Sequence[Sequence[Any]]],
    classes: Sequence[str],
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """A COCO ground-truth object of the images ``gt_boxes`` names.

    Images get ids 1..N in the mapping's order and ``file_name`` = their key; categories get ids
    1..C in ``classes`` order. An image with no boxes is kept: predictions on it are false positives.

    Args:
        gt_boxes: ``{image key: [(class_name, x1, y1, x2, y2), ...]}``.
        classes: Category names.
        sizes: ``{image key: (width, height)}``, written when known.

    Raises:
        DataError: A box of a class not in ``classes``, or a box that is not five values.

    Example:
        >>> gt = coco_ground_truth({"a.jpg": [("lesion", 10, 20, 40, 30)]}, ["lesion"])
        >>> gt["annotations"][0]["bbox"], gt["categories"]
        ([10.0, 20.0, 30.0, 10.0], [{'id': 1, 'name': 'lesion'}])
    """
    category_ids = _category_ids(classes)
    images, annotations = [], []
    for image_id, (key, boxes) in enumerate(gt_boxes.items(), start=1):
        image: dict[str, Any] = {"id": image_id, "file_name": str(key)}
        if sizes and key in sizes:
            image["width"], image["height"] = int(sizes[key][0]), int(sizes[key][1])
        images.append(image)
        for box in boxes:
            class_name, edges = _split_box(box, 5, key)
            bbox = _xywh(edges)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": _category_id(category_ids, class_name, key),
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], COORD_DECIMALS),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": category_id, "name": name} for name, category_id in category_ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_detections(pred_boxes: Mapping[str, Sequence[Sequence[Any]]], ground_truth: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A COCO results list ``[{image_id, category_id, bbox, score}, ...]`` against ``ground_truth``.

    Image and category ids are looked up in ``ground_truth`` (as :func:`coco_ground_truth` makes it)
    by file name and category name.

    Args:
        pred_boxes: ``{image key: [(class_name, score, x1, y1, x2, y2), ...]}``.
        ground_truth: The COCO ground-truth object the results refer to.

    Raises:
        DataError: A key the ground truth does not list, a class it has no category for, or a box
            that is not six values.

    Example:
        >>> gt = coco_ground_truth({"a.jpg": []}, ["lesion"])
        >>> coco_detections({"a.jpg": [("lesion", 0.9, 10, 20, 40, 30)]}, gt)
        [{'image_id': 1, 'category_id': 1, 'bbox': [10.0, 20.0, 30.0, 10.0], 'score': 0.9}]
    """
    image_ids = {image["file_name"]: image["id"] for image in ground_truth["images"]}
    category_ids = {category["name"]: category["id"] for category in ground_truth["categories"]}
    results = []
    for key, boxes in pred_boxes.items():
        if key not in image_ids:
            raise DataError(f"predictions for {key!r}, which is not among the ground-truth images")
        for box in boxes:
            class_name, values = _split_box(box, 6, key)
            results.append(
                {
                    "image_id": image_ids[key],
                    "category_id": _category_id(category_ids, class_name, key),
                    "bbox": _xywh(values[1:]),
                    "score": round(float(values[0]), SCORE_DECIMALS),
                }
            )
    return results


def write_coco_results(
    out_dir: str | os.PathLike[str],
    records: Sequence[Record],
    predictions: Mapping[str, Sequence[Sequence[Any]]],
    classes: Sequence[str] | None = None,
    gt_name: str = GT_FILE,
    results_name: str = RESULTS_FILE,
) -> tuple[Path, Path]:
    """Write the records' boxes as a COCO ground-truth file and ``predictions`` as a COCO results file.

    Both are written atomically, so an interrupted run never leaves half a file for an evaluator.

    Args:
        out_dir: Folder to write into (created if needed).
        records: The evaluated images; their ``boxes`` are the ground truth (None counts as no box)
            and ``meta`` width/height the image size.
        predictions: ``{record key: [(class_name, score, x1, y1, x2, y2), ...]}`` in original image
            coordinates; records without an entry have no predictions.
        classes: Category names in id order; None for the sorted names found in ground truth and
            predictions.
        gt_name: File name of the ground truth.
        results_name: File name of the results list.

    Returns:
        The paths of the ground-truth and results files.

    Raises:
        DataError: Predictions for an image that is not among ``records``, or of a class not in ``classes``.

    Example:
        >>> gt_path, results_path = write_coco_results(  # doctest: +SKIP
        ...     "out", records, {records[0].key: [("lesion", 0.8, 10, 20, 40, 30)]}, classes=["lesion"])
        >>> from pycocotools.coco import COCO  # doctest: +SKIP
        >>> COCO(str(gt_path)).loadRes(str(results_path))  # doctest: +SKIP
    """
    gt_boxes = {record.key: list(record.boxes or []) for record in records}
    if classes is None:
        found = {str(box[0]) for boxes in gt_boxes.values() for box in boxes}
        found |= {str(box[0]) for boxes in predictions.values() for box in boxes}
        classes = sorted(found)
    sizes = {
        record.key: (int(record.meta["width"]), int(record.meta["height"]))
        for record in records
        if "width" in record.meta and "height" in record.meta
    }
    ground_truth = coco_ground_truth(gt_boxes, classes, sizes)
    results = coco_detections(predictions, ground_truth)
    out = Path(out_dir)
    gt_path, results_path = out / gt_name, out / results_name
    atomic_write_json(gt_path, ground_truth)
    atomic_write_json(results_path, results)
    return gt_path, results_path


def _category_ids(classes: Sequence[str]) -> dict[str, int]:
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise DataError(f"COCO categories must be unique, got {names}")
    return {name: index for index, name in enumerate(names, start=1)}


def _category_id(category_ids: Mapping[str, int], class_name: str, key: str) -> int:
    if class_name not in category_ids:
        raise DataError(f"{key}: box class {class_name!r} is not one of the categories {list(category_ids)}")
    return category_ids[class_name]


def _split_box(box: Sequence[Any], length: int, key: str) -> tuple[str, list[float]]:
    what = "(class, x1, y1, x2, y2)" if length == 5 else "(class, score, x1, y1, x2, y2)"
    if isinstance(box, (str, bytes)) or len(box) != length:
        raise DataError(f"{key}: box {box!r} is not {what}")
    try:
        return str(box[0]), [float(v) for v in box[1:]]
    except (TypeError, ValueError):
        raise DataError(f"{key}: box {box!r} is not {what}") from None


def _xywh(edges: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = edges
    return [round(x1, COORD_DECIMALS), round(y1, COORD_DECIMALS), round(x2 - x1, COORD_DECIMALS), round(y2 - y1, COORD_DECIMALS)]


__all__ = ["GT_FILE", "RESULTS_FILE", "coco_detections", "coco_ground_truth", "write_coco_results"]
