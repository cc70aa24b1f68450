"""ClassifierGate on tiny synthetic images kept in memory: fit, recall calibration, skipping, state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defectkit.errors import StateError
from defectkit.io.state import save_state
from defectkit.pipeline import Pipeline
from defectkit.registry import STAGES, build
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext, Stage
from defectkit.stages.classifier_gate import ClassifierGate, recall_threshold
from defectkit.stages.network import NetworkStage

SIZE = 48
CLASSES = ["normal", "damaged", "contaminated"]
GATE = dict(type="ClassifierGate", image_size=(64, 64), epochs=5, batch_size=8, lr=1e-3, target_recall=0.9)


def synth(rng: np.random.Generator, label: int) -> np.ndarray:
    """Grey noise (normal), plus a bright square (damaged) or dark spots (contaminated)."""
    image = np.clip(rng.normal(120, 12, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    if label == 1:
        y, x = rng.integers(4, SIZE - 24, 2)
        image[y : y + 20, x : x + 20] = 250
    elif label == 2:
        for y, x in rng.integers(2, SIZE - 8, (6, 2)):
            image[y : y + 6, x : x + 6] = 10
    return image


class Store:
    """In-memory images addressed by record path, decoded like a pipeline's ``load_samples``."""

    def __init__(self) -> None:
        self.images: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)

    def records(self, prefix: str, counts: dict[int, int]) -> list[Record]:
        out = []
        for label, n in counts.items():
            for i in range(n):
                path = f"{prefix}/{label}_{i}.png"
                self.images[path] = synth(self.rng, label)
                out.append(Record(path=path, label=label, category=CLASSES[label]))
        return out

    def load_samples(self, records) -> list[Sample]:
        return [Sample(record=r, image=self.images[r.path].copy()) for r in records]


def context(store: Store, log: list[str] | None = None) -> FitContext:
    return FitContext(
        work_dir=Path("."), load_samples=store.load_samples, image_classes=CLASSES,
        log=(log.append if log is not None else (lambda message: None)),
    )


@pytest.fixture(scope="module")
def data() -> dict:
    store = Store()
    return {
        "store": store,
        "train": store.records("train", {0: 12, 1: 8, 2: 6}),
        "val": store.records("val", {0: 8, 1: 6, 2: 4}),
        "test": store.records("test", {0: 6, 1: 4, 2: 4}),
    }


@pytest.fixture(scope="module")
def fitted(data) -> tuple[ClassifierGate, dict]:
    gate = build(STAGES, dict(GATE))
    summary = gate.fit(data["train"], data["val"], context(data["store"]))
    return gate, summary


def test_classifier_gate_calibrates_threshold_for_target_recall(fitted, data) -> None:
    gate, summary = fitted
    assert summary["trained"] and summary["calibrated_on"] == "val"
    assert summary["positive_classes"] == ["damaged", "contaminated"]
    assert summary["val_recall"] >= GATE["target_recall"]
    samples = gate.predict(data["store"].load_samples(data["val"]))
    positives = [s for s in samples if s.record.label != 0]
    recall = np.mean([s.gate_score >= summary["threshold"] for s in positives])
    assert recall >= GATE["target_recall"] and recall == pytest.approx(summary["val_recall"], abs=1e-3)
    skipped = np.mean([s.finished for s in samples])
    assert skipped == pytest.approx(summary["val_skip_share"], abs=1e-3)


def test_gate_labels_stay_on_the_side_the_threshold_decided(fitted, data) -> None:
    gate, _ = fitted
    for s in gate.predict(data["store"].load_samples(data["test"])):
        assert 0.0 <= s.gate_score <= 1.0
        if s.gate_score >= gate.threshold:
            assert s.gate_label in ("damaged", "contaminated") and not s.finished
        else:
            assert s.gate_label == "normal" and s.finished
        assert set(s.gate_probabilities) == set(CLASSES)


class Recorder(Stage):
    """Remembers the paths of every sample it is given."""

    def __init__(self) -> None:
        super().__init__("recorder")
        self.seen: list[str] = []

    def predict(self, samples: list[Sample]) -> list[Sample]:
        self.seen.extend(s.record.path for s in samples)
        return samples


def test_gate_skips_segmentation_for_normal_images(fitted, data) -> None:
    gate, _ = fitted
    recorder = Recorder()
    samples = Pipeline([gate, recorder]).predict(data["store"].load_samples(data["test"]))
    skipped = {s.record.path for s in samples if s.gate_label == "normal"}
    passed = {s.record.path for s in samples if s.gate_label != "normal"}
    assert skipped and passed, "the toy data should give both decisions"
    assert set(recorder.seen) == passed and not skipped & set(recorder.seen)


