"""AnomalyGate on tiny synthetic textures written to disk: fit, predict, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.evaluation.thresholds import best_threshold
from defectkit.io.images import load_image
from defectkit.registry import STAGES, build
from defectkit.sample import Record, Sample
from defectkit.stages.anomaly_gate import AnomalyGate
from defectkit.stages.base import FitContext

SIZE = 64


def texture(rng: np.random.Generator, blob: bool) -> tuple[np.ndarray, np.ndarray]:
    """Smooth noise texture (HxWx3 uint8) and its defect mask; a bright blob when ``blob``."""
    noise = rng.normal(0, 1, (SIZE // 4, SIZE // 4)).astype(np.float32)
    img = torch.nn.functional.interpolate(torch.from_numpy(noise)[None, None], size=(SIZE, SIZE), mode="bicubic")[0, 0]
    img = (110 + 18 * img.numpy()).clip(0, 255)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    if blob:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        cy, cx = rng.integers(16, 48, 2)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        img[inside], mask[inside] = 250, 255
    return np.repeat(img.astype(np.uint8)[..., None], 3, axis=2), mask


def write_records(root: Path, n: int, label: int, seed: int) -> list[Record]:
    """PNG images (and masks) on disk as Records."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        image, mask = texture(rng, blob=label == 1)
        path, mask_path = root / f"{label}_{seed}_{i}.png", root / f"{label}_{seed}_{i}_mask.png"
        Image.fromarray(image).save(path)
        Image.fromarray(mask).save(mask_path)
        records.append(Record(path=str(path), label=label, category="blob" if label else "good", mask_path=str(mask_path)))
    return records


def load_samples(records) -> list[Sample]:
    """Decode records like a pipeline would (errors kept on the sample)."""
    out = []
    for record in records:
        try:
            out.append(Sample(record=record, image=load_image(record.path)))
        except Exception as exc:  # noqa: BLE001
            out.append(Sample(record=record, error=str(exc)))
    return out


GATE = dict(
    type="AnomalyGate",
    model=dict(type="PatchCore", layers=(2, 3), coreset_size=200, score="max"),
    image_size=(64, 64),
    batch_size=8,
    chunk_size=10,
    calibration_fraction=0.25,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, list[Record]]:
    root = tmp_path_factory.mktemp("gate")
    train = write_records(root, 16, 0, 0) + write_records(root, 8, 1, 1)
    val = write_records(root, 4, 0, 2) + write_records(root, 4, 1, 3)
    test = write_records(root, 6, 0, 4) + write_records(root, 6, 1, 5)
    return {"train": train, "val": val, "test": test, "root": [Record(path=str(root))]}


@pytest.fixture(scope="module")
def fitted(data) -> tuple[AnomalyGate, dict]:
    gate = build(STAGES, dict(GATE, supervised=dict(C=0.1, folds=3, min_defects=4)))
    context = FitContext(work_dir=Path(data["root"][0].path), load_samples=load_samples)
    summary = gate.fit(data["train"], data["val"], context)
    return gate, summary


def test_gate_fit_returns_json_summary(fitted) -> None:
    import json

    _, summary = fitted
    json.dumps(summary)
    assert summary["bank_images"] == 12 and summary["calibration_normals"] == 8
    assert summary["labelled_defects"] == 12 and summary["supervised"] is True


def test_gate_separates_defects_and_sets_maps(fitted, data) -> None:
    gate, _ = fitted
    samples = gate.predict(load_samples(data["test"]))
    labels = [s.record.label for s in samples]
    predicted = [int(s.gate_label == "defect") for s in samples]
    assert predicted == labels
    for s in samples:
        assert (s.gate_score > 0.5) == (s.gate_label == "defect")
        assert s.prob_maps.shape == (1, SIZE, SIZE) and s.prob_maps.dtype == np.float32
        assert 0.0 <= s.prob_maps.min() and s.prob_maps.max() <= 1.0
        assert s.map_classes == ["defect"]


def test_gate_marks_normal_images_finished(fitted, data) -> None:
    gate, _ = fitted
    samples = gate.predict(load_samples(data["test"]))
    for s in samples:
        assert s.finished == (s.gate_label == "normal")


