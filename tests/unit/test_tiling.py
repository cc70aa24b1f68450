"""Sliced-inference geometry: windows, merging duplicate boxes, seamless map blending, sliced
training annotations, and the one Detections -> Instances conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms

from defectkit.errors import ConfigError
from defectkit.sample import Detections, detections_to_instances
from defectkit.tiling import (
    blend_weights,
    image_windows,
    merge_detections,
    slice_annotations,
    slice_training_items,
    slice_windows,
    stitch_maps,
    window_batches,
    window_overlaps,
)


def dets(boxes, scores, labels=None) -> Detections:
    labels = [0] * len(scores) if labels is None else labels
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


# ----------------------------------------------------------------------------- slice_windows
def test_windows_step_by_slice_minus_overlap_and_the_last_one_ends_at_the_border():
    windows = slice_windows(100, 250, 100, 100, overlap_height_ratio=0.2, overlap_width_ratio=0.2)
    assert windows == [(0, 0, 100, 100), (80, 0, 180, 100), (150, 0, 250, 100)]


def test_windows_run_row_by_row_and_shift_the_bottom_row_up():
    windows = slice_windows(150, 150, 100, 100, 0.5, 0.5)
    assert windows == [(0, 0, 100, 100), (50, 0, 150, 100), (0, 50, 100, 150), (50, 50, 150, 150)]


def test_overlap_is_truncated_to_whole_pixels_like_sahi():
    # int(0.25 * 30) = 7 px overlap, so a step of 23.
    assert [w[0] for w in slice_windows(30, 100, 30, 30, 0.25, 0.25)] == [0, 23, 46, 69, 70]


def test_an_image_smaller_than_a_slice_gets_one_window_covering_it():
    assert slice_windows(60, 70, 100, 100) == [(0, 0, 70, 60)]


def test_an_image_smaller_than_a_slice_along_one_axis_gets_full_span_windows_on_that_axis():
    windows = slice_windows(40, 250, 100, 100, 0.2, 0.2)
    assert [(y1, y2) for _, y1, _, y2 in windows] == [(0, 40)] * 3
    assert [(x1, x2) for x1, _, x2, _ in windows] == [(0, 100), (80, 180), (150, 250)]


@settings(max_examples=120, deadline=None)
@given(
    height=st.integers(1, 300), width=st.integers(1, 300),
    slice_height=st.integers(1, 120), slice_width=st.integers(1, 120),
    overlap_height=st.floats(0, 0.95), overlap_width=st.floats(0, 0.95),
)
def test_windows_cover_every_pixel_stay_inside_and_have_the_slice_size(
    height, width, slice_height, slice_width, overlap_height, overlap_width
):
    windows = slice_windows(height, width, slice_height, slice_width, overlap_height, overlap_width)
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in windows:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert x2 - x1 == min(slice_width, width) and y2 - y1 == min(slice_height, height)
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert len(set(windows)) == len(windows)


@pytest.mark.parametrize(
    "args, message",
    [
        ((100, 100, 50, 50, 1.0, 0.2), "[0, 1)"),
        ((100, 100, 50, 50, 0.2, -0.1), "[0, 1)"),
        ((100, 100, 0, 50, 0.2, 0.2), "slice_height"),
        ((0, 100, 50, 50, 0.2, 0.2), "image_height"),
        ((100, 100, 50, 12.5, 0.2, 0.2), "slice_width"),
    ],
)
def test_bad_window_arguments_say_what_is_valid(args, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        slice_windows(*args)


def test_windows_match_sahi_when_it_is_installed():
    sahi_slicing = pytest.importorskip("sahi.slicing", reason="sahi is an optional extra ([sahi])")
    for size in [(1000, 1500), (511, 513), (300, 200), (1024, 1024)]:
        expected = sahi_slicing.get_slice_bboxes(
            image_height=size[0], image_width=size[1], slice_height=512, slice_width=384,
            overlap_height_ratio=0.2, overlap_width_ratio=0.3,
        )
        assert slice_windows(*size, 512, 384, 0.2, 0.3) == [tuple(w) for w in expected]


# ----------------------------------------------------------------------------- merge_detections
def test_ios_merges_the_half_of_a_defect_cut_at_a_slice_border_into_the_whole_box():
    whole_and_half = dets([[10, 10, 50, 30], [30, 10, 50, 30]], [0.7, 0.9])
    merged = merge_detections(whole_and_half, "GREEDYNMM", "IOS", 0.5)
    assert merged.boxes.tolist() == [[10, 10, 50, 30]]
    assert merged.scores.tolist() == pytest.approx([0.9])


def test_iou_does_not_merge_a_small_piece_with_the_whole_box():
    whole_and_piece = dets([[10, 10, 50, 30], [37, 10, 50, 30]], [0.7, 0.9])  # IOU 0.325, IOS 1
    assert len(merge_detections(whole_and_piece, "GREEDYNMM", "IOU", 0.5)) == 2
    assert len(merge_detections(whole_and_piece, "GREEDYNMM", "IOS", 0.5)) == 1


def test_a_match_needs_the_metric_strictly_above_the_threshold():
    whole_and_half = dets([[10, 10, 50, 30], [30, 10, 50, 30]], [0.7, 0.9])  # IOU exactly 0.5
    assert len(merge_detections(whole_and_half, "NMS", "IOU", 0.5)) == 2
    assert len(merge_detections(whole_and_half, "NMS", "IOU", 0.49)) == 1


def test_two_halves_of_a_defect_from_neighbouring_slices_merge_into_their_union():
    halves = dets([[70, 5, 100, 25], [80, 5, 110, 25]], [0.6, 0.8])  # IOS 20/30
    assert merge_detections(halves).boxes.tolist() == [[70, 5, 110, 25]]


def test_nms_keeps_the_best_box_of_a_group_without_enlarging_it():
    group = dets([[10, 10, 50, 30], [30, 10, 50, 30], [200, 200, 210, 210]], [0.7, 0.9, 0.5])
    kept = merge_detections(group, "NMS", "IOS", 0.5)
    assert kept.boxes.tolist() == [[30, 10, 50, 30], [200, 200, 210, 210]]
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5])


def test_nms_with_iou_is_torchvision_batched_nms():
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 30, (60, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 60).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.3).numpy()
    kept = merge_detections(dets(boxes, scores, labels), "NMS", "IOU", 0.3)
    np.testing.assert_array_equal(kept.boxes, boxes[keep])
    np.testing.assert_array_equal(kept.labels, labels[keep])


def test_nmm_follows_a_chain_of_overlaps_but_greedy_nmm_merges_direct_matches_only():
    # a matches b and b matches c, but a does not match c.
    chain = dets([[0, 0, 20, 10], [15, 0, 35, 10], [30, 0, 50, 10]], [0.9, 0.8, 0.7])
    metric = dict(match_metric="IOU", match_threshold=0.1)
    assert merge_detections(chain, "NMM", **metric).boxes.tolist() == [[0, 0, 50, 10]]
    greedy = merge_detections(chain, "GREEDYNMM", **metric)
    assert greedy.boxes.tolist() == [[0, 0, 35, 10], [30, 0, 50, 10]]
    assert greedy.scores.tolist() == pytest.approx([0.9, 0.7])


def test_boxes_of_different_classes_merge_only_when_class_agnostic():
    pair = dets([[10, 10, 50, 30], [12, 10, 50, 30]], [0.6, 0.8], labels=[0, 1])
    assert len(merge_detections(pair)) == 2
    agnostic = merge_detections(pair, class_agnostic=True)
    assert agnostic.boxes.tolist() == [[10, 10, 50, 30]]
    assert agnostic.labels.tolist() == [1]  # the best box's class


def test_merged_detections_come_by_decreasing_score_and_empty_input_stays_empty():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 200, (40, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(2, 40, (40, 2))], 1)
    for method in ("GREEDYNMM", "NMM", "NMS"):
        merged = merge_detections(dets(boxes, rng.uniform(0, 1, 40), rng.integers(0, 2, 40)), method)
        assert np.all(np.diff(merged.scores) <= 0)
        assert 0 < len(merged) <= 40
        assert len(merge_detections(Detections.empty(), method)) == 0


def test_zero_area_boxes_do_not_break_ios():
    degenerate = dets([[5, 5, 5, 9], [0, 0, 10, 10]], [0.9, 0.5])
    assert len(merge_detections(degenerate, "NMS", "IOS")) == 2


def _random_detections(seed: int) -> Detections:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 40))
    corners = rng.uniform(0, 100, (count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(3, 40, (count, 2))], 1)
    return dets(boxes, rng.uniform(0.05, 1, count), rng.integers(0, 2, count))


def test_nms_keeps_what_sahi_keeps_when_sahi_is_installed():
    combine = pytest.importorskip("sahi.postprocess.combine", reason="sahi is an optional extra ([sahi])")
    prediction = pytest.importorskip("sahi.prediction")
    for seed in range(40):
        found = _random_detections(seed)
        for metric in ("IOU", "IOS"):
            predictions = [
                prediction.ObjectPrediction(bbox=box.tolist(), category_id=int(label), category_name=str(label),
                                            score=float(score), shift_amount=[0, 0])
                for box, score, label in zip(found.boxes, found.scores, found.labels)
            ]
            expected = combine.NMSPostprocess(match_threshold=0.3, match_metric=metric, class_agnostic=False)(predictions)
            kept = merge_detections(found, "NMS", metric, 0.3)
            assert sorted(np.round([p.bbox.to_xyxy() for p in expected], 3).tolist()) == sorted(
                np.round(kept.boxes.astype(np.float64), 3).tolist())


def test_merging_groups_boxes_like_sahi_when_sahi_is_installed():
    # SAHI then re-checks each member against the growing merged box and silently drops those that
    # no longer match; merge_detections merges every grouped box, so compare the groups' unions.
    combine = pytest.importorskip("sahi.postprocess.combine", reason="sahi is an optional extra ([sahi])")
    for seed in range(40):
        found = _random_detections(seed)
        table = np.concatenate([found.boxes, found.scores[:, None], found.labels[:, None]], 1).astype(np.float64)
        for method, grouping in (("GREEDYNMM", combine.batched_greedy_nmm), ("NMM", combine.batched_nmm)):
            for metric in ("IOU", "IOS"):
                groups = grouping(table, match_metric=metric, match_threshold=0.3)
                unions = sorted(
                    [*found.boxes[[keep, *members], :2].min(0).tolist(), *found.boxes[[keep, *members], 2:].max(0).tolist()]
                    for keep, members in groups.items()
                )
                merged = merge_detections(found, method, metric, 0.3)
                assert sorted(merged.boxes.tolist()) == unions


def test_weighted_box_fusion_averages_matching_boxes_by_score_and_discounts_boxes_one_pass_missed():
    # Two passes over one image: both found the lesion at 10..50 (a little apart); only one found the other.
    pooled = dets([[10, 10, 50, 50], [14, 10, 54, 50], [100, 100, 120, 120]], [0.75, 0.25, 0.5])
    fused = merge_detections(pooled, "WBF", "IOU", 0.55, passes=2)
    np.testing.assert_allclose(fused.boxes, [[11, 10, 51, 50], [100, 100, 120, 120]], rtol=1e-6)
    assert fused.scores.tolist() == pytest.approx([0.5, 0.25])


def test_weighted_box_fusion_of_one_pass_keeps_a_lone_box_as_it_was():
    fused = merge_detections(dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.4]), "WBF", "IOU", 0.5)
    assert fused.boxes.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]]
    assert fused.scores.tolist() == pytest.approx([0.9, 0.4])


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="SOFTNMS"), "GREEDYNMM, NMM, NMS, WBF"),
        (dict(match_metric="GIOU"), "IOS, IOU"),
        (dict(match_threshold=1.5), r"\[0, 1\]"),
    ],
)
def test_bad_merge_options_list_what_is_valid(options, message):
    with pytest.raises(ConfigError, match=message):
        merge_detections(dets([[0, 0, 1, 1]], [1.0]), **options)


# ----------------------------------------------------------------------------- blending maps
def test_stitching_tiles_of_a_smooth_map_reproduces_it():
    height, width = 70, 110
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([np.sin(xx / 9.0) * np.cos(yy / 7.0), xx / width]).astype(np.float32)
    windows = slice_windows(height, width, 32, 40, 0.25, 0.3)
    tiles = [smooth[:, y1:y2, x1:x2] for x1, y1, x2, y2 in windows]
    for profile in ("linear", "cosine"):
        stitched = stitch_maps(tiles, windows, height, width, profile=profile)
        assert stitched.dtype == np.float32 and stitched.shape == smooth.shape
        np.testing.assert_allclose(stitched, smooth, atol=1e-5)


def _neighbour_jump(image: np.ndarray) -> float:
    return float(max(np.abs(np.diff(image, axis=0)).max(), np.abs(np.diff(image, axis=1)).max()))


def test_tiles_of_different_constants_blend_without_a_step_at_their_overlaps():
    height, width = 64, 96
    windows = slice_windows(height, width, 32, 32, 0.25, 0.25)
    tiles = [np.full((1, 32, 32), float(i % 2), np.float32) for i in range(len(windows))]  # neighbours differ by 1
    ramp = min(window_overlaps(windows))
    blended = stitch_maps(tiles, windows, height, width)[0]
    hard = stitch_maps(tiles, windows, height, width, ramp=0)[0]
    assert _neighbour_jump(hard) >= 0.5  # flat weights: a visible step where an overlap starts
    assert _neighbour_jump(blended) <= 1.5 / ramp


def test_blend_weights_taper_only_towards_edges_inside_the_image():
    weights = blend_weights((0, 20, 40, 60), image_height=60, image_width=100, ramp=8)
    assert weights.shape == (40, 40)
    assert (weights > 0).all() and (weights <= 1).all()
    assert weights[-1, 0] == 1.0  # bottom-left corner touches the image border on both sides
    assert weights[0, 20] < 0.1 and weights[20, -1] < 0.1  # top and right edges lie inside the image
    assert weights[20, 0] == 1.0 and weights[-1, 20] == 1.0


def test_every_pixel_the_windows_cover_gets_a_value_even_under_a_single_tapered_edge():
    windows = [(0, 0, 30, 20), (30, 0, 60, 20)]  # abutting, no overlap to blend over
    tiles = [np.full((1, 20, 30), 0.25, np.float32), np.full((1, 20, 30), 0.75, np.float32)]
    stitched = stitch_maps(tiles, windows, 20, 60, ramp=5)
    assert stitched[0, :, :30] == pytest.approx(0.25) and stitched[0, :, 30:] == pytest.approx(0.75)


def test_a_tile_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="expected"):
        stitch_maps([np.zeros((1, 10, 10), np.float32)], [(0, 0, 12, 10)], 10, 12)


# ----------------------------------------------------------------------------- sliced training
def test_boxes_are_clipped_to_the_window_and_moved_to_its_coordinates():
    boxes = [("dent", 90, 20, 130, 40), ("scratch", 150, 10, 160, 20), ("dent", 300, 0, 310, 10)]
    assert slice_annotations(boxes, (80, 0, 180, 100)) == [
        ("dent", 10.0, 20.0, 50.0, 40.0),
        ("scratch", 70.0, 10.0, 80.0, 20.0),
    ]


def test_remnants_mostly_outside_the_window_are_dropped():
    boxes = [("dent", 90, 0, 130, 20)]  # 10 of 40 px visible in (0, 0, 100, 100)
    assert slice_annotations(boxes, (0, 0, 100, 100), min_visible_ratio=0.3) == []
    assert slice_annotations(boxes, (0, 0, 100, 100), min_visible_ratio=0.2) == [("dent", 90.0, 0.0, 100.0, 20.0)]


def test_slivers_cut_thinner_than_min_side_are_dropped_but_thin_defects_are_kept():
    sliver = [("scratch", 99, 0, 103, 40)]  # 1 px of a 4 px wide box
    assert slice_annotations(sliver, (0, 0, 100, 100), min_visible_ratio=0.0, min_side=2) == []
    hairline = [("scratch", 50, 10, 51, 60)]  # 1 px wide, entirely visible
    assert slice_annotations(hairline, (0, 0, 100, 100), min_side=2) == [("scratch", 50.0, 10.0, 51.0, 60.0)]


def test_training_slices_use_the_prediction_windows():
    boxes = [("dent", 10, 10, 30, 30), ("dent", 200, 50, 240, 90)]
    items = list(slice_training_items(180, 250, boxes, slice_size=100, overlap_ratio=0.2))
    assert [window for window, _ in items] == slice_windows(180, 250, 100, 100, 0.2, 0.2)


def test_empty_training_slices_can_be_dropped_and_the_choice_is_reproducible():
    boxes = [("dent", 10, 10, 30, 30)]
    all_items = list(slice_training_items(1000, 1000, boxes, 100, 0.0))
    assert len(all_items) == 100
    only_boxes = list(slice_training_items(1000, 1000, boxes, 100, 0.0, keep_empty=0.0))
    assert only_boxes == [((0, 0, 100, 100), [("dent", 10.0, 10.0, 30.0, 30.0)])]
    some = list(slice_training_items(1000, 1000, boxes, 100, 0.0, keep_empty=0.3, rng=7))
    assert 15 <= len(some) <= 45 and some[0][1]
    assert some == list(slice_training_items(1000, 1000, boxes, 100, 0.0, keep_empty=0.3, rng=7))


def test_bad_slicing_options_say_what_is_valid():
    with pytest.raises(ConfigError, match="keep_empty"):
        list(slice_training_items(100, 100, [], 50, keep_empty=2.0))
    with pytest.raises(ConfigError, match="slice_size"):
        list(slice_training_items(100, 100, [], (50, 0)))
    with pytest.raises(ConfigError, match="min_visible_ratio"):
        slice_annotations([], (0, 0, 1, 1), min_visible_ratio=1.5)


# ----------------------------------------------------------------------------- detections -> instances
def test_detections_become_instances_with_class_names_and_box_areas_best_first():
    found = dets([[0, 0, 10, 4], [5, 5, 8, 9], [1, 1, 2, 2]], [0.4, 0.9, 0.1], labels=[1, 0, 1])
    instances = detections_to_instances(found, ["scratch", "dent"], min_score=0.2)
    assert [(i.class_name, i.score, i.box, i.area, i.polygon) for i in instances] == [
        ("scratch", pytest.approx(0.9), (5.0, 5.0, 8.0, 9.0), 12.0, []),
        ("dent", pytest.approx(0.4), (0.0, 0.0, 10.0, 4.0), 40.0, []),
    ]


def test_slivers_under_a_pixel_are_not_reported_as_instances():
    found = dets([[5, 16.0, 70, 16.04], [5, 5, 5.5, 40], [5, 5, 6, 6]], [0.9, 0.8, 0.7])
    assert [i.box for i in detections_to_instances(found, ["scratch"])] == [(5.0, 5.0, 6.0, 6.0)]


def test_a_label_outside_the_classes_is_an_error():
    with pytest.raises(ValueError, match="classes"):
        detections_to_instances(dets([[0, 0, 1, 1]], [0.5], labels=[2]), ["scratch", "dent"])


# ----------------------------------------------------------------------------- the shared window helpers
@settings(max_examples=120, deadline=None)
@given(
    height=st.integers(1, 200), width=st.integers(1, 200),
    slice_height=st.integers(1, 90), slice_width=st.integers(1, 90),
    overlap=st.floats(0, 0.9), keep_size=st.booleans(), whole=st.booleans(),
)
def test_shared_windows_cover_the_image_and_stay_inside_it(height, width, slice_height, slice_width, overlap, keep_size, whole):
    if whole:
        windows = image_windows(height, width, None)
        assert windows == [(0, 0, width, height)]
    else:
        windows = slice_windows(height, width, slice_height, slice_width, overlap, overlap, keep_size=keep_size)
        if keep_size:
            assert windows == image_windows(height, width, (slice_height, slice_width), (overlap, overlap))
    covered = np.zeros((height, width), np.int64)
    for x1, y1, x2, y2 in windows:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        if not whole:
            assert x2 - x1 <= slice_width and y2 - y1 <= slice_height
        covered[y1:y2, x1:x2] += 1
    assert (covered >= 1).all()
    if not keep_size and overlap == 0 and not whole:
        assert (covered == 1).all()  # cut tiles without overlap cover each pixel once


def test_window_batches_crop_every_window_of_every_image_in_order_and_regroup() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(30, 50), (20, 20), (45, 31)]]
    windows = [image_windows(*image.shape[:2], (20, 20), (0.25, 0.25)) for image in images]
    batches = list(window_batches(images, windows, 4))
    flat = [item for batch in batches for item in batch]
    assert all(len(batch) == 4 for batch in batches[:-1]) and 1 <= len(batches[-1]) <= 4
    assert [(i, w) for i, w, _ in flat] == [(i, w) for i, ws in enumerate(windows) for w in ws]
    for i, (x1, y1, x2, y2), crop in flat:
        assert crop.flags["C_CONTIGUOUS"] and np.array_equal(crop, images[i][y1:y2, x1:x2])


def test_stitching_one_window_over_the_whole_image_returns_its_map() -> None:
    full = np.random.default_rng(1).random((2, 7, 9)).astype(np.float64)
    out = stitch_maps([full], [(0, 0, 9, 7)], 7, 9)
    assert out.dtype == np.float32 and np.array_equal(out, full.astype(np.float32))
    with pytest.raises(ValueError, match="expected"):
        stitch_maps([full[:, :6]], [(0, 0, 9, 7)], 7, 9)
