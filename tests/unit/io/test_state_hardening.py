"""Saved weights: manifest fields, class checks, and files that are not what they claim to be."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from defectkit.errors import StateError
from defectkit.io.state import check_manifest, load_state, save_state, state_paths


def _save(directory, **kwargs):
    extra = kwargs.pop("extra", {"model": {"type": "PatchCore", "layers": [2, 3]}, "image_size": [96, 96]})
    save_state(directory, "gate", "AnomalyGate", {"bank": torch.ones(4, 3)}, extra, **kwargs)


def _rewrite_tensors(directory, payload: bytes) -> None:
    """Replace the tensor file and fix its checksum, as an attacker with write access would."""
    tensor_path, manifest_path = state_paths(directory, "gate")
    tensor_path.write_bytes(payload)
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = hashlib.sha256(payload).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def test_manifest_records_stage_head_classes_and_input_size(tmp_path):
    _save(tmp_path, classes=["scratch", "dent"])
    manifest = json.loads(state_paths(tmp_path, "gate")[1].read_text())
    assert manifest["stage"] == "gate" and manifest["stage_type"] == "AnomalyGate"
    assert manifest["head"] == "PatchCore"
    assert manifest["input_size"] == [96, 96]
    assert manifest["classes"] == ["scratch", "dent"]
    assert manifest["library_version"] and len(manifest["sha256"]) == 64


def test_classes_default_to_those_in_extra(tmp_path):
    _save(tmp_path, extra={"classes": ["defect"], "input_size": [64, 64], "head": "PaDiM"})
    manifest = check_manifest(tmp_path, "gate", "AnomalyGate", ["defect"])
    assert manifest["classes"] == ["defect"] and manifest["head"] == "PaDiM" and manifest["input_size"] == [64, 64]


def test_weights_for_other_classes_are_refused(tmp_path):
    _save(tmp_path, classes=["scratch", "dent"])
    with pytest.raises(StateError, match=r"fitted for classes \['scratch', 'dent'\].*\['dent', 'scratch'\]"):
        load_state(tmp_path, "gate", "AnomalyGate", classes=["dent", "scratch"])
    tensors, _ = load_state(tmp_path, "gate", "AnomalyGate", classes=["scratch", "dent"])
    assert torch.equal(tensors["bank"], torch.ones(4, 3))


def test_weights_without_recorded_classes_load_for_any_classes(tmp_path):
    _save(tmp_path)
    load_state(tmp_path, "gate", "AnomalyGate", classes=["anything"])


def test_pickle_disguised_as_safetensors_is_refused_without_unpickling(tmp_path):
    _save(tmp_path)

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    _rewrite_tensors(tmp_path, pickle.dumps({"bank": Boom()}))
    with pytest.raises(StateError, match="not a valid safetensors file"):
        load_state(tmp_path, "gate", "AnomalyGate")


def test_torch_save_file_is_refused(tmp_path):
    import io

    _save(tmp_path)
    buffer = io.BytesIO()
    torch.save({"bank": torch.ones(4, 3)}, buffer)
    _rewrite_tensors(tmp_path, buffer.getvalue())
    with pytest.raises(StateError, match="not a valid safetensors file"):
        load_state(tmp_path, "gate", "AnomalyGate")


def test_tensors_other_than_the_manifest_lists_are_refused(tmp_path):
    from safetensors.torch import save

    _save(tmp_path)
    _rewrite_tensors(tmp_path, save({"bank": torch.ones(5, 3)}))
    with pytest.raises(StateError, match="do not match the manifest"):
        load_state(tmp_path, "gate", "AnomalyGate")


def test_manifest_of_another_stage_name_or_garbage_is_refused(tmp_path):
    _save(tmp_path)
    _, manifest_path = state_paths(tmp_path, "gate")
    manifest = json.loads(manifest_path.read_text())
    manifest["stage"] = "segmenter"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StateError, match="written for stage 'segmenter'"):
        load_state(tmp_path, "gate", "AnomalyGate")
    manifest_path.write_text("[1, 2]")
    with pytest.raises(StateError, match="not a JSON object"):
        load_state(tmp_path, "gate", "AnomalyGate")
    manifest_path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(StateError, match="unreadable manifest"):
        load_state(tmp_path, "gate", "AnomalyGate")
