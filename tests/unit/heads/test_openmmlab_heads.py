"""OpenMMLab heads (the [openmmlab] extra): mmdet and mmseg models trained and run inside defectkit's stages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from defectkit.data.synthetic_car import draw_car_photo
from defectkit.errors import ConfigError
from defectkit.heads.openmmlab import deeplabv3plus_lite_config, load_openmmlab_checkpoint, tood_lite_config
from defectkit.registry import HEADS, STAGES, build
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext

needs_openmmlab = pytest.mark.skipif(
    importlib.util.find_spec("mmdet") is None or importlib.util.find_spec("mmseg") is None,
    reason="the [openmmlab] extra is not installed (bash scripts/install-openmmlab.sh)",
)

SIZE = 96


def small_tood(**options) -> dict:
    """TOOD-Lite at test size; its ATSS warm-up lasts one epoch so a two-epoch fit reaches task alignment."""
    cfg = tood_lite_config(channels=32, stacked_convs=1, **options)
    if cfg["type"] == "TOOD":
        cfg["train_cfg"]["initial_epoch"] = 1
    return cfg


class Store:
    """Generated car-panel photos with one dent each (polygon and its box), decoded like ``load_samples``."""

    def __init__(self) -> None:
        self.images: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)

    def records(self, prefix: str, n: int) -> list[Record]:
        out = []
        for i in range(n):
            image, regions = draw_car_photo((SIZE, SIZE), ["dent"], self.rng)
            points = np.asarray(regions[0]["points"], np.float32)
            (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0) + 1
            path = f"{prefix}/{i}.png"
            self.images[path] = image
            out.append(Record(path=path, label=1, boxes=[("dent", float(x1), float(y1), float(x2), float(y2))],
                              polygons={"dent": [[points.tolist()]]}))
        return out

    def load_samples(self, records) -> list[Sample]:
        return [Sample(record=r, image=self.images[r.path].copy()) for r in records]


@pytest.fixture(scope="module")
def data() -> dict:
    store = Store()
    return {"store": store, "train": store.records("train", 6), "val": store.records("val", 2), "test": store.records("test", 2)}


def context(store: Store) -> FitContext:
    return FitContext(work_dir=Path("."), load_samples=store.load_samples, classes=["dent"], log=lambda m: None)


def detector_stage(config) -> dict:
    return dict(type="Detector", image_size=(SIZE, SIZE), epochs=2, batch_size=3, pretrained=False, min_score=0.0,
                model=dict(type="mmdet", config=config, score_thresh=0.0))


@pytest.fixture(scope="module")
def fitted_tood(data):
    stage = build(STAGES, detector_stage(small_tood()))
    summary = stage.fit(data["train"], data["val"], context(data["store"]))
    return stage, summary


def test_openmmlab_heads_name_the_install_script_when_the_extra_is_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mmdet", None)  # import mmdet now raises ImportError
    monkeypatch.setitem(sys.modules, "mmseg", None)
    for head in ("mmdet", "mmseg"):
        with pytest.raises(ConfigError, match="install-openmmlab.sh"):
            build(HEADS, dict(type=head, num_classes=1, pretrained=False))


def test_openmmlab_configs_are_plain_dicts_without_the_extra() -> None:
    tood, atss, deeplab = tood_lite_config(num_classes=3), tood_lite_config(atss=True), deeplabv3plus_lite_config(num_classes=2)
    assert (tood["bbox_head"]["type"], tood["bbox_head"]["num_classes"], tood["neck"]["in_channels"]) == ("TOODHead", 3, [40, 112, 320])
    assert atss["type"] == "ATSS" and atss["bbox_head"]["anchor_generator"]["strides"] == [8, 16, 32]
    assert deeplab["decode_head"]["c1_in_channels"] == 24 and deeplab["decode_head"]["num_classes"] == 2


@needs_openmmlab
def test_openmmlab_tood_trains_in_the_detector_stage_through_both_label_assigners(fitted_tood) -> None:
    stage, summary = fitted_tood
    training = summary["training"]
    assert training["epochs"] == 2 and np.isfinite(training["train_loss"]) and np.isfinite(training["best_val_loss"])
    from mmengine.logging import MessageHub

    # The loop told the head each epoch, where mmengine's Runner would have: epoch 1 is past TOOD's initial epoch.
    assert stage.model.epoch == 1 and MessageHub.get_current_instance().get_info("epoch") == 1


@needs_openmmlab
def test_openmmlab_detector_reports_boxes_in_image_coordinates(fitted_tood, data) -> None:
    stage, _ = fitted_tood
    samples = data["store"].load_samples(data["test"])
    stage.predict(samples)
    for sample in samples:
        assert sample.instances, "score_thresh 0 and min_score 0 keep every box the head reports"
        for instance in sample.instances:
            x1, y1, x2, y2 = instance.box
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE and instance.class_name == "dent"
    wide = np.concatenate([data["store"].images[data["test"][0].path]] * 2, axis=1)  # 96 x 192: boxes scale back
    assert stage.detect([wide])[0].boxes[:, 2].max() > SIZE


@needs_openmmlab
def test_openmmlab_detector_state_round_trip_gives_identical_detections(fitted_tood, data, tmp_path) -> None:
    stage, _ = fitted_tood
    stage.fit_classes = ["dent"]
    stage.save(tmp_path)
    restored = build(STAGES, detector_stage(small_tood()))
    restored.load(tmp_path)
    images = [data["store"].images[r.path] for r in data["test"]]
    for a, b in zip(stage.detect(images), restored.detect(images)):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


@needs_openmmlab
def test_openmmlab_detector_is_not_exported_and_says_so(fitted_tood, data) -> None:
    stage, _ = fitted_tood
    with pytest.raises(ConfigError, match="mmdet model runs in PyTorch"):
        stage.export_module([data["store"].images[data["test"][0].path]])


@needs_openmmlab
def test_openmmlab_atss_and_a_config_file_build_with_their_default_scope(tmp_path) -> None:
    atss = build(HEADS, dict(type="mmdet", config=small_tood(atss=True), num_classes=2, pretrained=False))
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    losses = atss.train()(torch.zeros(1, 3, 64, 64), targets)
    assert {"loss_cls", "loss_bbox", "loss_centerness"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    file = tmp_path / "atss_lite.py"
    file.write_text(f"default_scope = 'mmdet'\nmodel = {small_tood(atss=True)!r}\n")
    from_file = build(HEADS, dict(type="mmdet", config=str(file), num_classes=2, pretrained=False, score_thresh=0.3))
    assert type(from_file.model).__name__ == "ATSS" and from_file.score_thresh == 0.3
    with pytest.raises(ConfigError, match="neither an OpenMMLab config file nor a preset"):
        build(HEADS, dict(type="mmdet", config=str(tmp_path / "missing.py"), num_classes=1, pretrained=False))


@needs_openmmlab
@pytest.mark.parametrize("head", ["mmdet", "mmseg"])
@pytest.mark.parametrize("bgr_to_rgb", [True, False])
def test_openmmlab_models_see_the_channel_order_and_scaling_their_preprocessor_asks_for(head, bgr_to_rgb) -> None:
    config = small_tood() if head == "mmdet" else deeplabv3plus_lite_config(channels=32)
    config["data_preprocessor"]["bgr_to_rgb"] = bgr_to_rgb
    model = build(HEADS, dict(type=head, config=config, num_classes=1, pretrained=False)).eval()
    seen = []
    model.model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    red = torch.full((1, 3, 64, 64), -1.0)
    red[:, 0] = 1.0  # defectkit's [-1, 1] RGB: pure red
    with torch.no_grad():
        model([red[0]] if head == "mmdet" else red)
    # mean 127.5, std 127.5: the backbone gets [-1, 1] back, red first when the model consumes RGB.
    expected = red if bgr_to_rgb else red.flip(1)
    torch.testing.assert_close(seen[0], expected)


@needs_openmmlab
def test_openmmlab_configs_that_would_download_weights_are_refused() -> None:
    cfg = small_tood()
    cfg["backbone"] = dict(type="ResNet", depth=18, init_cfg=dict(type="Pretrained", checkpoint="torchvision://resnet18"))
    with pytest.raises(ConfigError, match="would be downloaded"):
        build(HEADS, dict(type="mmdet", config=cfg, num_classes=1, pretrained=True))


class Payload:
    """Unpickling this would call print: stands for code hidden in an untrusted checkpoint."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


