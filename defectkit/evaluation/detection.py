"""Box-level metrics: COCO mAP (pycocotools) and per-class best-threshold F1.

Both read the ``boxes`` of evaluation records (see :func:`defectkit.evaluation.records.box_summary`):
ground truth and predictions in original image coordinates. Images that failed (``error``) or have
no box ground truth (``gt`` None) are left out; images without predictions count, their boxes as
misses.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from defectkit.errors import ConfigError
from defectkit.evaluation.base import Metric
from defectkit.io.coco_results import coco_detections, coco_ground_truth
from defectkit.registry import METRICS

COCO_MAX_DETECTIONS = 100


@METRICS.register_module()
class DetectionMAP(Metric):
    """COCO average precision of boxes: mAP at IoU 0.5 and averaged over IoU 0.5:0.95.

    Computed by pycocotools over all evaluated images (area range "all", at most
    ``max_detections`` highest-scoring boxes per image and class). A class's AP counts when it has
    ground truth; predictions of classes without ground truth or outside ``classes`` are not scored.

    Keys: ``map50``, ``map50_95`` (means over classes with ground truth) and ``map50.<class>``.

    Args:
        classes: Classes to evaluate; empty for every class in the ground truth.
        max_detections: Boxes per image kept for AP (COCO's 100 can cut off images with many
            small lesions).

    Example:
        >>> metric = DetectionMAP(classes=["lesion"])
        >>> metric.update({"key": "a.jpg", "boxes": {"gt": [["lesion", 0, 0, 10, 10]],
        ...                                          "pred": [["lesion", 0.9, 0, 0, 10, 10]]}})
        >>> metric.compute()["map50"]
        1.0
    """

    primary = "map50"

    def __init__(self, classes: list[str] | None = None, max_detections: int = COCO_MAX_DETECTIONS) -> None:
        super().__init__(classes)
        if not isinstance(max_detections, int) or max_detections < 1:
            raise ConfigError(f"DetectionMAP: max_detections must be a positive integer, got {max_detections!r}")
        self.max_detections = max_detections

    def compute(self) -> dict[str, float]:
        images = list(box_images(self.records))
        classes = self.classes or sorted({box[0] for _, gt, _ in images for box in gt})
        with_gt = [c for c in classes if any(box[0] == c for _, gt, _ in images for box in gt)]
        if not with_gt:
            return {}
        allowed = set(classes)
        gt_boxes = {key: [box for box in gt if box[0] in allowed] for key, gt, _ in images}
        preds = {key: [box for box in pred if box[0] in allowed] for key, _, pred in images}
        ground_truth = coco_ground_truth(gt_boxes, classes)
        detections = coco_detections(preds, ground_truth)
        if detections:
            precision = _coco_precision(ground_truth, detections, self.max_detections)
            # precision: [IoU threshold, recall, class, area range, max detections]; -1 = no ground truth.
            per_class = {name: precision[:, :, classes.index(name), 0, -1] for name in with_gt}
            ap50 = {name: _rounded(p[0].mean()) for name, p in per_class.items()}
            ap50_95 = {name: _rounded(p.mean()) for name, p in per_class.items()}
        else:
            ap50 = ap50_95 = dict.fromkeys(with_gt, 0.0)
        out = {"map50": _rounded(np.mean(list(ap50.values()))), "map50_95": _rounded(np.mean(list(ap50_95.values())))}
        out.update({f"map50.{name}": value for name, value in ap50.items()})
        return out


@METRICS.register_module()
class DetectionF1(Metric):
    """Per-class F1 of boxes at the score threshold that maximises it.

    Predictions of a class are matched to its ground truth greedily, highest score first: each takes
    the unmatched ground-truth box of its image it overlaps most, when that IoU reaches
    ``iou_threshold``; each box matches at most once. Because a prediction's match never depends
    on lower-scored ones, keeping the predictions above a threshold keeps their matches, so every
    threshold's F1 follows from one matching. Ties in F1 go to the higher threshold (fewer boxes).

    Keys: ``f1.<class>`` and ``f1_threshold.<class>`` (the lowest score kept) for each class with
    ground truth (no threshold when no prediction ever matches), and ``mean_f1`` over those classes.

    Args:
        classes: Classes to evaluate; empty for every class in the ground truth.
        iou_threshold: IoU a prediction needs with a ground-truth box to match it.

    Example:
        >>> metric = DetectionF1(classes=["lesion"])
        >>> metric.update({"key": "a.jpg", "boxes": {"gt": [["lesion", 0, 0, 10, 10]],
        ...                                          "pred": [["lesion", 0.9, 0, 0, 10, 10]]}})
        >>> metric.compute()
        {'f1.lesion': 1.0, 'f1_threshold.lesion': 0.9, 'mean_f1': 1.0}
    """

    primary = "mean_f1"

    def __init__(self, classes: list[str] | None = None, iou_threshold: float = 0.5) -> None:
        super().__init__(classes)
        if not isinstance(iou_threshold, (int, float)) or not 0 < iou_threshold <= 1:
            raise ConfigError(f"DetectionF1: iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.iou_threshold = float(iou_threshold)

    def compute(self) -> dict[str, float]:
        images = list(box_images(self.records))
        classes = self.classes or sorted({box[0] for _, gt, _ in images for box in gt})
        out: dict[str, float] = {}
        best_f1s = []
        for name in classes:
            gt = [np.asarray([box[1:5] for box in boxes if box[0] == name], np.float64).reshape(-1, 4) for _, boxes, _ in images]
            n_gt = sum(len(g) for g in gt)
            if n_gt == 0:
                continue
            scores, matched = self._match(name, images, gt)
            f1, threshold = best_f1(scores, matched, n_gt)
            out[f"f1.{name}"] = f1
            if threshold is not None:
                out[f"f1_threshold.{name}"] = threshold
            best_f1s.append(f1)
        if best_f1s:
            out["mean_f1"] = float(np.mean(best_f1s))
        return out

    def _match(self, name: str, images: list[tuple[str, list, list]], gt: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Scores of every prediction of ``name``, highest first, and whether each matched a ground-truth box."""
        matches = match_boxes(name, images, gt, self.iou_threshold)
        return matches.scores, matches.gt_index >= 0


