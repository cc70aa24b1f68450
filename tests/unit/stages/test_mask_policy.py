"""MaskPolicy: probability maps -> masks -> polygon instances."""

from __future__ import annotations

import numpy as np
import pytest

from defectkit.errors import ConfigError
from defectkit.registry import STAGES, build
from defectkit.sample import Instance, Record, Sample
from defectkit.stages.mask_policy import MaskPolicy, MaskRule, apply_rule, refine_with_crf


def _sample(prob_maps: np.ndarray, classes: list[str], image: np.ndarray | None = None) -> Sample:
    prob_maps = np.asarray(prob_maps, dtype=np.float32)
    if prob_maps.ndim == 2:
        prob_maps = prob_maps[None]
    if image is None:
        image = np.zeros((*prob_maps.shape[1:], 3), np.uint8)
    return Sample(Record("x.png"), image=image, prob_maps=prob_maps, map_classes=classes)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_threshold_rule_keeps_pixels_strictly_above_threshold():
    prob = np.array([[0.2, 0.5, 0.51, 0.9]], np.float32)
    mask = apply_rule(prob, MaskRule(threshold=0.5))
    assert mask.tolist() == [[False, False, True, True]]


def test_min_area_drops_small_regions_and_keeps_large_ones():
    prob = np.zeros((20, 20), np.float32)
    prob[1:3, 1:3] = 1.0  # 4 pixels
    prob[10:15, 10:15] = 1.0  # 25 pixels
    mask = apply_rule(prob, MaskRule(min_area=10))
    assert not mask[1:3, 1:3].any()
    assert mask[10:15, 10:15].all()
    assert mask.sum() == 25


def test_open_px_removes_specks_but_keeps_large_region():
    prob = np.zeros((30, 30), np.float32)
    prob[10:20, 10:20] = 1.0
    prob[2, 2] = prob[25, 5] = 1.0
    plain = apply_rule(prob, MaskRule())
    opened = apply_rule(prob, MaskRule(open_px=3))
    assert plain[2, 2] and plain[25, 5]
    assert not opened[2, 2] and not opened[25, 5]
    assert opened[12:18, 12:18].all()


def test_close_px_fills_pinholes():
    prob = np.zeros((30, 30), np.float32)
    prob[8:22, 8:22] = 1.0
    prob[14, 14] = prob[16, 12] = 0.0
    plain = apply_rule(prob, MaskRule())
    closed = apply_rule(prob, MaskRule(close_px=3))
    assert not plain[14, 14]
    assert closed[14, 14] and closed[16, 12]
    assert closed[8:22, 8:22].all()


def test_per_class_rules_apply_and_default_covers_other_classes():
    prob = np.zeros((2, 10, 10), np.float32)
    prob[:, 2:8, 2:8] = 0.6
    policy = MaskPolicy(rules=dict(scratch=dict(threshold=0.7), default=dict(threshold=0.5)))
    (sample,) = policy.predict([_sample(prob, ["scratch", "dent"])])
    assert sample.masks.shape == (2, 10, 10)
    assert not sample.masks[0].any()  # 0.6 is below scratch's 0.7
    assert sample.masks[1].sum() == 36  # dent uses the default 0.5
    assert policy.rule_for("dent").threshold == 0.5
    assert policy.rule_for("scratch").threshold == 0.7


def test_classes_without_rule_or_default_use_plain_half_threshold():
    policy = MaskPolicy()
    assert policy.rule_for("anything") == MaskRule()


def test_instances_carry_polygon_box_area_and_score_in_image_coordinates():
    prob = np.zeros((40, 50), np.float32)
    prob[10:20, 30:45] = 0.8  # rows 10..19, cols 30..44
    prob[30:33, 2:5] = 0.9
    (sample,) = MaskPolicy().predict([_sample(prob, ["dent"])])
    assert len(sample.instances) == 2
    big = max(sample.instances, key=lambda i: i.area)
    small = min(sample.instances, key=lambda i: i.area)
    assert big.class_name == "dent"
    assert big.box == (30.0, 10.0, 45.0, 20.0)
    assert big.area == 150
    assert big.score == pytest.approx(0.8)
    xs = [x for x, _ in big.polygon]
    ys = [y for _, y in big.polygon]
    assert (min(xs), max(xs), min(ys), max(ys)) == (30, 44, 10, 19)
    assert small.box == (2.0, 30.0, 5.0, 33.0)
    assert small.area == 9
    assert small.score == pytest.approx(0.9)


