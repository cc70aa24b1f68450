"""Stage state: safetensors plus a verified JSON manifest."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from defectkit import __version__
from defectkit.errors import StateError
from defectkit.io.state import has_state, load_state, save_state, state_paths


def _save(directory, stage_type="Gate", **extra):
    tensors = {"weights": torch.arange(12, dtype=torch.float32).reshape(3, 4), "bias": torch.tensor([1, 2, 3])}
    save_state(directory, "gate0", stage_type, tensors, extra or {"classes": ["a", "b"], "size": 7})
    return tensors


def test_save_then_load_round_trips_tensors_and_extra(tmp_path):
    tensors = _save(tmp_path)
    loaded, extra = load_state(tmp_path, "gate0", "Gate")
    assert set(loaded) == {"weights", "bias"}
    assert torch.equal(loaded["weights"], tensors["weights"])
    assert torch.equal(loaded["bias"], tensors["bias"])
    assert loaded["bias"].dtype == torch.int64
    assert extra == {"classes": ["a", "b"], "size": 7}


def test_non_contiguous_tensors_are_saved(tmp_path):
    t = torch.arange(6.0).reshape(2, 3).t()
    save_state(tmp_path, "s", "T", {"t": t})
    loaded, _ = load_state(tmp_path, "s", "T")
    assert torch.equal(loaded["t"], t)


def test_manifest_records_version_checksum_and_shapes(tmp_path):
    _save(tmp_path)
    tensor_path, manifest_path = state_paths(tmp_path, "gate0")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["library_version"] == __version__
    assert manifest["stage_type"] == "Gate"
    assert manifest["tensors"] == {"weights": [3, 4], "bias": [3]}
    assert manifest["sha256"] == hashlib.sha256(tensor_path.read_bytes()).hexdigest()


def test_tampered_tensor_file_is_refused_with_checksum_error(tmp_path):
    _save(tmp_path)
    tensor_path, _ = state_paths(tmp_path, "gate0")
    data = bytearray(tensor_path.read_bytes())
    data[-1] ^= 0xFF  # flip a byte of tensor data
    tensor_path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="checksum"):
        load_state(tmp_path, "gate0", "Gate")


def test_truncated_tensor_file_is_refused(tmp_path):
    _save(tmp_path)
    tensor_path, _ = state_paths(tmp_path, "gate0")
    tensor_path.write_bytes(tensor_path.read_bytes()[:-4])
    with pytest.raises(StateError, match="checksum"):
        load_state(tmp_path, "gate0", "Gate")


def test_manifest_of_another_stage_type_is_refused(tmp_path):
    _save(tmp_path, stage_type="Gate")
    with pytest.raises(StateError) as info:
        load_state(tmp_path, "gate0", "Segmenter")
    assert "'Gate'" in str(info.value) and "'Segmenter'" in str(info.value)


def test_manifest_of_another_library_version_family_is_refused(tmp_path):
    _save(tmp_path)
    _, manifest_path = state_paths(tmp_path, "gate0")
    manifest = json.loads(manifest_path.read_text())
    manifest["library_version"] = "99.0.0"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StateError, match="99.0.0"):
        load_state(tmp_path, "gate0", "Gate")


def test_unreadable_manifest_is_refused(tmp_path):
    _save(tmp_path)
    _, manifest_path = state_paths(tmp_path, "gate0")
    manifest_path.write_text("{not json")
    with pytest.raises(StateError, match="manifest"):
        load_state(tmp_path, "gate0", "Gate")


def test_missing_files_error_names_both_files(tmp_path):
    with pytest.raises(StateError) as info:
        load_state(tmp_path, "gate0", "Gate")
    assert "gate0.safetensors" in str(info.value) and "gate0.json" in str(info.value)


def test_missing_manifest_alone_is_missing_state(tmp_path):
    _save(tmp_path)
    _, manifest_path = state_paths(tmp_path, "gate0")
    manifest_path.unlink()
    assert not has_state(tmp_path, "gate0")
    with pytest.raises(StateError, match="gate0.json"):
        load_state(tmp_path, "gate0", "Gate")


def test_has_state_is_true_only_after_saving(tmp_path):
    assert not has_state(tmp_path, "gate0")
    _save(tmp_path)
    assert has_state(tmp_path, "gate0")
    assert not has_state(tmp_path, "other")
