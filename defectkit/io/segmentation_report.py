"""The segmentation part of a run's report: per-class quality, per-photo IoU, class confusion, worst photos.

Everything is computed from the per-image evaluation records (:mod:`defectkit.evaluation.records`),
so a resumed run reports the same figures; the worst photos are drawn by a caller-supplied
``render`` function (the runner decodes the photo and draws ground truth beside the prediction's
overlay), so this module never reads data sets itself.

Example:
    >>> records = [{"key": "a.jpg", "pixel": {"dent": {"gt_pixels": 10, "pred_pixels": 5, "intersection": 5,
    ...             "union": 10, "gt_regions": 1, "pred_regions": 1}}}]
    >>> summary = segmentation_summary(records, ["dent"])
    >>> summary["classes"]["dent"]["iou"], summary["classes"]["dent"]["precision"], summary["classes"]["dent"]["recall"]
    (0.5, 1.0, 0.5)
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from defectkit.io.atomic import atomic_write_bytes
from defectkit.io.report import save_figure

MAX_WORST_PHOTOS = 8
"""Photos shown side by side (ground truth | prediction) in the report."""


def photo_iou(record: dict[str, Any]) -> float | None:
    """Mean IoU of one photo over the classes present in its ground truth or prediction (None: neither).

    Example:
        >>> photo_iou({"pixel": {"a": {"intersection": 1, "union": 4}, "b": {"intersection": 0, "union": 0}}})
        0.25
    """
    values = [s["intersection"] / s["union"] for s in (record.get("pixel") or {}).values() if s.get("union")]
    return float(np.mean(values)) if values else None


def segmentation_summary(records: Sequence[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Per-class IoU, precision and recall, per-photo IoU, class confusion and outline counts.

    Returns:
        ``classes``: ``{class: {iou, precision, recall, gt_pixels, pred_pixels}}`` (data-set totals);
        ``photo_iou``: ``[(key, IoU)]`` of photos with ground truth or prediction, worst first;
        ``confusion``: ``{predicted class: {truth class: share of its predicted pixels}}`` (empty
        for one class); ``outlines``: median outlines per photo, predicted and in the ground truth.
    """
    totals = {c: dict(intersection=0, union=0, gt_pixels=0, pred_pixels=0) for c in classes}
    overlap = {c: {o: 0 for o in classes} for c in classes}
    pred_counts, gt_counts = [], []
    per_photo: list[tuple[str, float]] = []
    for record in records:
        pixel = record.get("pixel") or {}
        if not pixel:
            continue
        for class_name, stats in pixel.items():
            if class_name not in totals:
                continue
            for key in totals[class_name]:
                totals[class_name][key] += int(stats.get(key, 0))
            for other, count in (stats.get("on_gt") or {}).items():
                if other in overlap[class_name]:
                    overlap[class_name][other] += int(count)
        pred_counts.append(sum(int(s.get("pred_regions", 0)) for s in pixel.values()))
        gt_counts.append(sum(int(s.get("gt_regions", 0)) for s in pixel.values()))
        value = photo_iou(record)
        if value is not None:
            per_photo.append((str(record.get("key")), value))

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    per_class = {
        c: dict(
            iou=ratio(t["intersection"], t["union"]),
            precision=ratio(t["intersection"], t["pred_pixels"]),
            recall=ratio(t["intersection"], t["gt_pixels"]),
            gt_pixels=t["gt_pixels"],
            pred_pixels=t["pred_pixels"],
        )
        for c, t in totals.items()
    }
    confusion = {}
    if len(classes) > 1:
        confusion = {c: {o: ratio(n, totals[c]["pred_pixels"]) or 0.0 for o, n in row.items()} for c, row in overlap.items()}
    return {
        "classes": per_class,
        "photo_iou": sorted(per_photo, key=lambda kv: kv[1]),
        "confusion": confusion,
        "outlines": {
            "predicted_median": float(np.median(pred_counts)) if pred_counts else None,
            "ground_truth_median": float(np.median(gt_counts)) if gt_counts else None,
        },
    }


