"""The Python API: inputs, typed results, stage names, loading weights with their checks."""

from __future__ import annotations

import doctest
import importlib
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import defectkit
from defectkit.errors import ConfigError, StateError
from defectkit.pipeline import Pipeline
from defectkit.registry import STAGES, registered_names
from defectkit.results import Result, to_samples
from defectkit.sample import Instance
from defectkit.stages.base import Stage, TrainableStage

SUFFIX = uuid.uuid4().hex[:8]


@STAGES.register_module(name=f"MeanLevel{SUFFIX}")
class MeanLevel(TrainableStage):
    """Learns one number (a brightness level); reports it as the gate score."""

    def __init__(self, offset: float = 0.0, name: str | None = None) -> None:
        super().__init__(name)
        self.offset = offset
        self.level = torch.zeros(1)

    def fit(self, train, val, context):
        return {}

    def state_tensors(self):
        return {"level": self.level.clone()}, {"classes": self.fit_classes or []}

    def load_state_tensors(self, tensors, extra):
        self.level = tensors["level"].clone()

    def predict(self, samples):
        for sample in self.active_samples(samples):
            sample.gate_score = float(self.level) + self.offset
            sample.gate_label = "defect" if sample.gate_score > 0.5 else "normal"
        return samples


def _saved_level(directory: Path, value: float, classes: list[str] | None = None, name: str | None = None) -> Path:
    stage = MeanLevel(name=name)
    stage.level = torch.tensor([value])
    stage.fit_classes = classes
    stage.save(directory)
    return directory


def test_package_exports_the_api_lazily():
    for name in ("load", "train", "build_stage", "Pipeline", "Result", "Instance", "ConfigError"):
        assert name in dir(defectkit)
        assert getattr(defectkit, name) is not None
    with pytest.raises(AttributeError):
        defectkit.no_such_thing  # noqa: B018


def test_to_samples_accepts_paths_arrays_and_batches(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((5, 7, 3), 9, np.uint8)).save(path)
    gray = np.zeros((4, 6), np.uint8)
    rgba = np.zeros((4, 6, 4), np.uint8)
    samples = to_samples([str(path), path, gray, rgba])
    assert [s.image.shape for s in samples] == [(5, 7, 3), (5, 7, 3), (4, 6, 3), (4, 6, 3)]
    assert samples[2].record.path == "<array 2>"
    assert len(to_samples(np.zeros((3, 4, 4, 3), np.uint8))) == 3
    assert len(to_samples(np.zeros((4, 4, 3), np.uint8))) == 1


