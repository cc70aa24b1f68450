"""The detection part of the report: PR curve, F1 against score threshold, worst photos, lesion sizes.

Everything comes from the run's evaluation records (``boxes``: ground truth and predictions in
original image coordinates, see :func:`defectkit.evaluation.records.box_summary`) with the
matching the F1 metric uses (:func:`defectkit.evaluation.detection.match_boxes`, IoU 0.5), so the
curves, the threshold and the drawn photos agree with ``metrics.json``.

Per class with ground truth:

* precision-recall curve over every score the predictions have (recall tops out where the
  stage's ``min_score`` cut the list);
* F1 against score threshold, with the threshold of the best F1 marked (``f1_threshold.<class>``):
  the operating point the report then uses;
* the worst photos at that threshold (most missed plus false boxes), drawn from the original
  files: hits green, misses red, false boxes orange;
* histograms of ground-truth box size (square root of the area, pixels) of hits and misses.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.figure import Figure

from defectkit.evaluation.detection import BoxMatches, best_f1, box_images, match_boxes
from defectkit.io.atomic import atomic_write_bytes
from defectkit.io.overlays import overlay_name
from defectkit.io.report import save_figure

MAX_WORST_PHOTOS = 6
WORST_SIZE = 384
# BGR for cv2: hits green, misses red, false detections orange.
_HIT, _MISS, _FALSE = (60, 170, 60), (40, 40, 220), (0, 150, 255)


def class_analysis(records: Sequence[dict[str, Any]], name: str, iou_threshold: float = 0.5) -> dict[str, Any] | None:
    """Curves and per-photo errors of one class over evaluation records (None without ground truth).

    Returns:
        ``{"images", "gt", "matches", "n_gt", "precision", "recall", "thresholds", "f1", "threshold",
        "best_f1", "per_image": [(key, hits, misses, false), ...], "sizes_hit", "sizes_missed"}``;
        ``precision``/``recall``/``f1`` are per cut of the score-sorted predictions (``thresholds``),
        per-image counts and sizes are at ``threshold`` (the best-F1 one; every prediction when none).

    Example:
        >>> records = [{"key": "a", "boxes": {"gt": [["l", 0, 0, 10, 10]], "pred": [["l", 0.9, 0, 0, 10, 10]]}}]
        >>> class_analysis(records, "l")["best_f1"]
        1.0
    """
    images = list(box_images(list(records)))
    gt = [np.asarray([b[1:5] for b in boxes if b[0] == name], np.float64).reshape(-1, 4) for _, boxes, _ in images]
    n_gt = sum(len(g) for g in gt)
    if n_gt == 0:
        return None
    matches = match_boxes(name, images, gt, iou_threshold)
    matched = matches.gt_index >= 0
    true_pos = np.cumsum(matched)
    kept = np.arange(1, len(matched) + 1)
    f1_value, threshold = best_f1(matches.scores, matched, n_gt)
    cut = -np.inf if threshold is None else threshold
    per_image, sizes_hit, sizes_missed = [], [], []
    for index, (key, _, _) in enumerate(images):
        hit = matches.gt_score[index] >= cut  # NaN (never matched) compares False: a miss
        false = int(((matches.image_index == index) & (matches.scores >= cut) & ~matched).sum())
        per_image.append((key, int(hit.sum()), int((~hit).sum()), false))
        sides = np.sqrt(np.prod(np.clip(gt[index][:, 2:] - gt[index][:, :2], 0, None), axis=1))
        sizes_hit.extend(sides[hit].tolist())
        sizes_missed.extend(sides[~hit].tolist())
    return {
        "images": images, "gt": gt, "matches": matches, "n_gt": n_gt,
        "precision": true_pos / np.maximum(kept, 1), "recall": true_pos / n_gt, "thresholds": matches.scores,
        "f1": 2 * true_pos / (kept + n_gt), "threshold": threshold, "best_f1": f1_value,
        "per_image": per_image, "sizes_hit": sizes_hit, "sizes_missed": sizes_missed,
    }


def detection_html(
    work_dir: Path,
    plots_dir: Path,
    records: Sequence[dict[str, Any]],
    classes: Sequence[str],
    iou_threshold: float = 0.5,
) -> str:
    """The report's detection section (empty string when no record has box ground truth).

    Args:
        work_dir: The run folder (plots are linked relative to it).
        plots_dir: Where the plots and drawn photos go (``work_dir/plots``).
        records: The run's evaluation records; ``key`` is the image path the photos are read from.
        classes: Defect classes to analyse (those without ground truth are skipped).
        iou_threshold: IoU a prediction needs to match, as in the F1 metric.
    """
    parts: list[str] = []
    for name in classes:
        analysis = class_analysis(records, name, iou_threshold)
        if analysis is None:
            continue
        slug = overlay_name(name).rsplit("_", 1)[0] or "class"
        files = [
            _pr_plot(analysis, name, plots_dir / f"det_pr_{slug}.png"),
            _f1_plot(analysis, name, plots_dir / f"det_f1_{slug}.png"),
            _size_plot(analysis, name, plots_dir / f"det_sizes_{slug}.png"),
        ]
        threshold = analysis["threshold"]
        hits = len(analysis["sizes_hit"])
        false = sum(row[3] for row in analysis["per_image"])
        shown = "none (no prediction matches)" if threshold is None else f"{threshold:.3f}"
        parts.append(f"<h3>{html.escape(name)}</h3>")
        parts.append(
            f"<p>Chosen threshold (best F1 on these images): <b>{shown}</b>; F1 {analysis['best_f1']:.3f}; "
            f"{hits} of {analysis['n_gt']} boxes found, {analysis['n_gt'] - hits} missed, {false} false "
            f"(IoU &ge; {iou_threshold:g}).</p>"
        )
        parts.append('<div class="plots">')
        for path in files:
            rel = path.relative_to(work_dir).as_posix()
            parts.append(f'<a href="{html.escape(rel)}"><img src="{html.escape(rel)}" alt="{html.escape(path.stem)}"></a>')
        parts.append("</div>")
        parts.append(_worst_photos_html(work_dir, plots_dir / "det_worst", analysis, name))
    if not parts:
        return ""
    return "<h2>Detection</h2>" + "".join(parts)


def _pr_plot(analysis: dict[str, Any], name: str, path: Path) -> Path:
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot()
    if len(analysis["recall"]):
        ax.plot(analysis["recall"], analysis["precision"], lw=2)
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"{name}: precision-recall (IoU 0.5, n = {analysis['n_gt']})")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _f1_plot(analysis: dict[str, Any], name: str, path: Path) -> Path:
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot()
    if len(analysis["thresholds"]):
        ax.plot(analysis["thresholds"], analysis["f1"], lw=2)
    if analysis["threshold"] is not None:
        ax.axvline(analysis["threshold"], ls="--", color="grey", lw=1,
                   label=f"chosen {analysis['threshold']:.3f} (F1 {analysis['best_f1']:.3f})")
        ax.legend(loc="lower left")
    ax.set(xlabel="Score threshold", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"{name}: F1 against score threshold")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _size_plot(analysis: dict[str, Any], name: str, path: Path) -> Path:
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot()
    sizes = analysis["sizes_hit"] + analysis["sizes_missed"]
    bins = np.linspace(0, max(sizes) * 1.05 if sizes else 1, 25).tolist()
    ax.hist([analysis["sizes_hit"], analysis["sizes_missed"]], bins=bins, stacked=True,
            color=["#3a3", "#d33"], label=[f"found ({len(analysis['sizes_hit'])})", f"missed ({len(analysis['sizes_missed'])})"])
    ax.set(xlabel="Box size (sqrt of area, px)", ylabel="Ground-truth boxes")
    ax.set_title(f"{name}: size of found and missed boxes")
    ax.legend(loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _worst_photos_html(work_dir: Path, out_dir: Path, analysis: dict[str, Any], name: str) -> str:
    ranked = sorted(range(len(analysis["per_image"])), key=lambda i: -(analysis["per_image"][i][2] + analysis["per_image"][i][3]))
    worst = [i for i in ranked if analysis["per_image"][i][2] + analysis["per_image"][i][3] > 0][:MAX_WORST_PHOTOS]
    if not worst:
        return '<p class="muted">No missed or false boxes at the chosen threshold.</p>'
    cards = ['<div class="cards">']
    for index in worst:
        key, hits, misses, false = analysis["per_image"][index]
        drawn = _draw_errors(key, index, analysis)
        card = [f'<div class="card" title="{html.escape(key)}">']
        if drawn is not None:
            path = out_dir / overlay_name(f"{name}/{key}")
            atomic_write_bytes(path, drawn)
            rel = html.escape(path.relative_to(work_dir).as_posix())
            card.append(f'<a href="{rel}"><img src="{rel}" alt="{html.escape(Path(key).name)}" loading="lazy"></a>')
        else:
            card.append('<p class="muted">(image not readable)</p>')
        card.append(f"{html.escape(Path(key).name)}<br>{hits} found &middot; "
                    f'<span class="fn">{misses} missed</span> &middot; <span class="fp">{false} false</span></div>')
        cards.append("".join(card))
    cards.append("</div>")
    legend = '<p class="muted">Worst photos at the chosen threshold: found boxes green, missed red, false orange.</p>'
    return legend + "".join(cards)


def _draw_errors(key: str, index: int, analysis: dict[str, Any]) -> bytes | None:
    """The photo ``key`` with its hits, misses and false boxes drawn, as JPEG bytes (None if unreadable)."""
    try:
        data = np.fromfile(key, dtype=np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        return None
    threshold = -np.inf if analysis["threshold"] is None else analysis["threshold"]
    matches: BoxMatches = analysis["matches"]
    scale = min(1.0, WORST_SIZE / max(image.shape[:2]))
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def rect(box: np.ndarray, colour: tuple[int, int, int], width: int) -> None:
        x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, width)

    for box, score in zip(analysis["gt"][index], matches.gt_score[index]):
        rect(box, _HIT if score >= threshold else _MISS, 1 if score >= threshold else 2)
    false = (matches.image_index == index) & (matches.scores >= threshold) & (matches.gt_index < 0)
    for box in matches.boxes[false]:
        rect(box, _FALSE, 1)
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), 85])
    return buf.tobytes() if ok else None


__all__ = ["class_analysis", "detection_html"]
