"""Weight manifests are untrusted: editing one (and leaving the tensor file and its checksum intact)
can make loading refuse, never import or call anything, and never end in anything but a StateError.

Each stage kind is saved once without training, then its manifest is rewritten: every string field
set to a dotted name of a canary package (whose import and whose functions leave marker files), a
nested ``{"type": ...}`` added to every object, and (fuzzed) any field replaced by arbitrary JSON.
"""

from __future__ import annotations

import copy
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defectkit.errors import StateError
from defectkit.io.state import state_paths
from defectkit.registry import STAGES, build

CLASSES = ["scratch", "dent"]
STAGE_CONFIGS = {
    "segmenter": dict(type="Segmenter", name="seg", image_size=(64, 64), augment=None, pretrained=False),
    "tiling": dict(type="Tiling", name="tiled", slice_size=(64, 64),
                   inner=dict(type="Segmenter", image_size=(64, 64), augment=None, pretrained=False)),
    "zero_dce": dict(type="ZeroDce", name="dce", n_filters=4, n_iterations=2, train_size=(32, 32)),
    "mask_policy": dict(type="CalibratedMaskPolicy", name="policy"),
}


def _saved_stage(kind: str, directory: Path) -> Path:
    """Save ``kind`` as if it had been fitted (weights as initialised); return its manifest path."""
    stage = build(STAGES, dict(STAGE_CONFIGS[kind]))
    inner = getattr(stage, "inner", stage)
    if hasattr(inner, "fresh_network"):
        inner.classes = list(CLASSES)
        inner.fresh_network()
    if kind == "mask_policy":
        stage.thresholds = {"scratch": 0.4, "dent": 0.6}
    stage.fitted = True
    stage.fit_classes = list(CLASSES)
    stage.save(directory)
    return state_paths(directory, stage.name)[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, dict[str, Any]]]:
    saved = {}
    for kind in STAGE_CONFIGS:
        directory = tmp_path_factory.mktemp(kind)
        manifest_path = _saved_stage(kind, directory)
        saved[kind] = (manifest_path, json.loads(manifest_path.read_text()))
    return saved


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A package on sys.path whose import, ``boom()`` or ``Boom()`` each touch a file in ``markers``."""
    root = tmp_path_factory.mktemp("canary")
    package = f"dk_canary_{uuid.uuid4().hex[:8]}"
    markers = root / "markers"
    markers.mkdir()
    (root / package).mkdir()
    touch = f"open({str(markers)!r} + '/' + {{!r}}, 'w').close()"
    (root / package / "__init__.py").write_text(
        touch.format("imported") + "\n"
        "def boom(*args, **kwargs):\n    " + touch.format("called") + "\n"
        "class Boom:\n    def __init__(self, *args, **kwargs):\n        " + touch.format("constructed") + "\n"
    )
    (root / package / "registry.py").write_text(touch.format("registry imported") + "\n")
    sys.path.insert(0, str(root))
    yield package, markers
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith(package)]:
        del sys.modules[name]


def _string_paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _string_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_paths(item, (*path, index))
    elif isinstance(value, str):
        yield path


def _dict_paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(value, dict):
        yield path
        for key, item in value.items():
            yield from _dict_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _dict_paths(item, (*path, index))


def _set(document: Any, path: tuple, value: Any) -> Any:
    document = copy.deepcopy(document)
    if not path:
        return value
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


def _load_with(kind: str, manifest_path: Path, manifest: Any) -> str:
    """Write ``manifest`` and load the stage from it; return "loaded" or the StateError's message."""
    manifest_path.write_text(json.dumps(manifest))
    stage = build(STAGES, dict(STAGE_CONFIGS[kind]))
    try:
        stage.load(manifest_path.parent)
    except StateError as exc:
        message = str(exc)
        assert "\n" not in message and str(manifest_path.parent) in message, message
        return message
    return "loaded"


def _assert_nothing_ran(package: str, markers: Path) -> None:
    assert sorted(p.name for p in markers.iterdir()) == []
    assert package not in sys.modules


@pytest.mark.parametrize("kind", list(STAGE_CONFIGS))
def test_every_string_field_set_to_a_module_path_imports_and_calls_nothing(kind, saved, canary):
    manifest_path, original = saved[kind]
    package, markers = canary
    paths = list(_string_paths(original))
    assert len(paths) >= 5, paths
    outcomes = {}
    try:
        for path in paths:
            for hostile in (f"{package}.boom", f"{package}.Boom", "os.system", f"{package}"):
                outcomes[(path, hostile)] = _load_with(kind, manifest_path, _set(original, path, hostile))
                _assert_nothing_ran(package, markers)
        # The original still loads: the refusals above are about the edits, not the set-up.
        assert _load_with(kind, manifest_path, original) == "loaded"
    finally:
        manifest_path.write_text(json.dumps(original))
    if kind != "mask_policy":  # its manifest has no model description
        refused = [path for (path, _), outcome in outcomes.items() if path[:2] == ("extra", "model") and outcome == "loaded"]
        assert refused == [], f"edited model fields were loaded: {refused}"
        model_type = ("extra", "inner", "model", "type") if kind == "tiling" else ("extra", "model", "type")
        assert "differs from the config's at extra.model.type" in outcomes[(model_type, "os.system")]


@pytest.mark.parametrize("kind", list(STAGE_CONFIGS))
def test_nested_type_keys_in_every_object_import_and_call_nothing(kind, saved, canary):
    manifest_path, original = saved[kind]
    package, markers = canary
    try:
        for path in _dict_paths(original):
            for key in ("type", "model", "inner", "arch"):
                value = {"type": f"{package}.boom", "command": "true"} if key != "type" else f"{package}.Boom"
                edited = _set(original, (*path, key), value)
                _load_with(kind, manifest_path, edited)
                _assert_nothing_ran(package, markers)
    finally:
        manifest_path.write_text(json.dumps(original))


def test_a_changed_model_field_is_named_in_the_refusal(saved):
    manifest_path, original = saved["segmenter"]
    try:
        edited = _set(original, ("extra", "model", "encoder_depth"), 3)
        message = _load_with("segmenter", manifest_path, edited)
        assert "extra.model.encoder_depth (only in the saved state: 3)" in message
        edited = _set(original, ("extra", "model", "type"), "DeepLabV3Plus")
        assert "extra.model.type (saved 'DeepLabV3Plus', config 'Unet')" in _load_with("segmenter", manifest_path, edited)
    finally:
        manifest_path.write_text(json.dumps(original))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("kind", list(STAGE_CONFIGS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_manifest_fields_give_a_state_error_or_load(kind, saved, canary, data):
    manifest_path, original = saved[kind]
    package, markers = canary
    paths = list(_every_path(original))
    path = data.draw(st.sampled_from(paths), label="field")
    value = data.draw(JSON_VALUES, label="value")
    try:
        _load_with(kind, manifest_path, _set(original, path, value))  # anything else than StateError fails the test
    finally:
        manifest_path.write_text(json.dumps(original))
    _assert_nothing_ran(package, markers)


def _every_path(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _every_path(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _every_path(item, (*path, index))