def test_predict_keeps_box_only_instances_and_replaces_polygon_instances():
    prob = np.zeros((10, 10), np.float32)
    prob[2:5, 2:5] = 1.0
    sample = _sample(prob, ["dent"])
    box_only = Instance("dent", 0.9, (0, 0, 1, 1), 1.0)
    stale = Instance("dent", 0.9, (0, 0, 1, 1), 1.0, polygon=[[0, 0], [1, 0], [1, 1]])
    sample.instances = [box_only, stale]
    MaskPolicy().predict([sample])
    assert box_only in sample.instances
    assert stale not in sample.instances
    assert len(sample.instances) == 2


def test_sample_without_prob_maps_is_left_alone():
    sample = Sample(Record("x.png"), image=np.zeros((4, 4, 3), np.uint8))
    MaskPolicy().predict([sample])
    assert sample.masks is None and sample.instances == []


def test_unknown_rule_option_raises_config_error_listing_valid_options():
    with pytest.raises(ConfigError) as info:
        MaskPolicy(rules=dict(scratch=dict(treshold=0.3)))
    message = str(info.value)
    assert "'scratch'" in message
    assert "treshold" in message
    for option in ("threshold", "crf", "open_px", "close_px", "min_area"):
        assert option in message


def test_mask_policy_is_buildable_from_registry():
    policy = build(STAGES, dict(type="MaskPolicy", rules=dict(default=dict(min_area=4))))
    assert isinstance(policy, MaskPolicy)
    assert policy.rule_for("x").min_area == 4


def test_crf_rule_snaps_misaligned_probability_blob_to_image_edge():
    pytest.importorskip("pydensecrf.densecrf")
    height = width = 48
    image = np.full((height, width, 3), 30, np.uint8)
    image[14:34, 14:34] = 220  # the real defect: a bright square
    square = np.zeros((height, width), bool)
    square[14:34, 14:34] = True
    rng = np.random.default_rng(0)
    prob = np.full((height, width), 0.4, np.float32)
    prob[17:37, 11:31] = 0.6  # the network's blob, shifted 3 px down and left
    prob = np.clip(prob + rng.normal(0, 0.05, prob.shape), 0, 1).astype(np.float32)

    plain = apply_rule(prob, MaskRule(threshold=0.5), image)
    refined = apply_rule(prob, MaskRule(threshold=0.5, crf=True), image)
    assert _iou(refined, square) > _iou(plain, square) + 0.2
    assert _iou(refined, square) > 0.9


def test_crf_policy_uses_the_sample_image():
    pytest.importorskip("pydensecrf.densecrf")
    image = np.full((32, 32, 3), 20, np.uint8)
    image[8:24, 8:24] = 230
    prob = np.full((32, 32), 0.45, np.float32)
    prob[10:26, 6:22] = 0.6
    policy = MaskPolicy(rules=dict(default=dict(crf=True)))
    (sample,) = policy.predict([_sample(prob, ["defect"], image)])
    square = np.zeros((32, 32), bool)
    square[8:24, 8:24] = True
    assert _iou(sample.masks[0], square) > _iou(prob > 0.5, square)


def test_crf_accepts_a_read_only_image():
    pytest.importorskip("pydensecrf.densecrf")
    image = np.full((16, 16, 3), 50, np.uint8)
    image.setflags(write=False)  # decoders may hand out read-only views
    prob = np.full((16, 16), 0.7, np.float32)
    (sample,) = MaskPolicy(rules=dict(default=dict(crf=True))).predict([_sample(prob, ["defect"], image)])
    assert sample.masks.shape == (1, 16, 16)


