"""Base of the box readers (Pascal VOC, COCO boxes, YOLO): label mapping, box checks and records.

Every box format ends in the same :class:`~defectkit.sample.Record`: ``boxes`` as
``(class_name, x1, y1, x2, y2)`` pixel-edge coordinates of the original image, ``label`` 1 when
the image has a box, ``category`` the rarest class present. What differs is only how a format
spells a box; that is left to the subclasses, which hand boxes to :meth:`BoxDataset.add_box`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from defectkit.data.class_mapped import ClassMappedDataset, _label_key
from defectkit.data.grouping import (
    NORMAL_CATEGORY,
    UNLOCATED_CATEGORY,
    damaged_area_ratio,
    group_key,
    rarest_present,
)
from defectkit.errors import ConfigError, DataError
from defectkit.sample import Record

ANY_LABEL = "*"
"""``label_map`` key that catches every source label the map does not name (``{"*": "lesion"}``)."""

DEFAULT_MAX_OVERSHOOT = 0.05
"""How far (as a fraction of the image side) a box may reach past the image before the file is
rejected; boxes within it are clipped."""

# Exporters round box edges to whole pixels (and VOC counts pixels from 1), so overshooting by up to
# one pixel is routine and clipped without a note; more than that is worth reporting.
SILENT_OVERSHOOT_PX = 1.0

Box = tuple[str, float, float, float, float]


class BoxDataset(ClassMappedDataset):
    """Base of readers whose ground truth is boxes.

    Subclasses parse their format, call :meth:`add_box` for every box, :meth:`make_box_record` per
    image and :meth:`finish` at the end. Malformed annotations (unparseable files, missing fields,
    non-numeric or empty boxes, boxes far outside the image) raise :class:`DataError` naming the
    file and the problem, because a half-read annotation file silently changes what is evaluated.
    Unknown class names, images without annotations and the like are noted in :attr:`problems`.

    Args:
        data_root: The data folder.
        classes: The config's class names; ``Record.boxes`` classes are among them.
        label_map: Source label -> class name, or None to drop that label on purpose. The key
            ``"*"`` catches every label the map does not name: ``{"*": "lesion"}`` maps every source
            label to one class. None maps every source label to the class of the same name.
        group_pattern: Regex whose first group (or whole match) in the image file name is the
            record's ``group``; None for no groups.
        max_overshoot: How far a box may reach past the image, as a fraction of the image's width
            (height for y), before the file is rejected as malformed; boxes within it are clipped.
        image_classes: Names of the image-level labels (0 no box, 1 boxes).

    Example:
        >>> reader = VocBoxes("acne04/valid", classes=["lesion"], label_map={"*": "lesion"})  # doctest: +SKIP
        >>> reader.records()[0].boxes[:1]  # doctest: +SKIP
        [('lesion', 330.0, 523.0, 350.0, 540.0)]
    """

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        classes: Sequence[str],
        label_map: Mapping[Any, str | None] | None = None,
        group_pattern: str | None = None,
        max_overshoot: float = DEFAULT_MAX_OVERSHOOT,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, classes, label_map, group_pattern, image_classes)
        if not (isinstance(max_overshoot, (int, float)) and 0 <= max_overshoot < 1):
            raise ConfigError(
                f"{type(self).__name__}: max_overshoot must be a fraction of the image side in [0, 1), got {max_overshoot!r}"
            )
        self.max_overshoot = float(max_overshoot)

    def map_label(self, source: Any, where: str | os.PathLike[str]) -> tuple[str | None, bool]:
        """The class of a source label, with ``"*"`` in ``label_map`` catching labels it does not name."""
        if self.label_map is not None and ANY_LABEL in self.label_map and _label_key(source) not in self.label_map:
            target = self.label_map[ANY_LABEL]
            if target is None:
                self.stats[f"dropped_label:{_label_key(source)}"] += 1
            return target, True
        return super().map_label(source, where)

    def add_box(
        self,
        boxes: list[Box],
        source_label: Any,
        edges: Sequence[float],
        size: tuple[int, int],
        where: str,
    ) -> None:
        """Check a box, clip it to the image and append it with its mapped class.

        The box is checked before its label is looked up, so a malformed box is rejected even when
        its label would be dropped.

        Args:
            boxes: Where the box goes, as ``(class_name, x1, y1, x2, y2)``.
            source_label: The format's label, mapped through ``label_map``.
            edges: ``(x1, y1, x2, y2)`` pixel-edge coordinates in the original image.
            size: ``(width, height)`` of the image.
            where: The file (and entry) the box comes from, for messages.

        Raises:
            DataError: Non-finite or empty box, or a box far outside the image.
        """
        x1, y1, x2, y2 = self.checked_box(edges, size, where)
        class_name, _ = self.map_label(source_label, where)
        if class_name is None:
            return
        boxes.append((class_name, x1, y1, x2, y2))

    def checked_box(self, edges: Sequence[float], size: tuple[int, int], where: str) -> tuple[float, float, float, float]:
        """``edges`` clipped to the image, after checking they make a box that overlaps it.

        Raises:
            DataError: Non-finite or empty box, or a box reaching past the image by more than
                ``max_overshoot`` of its side.
        """
        x1, y1, x2, y2 = (float(v) for v in edges)
        box_text = f"box (x1, y1, x2, y2) = ({_fmt(x1)}, {_fmt(y1)}, {_fmt(x2)}, {_fmt(y2)})"
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise DataError(f"{where}: {box_text} has a non-finite coordinate; fix the annotation")
        if x2 <= x1 or y2 <= y1:
            axis = "x2 <= x1" if x2 <= x1 else "y2 <= y1"
            raise DataError(f"{where}: {box_text} is empty ({axis}); fix or remove the box")
        width, height = size
        overshoot_x = max(-x1, x2 - width, 0.0)
        overshoot_y = max(-y1, y2 - height, 0.0)
        limit_x, limit_y = self.max_overshoot * width, self.max_overshoot * height
        if overshoot_x > limit_x or overshoot_y > limit_y or x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
            raise DataError(
                f"{where}: {box_text} lies far outside the {width}x{height} image (more than "
                f"{self.max_overshoot:.0%} of a side); check the coordinates, their order and the image size"
            )
        if overshoot_x or overshoot_y:
            self.stats["clipped_boxes"] += 1
            if max(overshoot_x, overshoot_y) > SILENT_OVERSHOOT_PX:
                self.report("out_of_bounds", where, f"{box_text} reaches past the {width}x{height} image; clipped")
        return max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))

    def make_box_record(
        self,
        path: str | os.PathLike[str],
        boxes: Sequence[Box],
        size: tuple[int, int],
        meta: dict[str, Any] | None = None,
    ) -> Record:
        """A record of an image and its boxes, with ``label``, ``group`` and ``meta`` filled in.

        ``boxes`` is a list even when empty: an annotated image without boxes is ground truth
        ("nothing there"), which evaluation must tell apart from an unannotated one (None).
        """
        record_meta = dict(meta or {})
        record_meta["width"], record_meta["height"] = int(size[0]), int(size[1])
        outlines: dict[str, list[Any]] = {}
        for class_name, x1, y1, x2, y2 in boxes:
            outlines.setdefault(class_name, []).append([[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]])
        # The same area ratio as the polygon readers give, so a "damage" split stratum works on boxes too.
        record_meta["damaged_area_ratio"] = damaged_area_ratio(outlines, size) if outlines else 0.0
        self.stats["boxes"] += len(boxes)
        return Record(
            path=str(path),
            label=1 if boxes else 0,
            boxes=list(boxes),
            group=group_key(path, self.group_pattern),
            meta=record_meta,
        )

    def finish(self, records: list[Record], what: str = "no images found") -> list[Record]:
        """Set each record's category to the rarest class among its boxes; return the records sorted by path.

        Raises:
            DataError: No records.
        """
        found = self.require_records(records, what)
        counts: Counter[str] = Counter()
        for record in found:
            counts.update({box[0] for box in record.boxes or []})
        for record in found:
            present = {box[0] for box in record.boxes or []}
            rarest = rarest_present(present, counts, self.classes)
            if rarest is not None:
                record.category = rarest
            else:
                record.category = UNLOCATED_CATEGORY if record.label else NORMAL_CATEGORY
        self.class_image_counts = counts
        self.stats["images"] = len(found)
        return found


def _fmt(value: float) -> str:
    return f"{value:g}"


__all__ = ["ANY_LABEL", "DEFAULT_MAX_OVERSHOOT", "Box", "BoxDataset"]
