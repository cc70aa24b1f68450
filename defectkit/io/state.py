"""Stage state on disk: tensors in safetensors, everything else in a JSON manifest.

Nothing is ever unpickled. The manifest records what wrote the tensors and their SHA-256, and
loading refuses a file whose checksum, stage type or library version family does not match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from defectkit import __version__
from defectkit.errors import StateError
from defectkit.io.atomic import atomic_write_bytes, atomic_write_json

MANIFEST_FORMAT = 1


def state_paths(directory: str | Path, name: str) -> tuple[Path, Path]:
    """The tensor file and manifest file of stage ``name`` in ``directory``."""
    directory = Path(directory)
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def has_state(directory: str | Path, name: str) -> bool:
    """Whether a complete saved state for ``name`` exists (the manifest is written last)."""
    tensors, manifest = state_paths(directory, name)
    return tensors.is_file() and manifest.is_file()


def save_state(
    directory: str | Path,
    name: str,
    stage_type: str,
    tensors: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a stage's tensors and a manifest describing them.

    Args:
        directory: The work dir's ``weights/`` folder.
        name: The stage's name in the pipeline (file stem).
        stage_type: Registered type of the stage, checked on load.
        tensors: Weights and buffers; made contiguous and moved to CPU.
        extra: JSON-serialisable settings (classes, input size, thresholds...).

    Returns:
        The manifest path.
    """
    tensor_path, manifest_path = state_paths(directory, name)
    payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(tensor_path, payload)
    manifest = {
        "format": MANIFEST_FORMAT,
        "stage": name,
        "stage_type": stage_type,
        "library_version": __version__,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "extra": extra or {},
    }
    atomic_write_json(manifest_path, manifest)
    return manifest_path


def load_state(directory: str | Path, name: str, stage_type: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify what :func:`save_state` wrote.

    Raises:
        StateError: Missing files, a checksum mismatch (tampered or truncated), or a manifest
            written for another stage type or an incompatible library version.
    """
    tensor_path, manifest_path = state_paths(directory, name)
    if not manifest_path.is_file() or not tensor_path.is_file():
        raise StateError(f"no saved state for stage {name!r} in {directory} (expected {tensor_path.name} and {manifest_path.name})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StateError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise StateError(f"{manifest_path}: manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
    if manifest.get("stage_type") != stage_type:
        raise StateError(
            f"{manifest_path}: saved by a {manifest.get('stage_type')!r} stage, but the config builds {stage_type!r}; "
            "delete the work dir's weights or point --work-dir elsewhere"
        )
    saved_major = str(manifest.get("library_version", "")).split(".")[:2]
    if saved_major != __version__.split(".")[:2]:
        raise StateError(f"{manifest_path}: written by defectkit {manifest.get('library_version')}, this is {__version__}; retrain")
    payload = tensor_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != manifest.get("sha256"):
        raise StateError(f"{tensor_path}: checksum does not match its manifest (file changed or truncated); refusing to load")
    tensors = load(payload)
    return tensors, manifest.get("extra", {})
