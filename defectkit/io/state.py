"""Stage state on disk: tensors in safetensors, everything else in a JSON manifest.

Nothing is ever unpickled. The manifest records what wrote the tensors (stage name and type, head
type, input size, classes, library version) and their SHA-256, and loading refuses a file whose
checksum, stage, stage type, classes or library version family does not match, or whose tensors are
not what the manifest lists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
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
    classes: Sequence[str] | None = None,
) -> Path:
    """Save a stage's tensors and a manifest describing them.

    Args:
        directory: The work dir's ``weights/`` folder.
        name: The stage's name in the pipeline (file stem).
        stage_type: Registered type of the stage, checked on load.
        tensors: Weights and buffers; made contiguous and moved to CPU.
        extra: JSON-serialisable settings (classes, input size, thresholds...). Its ``classes``,
            ``head`` (or ``model["type"]``) and ``input_size`` (or ``image_size``) are also recorded
            at the top of the manifest.
        classes: The defect classes the stage was fitted for (default ``extra["classes"]``);
            :func:`load_state` refuses to load them for a config with other classes.

    Returns:
        The manifest path.
    """
    tensor_path, manifest_path = state_paths(directory, name)
    payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(tensor_path, payload)
    extra = dict(extra or {})
    model = extra.get("model") if isinstance(extra.get("model"), dict) else {}
    if classes is None and extra.get("classes") is not None:
        classes = extra["classes"]
    input_size = extra.get("input_size", extra.get("image_size"))
    manifest = {
        "format": MANIFEST_FORMAT,
        "stage": name,
        "stage_type": stage_type,
        "head": extra.get("head", model.get("type")),
        "classes": None if classes is None else [str(c) for c in classes],
        "input_size": None if input_size is None else list(input_size),
        "library_version": __version__,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "extra": extra,
    }
    atomic_write_json(manifest_path, manifest)
    return manifest_path


def read_manifest(directory: str | Path, name: str) -> dict[str, Any]:
    """The manifest of stage ``name``, checked for format only.

    Raises:
        StateError: Missing, unreadable or of another manifest format.
    """
    tensor_path, manifest_path = state_paths(directory, name)
    if not manifest_path.is_file() or not tensor_path.is_file():
        raise StateError(f"no saved state for stage {name!r} in {directory} (expected {tensor_path.name} and {manifest_path.name})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers bad JSON, bad UTF-8, huge numbers
        raise StateError(f"{manifest_path}: unreadable manifest ({short_repr(exc)})") from exc
    if not isinstance(manifest, dict):
        raise StateError(f"{manifest_path}: manifest is not a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise StateError(f"{manifest_path}: manifest format {short_repr(manifest.get('format'))}, expected {MANIFEST_FORMAT}")
    return manifest


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr`` (``str`` for an exception) on one line, cut to ``limit`` characters.

    Values from a manifest are untrusted: a hostile one must not flood or break the one-line error.
    """
    text = str(value) if isinstance(value, BaseException) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_manifest(
    directory: str | Path, name: str, stage_type: str, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Check a saved state's manifest against what the config builds, without reading the tensors.

    Args:
        directory: The ``weights/`` folder.
        name: Stage name (file stem).
        stage_type: The registered type the config builds for this stage.
        classes: The config's defect classes; checked when both they and the manifest name classes.

    Returns:
        The manifest.

    Raises:
        StateError: Another stage name or type, other classes, or an incompatible library version.
    """
    manifest = read_manifest(directory, name)
    _, manifest_path = state_paths(directory, name)
    if manifest.get("stage", name) != name:
        raise StateError(f"{manifest_path}: written for stage {short_repr(manifest.get('stage'))}, not {name!r}; refusing to load")
    if manifest.get("stage_type") != stage_type:
        raise StateError(
            f"{manifest_path}: saved by a {short_repr(manifest.get('stage_type'))} stage, but the config builds {stage_type!r}; "
            "delete the work dir's weights or point --work-dir elsewhere"
        )
    saved_major = str(manifest.get("library_version", "")).split(".")[:2]
    if saved_major != __version__.split(".")[:2]:
        raise StateError(f"{manifest_path}: written by defectkit {short_repr(manifest.get('library_version'))}, this is {__version__}; retrain")
    if not isinstance(manifest.get("extra", {}), dict):
        raise StateError(f"{manifest_path}: 'extra' is not a JSON object; refusing to load")
    saved_classes = manifest.get("classes")
    if saved_classes is None:
        saved_classes = manifest.get("extra", {}).get("classes")
    if saved_classes is not None and not (isinstance(saved_classes, list) and all(isinstance(c, str) for c in saved_classes)):
        raise StateError(f"{manifest_path}: 'classes' must be a list of names, got {short_repr(saved_classes)}; refusing to load")
    if classes is not None and saved_classes is not None and [str(c) for c in saved_classes] != [str(c) for c in classes]:
        raise StateError(
            f"{manifest_path}: stage {name!r} was fitted for classes {list(saved_classes)}, but the config has "
            f"{list(classes)}; retrain with a new --work-dir or fix the config's classes"
        )
    return manifest


def load_state(
    directory: str | Path, name: str, stage_type: str, classes: Sequence[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify what :func:`save_state` wrote.

    Args:
        directory: The ``weights/`` folder.
        name: Stage name (file stem).
        stage_type: The registered type the config builds for this stage.
        classes: The config's defect classes, checked against the manifest's (see :func:`check_manifest`).

    Raises:
        StateError: Missing files, a checksum mismatch (tampered or truncated), a manifest written
            for another stage, stage type, classes or an incompatible library version, or a tensor
            file that is not valid safetensors or holds other tensors than its manifest lists.
    """
    manifest = check_manifest(directory, name, stage_type, classes)
    tensor_path, manifest_path = state_paths(directory, name)
    try:
        payload = tensor_path.read_bytes()
    except OSError as exc:
        raise StateError(f"{tensor_path}: cannot read ({exc.strerror or exc})") from exc
    if hashlib.sha256(payload).hexdigest() != manifest.get("sha256"):
        raise StateError(f"{tensor_path}: checksum does not match its manifest (file changed or truncated); refusing to load")
    try:
        tensors = load(payload)  # safetensors: a header and raw buffers, no code is ever run
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise StateError(f"{tensor_path}: not a valid safetensors file ({exc}); refusing to load") from exc
    listed = manifest.get("tensors")
    if listed is not None:
        found = {k: list(v.shape) for k, v in tensors.items()}
        if not isinstance(listed, dict) or found != listed:
            raise StateError(f"{tensor_path}: tensors {sorted(found)} do not match the manifest {manifest_path.name}; refusing to load")
    extra = manifest.get("extra", {})
    return tensors, extra if isinstance(extra, dict) else {}
