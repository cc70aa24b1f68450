"""Reader for per-class mask folders: ``images/NAME.jpg`` + ``masks/<class>/NAME.png``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectkit.data.class_mapped import ClassMappedDataset
from defectkit.data.grouping import DEFAULT_GROUP_PATTERN, Polygon
from defectkit.errors import ImageDecodeError
from defectkit.io.images import IMAGE_SUFFIXES, load_mask
from defectkit.registry import DATASETS
from defectkit.sample import Record


def mask_to_polygons_with_holes(mask: np.ndarray) -> list[Polygon]:
    """Polygons (outer ring, then holes) that redraw exactly the pixels of a bool mask.

    :func:`defectkit.polygons.mask_to_polygons` returns outer contours only, which fills holes
    (a ring-shaped scratch would become a disc). Here each 8-connected component becomes one
    polygon whose holes are the 4-connected background regions inside it; a hole ring is the
    outline of the hole's own pixels, so filling it with 0 removes exactly those pixels, and
    :func:`defectkit.polygons.polygons_to_mask` reproduces the mask pixel for pixel.

    Args:
        mask: HxW bool or 0/1 array.

    Returns:
        ``[[outer, hole, ...], ...]`` with rings ``[[x, y], ...]`` of at least 3 points.

    Example:
        >>> ring = np.zeros((7, 7), bool); ring[1:6, 1:6] = True; ring[3, 3] = False
        >>> [len(polygon) for polygon in mask_to_polygons_with_holes(ring)]
        [2]
    """
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    if binary.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {binary.shape}")
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    polygons: list[Polygon] = []
    for index in range(1, count):
        x, y, w, h = (int(v) for v in stats[index, :4])
        # One pixel of padding so contours never touch the crop border.
        component = np.zeros((h + 2, w + 2), np.uint8)
        component[1:-1, 1:-1] = labels[y : y + h, x : x + w] == index
        offset = np.array([x - 1, y - 1])
        outer = _outline(component)
        if outer is None:
            continue
        filled = np.zeros_like(component)
        cv2.fillPoly(filled, [outer.reshape(-1, 1, 2)], 1)
        rings = [_ring(outer, offset)]
        holes = filled & (1 - component)
        hole_count, hole_labels = cv2.connectedComponents(holes, connectivity=4)
        for hole in range(1, hole_count):
            outline = _outline((hole_labels == hole).astype(np.uint8))
            if outline is not None:
                rings.append(_ring(outline, offset))
                # A hole's outline is traced 8-connected and can cut off a diagonal spur of the
                # component; those pixels are redrawn below as polygons of their own.
                cv2.fillPoly(filled, [outline.reshape(-1, 1, 2)], 0)
        polygons.append(rings)
        missing = component & (1 - filled)
        if missing.any():
            for polygon in mask_to_polygons_with_holes(missing):
                shifted = [[[float(px + offset[0]), float(py + offset[1])] for px, py in ring] for ring in polygon]
                polygons.append(shifted)
    return polygons


def _outline(region: np.ndarray) -> np.ndarray | None:
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    # One region, one outer contour; take the longest if OpenCV splits a touching-diagonal shape.
    return max(contours, key=len).reshape(-1, 2).astype(np.int32)


def _ring(points: np.ndarray, offset: np.ndarray) -> list[list[float]]:
    if len(points) < 3:
        # Single pixels and straight one-pixel lines: walk there and back so the ring has 3 points
        # and still draws exactly those pixels.
        points = np.concatenate([points, points[::-1]])[: max(3, 2 * len(points) - 1)]
        if len(points) < 3:
            points = np.repeat(points[:1], 3, axis=0)
    return (points + offset).astype(float).tolist()


@DATASETS.register_module()
class MaskFolder(ClassMappedDataset):
    """Images with one binary mask per class: ``masks/<class folder>/<stem>.png``.

    Each class folder name is a source label mapped through ``label_map`` (None: folder name =
    class name). Masks are read once and turned into exact polygons with holes
    (:func:`mask_to_polygons_with_holes`), so the records carry ``polygons`` like every other
    reader and overlapping classes keep both. An image without any mask file is an undamaged
    image (label 0) unless ``require_masks`` is set. Masks without an image, unknown class folders
    and masks of another size than their image (resized, nearest) are reported.

    Args:
        data_root: Folder with ``images/`` and ``masks/``.
        classes: The config's class names.
        label_map: Class folder name -> class name, or None to drop that folder.
        mask_threshold: Mask pixels above this grey level are foreground (JPEG-safe 127).
        require_masks: Report images without any mask (``missing_label``) and skip them,
            instead of reading them as undamaged.
        group_pattern: Regex for the group key in the image file name; None for no groups.
        image_classes: Names of the image-level labels.

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="MaskFolder", data_root="data/panels", classes=["scratch", "dent"]))
        >>> records = reader.records()  # doctest: +SKIP
        >>> sorted(records[0].polygons)  # doctest: +SKIP
        ['dent', 'scratch']
    """

    LAYOUT = """\