def test_crf_leaves_maps_without_candidate_pixels_unchanged():
    pytest.importorskip("pydensecrf.densecrf")
    prob = np.full((24, 24), 0.05, np.float32)
    rule = MaskPolicy(rules=dict(default=dict(crf=True))).rule_for("defect")
    assert refine_with_crf(np.zeros((24, 24, 3), np.uint8), prob, rule) is prob


def test_crf_on_a_downscaled_region_still_snaps_to_the_image_edge():
    pytest.importorskip("pydensecrf.densecrf")
    image = np.full((200, 200, 3), 20, np.uint8)
    image[60:140, 60:140] = 230
    prob = np.full((200, 200), 0.02, np.float32)
    prob[66:146, 54:134] = 0.65  # misaligned by 6 px
    square = np.zeros((200, 200), bool)
    square[60:140, 60:140] = True
    policy = MaskPolicy(rules=dict(default=dict(crf=True, crf_max_side=48, crf_margin=16)))
    (sample,) = policy.predict([_sample(prob, ["defect"], image)])
    assert _iou(sample.masks[0], square) > _iou(prob > 0.5, square)
    assert not sample.masks[0][:40].any()  # far from the candidate region nothing changes


# ----------------------------------------------------------------------------- calibrated thresholds
def _calibration_context(tmp_path, dent_prob: float, background_prob: float):
    """Validation records with a dent square whose maps are ``dent_prob`` inside and ``background_prob`` outside."""
    square = [[[[10.0, 10.0], [29.0, 10.0], [29.0, 29.0], [10.0, 29.0]]]]
    records = [Record(f"v{i}.png", polygons={"dent": square}) for i in range(3)] + [Record("unannotated.png")]
    maps = np.full((2, 40, 40), background_prob, np.float32)
    maps[0, 10:30, 10:30] = dent_prob
    maps[1] = 0.0  # scratch: no ground truth anywhere

    def load_samples(batch):
        return [Sample(r, image=np.zeros((40, 40, 3), np.uint8), prob_maps=maps.copy(), map_classes=["dent", "scratch"])
                for r in batch]

    from defectkit.stages.base import FitContext

    return records, FitContext(work_dir=tmp_path, load_samples=load_samples, classes=["dent", "scratch"], log=lambda m: None)


def test_calibrated_policy_picks_the_threshold_with_the_best_validation_iou(tmp_path):
    records, context = _calibration_context(tmp_path, dent_prob=0.3, background_prob=0.1)
    policy = build(STAGES, dict(type="CalibratedMaskPolicy", rules=dict(default=dict(threshold=0.5))))
    summary = policy.fit([], records, context)
    assert 0.1 <= summary["thresholds"]["dent"] < 0.3 and summary["val_iou"]["dent"] == 1.0
    assert summary["val_images"] == 3
    sample = policy.predict([context.load_samples(records[:1])[0]])[0]
    assert sample.masks[0].sum() == 400  # the under-confident square, found at the calibrated threshold


def test_classes_without_validation_truth_keep_their_rule_threshold(tmp_path):
    records, context = _calibration_context(tmp_path, dent_prob=0.3, background_prob=0.1)
    policy = build(STAGES, dict(type="CalibratedMaskPolicy", rules=dict(scratch=dict(threshold=0.7))))
    policy.fit([], records, context)
    assert "scratch" not in policy.thresholds and policy.rule_for("scratch").threshold == 0.7


def test_calibrated_thresholds_survive_save_and_load(tmp_path):
    records, context = _calibration_context(tmp_path, dent_prob=0.8, background_prob=0.6)
    policy = build(STAGES, dict(type="CalibratedMaskPolicy"))
    policy.fit([], records, context)
    policy.save(tmp_path)
    loaded = build(STAGES, dict(type="CalibratedMaskPolicy"))
    loaded.load(tmp_path)
    assert loaded.thresholds == policy.thresholds and 0.6 <= loaded.rule_for("dent").threshold < 0.8


def test_a_threshold_grid_outside_zero_to_one_is_a_config_error():
    with pytest.raises(ConfigError, match="grid"):
        build(STAGES, dict(type="CalibratedMaskPolicy", grid=[0.5, 1.0]))