def test_gate_maps_keep_original_resolution(fitted) -> None:
    gate, _ = fitted
    rng = np.random.default_rng(9)
    image, _ = texture(rng, blob=True)
    tall = np.ascontiguousarray(np.concatenate([image, image[::-1]], axis=0)[:, :40])
    sample = gate.predict([Sample(record=Record(path="x"), image=tall)])[0]
    assert sample.prob_maps.shape == (1, 128, 40)


def test_gate_state_roundtrip_gives_identical_scores(fitted, data, tmp_path) -> None:
    gate, _ = fitted
    gate.save(tmp_path)
    reloaded = build(STAGES, dict(GATE))
    reloaded.load(tmp_path)
    a = gate.predict(load_samples(data["test"]))
    b = reloaded.predict(load_samples(data["test"]))
    assert [s.gate_score for s in a] == [s.gate_score for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.prob_maps, y.prob_maps)


def test_gate_skips_undecodable_images_and_limits_defects(data, tmp_path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    train = data["train"] + [Record(path=str(broken), label=0)]
    gate = build(STAGES, dict(GATE, max_labelled_defects=5))
    summary = gate.fit(train, data["val"], FitContext(work_dir=tmp_path, load_samples=load_samples))
    assert summary["labelled_defects"] == 5 and summary["skipped"] == 1
    assert summary["supervised"] is False


TILED_GATE = dict(GATE, image_size=(32, 32), tiles=dict(slice_size=(32, 32), overlap=0.25))


@pytest.fixture(scope="module")
def tiled(data) -> AnomalyGate:
    gate = build(STAGES, dict(TILED_GATE))
    gate.fit(data["train"], data["val"], FitContext(work_dir=Path(data["root"][0].path), load_samples=load_samples))
    return gate


def test_tiled_gate_scores_an_image_by_its_most_anomalous_window(tiled, data) -> None:
    image = load_samples(data["test"][-1:])[0].image
    windows = tiled._windows(image)
    assert len(windows) == 9  # 32 px windows, 24 px apart, over 64 px
    _, tiled_raw, _ = tiled.score_images([image])
    tiled.tiles = None
    try:
        _, window_raw, _ = tiled.score_images([np.ascontiguousarray(image[y1:y2, x1:x2]) for x1, y1, x2, y2 in windows])
    finally:
        tiled.configure_tiling((32, 32), (0.25, 0.25))
    assert tiled_raw[0] == pytest.approx(window_raw.max())


def test_tiled_gate_separates_defects_with_maps_at_image_resolution(tiled, data) -> None:
    samples = tiled.predict(load_samples(data["test"]))
    assert [int(s.gate_label == "defect") for s in samples] == [s.record.label for s in samples]
    assert all(s.prob_maps.shape == (1, SIZE, SIZE) for s in samples)
    assert tiled.summary["bank_images"] == 12  # images, each contributing its nine windows


def test_tiled_gate_keeps_its_calibrated_tiling_when_loaded(tiled, data, tmp_path) -> None:
    tiled.save(tmp_path)
    reloaded = build(STAGES, dict(GATE))  # config without tiles: the saved calibration decides
    reloaded.load(tmp_path)
    assert reloaded.tiles == {"slice_size": [32, 32], "overlap": [0.25, 0.25]}
    a = tiled.predict(load_samples(data["test"]))
    b = reloaded.predict(load_samples(data["test"]))
    assert [s.gate_score for s in a] == [s.gate_score for s in b]


def test_bad_tiles_option_names_the_valid_form() -> None:
    with pytest.raises(ValueError, match=r"tiles must be dict\(slice_size"):
        build(STAGES, dict(GATE, tiles=dict(size=32)))


def test_best_threshold_maximises_macro_f1() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.35])
    labels = np.array([0, 0, 0, 1, 1, 1])
    threshold, value = best_threshold(scores, labels)
    assert 0.3 < threshold < 0.35 and value == pytest.approx(1.0)


# Copy-paste and the peak input on too, so one fit covers them (4 pasted tiles per fold and for the final head).
PIXEL_GATE = dict(GATE, pixel=dict(long_side=64, folds=3, min_defects=4, peak=True, copy_paste=dict(images=4, max_pastes=1)))


@pytest.fixture(scope="module")
def pixel_gate(data) -> tuple[AnomalyGate, dict]:
    gate = build(STAGES, dict(PIXEL_GATE))
    summary = gate.fit(data["train"], data["val"], FitContext(work_dir=Path(data["root"][0].path), load_samples=load_samples))
    return gate, summary