def test_state_roundtrip_gives_identical_scores(fitted, data, tmp_path) -> None:
    gate, _ = fitted
    gate.save(tmp_path)
    reloaded = build(STAGES, dict(GATE))
    reloaded.load(tmp_path)
    a = gate.predict(data["store"].load_samples(data["test"]))
    b = reloaded.predict(data["store"].load_samples(data["test"]))
    assert [s.gate_score for s in a] == [s.gate_score for s in b]
    assert [s.gate_label for s in a] == [s.gate_label for s in b]
    assert reloaded.threshold == gate.threshold and reloaded.image_classes == CLASSES


def test_single_class_training_data_disables_the_gate_with_a_message(data, tmp_path) -> None:
    store: Store = data["store"]
    only_damaged = store.records("single", {1: 5})
    log: list[str] = []
    gate = build(STAGES, dict(GATE))
    summary = gate.fit(only_damaged, data["val"], context(store, log))
    assert summary["trained"] is False and "only one image class" in summary["reason"]
    assert any("enabled=False" in line and "only one image class" in line for line in log)
    samples = gate.predict(store.load_samples(data["test"]))
    assert all(s.gate_label is None and not s.finished for s in samples)  # everything passes
    assert "passes to the next stage" in gate.describe()["note"]
    gate.save(tmp_path)
    reloaded = build(STAGES, dict(GATE))
    reloaded.load(tmp_path)
    assert not reloaded.active and reloaded.predict(store.load_samples(data["test"][:2]))[0].gate_label is None


def test_disabled_gate_passes_everything_and_says_so(data) -> None:
    gate = build(STAGES, dict(GATE, enabled=False))
    summary = gate.fit(data["train"], data["val"], context(data["store"]))
    assert summary == {"enabled": False, "trained": False, "note": gate.describe()["note"]}
    samples = gate.predict(data["store"].load_samples(data["test"]))
    assert all(not s.finished and s.gate_score is None for s in samples)


def test_threshold_falls_back_to_training_images_without_positive_validation_images(data) -> None:
    log: list[str] = []
    val_normals = [r for r in data["val"] if r.label == 0]
    gate = build(STAGES, dict(GATE, augment=None, max_images=12, positive_classes=["damaged"]))
    summary = gate.fit(data["train"], val_normals, context(data["store"], log))
    assert summary["calibrated_on"] == "train" and summary["val_recall"] is None
    assert summary["train_images"] == 12 and all(n >= 1 for n in summary["train_per_class"].values())
    assert summary["positive_classes"] == ["damaged"]
    assert any("calibrated on training images" in line for line in log)


def test_predict_before_fit_raises() -> None:
    gate = ClassifierGate(image_size=(64, 64))
    with pytest.raises(RuntimeError, match="before fit"):
        gate.predict([Sample(record=Record(path="x"), image=np.zeros((8, 8, 3), np.uint8))])


def test_unknown_positive_class_is_rejected(data) -> None:
    gate = build(STAGES, dict(GATE, positive_classes=["dented"]))
    with pytest.raises(ValueError, match="dented"):
        gate.fit(data["train"], data["val"], context(data["store"]))


def test_recall_threshold_is_the_highest_keeping_the_target() -> None:
    scores = np.array([0.05, 0.2, 0.3, 0.5, 0.6, 0.7, 0.9, 0.95])
    positive = np.array([False, True, False, False, True, True, True, True])
    t = recall_threshold(scores, positive, 0.8)  # 4 of 5 positives: the 4th highest is 0.6
    assert 0.5 < t <= 0.6
    assert np.mean(scores[positive] >= t) >= 0.8
    assert recall_threshold(scores, positive, 1.0) < 0.2
    assert recall_threshold(scores, np.zeros(8, bool), 0.9) == -np.inf


def test_gate_is_a_network_stage_and_saves_like_one(fitted, tmp_path) -> None:
    gate, _ = fitted
    assert isinstance(gate, NetworkStage)
    tensors, extra = gate.state_tensors()
    assert extra["model"] == {"type": "EfficientNetLite0"} and extra["classes"] == CLASSES
    assert extra["active"] is True and extra["positive"] == [1, 2]
    assert "threshold" in tensors and any(k.startswith("model.") for k in tensors)
    assert not any(k.startswith("classifier.") for k in tensors)


def test_weights_saved_in_the_old_gate_layout_are_refused_in_one_line(fitted, tmp_path) -> None:
    gate, _ = fitted
    tensors, _ = gate.state_tensors()
    # The layout before the gate became a NetworkStage: "classifier." weights, no model description.
    old = {"threshold": tensors["threshold"], **{f"classifier.{k[len('model.'):]}": v for k, v in tensors.items() if k.startswith("model.")}}
    save_state(tmp_path, gate.name, "ClassifierGate", old,
               {"image_classes": CLASSES, "positive": [1, 2], "image_size": [64, 64], "enabled": True, "active": True, "summary": {}})
    with pytest.raises(StateError, match="no model description") as info:
        build(STAGES, dict(GATE)).load(tmp_path)
    assert "\n" not in str(info.value) and "refusing to load" in str(info.value)


def test_image_size_need_not_be_a_multiple_of_32_for_the_gate() -> None:
    assert ClassifierGate(image_size=(100, 75)).image_size == (100, 75)
