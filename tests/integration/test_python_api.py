"""The Python API on a work dir the CLI trained: load, call on files and arrays, reuse one stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import defectkit
from defectkit.errors import StateError
from defectkit.results import Result
from defectkit.stages.anomaly_gate import AnomalyGate


@pytest.fixture(scope="module")
def pipe(tiny_texture_work_dir: Path):
    return defectkit.load(tiny_texture_work_dir)


def test_train_saves_the_config_that_load_reads(tiny_texture_work_dir: Path, pipe):
    assert (tiny_texture_work_dir / "config.py").is_file()
    assert [s.name for s in pipe.stages] == ["gate", "mask_policy"]
    assert pipe.classes == ["defect"] and all(s.fitted for s in pipe.trainable)


def test_loaded_pipeline_gives_typed_results_for_files_and_arrays(pipe, tmp_path: Path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    path = tmp_path / "tile.png"
    Image.fromarray(photo).save(path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG")
    from_file, from_array, broken = pipe([path, photo, tmp_path / "broken.png"])
    assert all(isinstance(r, Result) for r in (from_file, from_array, broken))
    assert from_file.gate_label in ("normal", "defect") and 0.0 <= from_file.gate_score
    # The same pixels give the same decision whether they come from a file or an array.
    assert from_file.gate_score == pytest.approx(from_array.gate_score)
    assert not broken.ok and "broken.png" in broken.error
    json.dumps([r.to_dict() for r in (from_file, from_array, broken)])
    if from_file.gate_label == "defect":
        assert set(from_file.masks) == {"defect"} and from_file.masks["defect"].shape == (128, 128)


def test_one_trained_stage_is_reusable_on_its_own(tiny_texture_work_dir: Path, pipe):
    gate = AnomalyGate.from_weights(tiny_texture_work_dir)
    assert gate.name == "gate"
    image = np.full((96, 96, 3), 120, np.uint8)
    assert gate([image])[0].gate_score == pytest.approx(pipe([image])[0].gate_score)


def test_load_refuses_weights_for_other_classes(tiny_texture_work_dir: Path):
    with pytest.raises(StateError, match="classes"):
        defectkit.load(tiny_texture_work_dir, cfg_options={"classes": ["crack"], "pipeline.1.rules": {"crack": {"threshold": 0.5}}})


def test_train_returns_a_ready_pipeline(tiny_texture_work_dir: Path, tiny_texture_options: list[str], texture_config: str, tmp_path: Path):
    work_dir = tmp_path / "copy"
    shutil.copytree(tiny_texture_work_dir / "weights", work_dir / "weights")
    options = dict(option.split("=", 1) for option in tiny_texture_options)
    options = {key: int(value) if value.isdigit() else value for key, value in options.items()}
    trained = defectkit.train(texture_config, work_dir=work_dir, cfg_options=options)
    # The copied gate is loaded, not refitted, and the pipeline predicts straight away.
    assert (work_dir / "weights" / "gate.safetensors").read_bytes() == (tiny_texture_work_dir / "weights" / "gate.safetensors").read_bytes()
    assert trained([np.zeros((64, 64, 3), np.uint8)])[0].gate_label in ("normal", "defect")
