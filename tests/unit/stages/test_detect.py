"""Detector stage on tiny generated images with bright squares as lesions: fit, predict, geometry, state."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defectkit.errors import ConfigError, StateError
from defectkit.registry import STAGES, build
from defectkit.sample import Detections, Instance, Record, Sample
from defectkit.stages.base import FitContext
from defectkit.stages.detect import TTA_FUSE_IOU, BoxAugment, Detector
from defectkit.tiling import merge_detections
from defectkit.training import BoxTensorDataset

CLASSES = ["lesion"]
SIZE = 96
STAGE = dict(type="Detector", image_size=(SIZE, SIZE), epochs=1, batch_size=4, pretrained=False, min_score=0.0,
             model=dict(type="fcos", fpn_channels=32, head_convs=1, score_thresh=0.0))


class Store:
    """In-memory face-like images addressed by record path, decoded like ``load_samples``.

    ``decode_scale`` < 1 hands out images reduced like a large photo decoded at working size.
    """

    def __init__(self, decode_scale: float = 1.0) -> None:
        self.images: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)
        self.loaded: list[str] = []
        self.decode_scale = decode_scale

    def records(self, prefix: str, n: int, size: int = SIZE, lesion: int = 14, boxes: bool = True) -> list[Record]:
        out = []
        for i in range(n):
            image = np.clip(self.rng.normal(110, 8, (size, size, 3)), 0, 255).astype(np.uint8)
            x, y = (int(v) for v in self.rng.integers(4, size - lesion - 4, 2))
            image[y : y + lesion, x : x + lesion] = 250
            path = f"{prefix}/{i}.png"
            self.images[path] = image
            out.append(Record(path=path, label=1, boxes=[("lesion", x, y, x + lesion, y + lesion)] if boxes else None))
        return out

    def load_samples(self, records) -> list[Sample]:
        self.loaded.extend(r.path for r in records)
        samples = []
        for record in records:
            image = self.images[record.path]
            if self.decode_scale == 1.0:
                samples.append(Sample(record=record, image=image.copy()))
                continue
            height, width = image.shape[:2]
            small = cv2.resize(image, (round(width * self.decode_scale), round(height * self.decode_scale)),
                               interpolation=cv2.INTER_AREA)
            samples.append(Sample(record=record, image=small, scale=self.decode_scale, original_size=(height, width)))
        return samples


def context(store: Store) -> FitContext:
    return FitContext(work_dir=Path("."), load_samples=store.load_samples, classes=CLASSES, log=lambda m: None)


@pytest.fixture(scope="module")
def data() -> dict:
    store = Store()
    normal = Record(path="normal/0.png", label=0)
    store.images[normal.path] = np.full((SIZE, SIZE, 3), 110, np.uint8)
    train = store.records("train", 6) + [normal] + store.records("unannotated", 2, boxes=False)
    return {"store": store, "train": train, "val": store.records("val", 2), "test": store.records("test", 2)}


@pytest.fixture(scope="module")
def fitted(data) -> tuple[Detector, dict]:
    stage = build(STAGES, dict(STAGE))
    summary = stage.fit(data["train"], data["val"], context(data["store"]))
    return stage, summary


def test_fit_trains_on_box_annotated_and_normal_images_only(fitted, data) -> None:
    stage, summary = fitted
    assert summary["train_images"] == 7 and summary["val_images"] == 2  # 6 with lesions + 1 normal
    assert summary["skipped_unannotated"] == 2 and summary["train_boxes"] == {"lesion": 6}
    assert not any(p.startswith("unannotated/") for p in data["store"].loaded)
    training = summary["training"]
    assert training["epochs"] == 1 and training["val_samples"] == 2
    assert np.isfinite(training["train_loss"]) and np.isfinite(training["best_val_loss"])
    assert not stage.model.training


def test_predict_sets_box_instances_in_image_coordinates(fitted, data) -> None:
    stage, _ = fitted
    samples = data["store"].load_samples(data["test"])
    stage.predict(samples)
    for sample in samples:
        assert sample.instances, "min_score=0 keeps every box the head reports"
        scores = [inst.score for inst in sample.instances]
        assert scores == sorted(scores, reverse=True)
        for inst in sample.instances:
            x1, y1, x2, y2 = inst.box
            assert inst.class_name == "lesion" and inst.polygon == []
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            assert inst.area == pytest.approx((x2 - x1) * (y2 - y1))
        assert sample.gate_label is None  # no image-level decision


def test_finished_samples_are_skipped(fitted, data) -> None:
    stage, _ = fitted
    samples = data["store"].load_samples(data["test"])
    samples[0].finished = True
    stage.predict(samples)
    assert samples[0].instances == [] and samples[1].instances


def test_detect_maps_boxes_back_to_each_images_own_size(fitted, data) -> None:
    stage, _ = fitted
    image = data["store"].images[data["test"][0].path]
    # Twice the size by pixel repetition: area-resizing it back to 96 px gives the very same input.
    double = cv2.resize(image, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_NEAREST)
    small, large = stage.detect([image, double])
    assert len(small) == len(large) > 0
    np.testing.assert_allclose(large.boxes, small.boxes * 2, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(large.scores, small.scores)


def test_flip_test_time_augmentation_fuses_boxes_found_in_both_passes(fitted, data) -> None:
    stage, _ = fitted
    image = data["store"].images[data["test"][0].path]
    plain = stage.detect([image])[0]
    stage.tta_flip = True
    try:
        fused, fused_mirror = stage.detect([image, np.ascontiguousarray(image[:, ::-1])])
    finally:
        stage.tta_flip = False
    assert len(fused) > 0 and fused.scores.max() <= plain.scores.max() + 1e-6
    # The flip of an image has the same two passes, swapped: the fused boxes are each other's mirror.
    mirrored = np.stack([SIZE - fused_mirror.boxes[:, 2], fused_mirror.boxes[:, 1], SIZE - fused_mirror.boxes[:, 0],
                         fused_mirror.boxes[:, 3]], axis=1)
    order, order_mirror = np.lexsort(fused.boxes.T), np.lexsort(mirrored.T)
    np.testing.assert_allclose(mirrored[order_mirror], fused.boxes[order], atol=1e-3)
    np.testing.assert_allclose(fused_mirror.scores[order_mirror], fused.scores[order], atol=1e-5)


def test_test_time_sizes_run_the_network_at_each_size_and_fuse_the_passes(fitted, data) -> None:
    stage, _ = fitted
    images = [data["store"].images[r.path] for r in data["test"]]
    seen: list[tuple[int, ...]] = []
    hook = stage.model.backbone.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    stage.tta_scales = (1.0, 2.0)
    try:
        fused = stage.detect(images)
        passes = [stage._detect_passes(images, (SIZE, SIZE))[0], stage._detect_passes(images, (2 * SIZE, 2 * SIZE))[0]]
    finally:
        stage.tta_scales = (1.0,)
        hook.remove()
    # The network really sees the larger input (its own transform does not resize it back).
    assert seen[:2] == [(SIZE, SIZE), (2 * SIZE, 2 * SIZE)]
    assert stage.model.transform.min_size == (SIZE,) and stage.model.transform.max_size == SIZE
    for index, found in enumerate(fused):
        larger = passes[1][index]
        assert len(larger) and (larger.boxes >= 0).all() and (larger.boxes <= SIZE).all()  # back in image pixels
        expected = merge_detections(Detections.concatenate([p[index] for p in passes]), "WBF", "IOU", TTA_FUSE_IOU, passes=2)
        np.testing.assert_array_equal(found.boxes, expected.boxes)
        np.testing.assert_array_equal(found.scores, expected.scores)


def test_test_time_sizes_are_checked() -> None:
    options = {k: v for k, v in STAGE.items() if k != "type"}
    stage = Detector(**options, tta_scales=(1.0, 2.0, 1.1, 0.5))
    # Sides rounded to multiples of 32: 96 * 1.1 -> 96 (the same pass as 1.0, run once), 96 * 0.5 -> 64.
    assert stage.tta_input_sizes() == [(SIZE, SIZE), (2 * SIZE, 2 * SIZE), (64, 64)]
    assert stage.describe()["tta_scales"] == [1.0, 2.0, 1.1, 0.5]
    with pytest.raises(ConfigError, match="tta_scales must be scales"):
        Detector(**options, tta_scales=(1.0, 5.0))
    assert stage.runs_other_input_sizes and not Detector(**options).runs_other_input_sizes


def test_boxes_of_a_downscaled_decode_map_onto_it_and_back() -> None:
    store = Store(decode_scale=0.5)
    record = store.records("big", 1, size=2 * SIZE, lesion=28)[0]
    _, x1, y1, x2, y2 = record.boxes[0]
    stage = Detector(**{k: v for k, v in STAGE.items() if k != "type"})
    stage.classes = CLASSES
    sample = store.load_samples([record])[0]
    items, problems = stage._items(sample, np.random.default_rng(0))
    assert not problems and len(items) == 1
    image, boxes, labels = items[0]
    assert image.shape == (SIZE, SIZE, 3) and labels.tolist() == [0]
    np.testing.assert_allclose(boxes, [[x1 / 2, y1 / 2, x2 / 2, y2 / 2]])  # original -> decoded (= image_size)
    # Predictions on the reduced image go back to original coordinates in the output line.
    sample.instances = [Instance("lesion", 0.9, tuple(float(v) for v in boxes[0]), 196.0)]
    line = sample.to_prediction()
    assert line["instances"][0]["box"] == pytest.approx([x1, y1, x2, y2], abs=0.1)


def test_training_slices_follow_the_sliced_inference_windows() -> None:
    store = Store()
    record = store.records("slices", 1, size=2 * SIZE, lesion=12)[0]
    stage = Detector(**{**{k: v for k, v in STAGE.items() if k != "type"},
                        "train_slices": dict(size=(SIZE, SIZE), overlap=0.25, keep_empty=1.0)})
    stage.classes = CLASSES
    items, _ = stage._items(store.load_samples([record])[0], np.random.default_rng(0))
    assert len(items) == 9  # 3 x 3 windows of 96 px over 192 px with 24 px overlap
    _, x1, y1, x2, y2 = record.boxes[0]
    with_box = [boxes for _, boxes, _ in items if len(boxes)]
    assert with_box and all(((b[:, 2] - b[:, 0]) <= x2 - x1 + 1e-4).all() for b in with_box)
    assert all(image.shape == (SIZE, SIZE, 3) for image, _, _ in items)
    none_empty = Detector(**{**{k: v for k, v in STAGE.items() if k != "type"},
                             "train_slices": dict(size=(SIZE, SIZE), overlap=0.25, keep_empty=0.0)})
    none_empty.classes = CLASSES
    kept, _ = none_empty._items(store.load_samples([record])[0], np.random.default_rng(0))
    assert len(kept) == len(with_box)


def test_a_tiling_stage_configures_the_training_slices() -> None:
    stage = Detector(**{k: v for k, v in STAGE.items() if k != "type"})
    stage.configure_slicing((128, 160), (0.2, 0.25))
    assert stage.train_slices["size"] == [128, 160] and stage.train_slices["overlap"] == [0.2, 0.25]
    assert stage.train_slices["keep_empty"] == 0.1
    opted_out = Detector(**{**{k: v for k, v in STAGE.items() if k != "type"}, "train_slices": False})
    opted_out.configure_slicing((128, 128), (0.2, 0.2))
    assert opted_out.train_slices is False


def test_augmented_items_keep_their_boxes_on_the_lesions() -> None:
    image = np.full((SIZE, SIZE, 3), 100, np.uint8)
    image[10:30, 5:25] = 255
    flip = BoxAugment(dict(type="Albumentations", transforms=[dict(type="HorizontalFlip", p=1.0)]), seed=0)
    x, target = BoxTensorDataset([image], [np.array([[5, 10, 25, 30]])], [np.array([0])], (SIZE, SIZE), transform=flip)[0]
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0])
    assert (x1, y1, x2, y2) == (SIZE - 25, 10, SIZE - 5, 30)
    assert float(x[:, y1:y2, x1:x2].min()) == 1.0  # the box is where the bright lesion went


def test_copy_paste_and_oversampling_plug_into_training(data) -> None:
    stage = build(STAGES, dict(STAGE, copy_paste=dict(p=1.0, max_pastes=2), oversample=dict(threshold=1.0), augment=None))
    stage.classes = CLASSES
    items, _, _ = stage._load(data["train"][:4] + [data["train"][6]], context(data["store"]), "load", 0)
    paste = stage._copy_paste_step(items, stage.seed)
    image, boxes, labels = paste(*items[-1])  # the normal image gets pasted lesions
    assert len(boxes) >= 1 and labels.tolist() == [0] * len(boxes) and image.max() == 250
    sampler = stage._sampler(items, stage.seed)
    weights = sampler.weights.tolist()
    assert weights[-1] == 1.0 and min(weights[:-1]) > 1.0  # images with a lesion are drawn more often


def test_the_members_of_an_ensemble_share_its_time_budget(data) -> None:
    stage = build(STAGES, dict(STAGE, ensemble=2, max_minutes=10.0))
    summary = stage.fit(data["train"][:4], [], context(data["store"]))
    assert [m["max_minutes"] for m in summary["training"]["members"]] == [5.0, 5.0]
    assert summary["training"]["max_minutes"] == 10.0


def test_an_ensemble_trains_each_member_from_its_own_seed_and_fuses_their_boxes(fitted, data, tmp_path) -> None:
    single, _ = fitted
    stage = build(STAGES, dict(STAGE, ensemble=2))
    summary = stage.fit(data["train"], data["val"], context(data["store"]))
    first, second = stage.model.members
    # Member 0 is the single network of the same seed; member 1 starts and trains from seed + 1.
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(first.state_dict()[key], value, msg=key)
    assert not torch.equal(first.head.classification_head.cls_logits.weight, second.head.classification_head.cls_logits.weight)
    assert summary["ensemble"] == 2 and [m["epochs"] for m in summary["training"]["members"]] == [1, 1]
    assert summary["training"]["steps"] == sum(m["steps"] for m in summary["training"]["members"])
    assert [m["max_minutes"] for m in summary["training"]["members"]] == [None, None]

    images = [data["store"].images[r.path] for r in data["test"]]
    fused = stage.detect(images)
    passes = stage._detect_passes(images)
    for index, found in enumerate(fused):
        expected = merge_detections(Detections.concatenate([p[index] for p in passes]), "WBF", "IOU", TTA_FUSE_IOU, passes=2)
        np.testing.assert_array_equal(found.boxes, expected.boxes)
        np.testing.assert_array_equal(found.scores, expected.scores)

    stage.fit_classes = CLASSES
    stage.save(tmp_path)
    restored = build(STAGES, dict(STAGE, ensemble=2))
    restored.load(tmp_path)
    assert restored.ensemble == 2 and restored.describe()["ensemble"] == 2
    for a, b in zip(fused, restored.detect(images)):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(StateError, match="2 network"):
        build(STAGES, dict(STAGE)).load(tmp_path)  # the config asks for one network: refused, not half-used


@pytest.mark.parametrize("frozen", [True, False])
def test_the_backbone_statistics_stay_as_imagenet_left_them_unless_unfrozen(data, frozen) -> None:
    stage = build(STAGES, dict(STAGE, freeze_pretrained_bn=frozen))
    summary = stage.fit(data["train"], data["val"], context(data["store"]))
    fresh = stage.build_network(pretrained=stage.pretrained)
    norms = [(n, m) for n, m in stage.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(n.startswith(stage.pretrained_prefix()) for n, _ in norms)
    unchanged = [torch.equal(m.running_var, fresh.get_submodule(n).running_var) for n, m in norms]
    assert all(unchanged) if frozen else not any(unchanged)
    assert summary["freeze_pretrained_bn"] is frozen


def test_frozen_backbone_layers_keep_their_weights_through_the_fit(data, monkeypatch) -> None:
    import defectkit.stages.network as network

    stem = ("backbone.body.conv_stem.", "backbone.body.bn1.", "backbone.body.blocks.0.")
    before: dict = {}
    real_fit_head = network.fit_head

    def fit_head_seeing_the_stem(head, train, val, loss_fn, **options):
        before.update({k: v.clone() for k, v in head.state_dict().items() if k.startswith(stem)})
        return real_fit_head(head, train, val, loss_fn, **options)

    monkeypatch.setattr(network, "fit_head", fit_head_seeing_the_stem)
    stage = build(STAGES, dict(STAGE, frozen_layers=stem))
    summary = stage.fit(data["train"], data["val"], context(data["store"]))
    after = stage.model.state_dict()
    assert before and all(torch.equal(after[k], v) for k, v in before.items())
    assert summary["training"]["frozen_layers"] == list(stem)


def test_focal_options_reach_the_head() -> None:
    stage = Detector(**{**{k: v for k, v in STAGE.items() if k != "type"}, "focal": dict(alpha=0.5, gamma=1.0)})
    stage.classes = ["lesion"]
    head = stage.build_network(pretrained=False).head
    assert (head.alpha, head.gamma) == (0.5, 1.0)


def test_state_round_trip_gives_identical_detections(fitted, data, tmp_path) -> None:
    stage, _ = fitted
    stage.fit_classes = CLASSES
    stage.save(tmp_path)
    restored = build(STAGES, dict(STAGE))
    restored.load(tmp_path)
    assert restored.classes == CLASSES and restored.model_cfg["type"] == "fcos"
    for key, value in stage.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key]), key
    images = [data["store"].images[r.path] for r in data["test"]]
    for a, b in zip(stage.detect(images), restored.detect(images)):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert restored.describe()["train_images"] == 7


def test_a_saved_detector_takes_its_post_processing_thresholds_from_the_config(fitted, data, tmp_path) -> None:
    stage, _ = fitted
    stage.fit_classes = CLASSES
    stage.save(tmp_path)
    images = [data["store"].images[r.path] for r in data["test"]]
    everything = stage.detect(images)
    strict_score = float(np.median(np.concatenate([d.scores for d in everything])))
    stricter = build(STAGES, dict(STAGE, model=dict(STAGE["model"], score_thresh=strict_score)))
    stricter.load(tmp_path)
    for before, after in zip(everything, stricter.detect(images)):
        # The same weights: exactly the boxes of the looser threshold that pass the stricter one.
        np.testing.assert_allclose(np.sort(after.scores), np.sort(before.scores[before.scores > strict_score]), rtol=1e-5)
    assert sum(map(len, stricter.detect(images))) < sum(map(len, everything))
    # A change to the network itself is still refused.
    other = build(STAGES, dict(STAGE, model=dict(STAGE["model"], fpn_channels=16)))
    with pytest.raises(Exception, match="differs from the config's"):
        other.load(tmp_path)


def test_a_tiling_stage_lets_the_config_re_threshold_its_saved_detector(fitted, tmp_path) -> None:
    stage, _ = fitted
    stage.fit_classes = CLASSES
    tiling = build(STAGES, dict(type="Tiling", name="tiled", slice_size=(64, 64), inner=dict(STAGE)))
    tiling.inner, tiling.fitted, tiling.fit_classes = stage, True, CLASSES
    tiling.save(tmp_path)
    restored = build(STAGES, dict(type="Tiling", name="tiled", slice_size=(64, 64),
                                  inner=dict(STAGE, model=dict(STAGE["model"], score_thresh=0.3, nms_thresh=0.4))))
    restored.load(tmp_path)
    assert (restored.inner.model_cfg["score_thresh"], restored.inner.model_cfg["nms_thresh"]) == (0.3, 0.4)


def test_bad_config_fails_early() -> None:
    with pytest.raises(ConfigError, match="multiples of 32"):
        Detector(image_size=(100, 100))
    with pytest.raises(ConfigError, match="fcos"):
        Detector(model=dict(type="yolo"))
    with pytest.raises(ConfigError, match="num_classes"):
        Detector(model=dict(type="fcos", num_classes=3))
    with pytest.raises(ConfigError, match="focal"):
        Detector(focal=dict(alpha=0.25, beta=1.0))
    with pytest.raises(ConfigError, match="size"):
        Detector(train_slices=dict(overlap=0.2))
    with pytest.raises(ConfigError, match="max_pastes"):
        Detector(copy_paste=dict(max_paste=2))
    with pytest.raises(ConfigError, match="threshold"):
        Detector(oversample=dict(threshold=2.0))
    with pytest.raises(ConfigError, match="Albumentations"):
        Detector(augment=dict(type="Resize", size=(64, 64)))
    with pytest.raises(ConfigError, match="ensemble"):
        Detector(ensemble=0)


def test_window_crops_in_training_clip_boxes_as_inference_windows_do() -> None:
    """Multi-scale training crops (e.g. RandomResizedCrop in ``augment``) are windows like sliced inference's:
    a box cut by the crop keeps its visible part when at least 30% of it shows, as slice_annotations
    keeps it for a Tiling window, and the crop is resized to the network input (lesions magnified)."""
    from defectkit.tiling import slice_annotations

    image = np.full((SIZE, SIZE, 3), 100, np.uint8)
    boxes = [("lesion", 10, 10, 20, 20), ("lesion", 40, 20, 56, 30), ("lesion", 44, 40, 54, 50), ("lesion", 70, 70, 80, 80)]
    window = (0, 0, 48, 48)  # half the image: the boxes inside, half, 40% and not at all visible
    crop = BoxAugment(dict(type="Albumentations", transforms=[
        dict(type="Crop", x_min=0, y_min=0, x_max=48, y_max=48), dict(type="Resize", height=SIZE, width=SIZE),
    ]), seed=0)
    _, trained, labels = crop(image, np.array([b[1:] for b in boxes], np.float32), np.zeros(len(boxes), np.int64))
    inferred = np.array([b[1:] for b in slice_annotations(boxes, window)], np.float32) * (SIZE / 48)
    assert len(inferred) == 3 and labels.tolist() == [0, 0, 0]
    np.testing.assert_allclose(trained, inferred, atol=1e-3)

