"""Polygon <-> mask conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_fill_holes

from defectkit.polygons import PolygonError, mask_to_polygons, polygon_area, polygons_to_mask, validate_ring


def _roundtrip(mask: np.ndarray) -> np.ndarray:
    polygons = mask_to_polygons(mask)
    back, problems = polygons_to_mask([[ring] for ring in polygons], mask.shape)
    assert problems == []
    return back


def test_square_polygon_fills_its_pixels_inclusive():
    mask, problems = polygons_to_mask([[[[1, 1], [4, 1], [4, 4], [1, 4]]]], (6, 6))
    assert problems == []
    expected = np.zeros((6, 6), bool)
    expected[1:5, 1:5] = True
    np.testing.assert_array_equal(mask, expected)


def test_polygon_with_hole_leaves_the_hole_empty():
    outer = [[0, 0], [9, 0], [9, 9], [0, 9]]
    hole = [[3, 3], [6, 3], [6, 6], [3, 6]]
    mask, problems = polygons_to_mask([[outer, hole]], (10, 10))
    assert problems == []
    assert mask[0, 0] and mask[9, 9] and mask[1, 5]
    assert not mask[4:6, 4:6].any()
    assert mask.sum() < 100


def test_overlapping_polygons_merge_by_or():
    a = [[[0, 0], [4, 0], [4, 4], [0, 4]]]
    b = [[[2, 2], [6, 2], [6, 6], [2, 6]]]
    mask, _ = polygons_to_mask([a, b], (8, 8))
    assert mask.sum() == 25 + 25 - 9


def test_out_of_bounds_points_are_clipped_not_raised():
    huge = [[[-50, -50], [1e9, -50], [1e9, 1e9], [-50, 1e9]]]
    mask, problems = polygons_to_mask([huge], (5, 7))
    assert problems == []
    assert mask.shape == (5, 7)
    assert mask.all()


def test_polygon_partly_outside_covers_only_the_inside_part():
    mask, _ = polygons_to_mask([[[[-3, -3], [2, -3], [2, 2], [-3, 2]]]], (6, 6))
    expected = np.zeros((6, 6), bool)
    expected[:3, :3] = True
    np.testing.assert_array_equal(mask, expected)


def test_ring_with_fewer_than_three_points_is_a_problem_not_an_exception():
    good = [[[0, 0], [2, 0], [2, 2], [0, 2]]]
    bad = [[[5, 5], [6, 6]]]
    mask, problems = polygons_to_mask([good, bad], (8, 8))
    assert mask.sum() == 9  # the good polygon is still drawn
    assert len(problems) == 1
    assert "polygon 1" in problems[0] and "at least 3" in problems[0]


def test_nan_coordinates_are_a_problem_not_an_exception():
    mask, problems = polygons_to_mask([[[[0, 0], [float("nan"), 0], [2, 2]]]], (4, 4))
    assert not mask.any()
    assert len(problems) == 1 and "NaN" in problems[0]


def test_invalid_hole_is_a_problem_and_outer_ring_still_drawn():
    outer = [[0, 0], [5, 0], [5, 5], [0, 5]]
    mask, problems = polygons_to_mask([[outer, [[1, 1]]]], (6, 6))
    assert mask.sum() == 36
    assert len(problems) == 1 and "ring 1" in problems[0]


def test_polygon_without_rings_is_a_problem():
    mask, problems = polygons_to_mask([[]], (3, 3))
    assert not mask.any()
    assert problems == ["polygon 0: no rings"]


def test_validate_ring_rejects_wrong_shape():
    with pytest.raises(PolygonError, match="pairs"):
        validate_ring([[0, 0, 0], [1, 1, 1], [2, 2, 2]])


def test_mask_to_polygons_roundtrip_is_exact_for_blobs_and_single_pixels():
    mask = np.zeros((20, 20), bool)
    mask[2:7, 3:9] = True  # rectangle
    yy, xx = np.mgrid[:20, :20]
    mask |= (yy - 13) ** 2 + (xx - 13) ** 2 <= 9  # disc
    mask[0, 19] = True  # single pixel in a corner
    mask[18, 1] = True  # isolated single pixel
    mask[10, 0:4] = True  # one-pixel-high line
    np.testing.assert_array_equal(_roundtrip(mask), mask)


def test_mask_to_polygons_roundtrip_is_exact_for_diagonal_thin_lines():
    mask = np.zeros((10, 10), bool)
    for i in range(4):
        mask[1 + i, 1 + i] = True  # diagonal line, 4 pixels
    mask[8, 6] = mask[7, 7] = True  # two diagonal neighbours
    np.testing.assert_array_equal(_roundtrip(mask), mask)


def test_mask_to_polygons_roundtrip_is_exact_on_random_masks_up_to_filled_holes():
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random((12, 12)) < rng.uniform(0.05, 0.5)
        # Outer contours only: enclosed background becomes foreground, nothing else changes.
        np.testing.assert_array_equal(_roundtrip(mask), binary_fill_holes(mask))


def test_mask_to_polygons_returns_largest_first_and_rings_of_three_or_more_points():
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True
    mask[4:9, 4:9] = True
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    assert all(len(ring) >= 3 for ring in polygons)
    assert polygon_area(polygons[0]) == pytest.approx(16.0)  # 5x5 pixel centres span 4x4


def test_min_area_drops_small_components():
    mask = np.zeros((12, 12), bool)
    mask[1, 1] = True
    mask[5:10, 5:10] = True
    assert len(mask_to_polygons(mask)) == 2
    kept = mask_to_polygons(mask, min_area=5)
    assert len(kept) == 1
    assert min(x for x, _ in kept[0]) == 5


def test_empty_mask_has_no_polygons():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_polygon_area_of_rectangle_and_triangle():
    assert polygon_area([[0, 0], [4, 0], [4, 3], [0, 3]]) == pytest.approx(12.0)
    assert polygon_area([[0, 0], [4, 0], [0, 3]]) == pytest.approx(6.0)


def test_polygon_area_ignores_winding_and_degenerate_rings():
    clockwise = [[0, 0], [0, 3], [4, 3], [4, 0]]
    assert polygon_area(clockwise) == pytest.approx(12.0)
    assert polygon_area([[0, 0], [1, 1]]) == 0.0


def test_polygon_area_of_regular_polygon_approaches_circle():
    ring = [[10 * math.cos(t), 10 * math.sin(t)] for t in np.linspace(0, 2 * math.pi, 400, endpoint=False)]
    assert polygon_area(ring) == pytest.approx(math.pi * 100, rel=1e-3)
