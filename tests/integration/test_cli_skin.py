"""The skin-trouble config end to end through the CLI, on a tiny generated Pascal VOC data set."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defectkit.cli import EXIT_OK, main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "skin_trouble.py")
TINY_SKIN_OPTIONS = [
    "pipeline.0.slice_size=(64,64)",
    "pipeline.0.inner.image_size=(96,96)",
    "pipeline.0.inner.epochs=2",
    "pipeline.0.inner.batch_size=4",
    "pipeline.0.inner.copy_paste.p=0.5",
    "runtime.num_threads=1",
]


def write_voc_face(folder: Path, name: str, rng: np.random.Generator, grade: int) -> None:
    """A skin-coloured 128 px photo with a few red spots and their VOC boxes (named by severity grade)."""
    image = np.empty((128, 128, 3), np.uint8)
    image[:] = (175, 135, 205)  # BGR skin tone
    objects = []
    for _ in range(int(rng.integers(2, 6))):
        cx, cy, r = (int(v) for v in (rng.integers(12, 116), rng.integers(12, 116), rng.integers(3, 7)))
        cv2.circle(image, (cx, cy), r, (70, 60, 200), -1)
        objects.append(
            f"<object><name>grade {grade}</name><bndbox><xmin>{cx - r}</xmin><ymin>{cy - r}</ymin>"
            f"<xmax>{cx + r + 1}</xmax><ymax>{cy + r + 1}</ymax></bndbox></object>"
        )
    cv2.imwrite(str(folder / f"{name}.jpg"), image)
    (folder / f"{name}.xml").write_text(
        f"<annotation><filename>{name}.jpg</filename><size><width>128</width><height>128</height><depth>3</depth></size>"
        + "".join(objects) + "</annotation>"
    )


@pytest.fixture(scope="module")
def skin_work_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("faces") / "valid"
    data.mkdir()
    rng = np.random.default_rng(0)
    for index in range(24):
        write_voc_face(data, f"levle{index % 4}_{index}_jpg.rf.{index:08x}", rng, index % 4)
    work_dir = tmp_path_factory.mktemp("skin")
    threads = torch.get_num_threads()
    try:
        args = ["run", CONFIG, "--data-root", str(data.parent), "--work-dir", str(work_dir), "--cfg-options", *TINY_SKIN_OPTIONS]
        assert main(args) == EXIT_OK
    finally:
        torch.set_num_threads(threads)
    return work_dir


def test_skin_run_reports_map50_and_mean_f1_for_one_lesion_class(skin_work_dir: Path):
    metrics = json.loads((skin_work_dir / "metrics.json").read_text())
    assert {"map50", "map50.lesion", "mean_f1", "f1.lesion"} <= set(metrics)
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("map50", "mean_f1"))


def test_predictions_are_boxes_of_the_lesion_class_inside_the_image(skin_work_dir: Path):
    lines = [json.loads(line) for line in (skin_work_dir / "predictions.jsonl").read_text().splitlines()]
    assert lines and all(line["status"] == "ok" for line in lines)
    for line in lines:
        for instance in line["instances"]:
            x1, y1, x2, y2 = instance["box"]
            assert instance["class"] == "lesion" and not instance["polygon"]
            assert -1 <= x1 < x2 <= 129 and -1 <= y1 < y2 <= 129
        assert (skin_work_dir / line["overlay"]).is_file()


def test_detector_weights_are_saved_under_the_tiling_stage(skin_work_dir: Path):
    manifest = json.loads((skin_work_dir / "weights" / "detector.json").read_text())
    assert manifest["stage_type"] == "Tiling" and manifest["extra"]["inner_type"] == "Detector"
    assert manifest["classes"] == ["lesion"]


def test_the_sliced_or_whole_choice_made_on_validation_is_saved_and_reported(skin_work_dir: Path):
    manifest = json.loads((skin_work_dir / "weights" / "detector.json").read_text())
    choice = manifest["extra"]["tiling"]["choice"]
    assert choice["mode"] in ("sliced", "whole") and choice["val_images"] > 0
    assert {"map50", "mean_f1"} <= set(choice["sliced"]) and {"map50", "mean_f1"} <= set(choice["whole"])
    report = (skin_work_dir / "report.html").read_text()
    assert f"detector: {choice['mode']} inference, chosen on {choice['val_images']} validation images" in report
    assert "<h2>Detection</h2>" in report and "det_f1_lesion.png" in report