@dataclass
class BoxMatches:
    """Greedy matches of one class's predictions over a set of images (see :func:`match_boxes`).

    Attributes:
        scores: Prediction scores, highest first (P).
        image_index: Image of each prediction (P).
        boxes: Each prediction's ``(x1, y1, x2, y2)`` (Px4).
        gt_index: Index of the matched ground-truth box within its image, -1 for a false detection (P).
        gt_score: Per image, the score of the prediction that matched each ground-truth box, NaN for
            a box no prediction matched (a miss at every threshold).
    """

    scores: np.ndarray
    image_index: np.ndarray
    boxes: np.ndarray
    gt_index: np.ndarray
    gt_score: list[np.ndarray]


def match_boxes(name: str, images: Sequence[tuple[str, list, list]], gt: Sequence[np.ndarray], iou_threshold: float = 0.5) -> BoxMatches:
    """Match predictions of class ``name`` to ground truth greedily, highest score first.

    Each prediction takes the unmatched ground-truth box of its image that it overlaps most, when
    that IoU reaches ``iou_threshold``. A prediction's match never depends on lower-scored ones, so
    the matches at any score threshold are the matches of the predictions above it.

    Args:
        name: The class.
        images: ``(key, gt boxes, predicted boxes)`` per image, boxes as in evaluation records
            (``[class, x1, y1, x2, y2]`` / ``[class, score, x1, y1, x2, y2]``).
        gt: Per image, the Nx4 ground-truth boxes of ``name``.
        iou_threshold: IoU a prediction needs to match.

    Example:
        >>> m = match_boxes("a", [("i", [], [["a", 0.9, 0, 0, 10, 10], ["a", 0.5, 20, 20, 30, 30]])],
        ...                 [np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float)])
        >>> m.gt_index.tolist(), m.gt_score[0].tolist()
        ([0, -1], [0.9, nan])
    """
    predictions = [
        (float(box[1]), index, np.asarray(box[2:6], np.float64))
        for index, (_, _, preds) in enumerate(images)
        for box in preds
        if box[0] == name
    ]
    # Stable sort: equal scores keep file order, so results do not depend on dict iteration.
    predictions.sort(key=lambda item: -item[0])
    gt_score = [np.full(len(g), np.nan) for g in gt]
    gt_index = np.full(len(predictions), -1, np.int64)
    for position, (score, index, box) in enumerate(predictions):
        if not len(gt[index]):
            continue
        overlaps = box_iou(box, gt[index])
        overlaps[~np.isnan(gt_score[index])] = -1.0
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold:
            gt_score[index][best] = score
            gt_index[position] = best
    return BoxMatches(
        scores=np.asarray([p[0] for p in predictions], np.float64),
        image_index=np.asarray([p[1] for p in predictions], np.int64),
        boxes=np.asarray([p[2] for p in predictions], np.float64).reshape(-1, 4),
        gt_index=gt_index,
        gt_score=gt_score,
    )


