"""Pipeline: stage order, early exit, timings, fitting and resuming from saved state."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.pipeline import Pipeline
from defectkit.registry import STAGES
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext, Stage, TrainableStage

SUFFIX = uuid.uuid4().hex[:8]


class EvenGate(Stage):
    """Finishes samples whose record's ``meta['index']`` is even."""

    def predict(self, samples):
        for sample in samples:
            if sample.record.meta["index"] % 2 == 0:
                sample.finished = True
                sample.gate_label = "normal"
        return samples


class Recorder(Stage):
    """Remembers every sample it was given."""

    def __init__(self, name=None):
        super().__init__(name)
        self.seen: list[int] = []

    def predict(self, samples):
        self.seen.extend(s.record.meta["index"] for s in samples)
        for sample in samples:
            sample.extras.setdefault("visited", []).append(self.name)
        return samples


class MeanBrightness(TrainableStage):
    """Learns the mean pixel value of its training images; counts fit calls."""

    fit_calls = 0

    def __init__(self, name=None):
        super().__init__(name)
        self.mean = torch.zeros(1)
        self.fit_samples_saw_gate: list[bool] = []

    def fit(self, train, val, context):
        type(self).fit_calls += 1
        samples = context.load_samples(train)
        self.fit_samples_saw_gate = [s.gate_label is not None for s in samples]
        assert all(not s.finished for s in samples)
        self.mean = torch.tensor([float(np.mean([s.image.mean() for s in samples if s.ok]))])
        return {"images": len(samples)}

    def state_tensors(self):
        return {"mean": self.mean}, {"note": "test"}

    def load_state_tensors(self, tensors, extra):
        self.mean = tensors["mean"]
        self.loaded_extra = extra

    def predict(self, samples):
        return samples


GATE_TYPE = f"EvenGate{SUFFIX}"
RECORDER_TYPE = f"Recorder{SUFFIX}"


@pytest.fixture(autouse=True)
def fake_stages():
    STAGES.register_module(name=GATE_TYPE)(EvenGate)
    STAGES.register_module(name=RECORDER_TYPE)(Recorder)
    MeanBrightness.fit_calls = 0
    yield
    STAGES.module_dict.pop(GATE_TYPE, None)
    STAGES.module_dict.pop(RECORDER_TYPE, None)


def _samples(n: int) -> list[Sample]:
    return [Sample(Record(f"{i}.png", meta={"index": i}), image=np.zeros((2, 2, 3), np.uint8)) for i in range(n)]


def test_gate_skips_later_stages_for_finished_samples():
    pipeline = Pipeline.from_config([dict(type=GATE_TYPE), dict(type=RECORDER_TYPE)])
    recorder = pipeline.stages[1]
    samples = pipeline.predict(_samples(6))
    assert recorder.seen == [1, 3, 5]
    assert len(samples) == 6  # finished samples are still returned
    assert [s.finished for s in samples] == [True, False] * 3


def test_stages_before_the_gate_see_every_sample():
    pipeline = Pipeline([Recorder(name="before"), EvenGate(name="gate"), Recorder(name="after")])
    pipeline.predict(_samples(4))
    assert pipeline.stages[0].seen == [0, 1, 2, 3]
    assert pipeline.stages[2].seen == [1, 3]


def test_errored_samples_are_not_passed_to_stages():
    samples = _samples(3)
    samples[1].error = "1.png: empty file"
    samples[1].image = None
    recorder = Recorder(name="rec")
    Pipeline([recorder]).predict(samples)
    assert recorder.seen == [0, 2]
    assert "rec" not in samples[1].timings


def test_batch_with_no_active_sample_skips_the_stage_entirely():
    recorder = Recorder(name="rec")
    pipeline = Pipeline([EvenGate(name="gate"), recorder])
    pipeline.predict([_samples(1)[0]])  # index 0: finished by the gate
    assert recorder.seen == []
    assert pipeline.processed["rec"] == 0


def test_timings_are_recorded_per_stage_and_sample():
    pipeline = Pipeline([EvenGate(name="gate"), Recorder(name="rec")])
    samples = pipeline.predict(_samples(4))
    assert all("gate" in s.timings for s in samples)
    assert ["rec" in s.timings for s in samples] == [False, True, False, True]
    assert all(v >= 0 for s in samples for v in s.timings.values())
    assert pipeline.processed == {"gate": 4, "rec": 2}
    summary = pipeline.timing_summary()
    assert set(summary) == {"gate", "rec"}
    assert summary["rec"]["images"] == 2


