"""The HTML run report: sections, plots, worst cases and robustness to thin or odd data."""

from __future__ import annotations

import html
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectkit.io.detection_report import detection_html
from defectkit.io.overlays import overlay_name, write_overlay
from defectkit.io.report import write_report


def _row(path, label, score, pred, overlay=None, error=None) -> dict:
    return {"path": path, "label": label, "score": score, "pred": pred, "overlay": overlay, "error": error}


def _labelled_rows(work_dir: Path, n: int = 20, with_overlays: bool = True) -> list[dict]:
    """Half normal, half defect; scores overlap so there are misses and false alarms."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 2
        score = float(np.clip(0.35 * label + 0.35 + rng.normal(0, 0.2), 0, 1))
        path = f"data/{'defect' if label else 'good'}/img_{i}.png"
        overlay = None
        if with_overlays:
            overlay = f"overlays/{overlay_name(path)}"
            write_overlay(work_dir / overlay, np.full((300, 400, 3), 40 * (i % 6), np.uint8))
        rows.append(_row(path, label, score, int(score >= 0.5), overlay))
    return rows


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_report_contains_metrics_roc_and_worst_cases(tmp_path):
    rows = _labelled_rows(tmp_path)
    rows.append(_row("data/broken.png", None, None, None, error="truncated file"))
    metrics = {"f1": 0.81234567, "auroc": 0.9, "accuracy": 0.8}
    out = write_report(
        tmp_path,
        metrics,
        rows,
        title="Nightly run",
        timings={"gate": 1.5, "segment": 4.5},
        stage_summaries=[{"name": "gate", "threshold": 0.5, "params": {"k": 3}}],
        notes=["trained on lot 7", ""],
    )
    assert out == tmp_path / "report.html"
    page = out.read_text(encoding="utf-8")

    assert "<title>Nightly run</title>" in page
    assert "21 images" in page and "1 errors" in page and "trained on lot 7" in page
    assert "<li></li>" not in page  # blank notes are dropped
    # Metrics sorted by name, to 4 decimals.
    assert page.index(">accuracy<") < page.index(">auroc<") < page.index(">f1<")
    assert "0.8123" in page and "0.81234567" not in page
    assert ">segment<" in page and "75.0%" in page
    assert "<h3>gate</h3>" in page and "&quot;k&quot;: 3" in page

    for plot in ("roc.png", "pr.png", "confusion.png"):
        data = (tmp_path / "plots" / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{plot}" in page

    sources = _img_sources(page)
    thumbs = [s for s in sources if s.startswith("plots/thumbs/")]
    assert 1 <= len(thumbs) <= 12
    for src in thumbs:
        thumb = cv2.imread(str(tmp_path / src))
        assert thumb is not None and max(thumb.shape[:2]) <= 256
        assert not Path(src).is_absolute()
    assert "false negative" in page and "false positive" in page
    assert "truncated file" in page and "data/broken.png" in page


def test_report_orders_worst_cases_by_how_wrong_they_are(tmp_path):
    rows = [
        _row("fn_mild.png", 1, 0.45, 0),
        _row("fn_bad.png", 1, 0.05, 0),
        _row("fp_mild.png", 0, 0.55, 1),
        _row("fp_bad.png", 0, 0.97, 1),
        _row("tp_sure.png", 1, 0.99, 1),
        _row("tn_close.png", 0, 0.49, 0),
    ]
    page = write_report(tmp_path, {}, rows, title="t").read_text(encoding="utf-8")
    cases = page[page.index("Worst cases") :]
    order = [name for name in re.findall(r"(\w+\.png)<br>", cases)]
    assert order[:4] == ["fn_bad.png", "fp_bad.png", "fn_mild.png", "fp_mild.png"]
    # Correct decisions follow, nearest the threshold first.
    assert order[4:] == ["tn_close.png", "tp_sure.png"]


def test_report_caps_worst_cases_at_twelve(tmp_path):
    rows = [_row(f"fn_{i}.png", 1, 0.01 * i, 0) for i in range(30)]
    page = write_report(tmp_path, {}, rows, title="t").read_text(encoding="utf-8")
    assert page.count('class="card"') == 12


def test_report_worst_case_links_to_overlay_with_relative_path(tmp_path):
    path = "lot a/ünïcode #1.png"
    overlay = f"overlays/{overlay_name(path)}"
    write_overlay(tmp_path / overlay, np.zeros((600, 100, 3), np.uint8))
    page = write_report(tmp_path, {}, [_row(path, 1, 0.1, 0, overlay)], title="t").read_text(encoding="utf-8")
    assert f'<a href="{overlay}">' in page
    thumb = _img_sources(page)[-1]
    assert cv2.imread(str(tmp_path / thumb)).shape[:2] == (256, 43)
    assert "ünïcode #1.png" in page


def test_report_skips_missing_or_unreadable_overlays(tmp_path):
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "garbage.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "overlays" / "empty.jpg").write_bytes(b"")
    rows = [
        _row("a.png", 1, 0.1, 0, "overlays/missing.jpg"),
        _row("b.png", 0, 0.9, 1, "overlays/garbage.jpg"),
        _row("c.png", 0, 0.8, 1, "overlays/empty.jpg"),
    ]
    page = write_report(tmp_path, {}, rows, title="t").read_text(encoding="utf-8")
    assert page.count("(no overlay)") == 3
    assert not any(s.startswith("plots/thumbs/") for s in _img_sources(page))


def test_report_without_labels_still_renders(tmp_path):
    rows = [_row(f"img_{i}.png", None, i / 10, int(i >= 5)) for i in range(10)]
    page = write_report(tmp_path, {}, rows, title="predict only").read_text(encoding="utf-8")
    assert "predict-only" in page
    assert not (tmp_path / "plots" / "roc.png").exists()
    assert not (tmp_path / "plots" / "confusion.png").exists()
    assert "No ROC" in page and "No confusion matrix" in page
    # Without ground truth, the cases nearest the threshold are still worth a look.
    assert "uncertain" in page and "false negative" not in page


def test_report_with_single_class_has_confusion_but_no_curves(tmp_path):
    rows = [_row(f"good_{i}.png", 0, 0.1 * i, int(i > 6)) for i in range(10)]
    page = write_report(tmp_path, {"auroc": float("nan")}, rows, title="t").read_text(encoding="utf-8")
    assert not (tmp_path / "plots" / "roc.png").exists()
    assert (tmp_path / "plots" / "confusion.png").exists()
    assert "No ROC" in page
    assert ">nan<" in page


def test_report_with_zero_rows_renders(tmp_path):
    page = write_report(tmp_path, {}, [], title="empty").read_text(encoding="utf-8")
    assert "0 images" in page and "No scored images" in page
    assert "<img" not in page


def test_report_copes_with_nan_scores_and_odd_label_types(tmp_path):
    rows = [
        _row("a.png", True, float("nan"), 1),
        _row("b.png", np.int64(0), np.float32(0.2), np.int64(0)),
        _row("c.png", 1.0, float("inf"), None),
        _row("d.png", 1, 0.7, 1),
        _row("e.png", float("nan"), 0.3, 0),
    ]
    metrics = {"auroc": float("nan"), "n": 5, "recall": np.float64(1 / 3), "note": "x"}
    page = write_report(tmp_path, metrics, rows, title="t").read_text(encoding="utf-8")
    assert "0.3333" in page and ">5<" in page
    assert (tmp_path / "plots" / "roc.png").exists()  # b and d: both classes with finite scores


def test_report_escapes_html_in_paths(tmp_path):
    evil = 'x/<script>alert("p")</script>&.png'
    rows = [
        _row(evil, 1, 0.1, 0),
        _row("<b>bad</b>.png", None, None, None, error="<img src=x onerror=alert(1)>"),
    ]
    page = write_report(
        tmp_path,
        {"<i>m</i>": 1.0},
        rows,
        title="<h1>t</h1>",
        notes=["<u>note</u>"],
        stage_summaries=[{"name": "<s>g</s>", "cfg": {"<k>": "<v>"}}],
        timings={"<t>": 1.0},
    ).read_text(encoding="utf-8")
    for raw in ("<script>", "<b>bad", "onerror=alert(1)>", "<i>m", "<h1>t", "<u>note", "<s>g", "<k>", "<t>"):
        assert raw not in page, raw
    assert html.escape("<script>alert(\"p\")</script>&.png") in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_report_overwrites_previous_report_atomically(tmp_path):
    write_report(tmp_path, {"a": 1.0}, [], title="first")
    write_report(tmp_path, {"a": 2.0}, [], title="second")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "second" in page and "first" not in page
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("class_names", [["ok", "nok"], ["scratch", "dent", "crack"], None])
def test_report_lists_class_names(tmp_path, class_names):
    rows = [_row("a.png", 0, 0.1, 0), _row("b.png", 1, 0.9, 1)]
    page = write_report(tmp_path, {}, rows, title="t", class_names=class_names).read_text(encoding="utf-8")
    if class_names:
        assert ", ".join(class_names) in page
    else:
        assert "classes:" not in page
    assert (tmp_path / "plots" / "confusion.png").exists()


def _box_records(tmp_path: Path) -> list[dict]:
    """Three photos on disk: one perfect, one with a miss and a false box, one with two misses."""
    records = []
    layouts = [
        ([[10, 10, 20, 20]], [[0.9, 10, 10, 20, 20]]),
        ([[10, 10, 20, 20], [40, 40, 70, 70]], [[0.8, 10, 10, 20, 20], [0.7, 80, 80, 90, 90]]),
        ([[5, 5, 9, 9], [60, 10, 66, 16]], [[0.2, 30, 30, 40, 40]]),
    ]
    for index, (gt, pred) in enumerate(layouts):
        path = tmp_path / "photos" / f"face{index}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.full((100, 100, 3), 120, np.uint8))
        records.append({"key": str(path), "boxes": {"gt": [["lesion", *b] for b in gt], "pred": [["lesion", *p] for p in pred]}})
    return records


def test_detection_analysis_counts_hits_misses_and_false_boxes_at_the_best_f1_threshold(tmp_path):
    from defectkit.evaluation.detection import DetectionF1
    from defectkit.io.detection_report import class_analysis

    records = _box_records(tmp_path)
    analysis = class_analysis(records, "lesion")
    metric = DetectionF1(["lesion"])
    for record in records:
        metric.update(record)
    metrics = metric.compute()
    assert analysis["threshold"] == metrics["f1_threshold.lesion"] == 0.8  # keeping 0.7 and 0.2 adds only false boxes
    assert analysis["best_f1"] == pytest.approx(metrics["f1.lesion"])
    assert [row[1:] for row in analysis["per_image"]] == [(1, 0, 0), (1, 1, 0), (0, 2, 0)]
    assert sorted(analysis["sizes_hit"]) == [10.0, 10.0] and sorted(analysis["sizes_missed"]) == [4.0, 6.0, 30.0]
    assert analysis["recall"][-1] == pytest.approx(2 / 5) and analysis["precision"][0] == 1.0


def test_report_of_a_detection_run_has_curves_threshold_worst_photos_and_sizes(tmp_path):
    records = _box_records(tmp_path)
    rows = [_row(r["key"], 1, None, None) for r in records]
    run = tmp_path / "run"
    section = detection_html(run, run / "plots", records, ["lesion"])
    page = write_report(run, {"map50": 0.4}, rows, title="skin", class_names=["lesion"], sections=[section]).read_text()
    assert "<h2>Detection</h2>" in page and "Chosen threshold (best F1 on these images): <b>0.800</b>" in page
    assert "2 of 5 boxes found, 3 missed, 0 false" in page
    sources = _img_sources(page)
    for name in ("det_pr_lesion.png", "det_f1_lesion.png", "det_sizes_lesion.png"):
        assert f"plots/{name}" in sources and (tmp_path / "run" / "plots" / name).is_file()
    worst = [s for s in sources if s.startswith("plots/det_worst/")]
    assert len(worst) == 2 and all((tmp_path / "run" / s).is_file() for s in worst)  # the perfect photo is not shown
    assert page.index("face2.jpg") < page.index("face1.jpg")  # two misses rank before one
    drawn = cv2.imread(str(tmp_path / "run" / worst[0]))
    assert drawn[5, 5].tolist() != [120, 120, 120]  # the missed box is drawn


def test_report_without_box_ground_truth_has_no_detection_section(tmp_path):
    section = detection_html(tmp_path, tmp_path / "plots", [{"key": "a.jpg", "boxes": {"gt": None, "pred": []}}], ["lesion"])
    assert section == ""
    page = write_report(tmp_path, {}, [], title="t", class_names=["lesion"], sections=[section]).read_text()
    assert "<h2>Detection</h2>" not in page
