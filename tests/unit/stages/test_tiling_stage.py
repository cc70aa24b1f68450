"""Tiling stage: windows of every image batched through the inner stage, boxes mapped back and
merged, segmenter maps blended without seams, fit and state delegated to the inner stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from defectkit.errors import ConfigError, StateError
from defectkit.heads.segmenter import build_segmenter
from defectkit.io.state import read_manifest
from defectkit.pipeline import Pipeline
from defectkit.registry import STAGES, build
from defectkit.sample import Detections, Record, Sample
from defectkit.stages.base import Detects, FitContext, Segments, TrainableStage, TrainsOnSlices
from defectkit.stages.segment import Segmenter
from defectkit.stages.tiling import Tiling
from defectkit.tiling import slice_windows

CLASSES = ["dent", "scratch"]


class BrightBoxDetector(Detects):
    """A detector double: one box per connected region of 255 in the red channel ("dent") or only in
    the green channel ("scratch"); a box scores higher the more of its region the image shows."""

    classes = CLASSES

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.shapes: list[tuple[int, int]] = []

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        self.batch_sizes.append(len(images))
        self.shapes.extend(image.shape[:2] for image in images)
        return [self._boxes(image) for image in images]

    @staticmethod
    def _boxes(image: np.ndarray) -> Detections:
        red, green = image[..., 0] == 255, image[..., 1] == 255
        boxes, scores, labels = [], [], []
        for label, mask in enumerate([red, green & ~red]):
            regions, _ = ndimage.label(mask)
            for rows, columns in ndimage.find_objects(regions):
                box = [columns.start, rows.start, columns.stop, rows.stop]
                boxes.append(box)
                scores.append(min(0.99, 0.3 + (box[2] - box[0]) * (box[3] - box[1]) / 10000))
                labels.append(label)
        if not boxes:
            return Detections.empty()
        return Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(labels, np.int64))


class TrainableBrightBoxDetector(BrightBoxDetector, TrainsOnSlices, TrainableStage):
    """The detector double with a weight, fit and state, recording how it was trained."""

    def __init__(self) -> None:
        super().__init__()
        TrainableStage.__init__(self, "bright_boxes")
        self.fitted = False
        self.fit_classes: list[str] | None = None
        self.weight = torch.zeros(3)
        self.slicing: tuple | None = None

    def configure_slicing(self, slice_size, overlap) -> None:
        self.slicing = (slice_size, overlap)

    def fit(self, train, val, context) -> dict:
        self.weight = torch.arange(3, dtype=torch.float32) + len(train)
        return {"train_images": len(train)}

    def state_tensors(self):
        return {"weight": self.weight.clone()}, {"classes": CLASSES, "image_size": [64, 64]}

    def load_state_tensors(self, tensors, extra) -> None:
        self.weight = tensors["weight"].clone()
        self.fitted = True

    def describe(self) -> dict:
        return {"type": type(self).__name__, "classes": CLASSES}


class AlternatingSegmenter(Segments):
    """A segmenter double whose every window map is one constant, alternating 0, 1, 0... per call order."""

    classes = ["defect"]

    def __init__(self) -> None:
        self.calls = 0

    def probability_maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        maps = []
        for image in images:
            maps.append(np.full((1, *image.shape[:2]), float(self.calls % 2), np.float32))
            self.calls += 1
        return maps


def image_with(height: int, width: int, red=(), green=()) -> np.ndarray:
    """A black image with bright red / green rectangles ``(x1, y1, x2, y2)``."""
    image = np.zeros((height, width, 3), np.uint8)
    for x1, y1, x2, y2 in red:
        image[y1:y2, x1:x2, 0] = 255
    for x1, y1, x2, y2 in green:
        image[y1:y2, x1:x2, 1] = 255
    return image


def samples_of(*images: np.ndarray) -> list[Sample]:
    return [Sample(Record(f"{i}.png"), image=image) for i, image in enumerate(images)]


def boxes_of(sample: Sample) -> list[tuple[str, tuple[float, ...]]]:
    return sorted((inst.class_name, inst.box) for inst in sample.instances)


# ----------------------------------------------------------------------------- detector path
def test_windows_of_all_images_are_sent_together_in_batches():
    detector = BrightBoxDetector()
    tiling = Tiling(inner=detector, slice_size=100, overlap=0.2, batch_size=4, full_image=False)
    tiling.predict(samples_of(image_with(100, 250), image_with(100, 250)))  # 3 windows each
    assert detector.batch_sizes == [4, 2]
    assert detector.shapes == [(100, 100)] * 6


def test_whole_images_are_batched_after_the_windows():
    detector = BrightBoxDetector()
    tiling = Tiling(inner=detector, slice_size=100, overlap=0.2, batch_size=4)
    tiling.predict(samples_of(image_with(100, 250), image_with(100, 250), image_with(180, 100)))
    assert detector.batch_sizes == [4, 4, 3]  # 3 + 3 + 2 windows, then 3 whole images
    assert detector.shapes[-3:] == [(100, 250), (100, 250), (180, 100)]


def test_boxes_found_in_a_window_come_back_in_image_coordinates():
    tiling = Tiling(inner=BrightBoxDetector(), slice_size=100, overlap=0.2, full_image=False)
    sample = tiling.predict(samples_of(image_with(180, 250, red=[(200, 130, 220, 150)], green=[(5, 5, 15, 9)])))[0]
    assert boxes_of(sample) == [("dent", (200.0, 130.0, 220.0, 150.0)), ("scratch", (5.0, 5.0, 15.0, 9.0))]
    assert {inst.area for inst in sample.instances} == {400.0, 40.0}


def test_a_defect_split_across_two_windows_becomes_one_box():
    # Windows (0, 100) and (80, 180) see x 70-100 and 80-110 of the defect.
    tiling = Tiling(inner=BrightBoxDetector(), slice_size=100, overlap=0.2, full_image=False)
    sample = tiling.predict(samples_of(image_with(100, 250, red=[(70, 40, 110, 60)])))[0]
    assert boxes_of(sample) == [("dent", (70.0, 40.0, 110.0, 60.0))]


def test_the_whole_image_pass_joins_pieces_of_a_defect_larger_than_a_window():
    image = image_with(100, 250, red=[(40, 40, 200, 60)])
    pieces = Tiling(inner=BrightBoxDetector(), slice_size=100, overlap=0.2, full_image=False)
    assert len(pieces.predict(samples_of(image))[0].instances) > 1
    joined = Tiling(inner=BrightBoxDetector(), slice_size=100, overlap=0.2, full_image=True)
    assert boxes_of(joined.predict(samples_of(image))[0]) == [("dent", (40.0, 40.0, 200.0, 60.0))]


def test_an_image_smaller_than_a_window_is_detected_once_whole():
    detector = BrightBoxDetector()
    tiling = Tiling(inner=detector, slice_size=(128, 128), full_image=True)
    sample = tiling.predict(samples_of(image_with(60, 70, red=[(10, 20, 30, 25), (12, 21, 31, 26)])))[0]
    assert detector.shapes == [(60, 70)]
    assert len(sample.instances) == 1  # the detector's own output, not re-merged


def test_merge_options_and_min_score_apply_to_the_merged_boxes():
    image = image_with(100, 250, red=[(70, 40, 110, 60)])
    nms = Tiling(inner=BrightBoxDetector(), slice_size=100, overlap=0.2, full_image=False,
                 merge=dict(method="NMS"))
    assert boxes_of(nms.predict(samples_of(image))[0]) == [("dent", (70.0, 40.0, 100.0, 60.0))]  # larger piece
    strict = Tiling(inner=BrightBoxDetector(), slice_size=100, overlap=0.2, min_score=0.99)
    assert strict.predict(samples_of(image))[0].instances == []


def test_without_its_own_min_score_the_stage_uses_the_inner_detectors():
    detector = BrightBoxDetector()
    detector.min_score = 0.33  # drops boxes under 300 px
    tiling = Tiling(inner=detector, slice_size=100, overlap=0.2)
    sample = tiling.predict(samples_of(image_with(100, 250, red=[(10, 10, 20, 20), (150, 10, 180, 30)])))[0]
    assert boxes_of(sample) == [("dent", (150.0, 10.0, 180.0, 30.0))]
    assert tiling.describe()["min_score"] == pytest.approx(0.33)


def test_finished_samples_are_left_alone():
    detector = BrightBoxDetector()
    tiling = Tiling(inner=detector, slice_size=100, full_image=False)
    samples = samples_of(image_with(100, 100, red=[(1, 1, 9, 9)]), image_with(100, 100, red=[(1, 1, 9, 9)]))
    samples[0].finished = True
    tiling.predict(samples)
    assert samples[0].instances == [] and len(samples[1].instances) == 1
    assert detector.batch_sizes == [1]


# ----------------------------------------------------------------------------- segmenter path
def test_window_maps_blend_without_seams():
    tiling = Tiling(inner=AlternatingSegmenter(), slice_size=32, overlap=0.25)
    sample = tiling.predict(samples_of(image_with(64, 96)))[0]
    assert sample.prob_maps.shape == (1, 64, 96) and sample.map_classes == ["defect"]
    jumps = [np.abs(np.diff(sample.prob_maps[0], axis=axis)).max() for axis in (0, 1)]
    assert max(jumps) <= 0.2  # neighbouring windows differ by 1; the blend spreads it over 8 px


@pytest.fixture(scope="module")
def segmenter_tiling() -> Tiling:
    torch.manual_seed(0)
    tiling = build(STAGES, dict(
        type="Tiling", slice_size=48, overlap=0.25, batch_size=3,
        inner=dict(type="Segmenter", image_size=(32, 32), pretrained=False,
                   model=dict(type="Unet", decoder_channels=(16, 16, 8, 8, 8))),
    ))
    inner = tiling.inner
    inner.classes = list(CLASSES)
    inner.model = build_segmenter(inner.model_cfg, len(CLASSES), pretrained=False).eval()
    inner.fitted = True
    return tiling


def test_a_segmenter_config_builds_a_tiling_segmenter(segmenter_tiling):
    assert isinstance(segmenter_tiling.inner, Segmenter)
    assert segmenter_tiling.kind == "segmenter" and segmenter_tiling.full_image is False
    described = segmenter_tiling.describe()
    assert described["type"] == "Tiling" and described["slice_size"] == [48, 48]
    assert described["overlap"] == [0.25, 0.25] and described["inner"]["type"] == "Segmenter"


def test_segmenter_maps_cover_the_image_and_equal_the_window_maps_where_one_window_covers(segmenter_tiling):
    image = np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    sample = segmenter_tiling.predict(samples_of(image))[0]
    assert sample.prob_maps.shape == (2, 80, 120) and sample.prob_maps.dtype == np.float32
    assert sample.map_classes == CLASSES
    assert 0.0 <= sample.prob_maps.min() and sample.prob_maps.max() <= 1.0
    first = slice_windows(80, 120, 48, 48, 0.25, 0.25)[0]
    assert first == (0, 0, 48, 48)
    alone = segmenter_tiling.inner.probability_maps([image[0:48, 0:48]])[0]
    # Rows 0-31 and columns 0-35 of the first window are covered by no other window (the last row shifts up to 32).
    np.testing.assert_allclose(sample.prob_maps[:, :32, :36], alone[:, :32, :36], atol=1e-6)


def test_an_image_smaller_than_a_window_gets_the_segmenters_own_map(segmenter_tiling):
    image = np.random.default_rng(1).integers(0, 255, (40, 44, 3), dtype=np.uint8)
    sample = segmenter_tiling.predict(samples_of(image))[0]
    np.testing.assert_array_equal(sample.prob_maps, segmenter_tiling.inner.probability_maps([image])[0])


def test_saved_state_round_trips_through_the_inner_segmenter(segmenter_tiling, tmp_path):
    segmenter_tiling.fit_classes = CLASSES
    segmenter_tiling.save(tmp_path)
    manifest = read_manifest(tmp_path, "tiling")
    assert manifest["stage_type"] == "Tiling" and manifest["classes"] == CLASSES
    assert manifest["extra"]["inner_type"] == "Segmenter" and manifest["input_size"] == [32, 32]
    restored = build(STAGES, dict(
        type="Tiling", slice_size=48, overlap=0.25,
        inner=dict(type="Segmenter", image_size=(32, 32), pretrained=False,
                   model=dict(type="Unet", decoder_channels=(16, 16, 8, 8, 8))),
    ))
    assert not restored.fitted
    restored.load(tmp_path)
    assert restored.fitted and restored.inner.fitted and restored.classes == CLASSES
    image = np.random.default_rng(2).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    # Equal weights, equal to float rounding: in batches of 2 (the CPU default) oneDNN's kernels
    # differed in the last bit between two copies of the same weights at different addresses.
    np.testing.assert_allclose(
        restored.predict(samples_of(image))[0].prob_maps, segmenter_tiling.predict(samples_of(image))[0].prob_maps,
        rtol=0, atol=1e-6,
    )


def test_state_saved_around_another_inner_stage_is_refused(segmenter_tiling, tmp_path):
    segmenter_tiling.save(tmp_path)
    other = Tiling(inner=TrainableBrightBoxDetector(), slice_size=48)
    with pytest.raises(StateError, match="Segmenter"):
        other.load(tmp_path)


# ----------------------------------------------------------------------------- fit and state
def test_fit_delegates_to_the_inner_stage_with_the_slicing_and_fitted_mirrors_it():
    detector = TrainableBrightBoxDetector()
    tiling = Tiling(inner=detector, slice_size=(64, 96), overlap=(0.1, 0.2))
    assert not tiling.fitted
    context = FitContext(work_dir=Path("."), load_samples=lambda records: [], classes=CLASSES, log=lambda m: None)
    summary = tiling.fit([Record("a.png"), Record("b.png")], [], context)
    assert summary["train_images"] == 2 and summary["tiling"]["slice_size"] == [64, 96]
    assert detector.slicing == ((64, 96), (0.1, 0.2))
    tiling.fitted = True
    assert detector.fitted


def test_a_pipeline_fits_saves_and_reloads_a_tiling_detector(tmp_path):
    def make_context(load_samples):
        return FitContext(work_dir=tmp_path, load_samples=load_samples, classes=CLASSES, log=lambda m: None)

    fitted = Pipeline([Tiling(inner=TrainableBrightBoxDetector(), slice_size=64)])
    fitted.fit([Record("a.png")], [], tmp_path, make_context, log=lambda m: None)
    restored = Pipeline([Tiling(inner=TrainableBrightBoxDetector(), slice_size=64)])
    restored.load(tmp_path)
    assert restored.stages[0].fitted
    assert torch.equal(restored.stages[0].inner.weight, torch.tensor([1.0, 2.0, 3.0]))


def test_a_tiled_anomaly_gate_is_fitted_and_calibrated_on_the_stages_windows(tmp_path):
    rng = np.random.default_rng(0)
    records, images = [], {}
    for i in range(16):
        image = rng.integers(100, 120, (64, 96, 3), dtype=np.uint8)
        label = int(i >= 10)
        if label:
            y, x = rng.integers(4, 50, 2)
            image[y : y + 8, x : x + 8] = 255
        path = str(tmp_path / f"{i}.png")
        images[path] = image
        records.append(Record(path=path, label=label))
    context = FitContext(work_dir=tmp_path, load_samples=lambda recs: [Sample(record=r, image=images[r.path]) for r in recs])
    gate = dict(type="AnomalyGate", model=dict(type="PatchCore", layers=(2, 3), coreset_size=200), image_size=(32, 32))
    tiling = build(STAGES, dict(type="Tiling", inner=gate, slice_size=32, overlap=0.25))
    assert tiling.kind == "gate"
    with pytest.raises(RuntimeError, match="before fit"):
        tiling.predict(samples_of(images[records[0].path]))
    tiling.fit(records[:12], records[12:14], context)
    assert tiling.inner.tiles == {"slice_size": [32, 32], "overlap": [0.25, 0.25]}
    sample = tiling.predict([Sample(record=records[-1], image=images[records[-1].path])])[0]
    assert sample.prob_maps.shape == (1, 64, 96) and sample.gate_label in ("normal", "defect")


def test_predict_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="before fit"):
        Tiling(inner=TrainableBrightBoxDetector()).predict(samples_of(image_with(10, 10)))


# ----------------------------------------------------------------------------- configuration
class GateLike:
    def score_images(self, images):
        return [], [], []


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(), "needs inner"),
        (dict(inner=object()), "neither a detector"),
        (dict(inner=GateLike()), "gate that tiles itself"),
        (dict(inner=dict(type="Tiling")), "cannot wrap another Tiling"),
        (dict(inner=AlternatingSegmenter(), full_image=True), "detectors only"),
        (dict(inner=BrightBoxDetector(), overlap=1.0), r"\[0, 1\)"),
        (dict(inner=BrightBoxDetector(), slice_size=(64, 0)), "slice_size"),
        (dict(inner=BrightBoxDetector(), batch_size=0), "batch_size"),
        (dict(inner=BrightBoxDetector(), merge=dict(method="SOFTNMS")), "GREEDYNMM, NMM, NMS, WBF"),
        (dict(inner=BrightBoxDetector(), merge=dict(metric="IOU")), "valid keys: method, match_metric"),
        (dict(inner=BrightBoxDetector(), blend="gaussian"), "linear, cosine"),
        (dict(inner=BrightBoxDetector(), min_score=2), r"\[0, 1\]"),
    ],
)
def test_bad_options_fail_with_what_is_valid(options, message):
    with pytest.raises(ConfigError, match=message):
        Tiling(**options)


def test_an_unknown_option_of_the_registered_stage_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid options: .*slice_size"):
        build(STAGES, dict(type="Tiling", inner=dict(type="Segmenter"), slices=4))


def test_switched_off_tiling_runs_the_detector_once_on_the_whole_image():
    detector = BrightBoxDetector()
    tiling = Tiling(inner=detector, slice_size=32, overlap=0.25, enabled=False)
    image = np.zeros((64, 96, 3), np.uint8)
    image[10:20, 40:50] = 255
    (found,) = tiling.detect([image])
    assert detector.batch_sizes == [1] and detector.shapes == [(64, 96)]
    assert len(found) == 1


# ----------------------------------------------------------------------------- sliced or whole, chosen on validation
class ScaleBoundDetector(TrainableBrightBoxDetector):
    """The trainable double, good at one scale only: it finds the bright boxes in images of ``good``
    size ("whole": the full 64x96 photo, "window": anything smaller) and adds a confident false box
    at the top-left corner of every image of the other size, as a detector does at a scale it never
    learned."""

    def __init__(self, good: str) -> None:
        super().__init__()
        self.good = good

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        found = super().detect(images)
        out = []
        for image, detections in zip(images, found):
            whole = image.shape[:2] == (64, 96)
            if whole == (self.good == "whole"):
                out.append(detections)
            else:
                false = Detections(np.asarray([[0, 0, 6, 6]], np.float32), np.asarray([0.95], np.float32), np.asarray([0]))
                out.append(Detections.concatenate([detections, false]))
        return out


def val_set(count: int = 4) -> tuple[list[Record], dict[str, np.ndarray]]:
    """``count`` 64x96 validation photos with one red box each, placed away from the top-left corner."""
    records, images = [], {}
    for index in range(count):
        x = 20 + 12 * index
        box = (x, 30, x + 10, 40)
        records.append(Record(f"val{index}.png", label=1, boxes=[("dent", *map(float, box))]))
        images[records[-1].path] = image_with(64, 96, red=[box])
    return records, images


def choice_context(tmp_path: Path, images: dict[str, np.ndarray], log: list[str]) -> FitContext:
    def load_samples(records):
        return [Sample(record, image=images[record.path]) for record in records]

    return FitContext(work_dir=tmp_path, load_samples=load_samples, classes=CLASSES, log=log.append)


def test_sliced_inference_that_scores_lower_on_validation_falls_back_to_whole_images(tmp_path):
    records, images = val_set()
    log: list[str] = []
    detector = ScaleBoundDetector(good="whole")
    tiling = Tiling(inner=detector, slice_size=32, overlap=0.25)
    summary = tiling.fit([Record("a.png")], records, choice_context(tmp_path, images, log))
    choice = summary["tiling"]["choice"]
    assert choice["mode"] == "whole" and tiling.mode == "whole" and choice["val_images"] == 4
    assert choice["whole"]["map50"] == pytest.approx(1.0) and choice["sliced"]["map50"] < 1.0
    assert any("whole chosen on 4 validation images" in line and "falling back" in line for line in log)
    # Predictions now run once per image, on the whole image, with no false corner boxes.
    detector.shapes.clear()
    (sample,) = tiling.predict(samples_of(images["val0.png"]))
    assert detector.shapes == [(64, 96)]
    assert boxes_of(sample) == [("dent", (20.0, 30.0, 30.0, 40.0))]


def test_sliced_inference_that_scores_higher_on_validation_is_kept(tmp_path):
    records, images = val_set()
    log: list[str] = []
    tiling = Tiling(inner=ScaleBoundDetector(good="window"), slice_size=32, overlap=0.25, full_image=False)
    summary = tiling.fit([Record("a.png")], records, choice_context(tmp_path, images, log))
    choice = summary["tiling"]["choice"]
    assert choice["mode"] == "sliced" and tiling.mode == "sliced"
    assert choice["sliced"]["map50"] > choice["whole"]["map50"]
    assert any("sliced chosen" in line for line in log)


def fitted_and_saved(detector: ScaleBoundDetector, tmp_path: Path, log: list[str]) -> tuple[Pipeline, Path, dict[str, np.ndarray]]:
    """A pipeline of one Tiling stage around ``detector``, fitted on :func:`val_set` and saved."""
    records, images = val_set()
    weights = tmp_path / "weights"
    fitted = Pipeline([Tiling(inner=detector, slice_size=32, overlap=0.25, name="detector")])
    fitted.fit([Record("a.png")], records, weights, lambda load: choice_context(tmp_path, images, log), log=log.append)
    return fitted, weights, images


def test_the_choice_is_saved_reloaded_and_shown_in_the_report(tmp_path):
    log: list[str] = []
    fitted, weights, _ = fitted_and_saved(ScaleBoundDetector(good="whole"), tmp_path, log)
    assert read_manifest(weights, "detector")["extra"]["tiling"]["choice"]["mode"] == "whole"

    restored = Tiling(inner=ScaleBoundDetector(good="whole"), slice_size=32, overlap=0.25, name="detector")
    assert restored.mode == "sliced"  # nothing chosen before the state is loaded
    restored.load(weights)
    assert restored.mode == "whole" and restored.choice == fitted.stages[0].choice
    note, shown = restored.report_notes()
    assert "whole inference, chosen on 4 validation images" in note and "mAP50" in note
    assert "overlays and the review app show boxes scoring dent from 0.31" in shown
    assert restored.describe()["choice"]["mode"] == "whole"

    from defectkit.io.report import write_report

    report = write_report(tmp_path / "run", {}, [], title="t", stage_summaries=[restored.describe()],
                          notes=restored.report_notes()).read_text()
    assert "whole inference, chosen on 4 validation images" in report and "&quot;mode&quot;: &quot;whole&quot;" in report

    # choose_on_val=False in the config: sliced as configured, whatever was chosen.
    forced = Tiling(inner=ScaleBoundDetector(good="whole"), slice_size=32, overlap=0.25, name="detector", choose_on_val=False)
    forced.load(weights)
    assert forced.mode == "sliced"
    # ...and shows boxes from the sliced mode's own best-F1 score, not the whole mode's.
    assert forced.confident_scores == fitted.stages[0].choice["sliced"]["f1_thresholds"]


class LowScoreFalseBoxDetector(ScaleBoundDetector):
    """Finds every bright box (score 0.31 for a 10x10 one) plus a false box scoring 0.2 at the
    bottom-right corner of every image, as a detector's low-scored guesses do."""

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        false = Detections(np.asarray([[86, 54, 96, 64]], np.float32), np.asarray([0.2], np.float32), np.asarray([0]))
        return [Detections.concatenate([found, false]) for found in super().detect(images)]


