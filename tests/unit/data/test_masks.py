"""Ground-truth masks per class from a record's annotations."""

from __future__ import annotations

import numpy as np
from PIL import Image

from defectkit.data.masks import ground_truth_masks
from defectkit.sample import Record

LEFT = [[[0, 0], [5, 0], [5, 5], [0, 5]]]  # 36 pixels
RIGHT = [[[3, 3], [8, 3], [8, 8], [3, 8]]]  # 36 pixels, overlapping LEFT on 9


def test_polygons_of_two_classes_fill_their_own_channels_and_keep_overlap_in_both():
    record = Record("a.png", polygons={"dent": [RIGHT], "scratch": [LEFT]})
    masks, problems = ground_truth_masks(record, (10, 10), ["scratch", "dent"])
    assert problems == []
    assert masks.shape == (2, 10, 10) and masks.dtype == bool
    assert masks[0].sum() == 36 and masks[0][0, 0] and not masks[0][8, 8]
    assert masks[1].sum() == 36 and masks[1][8, 8] and not masks[1][0, 0]
    overlap = masks[0] & masks[1]
    assert overlap.sum() == 9 and overlap[4, 4]


def test_several_polygons_of_one_class_are_merged():
    record = Record("a.png", polygons={"dent": [LEFT, RIGHT]})
    masks, _ = ground_truth_masks(record, (10, 10), ["dent"])
    assert masks[0].sum() == 36 + 36 - 9


def test_unknown_class_is_listed_as_problem_and_not_drawn():
    record = Record("a.png", polygons={"rust": [LEFT], "dent": [RIGHT]})
    masks, problems = ground_truth_masks(record, (10, 10), ["dent"])
    assert masks[0].sum() == 36 and not masks[0][0, 0]
    assert len(problems) == 1
    assert "'rust'" in problems[0] and "a.png" in problems[0]


def test_degenerate_polygon_problems_name_the_image():
    record = Record("img/7.png", polygons={"dent": [[[[1, 1], [2, 2]]]]})
    _, problems = ground_truth_masks(record, (5, 5), ["dent"])
    assert len(problems) == 1 and problems[0].startswith("img/7.png: ")


def test_mask_path_fills_the_first_channel_only(tmp_path):
    mask = np.zeros((6, 6), np.uint8)
    mask[1:3, 2:5] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    record = Record("a.png", mask_path=str(tmp_path / "m.png"))
    masks, problems = ground_truth_masks(record, (6, 6), ["defect", "other"])
    assert problems == []
    np.testing.assert_array_equal(masks[0], mask > 0)
    assert not masks[1].any()


def test_mask_file_of_another_size_is_resized_to_the_image(tmp_path):
    mask = np.zeros((5, 5), np.uint8)
    mask[:, :2] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    masks, _ = ground_truth_masks(Record("a.png", mask_path=str(tmp_path / "m.png")), (10, 10), ["defect"])
    assert masks.shape == (1, 10, 10)
    assert masks[0][:, :4].all() and not masks[0][:, 4:].any()


def test_record_without_annotations_gives_empty_masks():
    masks, problems = ground_truth_masks(Record("n.png", label=0), (4, 3), ["a", "b"])
    assert masks.shape == (2, 4, 3) and not masks.any() and problems == []


def test_polygons_are_scaled_to_an_image_decoded_at_reduced_size():
    square = [[[0, 0], [39, 0], [39, 39], [0, 39]]]
    record = Record("big.jpg", polygons={"scratch": [square]})
    masks, problems = ground_truth_masks(record, (50, 50), ["scratch"], scale=0.5)
    assert problems == []
    assert masks[0, :20, :20].all() and not masks[0, 21:, :].any()