def test_pixel_gate_summary_reports_cross_validated_mask_threshold_and_rates(pixel_gate) -> None:
    import json

    gate, summary = pixel_gate
    json.dumps(summary)
    assert summary["stacked_inputs"] == ["anomaly", "pixel", "peak"] and summary["pixel_cv_folds"] == 3
    assert summary["pixel_threshold_logit"] == pytest.approx(gate.pixel_threshold, abs=1e-3)
    assert summary["pixel_cv_auroc"] > 0.9 and summary["pixel_cv_iou"] > 0.3
    assert 0.0 <= summary["calibration_false_alarm_rate"] <= 1.0 and 0.0 <= summary["calibration_miss_rate"] <= 1.0
    # 4 per fold and 4 for the final head, fewer only when a blob found no free spot on a tile
    assert 8 <= summary["pixel_pasted_images"] <= 16
    assert any("mask: pixel-head logit above" in line for line in summary["thresholds_explained"])


def test_pixel_gate_masks_outline_the_blob(pixel_gate, data) -> None:
    gate, _ = pixel_gate
    samples = gate.predict(load_samples(data["test"]))
    assert [int(s.gate_label == "defect") for s in samples] == [s.record.label for s in samples]
    inter = union = 0
    for s in samples:
        truth = np.asarray(Image.open(s.record.mask_path)) > 127
        predicted = s.prob_maps[0] > 0.5
        assert s.prob_maps.shape == (1, SIZE, SIZE) and s.prob_maps.dtype == np.float32
        inter, union = inter + (truth & predicted).sum(), union + (truth | predicted).sum()
    assert inter / union > 0.4  # the anomaly map alone covers most of a 64 px tile


def test_pixel_gate_state_roundtrip_gives_identical_maps(pixel_gate, data, tmp_path) -> None:
    gate, _ = pixel_gate
    gate.save(tmp_path)
    reloaded = build(STAGES, dict(GATE))  # no pixel option in the config: the saved head is used
    reloaded.load(tmp_path)
    assert reloaded.pixel_head is not None and reloaded.pixel_threshold == gate.pixel_threshold
    a = gate.predict(load_samples(data["test"]))
    b = reloaded.predict(load_samples(data["test"]))
    assert [s.gate_score for s in a] == [s.gate_score for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.prob_maps, y.prob_maps)


def test_bad_pixel_option_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="pixel.folds must be >= 2"):
        build(STAGES, dict(GATE, pixel=dict(folds=1)))
    with pytest.raises(ValueError, match="pixel and tiles cannot be combined"):
        build(STAGES, dict(GATE, pixel=dict(), tiles=dict(slice_size=(32, 32))))


def test_bad_copy_paste_option_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="pixel.copy_paste must be None or dict"):
        build(STAGES, dict(GATE, pixel=dict(copy_paste=dict(p=0.5))))
    with pytest.raises(ValueError, match="CopyPaste"):
        build(STAGES, dict(GATE, pixel=dict(copy_paste=dict(images=3, max_pastes=0))))


def test_copy_paste_stops_once_enough_defects_are_labelled(pixel_gate) -> None:
    gate, _ = pixel_gate
    saved = gate.pixel_cfg
    gate.pixel_cfg = dict(saved, copy_paste=dict(images=3, max_defects=1))
    try:
        item = {"label": 1, "mask": np.ones((8, 8), bool), "image": np.zeros((8, 8, 3), np.uint8)}
        assert gate._pasted_items([item, dict(item, label=0), item], np.random.default_rng(0)) == []
    finally:
        gate.pixel_cfg = saved


def test_cross_fitted_gate_calibrates_on_every_normal_and_keeps_all_training_normals_in_its_model(data) -> None:
    gate = build(STAGES, dict(GATE, calibration_folds=3, supervised=dict(C=0.1, folds=3, min_defects=4)))
    context = FitContext(work_dir=Path(data["root"][0].path), load_samples=load_samples)
    summary = gate.fit(data["train"], data["val"], context)
    # 16 training normals all build the stored model; they and the 4 validation normals are calibration
    # images, each scored by a model built without its fold.
    assert summary["bank_images"] == 16 and summary["calibration_normals"] == 20
    assert summary["calibration_folds"] == 3 and summary["labelled_defects"] == 12
    samples = gate.predict(load_samples(data["test"]))
    assert [int(s.gate_label == "defect") for s in samples] == [s.record.label for s in samples]


