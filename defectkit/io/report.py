"""A self-contained HTML report of a run: metrics, timings, curves, confusion matrix, worst cases."""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

# The object-oriented API with an explicit Agg canvas never touches pyplot's global figure list or
# the process-wide backend, so reports can be written from worker threads, nothing has to be
# closed, and an interactive session importing defectkit keeps its own backend.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from defectkit.io.atomic import atomic_write_bytes
from defectkit.io.overlays import overlay_name

MAX_WORST_CASES = 12
THUMB_SIZE = 256
IMAGE_CLASSES = ("normal", "defect")

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; background: #fafafa; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .7em; text-align: left; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f0f0f0; padding: .5em; overflow-x: auto; margin: 0; }
.plots img { max-width: 380px; margin: .3em; border: 1px solid #ddd; background: #fff; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { width: 260px; border: 1px solid #ccc; background: #fff; padding: .4em; font-size: .85em;
        overflow-wrap: anywhere; }
.card img { max-width: 256px; max-height: 256px; display: block; margin: 0 auto .3em; }
.kind { font-weight: bold; } .fn { color: #b00; } .fp { color: #b60; } .unc { color: #057; }
.muted { color: #777; } .err { color: #b00; }
"""


def write_report(
    work_dir: Path,
    metrics: dict[str, float],
    image_results: list[dict],
    *,
    title: str,
    class_names: list[str] | None = None,
    stage_summaries: list[dict] | None = None,
    timings: dict[str, float] | None = None,
    notes: list[str] | None = None,
    sections: Sequence[str] = (),
) -> Path:
    """Write ``work_dir/report.html`` and its plots under ``work_dir/plots/``.

    Every section degrades instead of failing: curves need labelled rows of both classes with
    scores, the confusion matrix needs rows with a label and a prediction, thumbnails need a
    readable overlay. All user-supplied text is HTML-escaped; images are linked by relative path,
    so the run folder can be moved or zipped as a whole.

    Args:
        work_dir: The run folder; ``overlay`` paths in ``image_results`` are relative to it.
        metrics: Metric name to value; shown sorted, floats to 4 decimals (NaN shown as ``nan``).
            A finite ``"threshold"`` entry, if any, is used to rank uncertain cases.
        image_results: One row per input: ``{"path": str, "label": 0|1|None, "score": float|None,
            "pred": 0|1|None, "overlay": "overlays/<name>.jpg"|None, "error": str|None}``.
            ``score`` is the gate score, higher meaning more defective.
        title: Page title.
        class_names: The pipeline's defect classes, listed in the summary. (Image labels are
            always shown as ``normal``/``defect``: 0/1 in ``image_results``.)
        stage_summaries: One dict per stage (e.g. its name and settings), shown as small tables.
        timings: Stage name to seconds.
        notes: Free-text lines shown in the summary.
        sections: Further HTML sections (already escaped), shown after the plots: the
            segmentation section of :mod:`defectkit.io.segmentation_report` and the detection
            section of :mod:`defectkit.io.detection_report`.

    Returns:
        The path of the written ``report.html``.

    Example:
        >>> rows = [{"path": "a.jpg", "label": 1, "score": 0.9, "pred": 1,
        ...          "overlay": "overlays/a_0123456789.jpg", "error": None}]
        >>> write_report(Path("run"), {"auroc": 0.97}, rows, title="Run 1")  # doctest: +SKIP
        PosixPath('run/report.html')
    """
    work_dir = Path(work_dir)
    plots_dir = work_dir / "plots"
    image_classes = IMAGE_CLASSES  # image labels are binary whatever the defect classes are
    rows = [_normalise_row(r) for r in image_results]
    ok_rows = [r for r in rows if r["error"] is None]
    error_rows = [r for r in rows if r["error"] is not None]

    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    parts.append(_summary_html(rows, ok_rows, error_rows, class_names, notes))
    parts.append("<h2>Metrics</h2>")
    parts.append(_metrics_html(metrics))
    if timings:
        parts.append("<h2>Timings</h2>")
        parts.append(_timings_html(timings))
    if stage_summaries:
        parts.append("<h2>Stages</h2>")
        parts.append(_stages_html(stage_summaries))

    parts.append("<h2>Plots</h2>")
    plot_files = _write_plots(plots_dir, ok_rows, image_classes)
    if not any(alt == "ROC curve" for _, alt in plot_files):
        parts.append(
            '<p class="muted">No ROC or precision-recall curve: they need labelled images of both '
            "classes with scores.</p>"
        )
    if not any(alt == "Confusion matrix" for _, alt in plot_files):
        parts.append('<p class="muted">No confusion matrix: no image has both a label and a prediction.</p>')
    if plot_files:
        parts.append('<div class="plots">')
        for rel, alt in plot_files:
            parts.append(f'<a href="{_href(rel)}"><img src="{_href(rel)}" alt="{_e(alt)}"></a>')
        parts.append("</div>")

    parts.extend(section for section in sections if section)

    parts.append("<h2>Worst cases</h2>")
    parts.append(_worst_cases_html(work_dir, plots_dir, ok_rows, metrics))

    if error_rows:
        parts.append(f"<h2>Errors ({len(error_rows)})</h2>")
        parts.append("<table><tr><th>Input</th><th>Reason</th></tr>")
        for r in error_rows:
            parts.append(f"<tr><td>{_e(r['path'])}</td><td class=\"err\">{_e(r['error'])}</td></tr>")
        parts.append("</table>")

    parts.append("</body></html>\n")
    out = work_dir / "report.html"
    # A file name that is not valid UTF-8 holds lone surrogates (surrogateescape): shown as \udcXX.
    atomic_write_bytes(out, "\n".join(parts).encode("utf-8", "backslashreplace"))
    return out


# ---------------------------------------------------------------------------------------------
# Row cleaning


def _normalise_row(row: dict) -> dict[str, Any]:
    """Coerce a result row so that later code only sees 0/1/None labels and finite-or-None scores."""
    error = row.get("error")
    overlay = row.get("overlay")
    return {
        "path": str(row.get("path", "")),
        "label": _as_binary(row.get("label")),
        "pred": _as_binary(row.get("pred")),
        "score": _as_finite(row.get("score")),
        "overlay": str(overlay) if overlay else None,
        "error": None if error is None else (str(error) or "unknown error"),
    }


def _as_binary(value: Any) -> int | None:
    number = _as_finite(value)
    return None if number is None else int(number >= 0.5)


def _as_finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------------------
# HTML sections


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(rel: str) -> str:
    """A relative URL for a path under the run folder (spaces, '#', '?' and unicode survive)."""
    path = Path(rel)
    if path.is_absolute():
        return _e(path.as_uri())
    return _e(quote(path.as_posix(), safe="/"))


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4f}" if math.isfinite(number) else str(number)


def _summary_html(
    rows: list[dict],
    ok_rows: list[dict],
    error_rows: list[dict],
    class_names: list[str] | None,
    notes: list[str] | None,
) -> str:
    n_labelled = sum(r["label"] is not None for r in ok_rows)
    n_pred_defect = sum(r["pred"] == 1 for r in ok_rows)
    items = [
        f"<li>{len(rows)} images, {len(ok_rows)} processed, {len(error_rows)} errors</li>",
        f"<li>{n_labelled} with ground truth"
        + ("" if n_labelled else " (predict-only run)")
        + f", {n_pred_defect} predicted defective</li>",
    ]
    if class_names:
        items.append(f"<li>classes: {_e(', '.join(str(c) for c in class_names))}</li>")
    items.extend(f"<li>{_e(note)}</li>" for note in notes or [] if str(note).strip())
    return "<h2>Summary</h2><ul>" + "".join(items) + "</ul>"


def _metrics_html(metrics: dict[str, float]) -> str:
    if not metrics:
        return '<p class="muted">No metrics (no labelled images).</p>'
    lines = ["<table><tr><th>Metric</th><th>Value</th></tr>"]
    for key in sorted(metrics, key=str):
        lines.append(f'<tr><td>{_e(key)}</td><td class="num">{_e(_fmt_value(metrics[key]))}</td></tr>')
    lines.append("</table>")
    return "".join(lines)


def _timings_html(timings: dict[str, float]) -> str:
    # No per-image column: callers may pass totals or per-image means, and only they know which.
    values = {str(k): _as_finite(v) for k, v in timings.items()}
    total = sum(v for v in values.values() if v is not None)
    lines = ["<table><tr><th>Stage</th><th>Seconds</th><th>Share</th></tr>"]
    for name, seconds in values.items():
        share = f"{100 * seconds / total:.1f}%" if seconds is not None and total > 0 else "-"
        shown = _fmt_value(seconds) if seconds is not None else "-"
        lines.append(f'<tr><td>{_e(name)}</td><td class="num">{shown}</td><td class="num">{share}</td></tr>')
    lines.append("</table>")
    return "".join(lines)


def _stages_html(stage_summaries: list[dict]) -> str:
    lines: list[str] = []
    for index, summary in enumerate(stage_summaries):
        if not isinstance(summary, dict):
            lines.append(f"<pre>{_e(summary)}</pre>")
            continue
        heading = summary.get("name") or summary.get("stage") or f"stage {index + 1}"
        lines.append(f"<h3>{_e(heading)}</h3><table>")
        for key, value in summary.items():
            if isinstance(value, (dict, list, tuple)):
                text = json.dumps(value, indent=1, sort_keys=True, default=str)
                cell = f"<pre>{_e(text)}</pre>"
            else:
                cell = _e(_fmt_value(value) if isinstance(value, float) else value)
            lines.append(f"<tr><th>{_e(key)}</th><td>{cell}</td></tr>")
        lines.append("</table>")
    return "".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots


def save_figure(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    fig.clear()  # drop artists now; the figure is not registered with pyplot, so GC does the rest


def _write_plots(
    plots_dir: Path, ok_rows: list[dict], image_classes: tuple[str, str]
) -> list[tuple[str, str]]:
    """Write whichever plots the data supports; return ``(relative path, alt text)`` for each."""
    written: list[tuple[str, str]] = []
    scored = [(r["label"], r["score"]) for r in ok_rows if r["label"] is not None and r["score"] is not None]
    labels = np.array([lab for lab, _ in scored], dtype=int)
    scores = np.array([s for _, s in scored], dtype=float)
    if len(set(labels.tolist())) == 2:
        from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

        fpr, tpr, _ = roc_curve(labels, scores)
        auroc = roc_auc_score(labels, scores)
        fig = Figure(figsize=(4.5, 4.2))
        ax = fig.add_subplot()
        ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auroc:.4f}")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"ROC (AUROC = {auroc:.4f}, n = {len(labels)})")
        ax.legend(loc="lower right")
        fig.tight_layout()
        save_figure(fig, plots_dir / "roc.png")
        written.append(("plots/roc.png", "ROC curve"))

        precision, recall, _ = precision_recall_curve(labels, scores)
        ap = average_precision_score(labels, scores)
        fig = Figure(figsize=(4.5, 4.2))
        ax = fig.add_subplot()
        ax.step(recall, precision, where="post", lw=2, label=f"AP = {ap:.4f}")
        ax.axhline(labels.mean(), ls="--", color="grey", lw=1, label="chance")
        ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"Precision-recall (AP = {ap:.4f})")
        ax.legend(loc="lower left")
        fig.tight_layout()
        save_figure(fig, plots_dir / "pr.png")
        written.append(("plots/pr.png", "Precision-recall curve"))

    pairs = [(r["label"], r["pred"]) for r in ok_rows if r["label"] is not None and r["pred"] is not None]
    if pairs:
        matrix = np.zeros((2, 2), dtype=int)
        for label, pred in pairs:
            matrix[label, pred] += 1
        fig = Figure(figsize=(4.2, 3.8))
        ax = fig.add_subplot()
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max())))
        for (i, j), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 and count > 0 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=14, color=colour)
        ax.set_xticks([0, 1], labels=list(image_classes))
        ax.set_yticks([0, 1], labels=list(image_classes))
        ax.set(xlabel="Predicted", ylabel="Ground truth")
        ax.set_title(f"Confusion matrix (n = {len(pairs)})")
        fig.tight_layout()
        save_figure(fig, plots_dir / "confusion.png")
        written.append(("plots/confusion.png", "Confusion matrix"))
    return written


# ---------------------------------------------------------------------------------------------
# Worst cases


def _decision_threshold(ok_rows: list[dict], metrics: dict[str, float]) -> float:
    """The score where the gate flips, to rank how uncertain each decision was."""
    given = _as_finite(metrics.get("threshold")) if metrics else None
    if given is not None:
        return given
    neg = [r["score"] for r in ok_rows if r["pred"] == 0 and r["score"] is not None]
    pos = [r["score"] for r in ok_rows if r["pred"] == 1 and r["score"] is not None]
    if neg and pos:
        return (max(neg) + min(pos)) / 2
    # Gate scores are probabilities in the built-in gates; 0.5 is their natural boundary.
    return 0.5


def _select_worst_cases(ok_rows: list[dict], metrics: dict[str, float]) -> list[tuple[str, dict]]:
    """Up to :data:`MAX_WORST_CASES` rows: misses and false alarms first, then near-threshold ones."""
    scored = [r for r in ok_rows if r["score"] is not None]
    fns = sorted((r for r in scored if r["label"] == 1 and r["pred"] == 0), key=lambda r: r["score"])
    fps = sorted((r for r in scored if r["label"] == 0 and r["pred"] == 1), key=lambda r: -r["score"])
    chosen: list[tuple[str, dict]] = []
    # Alternate so neither error type crowds the other out of the 12 slots.
    for index in range(max(len(fns), len(fps))):
        for kind, group in (("false negative", fns), ("false positive", fps)):
            if index < len(group) and len(chosen) < MAX_WORST_CASES:
                chosen.append((kind, group[index]))
    if len(chosen) < MAX_WORST_CASES:
        threshold = _decision_threshold(ok_rows, metrics)
        taken = {id(r) for _, r in chosen}
        rest = sorted((r for r in scored if id(r) not in taken), key=lambda r: abs(r["score"] - threshold))
        chosen.extend(("uncertain", r) for r in rest[: MAX_WORST_CASES - len(chosen)])
    return chosen


def _make_thumbnail(work_dir: Path, thumbs_dir: Path, overlay: str) -> str | None:
    """Write a <=256 px JPEG of ``overlay``; return its path relative to ``work_dir``, or None."""
    source = work_dir / overlay
    try:
        data = np.fromfile(str(source), dtype=np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        return None
    height, width = image.shape[:2]
    scale = THUMB_SIZE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), 85])
    if not ok:
        return None
    name = overlay_name(overlay)
    atomic_write_bytes(thumbs_dir / name, buf.tobytes())
    return f"plots/thumbs/{name}"


def _worst_cases_html(work_dir: Path, plots_dir: Path, ok_rows: list[dict], metrics: dict[str, float]) -> str:
    cases = _select_worst_cases(ok_rows, metrics)
    if not cases:
        return '<p class="muted">No scored images.</p>'
    css_class = {"false negative": "fn", "false positive": "fp", "uncertain": "unc"}
    cards = ['<div class="cards">']
    for kind, row in cases:
        thumb = _make_thumbnail(work_dir, plots_dir / "thumbs", row["overlay"]) if row["overlay"] else None
        label = "-" if row["label"] is None else str(row["label"])
        pred = "-" if row["pred"] is None else str(row["pred"])
        basename = row["path"].replace("\\", "/").rsplit("/", 1)[-1]
        card = [f'<div class="card" title="{_e(row["path"])}">']
        if thumb is not None:
            img = f'<img src="{_href(thumb)}" alt="{_e(basename)}" loading="lazy">'
            card.append(f'<a href="{_href(row["overlay"])}">{img}</a>')
        else:
            card.append('<p class="muted">(no overlay)</p>')
        card.append(f'<span class="kind {css_class[kind]}">{_e(kind)}</span><br>')
        card.append(f"{_e(basename)}<br>label {_e(label)} &middot; pred {_e(pred)} &middot; ")
        card.append(f"score {_e(_fmt_value(row['score']))}</div>")
        cards.append("".join(card))
    cards.append("</div>")
    return "".join(cards)