def segmentation_section_html(
    work_dir: Path,
    records: Sequence[dict[str, Any]],
    classes: Sequence[str],
    render: Callable[[str], np.ndarray | None] | None = None,
) -> str:
    """The report's segmentation section; writes its plots under ``work_dir/plots/``.

    Args:
        work_dir: The run folder (plots and worst-photo images go in ``plots/``).
        records: Evaluation records of the evaluated photos.
        classes: The defect classes.
        render: ``key -> HxWx3 uint8 RGB`` side-by-side picture (ground truth | prediction) of a
            photo, or None when it cannot be drawn; None: no worst-photo pictures.

    Returns:
        HTML (empty when no record has pixel statistics).
    """
    summary = segmentation_summary(records, classes)
    if not any(v["gt_pixels"] or v["pred_pixels"] for v in summary["classes"].values()):
        return ""
    plots = Path(work_dir) / "plots"
    parts = ["<h2>Segmentation</h2>", "<table><tr><th>class</th><th>IoU</th><th>precision</th><th>recall</th>"
             "<th>truth pixels</th><th>predicted pixels</th></tr>"]
    for name, row in summary["classes"].items():
        cells = "".join(f"<td>{_fmt(row[k])}</td>" for k in ("iou", "precision", "recall", "gt_pixels", "pred_pixels"))
        parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    parts.append("</table>")
    outlines = summary["outlines"]
    parts.append(
        f"<p>Outlines per photo (median): predicted {_fmt(outlines['predicted_median'])}, "
        f"ground-truth regions {_fmt(outlines['ground_truth_median'])}.</p>"
    )
    figures = []
    values = [v for _, v in summary["photo_iou"]]
    if values:
        fig = Figure(figsize=(4.5, 3.6))
        ax = fig.add_subplot()
        ax.hist(values, bins=np.linspace(0, 1, 21).tolist(), color="#4878a8")
        ax.set(xlabel="photo IoU (mean over its classes)", ylabel="photos", title=f"Per-photo IoU (n = {len(values)})")
        fig.tight_layout()
        save_figure(fig, plots / "photo_iou.png")
        figures.append(("plots/photo_iou.png", "Per-photo IoU histogram"))
    if summary["confusion"]:
        names = list(classes)
        matrix = np.array([[summary["confusion"][p][t] for t in names] for p in names], dtype=float)
        fig = Figure(figsize=(4.6, 4.0))
        ax = fig.add_subplot()
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
        ax.set_xticks(range(len(names)), labels=names, rotation=30)
        ax.set_yticks(range(len(names)), labels=names)
        ax.set(xlabel="ground truth under the prediction", ylabel="predicted class", title="Share of predicted pixels")
        fig.tight_layout()
        save_figure(fig, plots / "class_confusion.png")
        figures.append(("plots/class_confusion.png", "Class confusion"))
    if figures:
        parts.append('<div class="plots">')
        parts.extend(f'<a href="{rel}"><img src="{rel}" alt="{alt}"></a>' for rel, alt in figures)
        parts.append("</div>")
    if render is not None and summary["photo_iou"]:
        parts.append("<h3>Worst photos: ground truth (left) and prediction (right)</h3><div class=\"cards\">")
        for index, (key, value) in enumerate(summary["photo_iou"][:MAX_WORST_PHOTOS]):
            picture = render(key)
            if picture is None:
                continue
            rel = f"plots/worst/{index:02d}.jpg"
            _save_jpeg(picture, plots / "worst" / f"{index:02d}.jpg")
            name = html.escape(key.replace("\\", "/").rsplit("/", 1)[-1])
            parts.append(f'<div class="card" style="width:520px" title="{html.escape(key)}"><a href="{rel}">'
                         f'<img src="{rel}" style="max-width:512px" alt="{name}"></a>{name}<br>IoU {value:.3f}</div>')
        parts.append("</div>")
    return "\n".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    import cv2

    height, width = image.shape[:2]
    scale = 1024 / max(height, width)
    if scale < 1:
        image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), 85])
    if ok:
        atomic_write_bytes(path, buffer.tobytes())


__all__ = ["MAX_WORST_PHOTOS", "photo_iou", "segmentation_section_html", "segmentation_summary"]