def test_cross_fitted_normal_scores_come_from_models_that_never_saw_them(data) -> None:
    context = FitContext(work_dir=Path(data["root"][0].path), load_samples=load_samples)
    gate = build(STAGES, dict(GATE, calibration_folds=2))
    gate.fit(data["train"], data["val"], context)
    normals = sorted((r for r in data["train"] if r.label == 0), key=lambda r: r.path)
    kept, own_scores, _, _ = gate._embed_records(normals, context, "score", False, False)
    crossed_kept, crossed, _, _ = gate._cross_fitted_normals(normals, [], context, False, False)
    own = dict(zip((r.path for r in kept), own_scores))
    # The stored model's bank holds patches of every training normal, so it finds them closer than
    # a fold model, which never saw the image it scores.
    assert sorted(r.path for r in crossed_kept) == sorted(own)
    assert all(score > 1.3 * own[r.path] for r, score in zip(crossed_kept, crossed))


def test_calibration_folds_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="calibration_folds"):
        AnomalyGate(calibration_folds=1)


def test_gate_fits_the_same_wherever_the_data_set_is_stored(data, tmp_path) -> None:
    import dataclasses
    import shutil

    root = Path(data["root"][0].path)
    copy = tmp_path / "a copy elsewhere"
    shutil.copytree(root, copy)

    def moved(records: list[Record]) -> list[Record]:
        return [dataclasses.replace(r, path=str(copy / Path(r.path).name), mask_path=str(copy / Path(r.mask_path).name)) for r in records]

    summaries = []
    for train, val in ((data["train"], data["val"]), (moved(data["train"]), moved(data["val"]))):
        gate = build(STAGES, dict(GATE, calibration_folds=2, supervised=dict(C=0.1, folds=3, min_defects=4)))
        summary = gate.fit(train, val, FitContext(work_dir=tmp_path, load_samples=load_samples))
        summaries.append({k: v for k, v in summary.items() if "seconds" not in k})
    assert summaries[0] == summaries[1]


def test_cross_fitting_stops_once_more_defects_are_labelled_than_its_limit(data) -> None:
    context = FitContext(work_dir=Path(data["root"][0].path), load_samples=load_samples)
    few = build(STAGES, dict(GATE, calibration_folds=2, cross_fit_max_defects=12)).fit(data["train"], data["val"], context)
    many = build(STAGES, dict(GATE, calibration_folds=2, cross_fit_max_defects=11)).fit(data["train"], data["val"], context)
    # 12 defects are labelled: at the limit every normal calibrates; one over it, a held-out share does.
    assert few["calibration_folds"] == 2 and few["calibration_normals"] == 20
    assert many["calibration_folds"] is None and many["calibration_normals"] == 8


@pytest.mark.parametrize(("calibration_folds", "own_layers"), [(None, True), (3, True), (None, False)])
def test_flip_augment_trains_the_pooled_feature_classifier_on_mirror_images_too(data, calibration_folds, own_layers, monkeypatch) -> None:
    seen: list[tuple[int, int]] = []
    seen_x: list[np.ndarray] = []
    original = AnomalyGate._fit_supervised

    def spy(self, bank_x, cal_x, labels):
        seen.append((cal_x.ndim, cal_x.shape[1] if cal_x.ndim == 3 else 1))
        seen_x.append(cal_x)
        return original(self, bank_x, cal_x, labels)

    monkeypatch.setattr(AnomalyGate, "_fit_supervised", spy)
    supervised = dict(C=0.1, folds=3, min_defects=4, flip_augment=True)
    if own_layers:
        supervised.update(layers=(4,), image_size=(64, 64))
    gate = build(STAGES, dict(GATE, calibration_folds=calibration_folds, supervised=supervised))
    context = FitContext(work_dir=Path(data["root"][0].path), load_samples=load_samples)
    summary = gate.fit(data["train"], data["val"], context)
    # Each calibration image arrives with its two mirror images; prediction scores the images alone.
    assert seen == [(3, 3)] and summary["supervised"] is True
    assert not np.array_equal(seen_x[0][:, 0], seen_x[0][:, 1])  # a mirror image is not its tile
    samples = gate.predict(load_samples(data["test"]))
    assert [int(s.gate_label == "defect") for s in samples] == [s.record.label for s in samples]
    scores, _, _ = gate.score_images([s.image for s in samples])
    assert scores.shape == (len(samples),)
