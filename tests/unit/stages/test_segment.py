"""Segmenter stage on tiny synthetic images kept in memory: fit, predict, multi-label targets, state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from defectkit.registry import STAGES, build
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext
from defectkit.stages.segment import Segmenter

CLASSES = ["square", "patch"]
STAGE = dict(type="Segmenter", image_size=(64, 64), epochs=1, batch_size=4, lr=1e-3,
             model=dict(type="Unet", decoder_channels=(32, 16, 16, 8, 8)))


def box(x: int, y: int, w: int, h: int) -> list[list[list[float]]]:
    return [[[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]]]


class Store:
    """In-memory images (varied sizes) addressed by record path, decoded like ``load_samples``."""

    def __init__(self) -> None:
        self.images: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)
        self.loaded: list[str] = []

    def records(self, prefix: str, n: int, annotated: bool = True) -> list[Record]:
        out = []
        for i in range(n):
            height, width = 48 + 8 * (i % 3), 56 + 4 * (i % 2)
            image = np.clip(self.rng.normal(100, 10, (height, width, 3)), 0, 255).astype(np.uint8)
            x, y = (int(v) for v in self.rng.integers(2, 24, 2))
            image[y : y + 16, x : x + 16] = 250  # bright square = class "square"
            path = f"{prefix}/{i}.png"
            self.images[path] = image
            # "patch" covers the square and more: the two classes overlap on the square.
            polygons = {"square": [box(x, y, 16, 16)], "patch": [box(max(0, x - 4), y, 24, 16)]}
            out.append(Record(path=path, label=1, polygons=polygons if annotated else None))
        return out

    def load_samples(self, records) -> list[Sample]:
        self.loaded.extend(r.path for r in records)
        return [Sample(record=r, image=self.images[r.path].copy()) for r in records]


def context(store: Store) -> FitContext:
    return FitContext(work_dir=Path("."), load_samples=store.load_samples, classes=CLASSES, log=lambda m: None)


@pytest.fixture(scope="module")
def data() -> dict:
    store = Store()
    train = store.records("train", 8) + store.records("unannotated", 2, annotated=False)
    return {"store": store, "train": train, "val": store.records("val", 2), "test": store.records("test", 3)}


@pytest.fixture(scope="module")
def fitted(data) -> tuple[Segmenter, dict]:
    stage = build(STAGES, dict(STAGE))
    summary = stage.fit(data["train"], data["val"], context(data["store"]))
    return stage, summary


def test_fit_trains_on_annotated_records_only(fitted, data) -> None:
    stage, summary = fitted
    assert summary["train_images"] == 8 and summary["val_images"] == 2
    assert summary["skipped_unannotated"] == 2
    assert not any(p.startswith("unannotated/") for p in data["store"].loaded)
    assert summary["training"]["epochs"] == 1 and summary["training"]["val_samples"] == 2
    assert np.isfinite(summary["training"]["train_loss"])


def test_predict_gives_prob_maps_at_image_size(fitted, data) -> None:
    stage, _ = fitted
    samples = data["store"].load_samples(data["test"])
    stage.predict(samples)
    for sample in samples:
        assert sample.map_classes == CLASSES
        assert sample.prob_maps.dtype == np.float32
        assert sample.prob_maps.shape == (len(CLASSES), *sample.image.shape[:2])
        assert 0.0 <= sample.prob_maps.min() and sample.prob_maps.max() <= 1.0


def test_finished_samples_are_skipped(fitted, data) -> None:
    stage, _ = fitted
    samples = data["store"].load_samples(data["test"][:2])
    samples[0].finished = True
    stage.predict(samples)
    assert samples[0].prob_maps is None and samples[1].prob_maps is not None


def test_overlapping_classes_are_both_targets(data) -> None:
    stage = Segmenter(image_size=(64, 64), augment=None, pretrained=False)
    stage.classes = CLASSES
    store = data["store"]
    images, masks, problems = stage._load(data["train"][:3], context(store), "load")
    assert not problems and len(masks) == 3
    for mask in masks:
        assert mask.shape == (2, 64, 64) and mask.dtype == bool
        overlap = mask[0] & mask[1]
        assert overlap.sum() > 0.8 * mask[0].sum() > 0  # the square is in both channels


def test_state_round_trip_is_identical(fitted, data, tmp_path) -> None:
    stage, _ = fitted
    stage.fit_classes = CLASSES
    stage.save(tmp_path)
    restored = build(STAGES, dict(STAGE))
    restored.load(tmp_path)
    assert restored.classes == CLASSES and restored.model_cfg["type"] == "Unet"
    for key, value in stage.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key]), key
    a = stage.predict(data["store"].load_samples(data["test"]))
    b = restored.predict(data["store"].load_samples(data["test"]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.prob_maps, y.prob_maps)


def test_deeplab_fits_and_predicts(data) -> None:
    stage = build(STAGES, dict(STAGE, model=dict(type="DeepLabV3Plus", decoder_channels=32), pretrained=False))
    stage.fit(data["train"][:4], [], context(data["store"]))
    sample = stage.predict(data["store"].load_samples(data["test"][:1]))[0]
    assert sample.prob_maps.shape == (2, *sample.image.shape[:2])


def test_bad_config_fails_early() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        Segmenter(image_size=(100, 100))
    with pytest.raises(ValueError, match="Unet"):
        Segmenter(model=dict(type="FPN"))


def test_a_segmenter_trained_on_crops_predicts_whole_images_at_their_resolution(data):
    seg = build(STAGES, {**STAGE, "image_size": (64, 64), "train_crop": (32, 32), "foreground_share": 1.0,
                         "loss": "bce_focal_tversky", "tta_flip": True})
    summary = seg.fit(data["train"], data["val"], context(data["store"]))
    assert summary["train_crop"] == [32, 32] and summary["loss"] == "bce_focal_tversky"
    assert summary["training"]["val_samples"] == 2  # one seeded crop per validation image
    samples = [Sample(record=r, image=data["store"].images[r.path]) for r in data["test"]]
    for sample in seg.predict(samples):
        assert sample.prob_maps.shape == (2, *sample.image.shape[:2])


@pytest.mark.parametrize("options", [dict(train_crop=(48, 48)), dict(train_crop=(96, 64)), dict(loss="hinge")])
def test_bad_crop_or_loss_settings_are_refused_when_the_stage_is_built(options):
    from defectkit.errors import ConfigError

    with pytest.raises(ConfigError):
        build(STAGES, {**STAGE, **options})


def test_the_prediction_batch_size_changes_the_batches_not_the_maps(fitted, data):
    stage, _ = fitted
    images = [data["store"].images[r.path] for r in data["test"]]
    sizes = []
    original = stage.forward

    def counting_forward(model, x):
        sizes.append(x.shape[0])
        return original(model, x)

    stage.forward = counting_forward
    try:
        by_size = {}
        for size in (1, 3):
            stage.predict_batch_size = size
            sizes.clear()
            by_size[size] = stage.probability_maps(images)
            assert sizes == ([1, 1, 1] if size == 1 else [3])
    finally:
        del stage.forward
        stage.predict_batch_size = None
    for one, three in zip(by_size[1], by_size[3]):
        np.testing.assert_allclose(one, three, atol=1e-5)


def test_prediction_batches_default_to_two_images_on_the_cpu_and_the_training_batch_on_a_gpu():
    stage = Segmenter(batch_size=8, pretrained=False)
    assert stage.prediction_batch_size() == 2
    stage.device = torch.device("cuda")  # the rule only; nothing runs there
    assert stage.prediction_batch_size() == 8
    assert Segmenter(batch_size=8, predict_batch_size=5).prediction_batch_size() == 5


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "4"])
def test_a_prediction_batch_size_that_is_not_a_positive_whole_number_is_refused(value):
    from defectkit.errors import ConfigError

    with pytest.raises(ConfigError, match="predict_batch_size"):
        build(STAGES, {**STAGE, "predict_batch_size": value})


def test_scale_test_time_augmentation_averages_the_maps_of_each_scale(fitted, data):
    stage, _ = fitted
    images = [data["store"].images[r.path] for r in data["test"][:2]]
    try:
        per_scale = {}
        for scales in [(1.0,), (1.5,), (1.0, 1.5)]:
            stage.tta_scales = scales
            per_scale[scales] = stage.probability_maps(images)
    finally:
        stage.tta_scales = (1.0,)
    for image, one, larger, both in zip(images, per_scale[(1.0,)], per_scale[(1.5,)], per_scale[(1.0, 1.5)]):
        assert both.shape == one.shape == (len(CLASSES), *image.shape[:2])
        assert not np.allclose(one, larger, atol=1e-4)  # the network saw another size
        # The average is taken at the network's output size, then resized: close to the average of the maps.
        np.testing.assert_allclose(both, (one + larger) / 2, atol=1e-3)


@pytest.mark.parametrize("scales", [(), (0.1,), (1.0, 5.0)])
def test_scales_outside_a_quarter_to_four_are_refused(scales):
    from defectkit.errors import ConfigError

    with pytest.raises(ConfigError, match="tta_scales"):
        build(STAGES, {**STAGE, "tta_scales": scales})


@pytest.fixture
def training_call(monkeypatch) -> dict:
    """What the stage passes to the training loop: its training set and options, recorded per call."""
    import defectkit.stages.network as network

    seen: dict = {}
    real_fit_head = network.fit_head

    def recording_fit_head(head, train, val, loss_fn, **options):
        seen.update(options, train=train)
        return real_fit_head(head, train, val, loss_fn, **options)

    monkeypatch.setattr(network, "fit_head", recording_fit_head)
    return seen


def test_oversampling_draws_images_of_a_rare_class_more_often_at_an_unchanged_epoch_length(training_call):
    store = Store()
    records = store.records("rare", 8)
    for record in records[2:]:  # "patch" stays in two of the eight images only
        record.polygons = {"square": record.polygons["square"]}
    stage = build(STAGES, {**STAGE, "augment": None, "oversample": dict(threshold=1.0, keep_epoch_length=True)})
    summary = stage.fit(records, [], context(store))

    assert summary["oversample"] == dict(threshold=1.0, keep_epoch_length=True)
    sampler, train = training_call["sampler"], training_call["train"]
    assert len(sampler) == len(train) == 8
    rare = {i for i in range(len(train)) if train[i][1][1].any()}
    assert len(rare) == 2
    draws = [int(i) for _ in range(300) for i in sampler]
    rare_share = sum(i in rare for i in draws) / len(draws)
    # factors: sqrt(1 / (2/8)) = 2 for the rare images, 1 for the rest -> 4 of 10 weight units
    assert rare_share == pytest.approx(0.4, abs=0.04)


def test_an_encoder_learning_rate_ratio_reaches_the_optimizer_as_a_scale_of_the_encoder(data, training_call):
    stage = build(STAGES, {**STAGE, "encoder_lr_ratio": 0.1})
    summary = stage.fit(data["train"][:4], [], context(data["store"]))
    assert training_call["lr_scales"] == {"encoder.": 0.1} and summary["encoder_lr_ratio"] == 0.1
    with pytest.raises(ValueError, match="encoder_lr_ratio must be in"):
        build(STAGES, {**STAGE, "encoder_lr_ratio": 0.0})


@pytest.mark.parametrize("frozen", [True, False])
def test_freezing_the_pretrained_batch_norms_keeps_the_encoder_statistics(data, training_call, frozen):
    stage = build(STAGES, {**STAGE, "freeze_pretrained_bn": frozen})
    summary = stage.fit(data["train"][:4], [], context(data["store"]))
    assert training_call["frozen_norms"] == (("encoder.",) if frozen else ()) and summary["freeze_pretrained_bn"] is frozen
    fresh = stage.build_network(pretrained=stage.pretrained)
    norms = [(n, m) for n, m in stage.model.named_modules() if n.startswith("encoder.") and isinstance(m, torch.nn.BatchNorm2d)]
    unchanged = [torch.equal(m.running_var, fresh.get_submodule(n).running_var) for n, m in norms]
    assert norms and (all(unchanged) if frozen else not any(unchanged))


def test_an_ema_decay_reaches_the_loop_and_an_out_of_range_one_is_refused(data, training_call):
    from defectkit.errors import ConfigError

    stage = build(STAGES, {**STAGE, "ema_decay": 0.99})
    stage.fit(data["train"][:4], [], context(data["store"]))
    assert training_call["ema_decay"] == 0.99
    with pytest.raises(ConfigError, match="Segmenter ema_decay must be in \\(0, 1\\) or None, got 1.5"):
        build(STAGES, {**STAGE, "ema_decay": 1.5})


def test_a_time_budget_cuts_the_epochs_the_stage_trains_and_a_non_positive_one_is_refused(data, training_call):
    from defectkit.errors import ConfigError

    stage = build(STAGES, {**STAGE, "epochs": 3, "max_minutes": 1e-6})  # less than any epoch takes
    summary = stage.fit(data["train"][:4], [], context(data["store"]))
    assert training_call["max_minutes"] == 1e-6
    assert summary["training"]["epochs"] == 1 and summary["training"]["epochs_requested"] == 3
    with pytest.raises(ConfigError, match="Segmenter max_minutes must be > 0 or None, got 0"):
        build(STAGES, {**STAGE, "max_minutes": 0})


def test_unknown_oversampling_options_are_refused_when_the_stage_is_built():
    from defectkit.errors import ConfigError

    with pytest.raises(ConfigError, match="Segmenter oversample got unknown option.*'thresold'.*valid options: threshold"):
        build(STAGES, {**STAGE, "oversample": dict(thresold=0.5)})
    with pytest.raises(ConfigError, match="threshold"):
        build(STAGES, {**STAGE, "oversample": dict(threshold=2.0)})


@pytest.mark.parametrize("criterion, loop_criterion", [("val_loss", "val_loss"), ("val_iou", "val_score")])
def test_every_epoch_logs_its_validation_iou_and_the_chosen_criterion_picks_the_kept_epoch(data, training_call,
                                                                                         criterion, loop_criterion):
    from defectkit.errors import ConfigError
    from defectkit.heads.segmenter import BestThresholdIoU

    stage = build(STAGES, {**STAGE, "epochs": 2, "best_epoch_by": criterion})
    lines: list[str] = []
    fit_context = context(data["store"])
    fit_context.log = lines.append
    summary = stage.fit(data["train"][:4], data["val"], fit_context)
    kept = summary["training"]["best_epoch"] + 1
    assert f"kept epoch {kept} (best {'val loss' if criterion == 'val_loss' else 'val_iou'})" in lines[-1]
    assert isinstance(training_call["val_score"], BestThresholdIoU) and training_call["best_epoch_by"] == loop_criterion
    history = summary["training"]["history"]
    assert summary["best_epoch_by"] == criterion and all(0.0 <= h["val_score"] <= 1.0 for h in history)
    values = [h["val_loss"] for h in history] if criterion == "val_loss" else [-h["val_score"] for h in history]
    assert summary["training"]["best_epoch"] == values.index(min(values))
    with pytest.raises(ConfigError, match="best_epoch_by must be one of \\['val_loss', 'val_iou'\\], got 'iou'"):
        build(STAGES, {**STAGE, "best_epoch_by": "iou"})


def test_progressive_resizing_reaches_the_loop_and_its_first_epochs_train_on_shrunk_batches(data, training_call):
    from defectkit.errors import ConfigError

    stage = build(STAGES, {**STAGE, "epochs": 2, "progressive_resize": dict(scale=0.5, share=0.5)})
    summary = stage.fit(data["train"][:4], data["val"], context(data["store"]))
    assert training_call["progressive_resize"] == (0.5, 0.5)
    assert summary["progressive_resize"] == dict(scale=0.5, share=0.5)
    assert [h["low_resolution"] for h in summary["training"]["history"]] == [True, False]
    with pytest.raises(ConfigError, match="progressive_resize takes exactly the keys 'scale' and 'share', got \\['scale'\\]"):
        build(STAGES, {**STAGE, "progressive_resize": dict(scale=0.5)})
    with pytest.raises(ConfigError, match="progressive_resize scale and share must be numbers in \\(0, 1\\)"):
        build(STAGES, {**STAGE, "progressive_resize": dict(scale=1.0, share=0.5)})


def test_frozen_layers_keep_the_encoder_stem_as_pretrained_and_a_misspelt_prefix_fails_in_one_line(data, monkeypatch):
    import defectkit.stages.network as network
    from defectkit.errors import ConfigError

    stem = ("encoder.model.conv_stem.", "encoder.model.bn1.")
    seen: dict = {}
    real_fit_head = network.fit_head

    def fit_head_seeing_the_stem(head, train, val, loss_fn, **options):
        seen["before"] = {k: v.clone() for k, v in head.state_dict().items() if k.startswith(stem)}
        seen["options"] = options
        return real_fit_head(head, train, val, loss_fn, **options)

    monkeypatch.setattr(network, "fit_head", fit_head_seeing_the_stem)
    stage = build(STAGES, {**STAGE, "pretrained": False, "frozen_layers": stem})
    summary = stage.fit(data["train"][:4], data["val"], context(data["store"]))
    assert seen["options"]["frozen_layers"] == stem
    assert summary["training"]["frozen_layers"] == list(stem)
    after = stage.model.state_dict()
    assert seen["before"] and all(torch.equal(after[k], v) for k, v in seen["before"].items())
    with pytest.raises(ConfigError, match="frozen_layers='encoder.' \\(Segmenter\\): expected a sequence of strings"):
        build(STAGES, {**STAGE, "frozen_layers": "encoder."})
    with pytest.raises(ConfigError, match="frozen_layers: an empty prefix would freeze every layer"):
        build(STAGES, {**STAGE, "frozen_layers": ["encoder.", ""]})
    misspelt = build(STAGES, {**STAGE, "pretrained": False, "frozen_layers": ("encoder.stem.",)})
    with pytest.raises(ConfigError, match="frozen_layers: no parameter of the 'Unet' network is named with the prefix 'encoder.stem.'"):
        misspelt.fit(data["train"][:4], data["val"], context(data["store"]))