def test_to_samples_reports_unreadable_files_and_rejects_other_inputs(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    (sample,) = to_samples([bad])
    assert sample.error and "bad.png" in sample.error
    with pytest.raises(TypeError, match="uint8"):
        to_samples([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(TypeError, match="shape"):
        to_samples([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(TypeError, match="int"):
        to_samples([3])


def test_stage_called_alone_returns_typed_results_and_keeps_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    policy = defectkit.build_stage(dict(type="MaskPolicy", rules=dict(dent=dict(threshold=0.5, min_area=1))))
    sample = to_samples([np.zeros((12, 12, 3), np.uint8)])[0]
    sample.prob_maps = np.zeros((1, 12, 12), np.float32)
    sample.prob_maps[0, 2:6, 3:9] = 0.8
    sample.map_classes = ["dent"]
    good, broken = policy([sample, bad])
    assert isinstance(good, Result) and good.ok and not broken.ok
    assert set(good.masks) == {"dent"} and good.masks["dent"].dtype == bool and good.masks["dent"].sum() == 24
    (instance,) = good.instances
    assert isinstance(instance, Instance) and instance.class_name == "dent" and len(instance.polygon) >= 4
    assert good.to_dict()["instances"][0]["class"] == "dent"
    assert broken.to_dict()["status"] == "error"


def test_results_feed_the_next_stage():
    gamma = defectkit.build_stage(dict(type="Gamma", gamma=0.5))
    clahe = defectkit.build_stage(dict(type="Clahe", apply="always"))
    first = gamma([np.full((16, 16, 3), 40, np.uint8)])
    second = clahe(first)
    assert second[0].sample is first[0].sample and second[0].image.mean() > 40


def test_every_registered_stage_has_the_same_name_built_alone_or_in_a_pipeline():
    for type_name in registered_names(STAGES):
        cls = STAGES.get(type_name)
        if not cls.__module__.startswith("defectkit."):
            continue
        alone = defectkit.build_stage(dict(type=type_name, **_required_options(type_name)))
        piped = Pipeline.from_config([dict(type=type_name, **_required_options(type_name))]).stages[0]
        assert alone.name == piped.name, type_name


def _required_options(type_name: str) -> dict:
    # Wrapping stages need the stage they wrap.
    return {"inner": dict(type="Segmenter", image_size=(64, 64))} if type_name in ("Tiling", "RoiCrop") else {}


def test_pipeline_call_batches_inputs_and_keeps_their_order():
    seen: list[int] = []

    class CountBatch(Stage):
        def predict(self, samples):
            seen.append(len(samples))
            for sample in samples:
                sample.gate_label = sample.record.path
            return samples

    pipe = Pipeline([CountBatch()], batch_size=2)
    results = pipe([np.zeros((4, 4, 3), np.uint8)] * 5)
    assert seen == [2, 2, 1]
    assert [r.gate_label for r in results] == [f"<array {i}>" for i in range(5)]


def test_from_weights_builds_and_loads_the_only_state_of_its_type(tmp_path):
    _saved_level(tmp_path / "weights", 0.75, name="brightness")
    stage = MeanLevel.from_weights(tmp_path, offset=0.1)  # a work dir: its weights/ folder is used
    assert stage.name == "brightness" and stage.offset == 0.1
    (result,) = stage([np.zeros((4, 4, 3), np.uint8)])
    assert result.gate_score == pytest.approx(0.85) and result.gate_label == "defect"


def test_from_weights_refuses_missing_or_ambiguous_state_and_bad_options(tmp_path):
    with pytest.raises(StateError, match="found none"):
        MeanLevel.from_weights(tmp_path)
    _saved_level(tmp_path, 0.2, name="one")
    _saved_level(tmp_path, 0.3, name="two")
    with pytest.raises(StateError, match="several"):
        MeanLevel.from_weights(tmp_path)
    assert float(MeanLevel.from_weights(tmp_path, name="two").level) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="offset='x'"):
        MeanLevel.from_weights(tmp_path, name="two", offset="x")


def test_pipeline_load_checks_type_and_classes(tmp_path):
    _saved_level(tmp_path, 0.5, classes=["scratch"], name="level")
    Pipeline([MeanLevel(name="level")], classes=["scratch"]).load(tmp_path)
    with pytest.raises(StateError, match="classes"):
        Pipeline([MeanLevel(name="level")], classes=["dent"]).load(tmp_path)

    class OtherType(MeanLevel):
        pass

    with pytest.raises(StateError, match="MeanLevel"):
        Pipeline([OtherType(name="level")]).load(tmp_path)


def test_load_needs_a_config_and_weights(tmp_path):
    with pytest.raises(StateError, match="not found"):
        defectkit.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match="config"):
        defectkit.load(tmp_path)


@pytest.mark.parametrize(
    "module",
    ["defectkit", "defectkit.api", "defectkit.results", "defectkit.validation", "defectkit.pipeline", "defectkit.stages.base"],
)
def test_api_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_stage_can_be_switched_off_in_a_config(tmp_path):
    gamma = defectkit.build_stage(dict(type="Gamma", gamma=0.5, enabled=False))
    assert gamma.enabled is False and gamma.skipped
    image = np.full((8, 8, 3), 40, np.uint8)
    assert (gamma([image])[0].image == 40).all()
    pipe = Pipeline.from_config([dict(type=f"MeanLevel{SUFFIX}", enabled=False), dict(type="Gamma", gamma=0.5)])
    assert pipe.trainable == []
    pipe.load(tmp_path)  # nothing to load: the switched-off stage has no state and needs none
    (result,) = pipe([image])
    assert result.gate_score is None and result.image.mean() > 40
    with pytest.raises(ConfigError, match=r"pipeline\.0\.enabled='no'"):
        Pipeline.from_config([dict(type="Gamma", enabled="no")])


def test_a_stage_that_handles_its_switch_itself_still_runs():
    tiling = defectkit.build_stage(dict(type="Tiling", enabled=False, inner=dict(type="Segmenter", image_size=(64, 64))))
    assert tiling.enabled is False and not tiling.skipped