def test_boxes_under_the_best_f1_score_on_validation_are_kept_but_not_confident(tmp_path):
    log: list[str] = []
    fitted, weights, images = fitted_and_saved(LowScoreFalseBoxDetector(good="whole"), tmp_path, log)
    assert fitted.stages[0].confident_scores == {"dent": pytest.approx(0.31)}
    assert any("boxes shown to reviewers from score dent 0.31" in line for line in log)

    restored = Tiling(inner=LowScoreFalseBoxDetector(good="whole"), slice_size=32, overlap=0.25, name="detector")
    restored.load(weights)
    (sample,) = restored.predict(samples_of(images["val0.png"]))
    # Both boxes are reported (mAP ranks every box); only the one from the threshold up is confident.
    assert [(i.score, i.confident) for i in sample.instances] == [(pytest.approx(0.31), True), (pytest.approx(0.2), False)]
    assert [i["confident"] for i in sample.to_prediction()["instances"]] == [True, False]


def test_without_annotated_validation_images_slicing_is_kept_unchecked(tmp_path):
    log: list[str] = []
    tiling = Tiling(inner=ScaleBoundDetector(good="whole"), slice_size=32)
    summary = tiling.fit([Record("a.png")], [Record("v.png")], choice_context(tmp_path, {}, log))
    assert summary["tiling"]["choice"] is None and tiling.mode == "sliced"
    assert any("no validation image has box annotations" in line for line in log)
    assert "not compared" in tiling.report_notes()[0]


def test_a_switched_off_tiling_is_not_compared_and_choose_on_val_is_for_detectors_only(tmp_path):
    records, images = val_set()
    detector = ScaleBoundDetector(good="whole")
    tiling = Tiling(inner=detector, slice_size=32, enabled=False)
    summary = tiling.fit([Record("a.png")], records, choice_context(tmp_path, images, []))
    assert summary["tiling"]["choice"] is None and tiling.mode == "whole"
    with pytest.raises(ConfigError, match="choose_on_val applies to detectors only"):
        Tiling(inner=AlternatingSegmenter(), slice_size=32, choose_on_val=True)