<root>/
  images/<name>.jpg             photos
  masks/
    <class>/<name>.png          binary mask per class (white = class), same name stem as the photo;
                                a photo without any mask is undamaged"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        classes: Sequence[str],
        label_map: Mapping[Any, str | None] | None = None,
        mask_threshold: int = 127,
        require_masks: bool = False,
        group_pattern: str | None = DEFAULT_GROUP_PATTERN,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, classes, label_map, group_pattern, image_classes)
        self.mask_threshold = int(mask_threshold)
        self.require_masks = bool(require_masks)

    def records(self, split: str | None = None) -> list[Record]:
        """Every image, sorted by path, with the polygons of its class masks.

        Raises:
            DataError: Missing root, no ``images/`` or ``masks/`` folder, or no image.
        """
        self.check_split(split)
        self.start()
        root = self.check_root()
        image_dir, mask_dir = root / "images", root / "masks"
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise self.layout_error("images/ and masks/ folders are both needed")
        images: dict[str, Path] = {}
        for entry in sorted(image_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_file() or entry.suffix.lower() not in IMAGE_SUFFIXES:
                self.report("ignored_file", entry, "not an image file, ignored")
            elif entry.stem in images:
                self.report("duplicate_image", entry, f"same name stem as {images[entry.stem].name}; first kept")
            else:
                images[entry.stem] = entry
        # {stem: [(class, mask path), ...]}
        masks: dict[str, list[tuple[str, Path]]] = {}
        for folder in sorted(mask_dir.iterdir()):
            if folder.name.startswith("."):
                continue
            if not folder.is_dir():
                self.report("ignored_file", folder, "file directly in masks/ ignored (masks go in masks/<class>/)")
                continue
            class_name, _ = self.map_label(folder.name, folder)
            if class_name is None:
                continue
            for entry in sorted(folder.iterdir()):
                if entry.name.startswith("."):
                    continue
                if not entry.is_file() or entry.suffix.lower() not in IMAGE_SUFFIXES:
                    self.report("ignored_file", entry, "not a mask image, ignored")
                elif entry.stem not in images:
                    self.report("missing_image", entry, f"mask without an image {image_dir / entry.stem}.*; ignored")
                else:
                    masks.setdefault(entry.stem, []).append((class_name, entry))
        records = []
        for stem, image in sorted(images.items()):
            if stem not in masks and self.require_masks:
                self.report("missing_label", image, "image without any mask, skipped")
                continue
            record = self._record(image, masks.get(stem, []))
            if record is not None:
                records.append(record)
        return self.finish(records, "no images in images/")

    def _record(self, image: Path, masks: list[tuple[str, Path]]) -> Record | None:
        size = self.image_size(image)
        if size is None:
            return None
        width, height = size
        polygons: dict[str, list[Polygon]] = {}
        for class_name, path in masks:
            try:
                mask = load_mask(path, threshold=self.mask_threshold)
            except ImageDecodeError as exc:
                self.report("bad_annotation", path, f"{exc}; mask skipped")
                continue
            if mask.shape != (height, width):
                self.report("size_mismatch", path, f"mask is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}; "
                            "resized (nearest)")
                mask = load_mask(path, (height, width), threshold=self.mask_threshold)
            found = mask_to_polygons_with_holes(mask)
            if found:
                polygons.setdefault(class_name, []).extend(found)
                self.stats["regions"] += len(found)
        return self.make_record(image, polygons, size, meta={"mask_paths": [[c, str(p)] for c, p in masks]})


__all__ = ["MaskFolder", "mask_to_polygons_with_holes"]
