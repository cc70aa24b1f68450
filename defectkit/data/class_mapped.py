"""Base of readers whose source labels (``Scratched``, ``1``...) map onto the config's classes."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from defectkit.data.base import ImageDataset
from defectkit.data.grouping import (
    DEFAULT_GROUP_PATTERN,
    NORMAL_CATEGORY,
    Polygon,
    assign_categories,
    damaged_area_ratio,
    group_key,
)
from defectkit.errors import ConfigError
from defectkit.polygons import PolygonError, validate_ring
from defectkit.sample import Record


def nesting_depth(value: Any) -> int:
    """Depth of nested lists down to the first number (``[[x, y], ...]`` is 2), -1 for empty lists."""
    depth = 0
    while isinstance(value, (list, tuple)):
        if not value:
            return -1
        value = value[0]
        depth += 1
    return depth


def as_polygon_list(geometry: Any) -> list[Any]:
    """A ring (depth 2), polygon (depth 3) or multipolygon (depth 4) as a list of polygons.

    Raises:
        ValueError: Any other nesting (a flat number list, a dict...).

    Example:
        >>> as_polygon_list([[0, 0], [4, 0], [4, 4]])
        [[[[0, 0], [4, 0], [4, 4]]]]
    """
    depth = nesting_depth(geometry)
    if depth == -1:
        return []
    if depth == 2:
        return [[geometry]]
    if depth == 3:
        return [geometry]
    if depth == 4:
        return list(geometry)
    raise ValueError(f"expected a ring, polygon or multipolygon of [x, y] points, got nesting depth {depth}")


# -- shared reader base ------------------------------------------------------------------------------


class ClassMappedDataset(ImageDataset):
    """Base of readers whose source labels are mapped onto the config's classes.

    Subclasses collect, per image, ``{source label: [polygon, ...]}`` and call
    :meth:`map_label`, :meth:`clean_polygon`, :meth:`make_record` and :meth:`finish`. Every skipped
    or suspicious item is noted in :attr:`problems` (with its file name) and counted by kind in
    :attr:`problem_counts`; deliberate drops (labels mapped to None, annotations without the label
    field) are counted in :attr:`stats` instead.

    Args:
        data_root: The data folder.
        classes: The config's class names; ``Record.polygons`` keys are among them.
        label_map: Source label -> class name, or None to drop that label on purpose. None maps
            every source label to the class of the same name. Source labels compare loosely:
            ``1`` and ``"1"`` are the same label.
        group_pattern: Regex whose first group (or whole match) in the image file name is the
            record's ``group``; None for no groups.
        image_classes: Names of the image-level labels (0 normal, 1 damaged).

    Attributes:
        problem_counts: ``{kind: count}`` of :attr:`problems`: ``unknown_label``,
            ``degenerate_ring``, ``out_of_bounds``, ``missing_image``, ``missing_label``,
            ``duplicate_image``, ``outside_root``, ``bad_annotation``...
        stats: ``{what: count}`` of things read or deliberately left out (``images``,
            ``regions``, ``dropped_label:<label>``...).
        class_image_counts: Images per configured class, from the last :meth:`records` call.
    """

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        classes: Sequence[str],
        label_map: Mapping[Any, str | None] | None = None,
        group_pattern: str | None = DEFAULT_GROUP_PATTERN,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, image_classes=image_classes)
        name = type(self).__name__
        if isinstance(classes, str) or not classes:
            raise ConfigError(f"{name}: classes must be a non-empty list of class names, got {classes!r}")
        self.classes = tuple(str(c) for c in classes)
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"{name}: classes must be unique, got {list(self.classes)}")
        if NORMAL_CATEGORY in self.classes:
            raise ConfigError(f"{name}: {NORMAL_CATEGORY!r} is the category of undamaged images, not a class")
        self.label_map: dict[str, str | None] | None = None
        if label_map is not None:
            self.label_map = {}
            for source, target in dict(label_map).items():
                if target is not None and target not in self.classes:
                    raise ConfigError(
                        f"{name}: label_map maps {source!r} to {target!r}, which is not one of classes "
                        f"{list(self.classes)} (use None to drop a label)"
                    )
                self.label_map[_label_key(source)] = target
        try:
            self.group_pattern = None if group_pattern is None else re.compile(group_pattern)
        except re.error as exc:
            raise ConfigError(f"{name}: group_pattern {group_pattern!r} is not a valid regex ({exc})") from exc
        self.problem_counts: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.class_image_counts: Counter[str] = Counter()

    def layout_details(self) -> str:
        return f"classes={list(self.classes)}"

    # -- bookkeeping ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Forget the problems and counts of an earlier :meth:`records` call."""
        self.problems = []
        self.problem_counts = Counter()
        self.stats = Counter()
        self.class_image_counts = Counter()

    def report(self, kind: str, where: str | os.PathLike[str], message: str) -> None:
        """Note a problem: ``"<where>: <message>"`` in :attr:`problems`, counted under ``kind``."""
        self.problems.append(f"{where}: {message}")
        self.problem_counts[kind] += 1

    # -- labels and polygons -------------------------------------------------------------------------

    def map_label(self, source: Any, where: str | os.PathLike[str]) -> tuple[str | None, bool]:
        """The class of a source label.

        Returns:
            ``(class name, True)``; ``(None, True)`` for a label mapped to None on purpose (counted
            in :attr:`stats`); ``(None, False)`` for an unknown label (reported in :attr:`problems`).
        """
        key = _label_key(source)
        if self.label_map is None:
            if key in self.classes:
                return key, True
        elif key in self.label_map:
            target = self.label_map[key]
            if target is None:
                self.stats[f"dropped_label:{key}"] += 1
            return target, True
        known = list(self.classes) if self.label_map is None else list(self.label_map)
        self.report("unknown_label", where, f"unknown label {source!r} (label_map knows {known}); region skipped")
        return None, False

    def clean_polygon(self, polygon: Any, size: tuple[int, int] | None, where: str) -> Polygon | None:
        """A polygon with its degenerate rings dropped, or None when its outer ring is unusable.

        Rings with fewer than three points or non-finite coordinates are dropped and reported
        (``degenerate_ring``); a dropped outer ring drops the whole polygon, since its holes mean
        nothing alone. Points outside ``size`` (width, height) are kept, because the rasteriser
        clips them, and reported once per ring (``out_of_bounds``).
        """
        if not isinstance(polygon, (list, tuple)) or not polygon:
            self.report("degenerate_ring", where, "empty polygon skipped")
            return None
        cleaned: Polygon = []
        for index, ring in enumerate(polygon):
            what = "outer ring" if index == 0 else f"hole {index}"
            points, reason = _ring_points(ring)
            if points is None:
                if index == 0:
                    self.report("degenerate_ring", where, f"{what} {reason}; polygon skipped")
                    return None
                self.report("degenerate_ring", where, f"{what} {reason}; hole skipped")
                continue
            if size is not None:
                width, height = size
                xs, ys = points[:, 0], points[:, 1]
                outside = int(np.count_nonzero((xs < 0) | (xs > width) | (ys < 0) | (ys > height)))
                if outside:
                    self.report(
                        "out_of_bounds",
                        where,
                        f"{what} has {outside} point(s) outside the {width}x{height} image (clipped when rasterised)",
                    )
            cleaned.append(points.tolist())
        return cleaned

    def add_regions(
        self,
        target: dict[str, list[Polygon]],
        source_label: Any,
        geometry: Any,
        size: tuple[int, int] | None,
        where: str,
    ) -> None:
        """Map ``source_label`` and add the cleaned polygons of ``geometry`` (ring/polygon/multipolygon)."""
        class_name, known = self.map_label(source_label, where)
        if class_name is None:
            return
        try:
            polygons = as_polygon_list(geometry)
        except ValueError as exc:
            self.report("bad_annotation", where, f"label {source_label!r}: {exc}; region skipped")
            return
        if not polygons:
            self.report("degenerate_ring", where, f"label {source_label!r}: empty outline; region skipped")
        for polygon in polygons:
            cleaned = self.clean_polygon(polygon, size, f"{where} ({class_name})")
            if cleaned is not None:
                target.setdefault(class_name, []).append(cleaned)
                self.stats["regions"] += 1

    # -- records -------------------------------------------------------------------------------------

    def make_record(
        self,
        path: str | os.PathLike[str],
        polygons: Mapping[str, list[Polygon]],
        size: tuple[int, int] | None,
        damaged: bool | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Record:
        """A record with ``label``, ``group`` and ``meta`` derived from its regions.

        Args:
            path: Image file.
            polygons: ``{class: [polygon, ...]}`` after mapping and cleaning.
            size: ``(width, height)`` when known; needed for ``damaged_area_ratio``.
            damaged: An image-level damage flag from the source (e.g. ``damage_level``); the label is
                1 when it is true or any region exists.
            meta: Source-specific extras, kept in ``Record.meta``.
        """
        kept = {name: list(polys) for name, polys in polygons.items() if polys}
        # Keep the config's class order, so records print and compare the same whatever the source order.
        kept = {name: kept[name] for name in self.classes if name in kept}
        record_meta = dict(meta or {})
        if size is not None:
            record_meta["width"], record_meta["height"] = int(size[0]), int(size[1])
            record_meta["damaged_area_ratio"] = damaged_area_ratio(kept, size) if kept else 0.0
        label = 1 if kept or damaged else 0
        return Record(
            path=str(path),
            label=label,
            # An empty dict (not None) says "annotated, nothing there": evaluation then counts the
            # image as ground truth with empty masks.
            polygons=kept,
            group=group_key(path, self.group_pattern),
            meta=record_meta,
        )

    def finish(self, records: list[Record], what: str = "no images found") -> list[Record]:
        """Assign categories by class rarity and return the records sorted by path (or raise if none)."""
        found = self.require_records(records, what)
        self.class_image_counts = assign_categories(found, self.classes)
        self.stats["images"] = len(found)
        return found

    def image_size(self, path: Path) -> tuple[int, int] | None:
        """``(width, height)`` of an image as :func:`~defectkit.io.images.load_image` will decode it.

        Reads the header only; EXIF rotations by 90 degrees swap the sides, as decoding does.
        Returns None (and reports ``unreadable_image``) when the file is not an image.
        """
        try:
            with Image.open(path) as img:
                width, height = img.size
                orientation = img.getexif().get(0x0112, 1)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            self.report("unreadable_image", path, f"cannot read the image header ({exc})")
            return None
        return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _label_key(source: Any) -> str:
    # JSON turns integer keys into strings and configs mix both: compare labels as text, with
    # integral floats (1.0) as integers.
    if isinstance(source, float) and source.is_integer():
        source = int(source)
    return str(source)


def _ring_points(ring: Any) -> tuple[np.ndarray | None, str]:
    try:
        return validate_ring(ring), ""
    except PolygonError as exc:
        return None, str(exc)


def parse_size(width: Any, height: Any) -> tuple[int, int] | None:
    """``(width, height)`` from annotation fields, or None when missing or not positive integers."""
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None
