"""Per-image evaluation records: everything metrics need, small enough to keep one JSON line per image.

Records are written beside ``predictions.jsonl`` as the run goes, so a resumed run computes the same
metrics as an uninterrupted one without keeping maps in memory or on disk.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from defectkit.data.masks import ground_truth_masks
from defectkit.sample import Sample

# Pixel scores are binned to compute pixel AUROC from histograms that add up across images.
PIXEL_BINS = 1000


def make_eval_record(sample: Sample, classes: list[str], positive_labels: set[str] | None = None) -> dict[str, Any]:
    """Summarise one predicted sample against its ground truth.

    Args:
        sample: A sample after the pipeline, with ``record`` carrying ground truth.
        classes: Defect classes; the order of ``prob_maps``/``masks`` channels is ``sample.map_classes``.
        positive_labels: Gate labels that count as a defect prediction (default: anything but "normal").

    Returns:
        ``{"key", "label", "score", "pred", "pixel": {class: {...}}, "problems": [...], "boxes": {...}}``;
        ``boxes`` (see :func:`box_summary`) only when the record has box ground truth or the sample
        has instances.
    """
    record = sample.record
    out: dict[str, Any] = {"key": record.key, "label": record.label, "category": record.category}
    if not sample.ok:
        out["error"] = sample.error
        return out
    out["score"] = None if sample.gate_score is None else float(sample.gate_score)
    if sample.gate_label is not None:
        is_positive = sample.gate_label in positive_labels if positive_labels else sample.gate_label != "normal"
        out["pred"] = int(is_positive)
    boxes = box_summary(sample)
    if boxes is not None:
        out["boxes"] = boxes
    has_gt = record.mask_path is not None or record.polygons is not None or record.label == 0
    if not has_gt or not classes or sample.image is None:
        return out
    shape = sample.image.shape[:2]
    gt, problems = ground_truth_masks(record, shape, classes, scale=sample.scale)
    out["problems"] = problems
    pixel: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    for index, class_name in enumerate(classes):
        truth = gt[index]
        stats: dict[str, Any] = {"gt_pixels": int(truth.sum())}
        channel = sample.map_classes.index(class_name) if class_name in sample.map_classes else None
        if channel is not None and sample.prob_maps is not None:
            prob = sample.prob_maps[channel]
            bins = np.clip((prob * PIXEL_BINS).astype(np.int64), 0, PIXEL_BINS - 1)
            stats["pos_hist"] = _sparse_hist(bins[truth])
            stats["neg_hist"] = _sparse_hist(bins[~truth])
        predicted = None
        if channel is not None and sample.masks is not None:
            predicted = sample.masks[channel]
        elif channel is not None and sample.prob_maps is not None and not sample.finished:
            predicted = sample.prob_maps[channel] > 0.5
        if predicted is None:
            predicted = np.zeros(shape, dtype=bool)  # finished by the gate: nothing predicted
        stats["intersection"] = int(np.logical_and(predicted, truth).sum())
        stats["union"] = int(np.logical_or(predicted, truth).sum())
        stats["pred_pixels"] = int(predicted.sum())
        # Outlines a reviewer sees against the damaged regions drawn: connected components of each.
        stats["gt_regions"] = _count_regions(truth)
        stats["pred_regions"] = sum(1 for i in sample.instances if i.class_name == class_name and i.polygon)
        pixel[class_name] = stats
        predictions[class_name] = predicted
    # Which ground-truth classes each class's prediction landed on (rows: predicted, columns: truth).
    if len(classes) > 1:
        for class_name in classes:
            predicted = predictions[class_name]
            pixel[class_name]["on_gt"] = {other: int(np.logical_and(predicted, gt[j]).sum()) for j, other in enumerate(classes)}
    out["pixel"] = pixel
    return out


def _count_regions(mask: np.ndarray) -> int:
    """Connected regions (8-connectivity) of a bool mask."""
    if not mask.any():
        return 0
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return int(count) - 1


def box_summary(sample: Sample) -> dict[str, Any] | None:
    """Ground-truth and predicted boxes of a sample, in original image pixel-edge coordinates.

    Returns:
        ``{"gt": [[class, x1, y1, x2, y2], ...] or None, "pred": [[class, score, x1, y1, x2, y2], ...]}``;
        ``gt`` is None when the record has no box annotation (unknown, not "no boxes"), so detection
        metrics leave the image out. None when there is neither box ground truth nor an instance.

    Example:
        >>> sample = Sample(Record("a.jpg", boxes=[("lesion", 10, 20, 40, 30)]), scale=0.5,
        ...                 instances=[Instance("lesion", 0.9, (5, 10, 20, 15), 75.0)])
        >>> box_summary(sample)
        {'gt': [['lesion', 10.0, 20.0, 40.0, 30.0]], 'pred': [['lesion', 0.9, 10.0, 20.0, 40.0, 30.0]]}
    """
    record = sample.record
    if record.boxes is None and not sample.instances:
        return None
    gt = None
    if record.boxes is not None:
        gt = [[str(name), *(_coordinate(v) for v in edges)] for name, *edges in record.boxes]
    # Stages work in ``sample.image`` coordinates; ground truth is in the original file's.
    sx, sy = sample.original_factors()
    pred = []
    for instance in sample.instances:
        box = instance.scaled(sx, sy).box
        pred.append([instance.class_name, round(float(instance.score), 6), *(_coordinate(v) for v in box)])
    return {"gt": gt, "pred": pred}


def _coordinate(value: float) -> float:
    # A hundredth of a pixel changes no IoU that matters and keeps one JSON line per image short.
    return round(float(value), 2)


def _sparse_hist(values: np.ndarray) -> list[list[int]]:
    counts = np.bincount(values, minlength=PIXEL_BINS)
    nonzero = np.flatnonzero(counts)
    return [[int(i), int(counts[i])] for i in nonzero]


def dense_hist(sparse: list[list[int]]) -> np.ndarray:
    """Expand a sparse ``[[bin, count], ...]`` histogram."""
    hist = np.zeros(PIXEL_BINS, dtype=np.int64)
    for index, count in sparse:
        hist[index] += count
    return hist