def test_upto_runs_only_the_first_stages():
    first, second = Recorder(name="first"), Recorder(name="second")
    Pipeline([first, second]).predict(_samples(2), upto=1)
    assert first.seen == [0, 1] and second.seen == []


def test_duplicate_stage_names_are_rejected():
    with pytest.raises(ValueError, match="rec"):
        Pipeline([Recorder(name="rec"), Recorder(name="rec")])


def test_from_config_gives_each_stage_a_distinct_default_name():
    pipeline = Pipeline.from_config([dict(type=RECORDER_TYPE), dict(type=RECORDER_TYPE)])
    names = [s.name for s in pipeline.stages]
    # The first keeps the name the stage has when built on its own; a repeat gets its position.
    assert names == [Recorder().name, f"{Recorder().name}1"]


def test_from_config_names_stages_as_they_are_named_when_built_alone():
    from defectkit.stages.enhance import ZeroDce

    pipeline = Pipeline.from_config([dict(type="ZeroDce"), dict(type="MaskPolicy")])
    assert [s.name for s in pipeline.stages] == [ZeroDce().name, "mask_policy"] == ["zero_dce", "mask_policy"]


def _image_records(tmp_path: Path, values: list[int]) -> list[Record]:
    records = []
    for i, value in enumerate(values):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (4, 4), (value, value, value)).save(path)
        records.append(Record(str(path), label=0, meta={"index": i}))
    return records


def _make_context(tmp_path: Path):
    def make(load_samples):
        return FitContext(work_dir=tmp_path, load_samples=load_samples, log=lambda message: None)

    return make


def test_fit_fits_trainable_stage_on_what_earlier_stages_produce_and_saves_it(tmp_path):
    train = _image_records(tmp_path, [10, 30])
    weights = tmp_path / "weights"
    stage = MeanBrightness(name="mean")
    pipeline = Pipeline([EvenGate(name="gate"), stage])
    summaries = pipeline.fit(train, [], weights, _make_context(tmp_path), log=lambda m: None)
    assert MeanBrightness.fit_calls == 1
    assert summaries["mean"]["images"] == 2
    assert "fit_seconds" in summaries["mean"]
    assert stage.fitted
    assert stage.mean.item() == pytest.approx(20.0)
    # The gate ran on every training sample (even those it would finish), and none stays finished.
    assert stage.fit_samples_saw_gate == [True, False]
    assert stage.has_saved_state(weights)


def test_second_fit_loads_saved_state_instead_of_refitting(tmp_path):
    train = _image_records(tmp_path, [40, 60])
    weights = tmp_path / "weights"
    Pipeline([MeanBrightness(name="mean")]).fit(train, [], weights, _make_context(tmp_path), log=lambda m: None)
    assert MeanBrightness.fit_calls == 1

    fresh = MeanBrightness(name="mean")
    summaries = Pipeline([fresh]).fit(train, [], weights, _make_context(tmp_path), log=lambda m: None)
    assert MeanBrightness.fit_calls == 1
    assert summaries == {"mean": {"loaded": True}}
    assert fresh.fitted
    assert fresh.mean.item() == pytest.approx(50.0)
    assert fresh.loaded_extra == {"note": "test"}


def test_load_restores_every_trainable_stage(tmp_path):
    train = _image_records(tmp_path, [100])
    weights = tmp_path / "weights"
    Pipeline([MeanBrightness(name="mean")]).fit(train, [], weights, _make_context(tmp_path), log=lambda m: None)
    fresh = MeanBrightness(name="mean")
    pipeline = Pipeline([Recorder(name="rec"), fresh])
    assert pipeline.trainable == [fresh]
    pipeline.load(weights)
    assert fresh.mean.item() == pytest.approx(100.0)


def test_load_fails_naming_the_stage_without_saved_state(tmp_path):
    from defectkit.errors import StateError

    with pytest.raises(StateError, match="'mean'"):
        Pipeline([MeanBrightness(name="mean")]).load(tmp_path)
