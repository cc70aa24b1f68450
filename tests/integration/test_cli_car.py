"""The car-damage config end to end through the CLI, on a tiny built-in data set with undamaged photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from defectkit.cli import EXIT_OK, main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "car_damage.py")
TINY_CAR_OPTIONS = [
    "builtin_dataset.n_damaged=20",
    "builtin_dataset.n_normal=20",
    "builtin_dataset.image_size=(96,128)",
    "pipeline.0.epochs=1",
    "pipeline.0.max_images=8",
    "pipeline.0.train_size=(64,64)",
    "pipeline.1.enabled=True",
    "pipeline.1.image_size=(64,64)",
    "pipeline.1.epochs=3",
    # A few validation photos cannot calibrate a 0.98 recall; the early exit is what is tested here.
    "pipeline.1.target_recall=0.5",
    "pipeline.2.image_size=(64,96)",
    "pipeline.2.train_crop=(64,64)",
    "pipeline.2.epochs=2",
    "runtime.num_threads=1",
    "split.ratios=(0.5,0.15,0.35)",  # enough test photos for both gate outcomes
]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_car(work_dir: Path, *options: str) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["run", CONFIG, "--work-dir", str(work_dir), "--cfg-options", *TINY_CAR_OPTIONS, *options]) == EXIT_OK
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def car_work_dir(tmp_path_factory) -> Path:
    work_dir = tmp_path_factory.mktemp("car")
    run_car(work_dir)
    return work_dir


def test_car_run_reports_per_class_iou_and_gate_metrics(car_work_dir: Path):
    metrics = json.loads((car_work_dir / "metrics.json").read_text())
    assert {"miou", "iou.scratch", "iou.dent", "iou.spacing", "image_f1_macro"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("miou", "image_f1_macro"))


def test_every_test_image_has_exactly_one_prediction_line(car_work_dir: Path):
    split = json.loads((car_work_dir / "split.json").read_text())
    lines = read_lines(car_work_dir / "predictions.jsonl")
    assert sorted(line["path"] for line in lines) == sorted(split["test"])


def test_split_keeps_both_photos_of_a_vehicle_together(car_work_dir: Path):
    split = json.loads((car_work_dir / "split.json").read_text())
    vehicle_parts: dict[str, set[str]] = {}
    for part, paths in split.items():
        if part in ("train", "val", "test"):
            for path in paths:
                vehicle_parts.setdefault(Path(path).stem.split("_")[1], set()).add(part)
    assert vehicle_parts and all(len(parts) == 1 for parts in vehicle_parts.values())


def test_images_the_gate_passes_as_normal_skip_segmentation(car_work_dir: Path):
    lines = read_lines(car_work_dir / "predictions.jsonl")
    skipped = [line for line in lines if line["gate"]["label"] == "normal"]
    assert skipped, "the tiny gate should pass some undamaged photos"
    assert all(not line["instances"] and "segmenter" not in line["timings_ms"] for line in skipped)
    timings = json.loads((car_work_dir / "timings.json").read_text())
    assert timings["finished_by_gate"] == len(skipped)
    assert timings["gate_saved_seconds"] > 0
    assert "saving about" in (car_work_dir / "report.html").read_text()


def test_damage_found_is_outlined_with_polygons_on_overlays(car_work_dir: Path):
    lines = read_lines(car_work_dir / "predictions.jsonl")
    with_damage = [line for line in lines if line["instances"]]
    for line in with_damage:
        assert all(len(inst["polygon"]) >= 3 and inst["class"] in ("scratch", "dent", "spacing", "breakage") for inst in line["instances"])
        assert (car_work_dir / line["overlay"]).is_file()


def test_switched_off_gate_segments_every_image_and_the_report_says_so(car_work_dir: Path, tmp_path: Path):
    work_dir = tmp_path / "no_gate"
    (work_dir / "weights").mkdir(parents=True)
    for name in ("enhance", "segmenter"):  # reuse the trained stages; only the gate changes
        for path in (car_work_dir / "weights").glob(f"{name}.*"):
            (work_dir / "weights" / path.name).write_bytes(path.read_bytes())
    run_car(work_dir, "pipeline.1.enabled=False")
    lines = read_lines(work_dir / "predictions.jsonl")
    assert lines and all(line["gate"]["label"] is None and "segmenter" in line["timings_ms"] for line in lines)
    assert "switched off in the config" in (work_dir / "report.html").read_text()


def test_the_report_shows_per_class_quality_and_the_worst_photos_beside_their_ground_truth(car_work_dir: Path):
    report = (car_work_dir / "report.html").read_text()
    assert "<h2>Segmentation</h2>" in report and "precision" in report and "recall" in report
    assert (car_work_dir / "plots" / "photo_iou.png").stat().st_size > 0
    assert (car_work_dir / "plots" / "class_confusion.png").stat().st_size > 0
    worst = sorted((car_work_dir / "plots" / "worst").glob("*.jpg"))
    assert worst and all(f"plots/worst/{p.name}" in report for p in worst)
