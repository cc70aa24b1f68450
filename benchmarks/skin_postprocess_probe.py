"""Two post-processing levers for a trained skin detector, scored on its validation photos (no retraining).

* Box-size correction: predicted boxes are matched to ground truth (IOU >= ``--match-iou``, highest
  score first) and ``log(true width) = a + b * log(predicted width)`` (likewise heights) is fitted by
  least squares; the corrected boxes keep their centres. Fitted on the training photos' boxes, and
  cross-fitted on random halves of the validation photos (each half corrected by the other's fit).
* Test-time input sizes: the whole photos resized to other network input sizes than the trained one
  (FCOS is fully convolutional), alone and fused pairwise by weighted box fusion as the stage fuses
  its flip passes (IOU 0.55), with and without the stage's ``min_score`` cut after fusion.

Reads the ``eval_records.jsonl`` of ``defectkit eval --split train`` and ``--split val`` on the work dir
(their ground truth and, for the size correction, their boxes); the test split is never read. Sizes
are compared on validation, and with ``--size-splits val,train`` also on the training photos the
network has seen at its trained size.

Usage:
    defectkit eval configs/skin_trouble.py --data-root D --work-dir W --split val --out W/eval_val
    defectkit eval configs/skin_trouble.py --data-root D --work-dir W --split train --out W/eval_train
    python benchmarks/skin_postprocess_probe.py W [--sizes 576,640,704] [--size-splits val,train] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import defectkit
from defectkit.evaluation.detection import DetectionMAP, match_boxes
from defectkit.sample import Detections
from defectkit.stages.detect import TTA_FUSE_IOU, Detector
from defectkit.stages.tiling import Tiling
from defectkit.tiling import merge_detections

Record = dict[str, Any]


def read_records(path: Path) -> list[Record]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def matched_sizes(records: list[Record], match_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) box arrays of the evaluation's greedy one-to-one matches at IOU >= ``match_iou``."""
    predicted, true = [], []
    images = [(record["key"], record["boxes"]["gt"], record["boxes"]["pred"]) for record in records]
    for name in sorted({box[0] for _, gt, _ in images for box in gt}):
        gt = [np.array([box[1:5] for box in boxes if box[0] == name], float).reshape(-1, 4) for _, boxes, _ in images]
        matches = match_boxes(name, images, gt, match_iou)
        hit = matches.gt_index >= 0
        predicted.append(matches.boxes[hit])
        true.append(np.array([gt[i][j] for i, j in zip(matches.image_index[hit], matches.gt_index[hit])], float).reshape(-1, 4))
    return np.concatenate(predicted).reshape(-1, 4), np.concatenate(true).reshape(-1, 4)


def fit_size_correction(predicted: np.ndarray, true: np.ndarray) -> dict[str, list[float]]:
    """Least-squares ``(a, b)`` of ``log(true) = a + b * log(predicted)`` for widths and heights."""
    out = {}
    for name, axis in (("width", 0), ("height", 1)):
        p = predicted[:, axis + 2] - predicted[:, axis]
        t = true[:, axis + 2] - true[:, axis]
        design = np.stack([np.ones_like(p), np.log(p)], 1)
        out[name] = [float(v) for v in np.linalg.lstsq(design, np.log(t), rcond=None)[0]]
    return out


def corrected(records: list[Record], correction: dict[str, list[float]]) -> list[Record]:
    out = []
    for record in records:
        boxes = []
        for name, score, x1, y1, x2, y2 in record["boxes"]["pred"]:
            (aw, bw), (ah, bh) = correction["width"], correction["height"]
            width, height = np.exp(aw + bw * np.log(x2 - x1)), np.exp(ah + bh * np.log(y2 - y1))
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            boxes.append([name, score, cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2])
        out.append({**record, "boxes": {"gt": record["boxes"]["gt"], "pred": boxes}})
    return out


def map50(records: list[Record]) -> float:
    metric = DetectionMAP()
    for record in records:
        metric.update(record)
    return round(metric.compute()["map50"], 4)


def with_boxes(records: list[Record], found: list[Detections], classes: list[str], min_score: float) -> list[Record]:
    out = []
    for record, detections in zip(records, found):
        keep = detections.scores >= min_score
        boxes = [[classes[int(label)], float(score), *map(float, box)]
                 for box, score, label in zip(detections.boxes[keep], detections.scores[keep], detections.labels[keep])]
        out.append({**record, "boxes": {"gt": record["boxes"]["gt"], "pred": boxes}})
    return out


def detect_at(detector: Detector, images: list[np.ndarray], size: int) -> list[Detections]:
    """The detector's boxes with its input resized to ``size`` x ``size`` (one network, no flip: one
    pass of the stage's ``tta_scales``)."""
    return detector._detect_passes(images, (size, size))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--sizes", default="576,640,704", help="network input sizes to compare (comma-separated)")
    parser.add_argument("--match-iou", type=float, default=0.3)
    parser.add_argument("--size-splits", default="val", help="splits to compare input sizes on: val, train or val,train")
    parser.add_argument("--halves", type=int, default=10, help="random halvings of validation for the cross-fit")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    train = read_records(args.work_dir / "eval_train" / "eval_records.jsonl")
    val = read_records(args.work_dir / "eval_val" / "eval_records.jsonl")
    report: dict[str, Any] = {"val_map50": map50(val)}

    correction = fit_size_correction(*matched_sizes(train, args.match_iou))
    report["size_correction_fitted_on_train"] = {"coefficients": correction, "val_map50": map50(corrected(val, correction))}
    rng = np.random.default_rng(0)
    gains = []
    for _ in range(args.halves):
        order = rng.permutation(len(val))
        first, second = [val[i] for i in order[: len(val) // 2]], [val[i] for i in order[len(val) // 2:]]
        fixed = (corrected(first, fit_size_correction(*matched_sizes(second, args.match_iou)))
                 + corrected(second, fit_size_correction(*matched_sizes(first, args.match_iou))))
        gains.append(map50(fixed) - map50(first + second))
    report["size_correction_cross_fitted_on_val_halves"] = {
        "mean_gain": round(float(np.mean(gains)), 4), "min_gain": round(float(min(gains)), 4), "max_gain": round(float(max(gains)), 4)}
    print(json.dumps(report, indent=2), flush=True)

    pipeline = defectkit.load(args.work_dir)
    stage = pipeline.stages[0]
    detector = stage.inner if isinstance(stage, Tiling) else stage
    if not isinstance(detector, Detector):
        raise SystemExit(f"{args.work_dir}: the first stage is not a Detector (or a Tiling stage around one)")
    sizes = [int(v) for v in args.sizes.split(",")]
    for split in args.size_splits.split(","):
        records = {"train": train, "val": val}[split]
        images = [cv2.cvtColor(cv2.imread(record["key"]), cv2.COLOR_BGR2RGB) for record in records]
        found = {size: detect_at(detector, images, size) for size in sizes}
        scores: dict[str, float] = {}
        for index, size in enumerate(sizes):
            scores[str(size)] = map50(with_boxes(records, found[size], detector.classes, detector.min_score))
            for other in sizes[index + 1:]:
                fused = [merge_detections(Detections.concatenate([a, b]), "WBF", "IOU", TTA_FUSE_IOU, passes=2)
                         for a, b in zip(found[size], found[other])]
                scores[f"{size}+{other}"] = map50(with_boxes(records, fused, detector.classes, detector.min_score))
                scores[f"{size}+{other} (no min_score after fusion)"] = map50(with_boxes(records, fused, detector.classes, 0.0))
        report[f"{split}_map50_by_input_size"] = scores
        print(split, json.dumps(scores, indent=2), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