@needs_openmmlab
def test_openmmlab_checkpoints_load_weights_only_unless_trusted(tmp_path, capsys) -> None:
    source = build(HEADS, dict(type="mmdet", config=small_tood(), num_classes=1, pretrained=False))
    target = build(HEADS, dict(type="mmdet", config=small_tood(), num_classes=1, pretrained=False))
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("test_openmmlab_checkpoint")  # what mmengine's Runner saves beside the weights
    hub.update_scalar("train/loss", 1.25)
    hub.update_info("epoch", 12)
    runner_like = {"meta": {"epoch": 12, "seed": np.array([0]), "dataset_meta": {"classes": ("lesion",)}},
                   "state_dict": source.model.state_dict(), "message_hub": hub.state_dict()}
    torch.save(runner_like, tmp_path / "epoch_12.pth")
    counts = load_openmmlab_checkpoint(target.model, tmp_path / "epoch_12.pth")
    assert counts["loaded"] == len(source.model.state_dict()) and counts["missing"] == 0
    for key, value in source.model.state_dict().items():
        assert torch.equal(value, target.model.state_dict()[key]), key

    torch.save({"state_dict": {}, "meta": Payload()}, tmp_path / "hostile.pth")
    with pytest.raises(ConfigError, match=r"holds print, which is not weights.*trust_checkpoint=True"):
        load_openmmlab_checkpoint(target.model, tmp_path / "hostile.pth")
    assert "unpickled code ran" not in capsys.readouterr().out


@needs_openmmlab
def test_openmmlab_segmentor_trains_in_the_segmenter_stage_and_round_trips(data, tmp_path) -> None:
    config = deeplabv3plus_lite_config(channels=32)
    stage_cfg = dict(type="Segmenter", image_size=(64, 64), epochs=1, batch_size=4, pretrained=False,
                     model=dict(type="mmseg", config=config))
    stage = build(STAGES, stage_cfg)
    summary = stage.fit(data["train"], data["val"], context(data["store"]))
    assert np.isfinite(summary["training"]["train_loss"])
    samples = stage.predict(data["store"].load_samples(data["test"]))
    assert samples[0].prob_maps.shape == (1, SIZE, SIZE) and samples[0].map_classes == ["dent"]
    stage.fit_classes = ["dent"]
    stage.save(tmp_path)
    restored = build(STAGES, stage_cfg)
    restored.load(tmp_path)
    again = restored.predict(data["store"].load_samples(data["test"]))
    np.testing.assert_array_equal(samples[0].prob_maps, again[0].prob_maps)
    with pytest.raises(ConfigError, match="mmseg model runs in PyTorch"):
        restored.export_module([data["store"].images[data["test"][0].path]])