def best_f1(scores: np.ndarray, matched: np.ndarray, n_gt: int) -> tuple[float, float | None]:
    """The best F1 over score thresholds, and the threshold (lowest score kept) that reaches it.

    Args:
        scores: Prediction scores, sorted from highest to lowest.
        matched: Whether each prediction matched a ground-truth box.
        n_gt: Ground-truth boxes in all.

    Returns:
        ``(f1, threshold)``; threshold None when no threshold gives a positive F1.

    Example:
        >>> best_f1(np.array([0.9, 0.8, 0.3]), np.array([False, True, True]), 2)
        (0.8, 0.3)
    """
    if not len(scores) or not matched.any():
        return 0.0, None
    true_pos = np.cumsum(matched)
    kept = np.arange(1, len(scores) + 1)
    f1 = 2 * true_pos / (kept + n_gt)
    # A threshold keeps every prediction scoring at least as much: only the last of equal scores is a cut.
    is_cut = np.append(scores[1:] != scores[:-1], True)
    candidates = np.flatnonzero(is_cut)
    best = candidates[np.argmax(f1[candidates])]  # argmax takes the first: the highest threshold among ties
    return float(f1[best]), float(scores[best])


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(x1, y1, x2, y2)`` box with each row of an Nx4 array.

    Example:
        >>> box_iou(np.array([0, 0, 10, 10]), np.array([[0, 0, 10, 10], [5, 0, 15, 10]])).tolist()
        [1.0, 0.3333333333333333]
    """
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def _rounded(value: float) -> float:
    # pycocotools divides by tp + fp + eps, so a perfect AP comes out as 0.9999999999999999.
    return round(float(value), 9)


def box_images(records: list[dict[str, Any]]) -> Iterator[tuple[str, list, list]]:
    """``(key, gt boxes, predicted boxes)`` of every record that has box ground truth and no error."""
    for record in records:
        boxes = record.get("boxes")
        if "error" in record or not boxes or boxes.get("gt") is None:
            continue
        yield str(record["key"]), list(boxes["gt"]), list(boxes.get("pred") or [])


def _coco_precision(ground_truth: dict[str, Any], detections: list[dict[str, Any]], max_detections: int) -> np.ndarray:
    # pycocotools prints progress on every call and trips numpy deprecations: keep metrics output clean.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        # evaluate() sorts maxDets and the last one is read: keep max_detections the largest.
        evaluator.params.maxDets = sorted({1, min(10, max_detections), max_detections})
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"]


__all__ = ["DetectionF1", "DetectionMAP", "best_f1", "box_iou"]
