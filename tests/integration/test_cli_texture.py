"""The texture-defect config end to end through the CLI, on a tiny built-in data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.cli import EXIT_FATAL, EXIT_OK, EXIT_SOME_INPUTS_FAILED, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "texture_defect.py")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained_work_dir(tiny_texture_work_dir: Path, tiny_texture_options: list[str]) -> Path:
    # The gate is already fitted there, so this run loads it and evaluates.
    assert main(["run", CONFIG, "--work-dir", str(tiny_texture_work_dir), "--cfg-options", *tiny_texture_options]) == EXIT_OK
    return tiny_texture_work_dir


def test_run_on_builtin_data_writes_every_output(trained_work_dir: Path):
    metrics = json.loads((trained_work_dir / "metrics.json").read_text())
    for key in ("image_auroc", "image_f1_macro", "pixel_auroc", "n_images"):
        assert key in metrics
    # A handful of test images cannot measure accuracy; test_real_texture.py does that on real data.
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("image_auroc", "image_f1_macro", "pixel_auroc"))
    lines = read_lines(trained_work_dir / "predictions.jsonl")
    assert len(lines) == metrics["n_images"] == len({line["path"] for line in lines})
    assert all(line["status"] == "ok" and line["gate"]["label"] in ("normal", "defect") for line in lines)
    assert (trained_work_dir / "report.html").is_file()
    assert any((trained_work_dir / "overlays").iterdir())
    assert (trained_work_dir / "weights" / "gate.safetensors").is_file()


def test_second_run_resumes_without_refitting_or_duplicating(trained_work_dir: Path, tiny_texture_options: list[str], capsys):
    before = read_lines(trained_work_dir / "predictions.jsonl")
    assert main(["run", CONFIG, "--work-dir", str(trained_work_dir), "--cfg-options", *tiny_texture_options]) == EXIT_OK
    after = read_lines(trained_work_dir / "predictions.jsonl")
    assert [line["path"] for line in after] == [line["path"] for line in before]
    assert "loaded saved state" in capsys.readouterr().err


def test_predict_reports_bad_files_as_error_lines_and_finishes(trained_work_dir: Path, tiny_texture_options: list[str], tmp_path: Path):
    inputs = tmp_path / "uploads"
    inputs.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(inputs / "good photo.png")
    good_jpeg = inputs / "good.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good_jpeg)
    (inputs / "truncated.jpg").write_bytes(good_jpeg.read_bytes()[:200])
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    # With the options the work dir was trained with: loading checks the gate's model config.
    code = main(["predict", CONFIG, "--work-dir", str(trained_work_dir), "--input", str(inputs), "--out", str(out),
                 "--cfg-options", *tiny_texture_options])

    assert code == EXIT_SOME_INPUTS_FAILED
    lines = {Path(line["path"]).name: line for line in read_lines(out / "predictions.jsonl")}
    assert set(lines) == {"good photo.png", "good.jpg", "truncated.jpg", "empty.png", "notes.txt"}
    assert lines["good photo.png"]["status"] == lines["good.jpg"]["status"] == "ok"
    for bad in ("truncated.jpg", "empty.png", "notes.txt"):
        assert lines[bad]["status"] == "error" and bad in lines[bad]["error"]
    assert (out / "report.html").is_file()


def test_missing_data_root_names_the_expected_layout(tmp_path: Path, capsys):
    code = main(["run", CONFIG, "--work-dir", str(tmp_path / "w"), "--data-root", str(tmp_path / "nowhere")])
    assert code == EXIT_FATAL
    err = capsys.readouterr().err
    assert "nowhere" in err and "Imgs" in err


def test_unknown_config_key_lists_valid_keys(tmp_path: Path, capsys):
    code = main(["train", CONFIG, "--work-dir", str(tmp_path / "w"), "--cfg-options", "pipelin.0.type=X"])
    assert code == EXIT_USAGE  # a config error is bad usage
    err = capsys.readouterr().err
    assert "pipelin" in err and "pipeline" in err


def test_cv_fits_each_fold_and_pools_every_development_image_but_never_the_test_split(tmp_path: Path, tiny_texture_options: list[str]):
    from defectkit.config import load_config
    from defectkit.data.split import split_records
    from defectkit.runner import Runner, split_stratum

    work = tmp_path / "cv run"
    assert main(["cv", CONFIG, "--work-dir", str(work), "--folds", "2", "--cfg-options", *tiny_texture_options]) == EXIT_OK
    summary = json.loads((work / "cv" / "cv.json").read_text())
    held_out = [json.loads((work / "cv" / f"fold{k}" / "split.json").read_text())["test"] for k in range(2)]
    assert not set(held_out[0]) & set(held_out[1])
    assert summary["pooled"]["n_images"] == len(held_out[0]) + len(held_out[1])
    assert [fold["metrics"]["n_images"] for fold in summary["per_fold"]] == [len(h) for h in held_out]
    assert 0.0 <= summary["pooled"]["image_auroc"] <= 1.0 and "iou.defect" in summary["pooled"]
    # The images `defectkit run` tests on are not among them.
    options = dict(item.split("=", 1) for item in tiny_texture_options)
    cfg = load_config(CONFIG, {k: int(v) if v.isdigit() else v for k, v in options.items()})
    records = Runner(cfg, CONFIG, work_dir=str(work / "cv" / "records")).records()
    run_test = split_records(records, (0.7, 0.1, 0.2), seed=0, stratum=split_stratum({}, records))["test"]
    assert run_test and not {r.path for r in run_test} & (set(held_out[0]) | set(held_out[1]))
    assert summary["pooled"]["n_images"] == len(records) - len(run_test)
