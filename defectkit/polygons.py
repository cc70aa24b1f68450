"""Conversions between polygons and masks.

A polygon is a list of rings, the outer ring first and holes after it; a ring is ``[[x, y], ...]``
in pixel coordinates (x right, y down).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

Ring = Sequence[Sequence[float]]
Polygon = Sequence[Ring]


class PolygonError(ValueError):
    """A polygon that cannot be drawn (too few points, NaN coordinates...)."""


def validate_ring(ring: Ring) -> np.ndarray:
    """Return a ring as an Nx2 float array, or raise :class:`PolygonError` saying what is wrong."""
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PolygonError(f"ring is not a list of [x, y] pairs ({exc})") from exc
    if points.ndim != 2 or points.shape[1] != 2:
        raise PolygonError(f"ring must be a list of [x, y] pairs, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise PolygonError("ring has NaN or infinite coordinates")
    if len(points) < 3:
        raise PolygonError(f"ring has {len(points)} point(s); a polygon needs at least 3")
    return points


def polygons_to_mask(polygons: Sequence[Polygon], shape: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Rasterise polygons (with holes) into one HxW bool mask, merging them by logical OR.

    Points outside the image are clipped by drawing; degenerate rings are skipped and reported.

    Args:
        polygons: Polygons, each a list of rings (outer first, then holes).
        shape: ``(height, width)`` of the mask.

    Returns:
        The mask and a list of problems found (one message per skipped ring).

    Example:
        >>> square = [[[1, 1], [4, 1], [4, 4], [1, 4]]]
        >>> mask, problems = polygons_to_mask([square], (6, 6))
        >>> int(mask.sum()), problems
        (16, [])
    """
    mask = np.zeros(shape, dtype=np.uint8)
    problems: list[str] = []
    for index, polygon in enumerate(polygons):
        if not polygon:
            problems.append(f"polygon {index}: no rings")
            continue
        filled = np.zeros(shape, dtype=np.uint8)
        for ring_index, ring in enumerate(polygon):
            try:
                points = validate_ring(ring)
            except PolygonError as exc:
                problems.append(f"polygon {index} ring {ring_index}: {exc}")
                if ring_index == 0:
                    break
                continue
            # Clamp far-away points so int32 conversion cannot overflow; drawing clips the rest.
            limit = 4 * max(shape) + 16
            pts = np.clip(np.round(points), -limit, limit).astype(np.int32).reshape(-1, 1, 2)
            cv2.fillPoly(filled, [pts], color=1 if ring_index == 0 else 0)
        mask |= filled
    return mask.astype(bool), problems


def mask_to_polygons(mask: np.ndarray, min_area: float = 0.0, epsilon: float = 0.0) -> list[list[list[float]]]:
    """Outer contours of a bool mask as polygons (one ring each), largest first.

    Args:
        mask: HxW bool or 0/1 array.
        min_area: Drop contours whose enclosed area (pixels) is smaller.
        epsilon: Douglas-Peucker tolerance in pixels (0 keeps every contour point).

    Returns:
        ``[[[x, y], ...], ...]`` with at least 3 points per ring (single pixels become small squares).
    """
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if epsilon > 0:
            contour = cv2.approxPolyDP(contour, epsilon, True)
        points = contour.reshape(-1, 2).astype(float)
        if len(points) < 3:
            # A single pixel or a straight one-pixel-wide line (possibly diagonal): walk it there and
            # back so the ring has 3+ points and redraws exactly those pixels (its bounding box would
            # fill a whole square for a diagonal line).
            points = np.concatenate([points, points[::-1]])[: max(3, 2 * len(points) - 1)]
            if len(points) < 3:
                points = np.repeat(points[:1], 3, axis=0)
        area = max(cv2.contourArea(points.astype(np.float32)), float(cv2.countNonZero(_component(binary, contour))))
        if area < min_area:
            continue
        polygons.append((area, points.tolist()))
    polygons.sort(key=lambda item: -item[0])
    return [p for _, p in polygons]


def _component(binary: np.ndarray, contour: np.ndarray) -> np.ndarray:
    x, y, w, h = cv2.boundingRect(contour)
    region = np.zeros((h, w), dtype=np.uint8)
    cv2.drawContours(region, [contour - np.array([x, y])], -1, 1, thickness=cv2.FILLED)
    return region & binary[y : y + h, x : x + w]


def polygon_area(ring: Ring) -> float:
    """Area enclosed by a ring (shoelace formula)."""
    points = np.asarray(ring, dtype=np.float64)
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0], points[:, 1]
    return 0.5 * math.fabs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
