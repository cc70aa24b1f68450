"""Reader for COCO instance annotations (polygons and RLE), with parsing helpers reusable by box readers."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from defectkit.data.class_mapped import ClassMappedDataset
from defectkit.data.grouping import DEFAULT_GROUP_PATTERN, Polygon
from defectkit.data.mask_folder import mask_to_polygons_with_holes
from defectkit.errors import ConfigError, DataError
from defectkit.io.images import IMAGE_SUFFIXES
from defectkit.registry import DATASETS
from defectkit.sample import Record

CROWD_MODES = ("keep", "ignore", "skip")


@dataclass
class CocoIndex:
    """A COCO annotation file, indexed: what every COCO reader (masks or boxes) needs.

    Attributes:
        images: ``{image id: image entry}`` in file order; the first of duplicate ids is kept.
        categories: ``{category id: name}``.
        annotations: ``{image id: [annotation, ...]}`` in file order.
        problems: ``[(kind, message), ...]`` found while indexing (duplicate image ids,
            annotations of unknown images, malformed entries).
    """

    images: dict[Any, dict[str, Any]] = field(default_factory=dict)
    categories: dict[Any, str] = field(default_factory=dict)
    annotations: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)


def load_coco(path: str | os.PathLike[str]) -> CocoIndex:
    """Read and index a COCO JSON file.

    Raises:
        DataError: The file is missing, not JSON, or not a COCO object with an ``images`` list.

    Example:
        >>> index = load_coco("train/COCO_train_annos.json")  # doctest: +SKIP
        >>> len(index.images), index.categories  # doctest: +SKIP
        (59, {1: 'damage'})
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read COCO annotations ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO file (expected an object with an 'images' list)")
    index = CocoIndex()
    for category in data.get("categories") or []:
        if isinstance(category, dict) and "id" in category:
            index.categories[category["id"]] = str(category.get("name", category["id"]))
        else:
            index.problems.append(("bad_annotation", f"{path}: category entry {category!r} has no id; ignored"))
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or not entry.get("file_name"):
            index.problems.append(("bad_annotation", f"{path}: image entry {entry!r} needs id and file_name; skipped"))
            continue
        if entry["id"] in index.images:
            first = index.images[entry["id"]]["file_name"]
            message = f"{path}: image id {entry['id']!r} ({entry['file_name']}) repeats {first}; first kept"
            index.problems.append(("duplicate_image", message))
            continue
        index.images[entry["id"]] = entry
        index.annotations[entry["id"]] = []
    for position, annotation in enumerate(data.get("annotations") or []):
        if not isinstance(annotation, dict) or annotation.get("image_id") not in index.images:
            image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
            index.problems.append(
                ("bad_annotation", f"{path}: annotation {position} names unknown image id {image_id!r}; skipped")
            )
            continue
        index.annotations[annotation["image_id"]].append(annotation)
    return index


def coco_bbox_xyxy(annotation: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """COCO ``bbox`` ``[x, y, w, h]`` as ``(x1, y1, x2, y2)``, None when missing or not finite/positive."""
    box = annotation.get("bbox")
    try:
        x, y, w, h = (float(v) for v in box)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h


def is_rle(segmentation: Any) -> bool:
    """Whether a COCO ``segmentation`` is run-length encoded (a dict with ``counts``) rather than polygons."""
    return isinstance(segmentation, dict) and "counts" in segmentation


def decode_rle(segmentation: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """An RLE segmentation (compressed string or uncompressed count list) as an HxW bool mask.

    Raises:
        ValueError: The RLE is malformed or its size differs from ``height`` x ``width``.
    """
    size = segmentation.get("size")
    if size is not None and [int(v) for v in size] != [int(height), int(width)]:
        raise ValueError(f"RLE size {list(size)} differs from the image size {[height, width]}")
    counts = segmentation["counts"]
    try:
        if isinstance(counts, list):
            # Uncompressed counts (typical of crowd regions) must be compressed before decoding.
            rle = coco_mask.frPyObjects(dict(segmentation, size=[int(height), int(width)]), int(height), int(width))
        else:
            rle = {"size": [int(height), int(width)], "counts": counts.encode() if isinstance(counts, str) else counts}
        with warnings.catch_warnings():
            # pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; harmless here.
            warnings.simplefilter("ignore", DeprecationWarning)
            return coco_mask.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises bare Exceptions/TypeErrors on bad input
        raise ValueError(f"cannot decode RLE ({exc})") from exc


def coco_polygons(segmentation: Any, height: int, width: int) -> list[Any]:
    """A COCO segmentation as polygons ``[[outer ring, hole...], ...]``.

    Polygon lists ``[[x1, y1, x2, y2, ...], ...]`` become one single-ring polygon per part
    (COCO polygons have no holes; a dangling odd coordinate is dropped). RLE masks are decoded and
    traced into exact polygons with holes, so a record holds every format the same way.

    Raises:
        ValueError: Neither a list of coordinate lists nor an RLE dict.

    Example:
        >>> coco_polygons([[0, 0, 4, 0, 4, 4]], 10, 10)
        [[[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0]]]]
    """
    if is_rle(segmentation):
        return mask_to_polygons_with_holes(decode_rle(segmentation, height, width))
    if not isinstance(segmentation, list):
        raise ValueError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")
    polygons = []
    for part in segmentation:
        if not isinstance(part, (list, tuple)) or any(isinstance(v, (list, tuple)) for v in part):
            raise ValueError("polygon segmentation must be a list of flat [x1, y1, x2, y2, ...] lists")
        values = [float(v) for v in part]
        ring = [[values[i], values[i + 1]] for i in range(0, len(values) - 1, 2)]
        polygons.append([ring])
    return polygons


class CocoFileLayout:
    """What every reader of one COCO annotation file shares: its settings, opening it, and walking its image list.

    Mixed into :class:`~defectkit.data.class_mapped.ClassMappedDataset` subclasses (it uses their
    ``check_root``, ``layout_error``, ``resolve`` and ``report``); :meth:`set_coco_layout` goes in
    ``__init__``.
    """

    ann_file: str
    image_dir: str
    crowd: str

    def set_coco_layout(self, ann_file: str, image_dir: str | None, crowd: str, crowd_modes: Sequence[str]) -> None:
        """Check and keep the annotation file, image folder (default: the file's folder) and crowd mode.

        Raises:
            ConfigError: A path that is absolute or leaves the data root, or an unknown crowd mode.
        """
        reader = type(self).__name__
        for name, value in (("ann_file", ann_file), ("image_dir", image_dir)):
            if value is not None and (os.path.isabs(value) or ".." in Path(value).parts):
                raise ConfigError(f"{reader}: {name} must be relative to the data root, got {value!r}")
        if crowd not in crowd_modes:
            raise ConfigError(f"{reader}: crowd must be one of {tuple(crowd_modes)}, got {crowd!r}")
        self.ann_file = ann_file
        self.image_dir = os.path.dirname(ann_file) if image_dir is None else image_dir
        self.crowd = crowd

    def layout_details(self) -> str:
        return f"ann_file={self.ann_file!r}, image_dir={self.image_dir!r}"

    def open_annotations(self) -> tuple[Path, CocoIndex]:
        """The annotation file's path and its index.

        Raises:
            DataError: Missing root or annotation file, or a file that is not COCO.
        """
        root = self.check_root()  # type: ignore[attr-defined]
        ann_path = root / self.ann_file
        if not ann_path.is_file():
            raise self.layout_error(f"annotation file {self.ann_file} not found")  # type: ignore[attr-defined]
        return ann_path, load_coco(ann_path)

    def listed_images(self, index: CocoIndex, ann_path: Path) -> Iterator[tuple[Any, dict[str, Any], Path, str]]:
        """``(image id, entry, image path, where)`` for each listed image file that exists, once each.

        Entries outside the root, listed twice or missing are reported and skipped; once the list is
        exhausted, image files in the image folder that the annotation file does not list are
        reported too. ``where`` names the entry for messages.
        """
        listed: set[Path] = set()
        for image_id, entry in index.images.items():
            where = f"{ann_path} image {image_id!r} ({entry['file_name']})"
            try:
                image = self.resolve(os.path.join(self.image_dir, str(entry["file_name"])))  # type: ignore[attr-defined]
            except DataError as exc:
                self.report("outside_root", where, f"{exc}; image skipped")  # type: ignore[attr-defined]
                continue
            if image in listed:
                self.report("duplicate_image", where, "file listed twice under different ids; first kept")  # type: ignore[attr-defined]
                continue
            listed.add(image)
            if not image.is_file():
                self.report("missing_image", where, f"image file {image} not found; skipped")  # type: ignore[attr-defined]
                continue
            yield image_id, entry, image, where
        image_root = self.check_root() / self.image_dir  # type: ignore[attr-defined]
        if image_root.is_dir():
            for path in sorted(image_root.iterdir()):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path not in listed:
                    self.report("missing_label", path, f"image not listed in {self.ann_file}; ignored")  # type: ignore[attr-defined]


@DATASETS.register_module()
class CocoSegmentation(CocoFileLayout, ClassMappedDataset):
    """COCO instance segmentation (polygons or RLE) as per-class polygons.

    Category names go through ``label_map`` (None: category name = class name). Crowd annotations
    (``iscrowd: 1``, usually RLE over a cluster of objects) are, by ``crowd``: ``"keep"`` (default;
    their pixels are that class, which is what a segmentation mask needs), ``"ignore"`` (kept apart
    in ``meta["ignore_polygons"]``, for metrics that skip those pixels; not in the masks) or
    ``"skip"`` (counted in ``stats["crowd_skipped"]``). Images listed without annotations are
    undamaged (label 0). Images in the image folder that the file does not list are reported.

    Args:
        data_root: The data folder.
        ann_file: COCO JSON, relative to the root.
        image_dir: Folder the ``file_name`` entries are relative to (inside the root); None for the
            annotation file's folder.
        classes: The config's class names.
        label_map: Category name -> class name, or None to drop the category.
        crowd: ``"keep"``, ``"ignore"`` or ``"skip"`` (see above).
        group_pattern: Regex for the group key in the image file name; None for no groups.
        image_classes: Names of the image-level labels.

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="CocoSegmentation", data_root="../shared/data/car_damage_coco/train",
        ...                               ann_file="COCO_train_annos.json", classes=["damage"]))
        >>> records = reader.records()  # doctest: +SKIP
        >>> len(records), sum(len(r.polygons["damage"]) for r in records)  # doctest: +SKIP
        (59, 140)
    """

    LAYOUT = """\
<root>/
  annotations.json              COCO: images [{id, file_name, width, height}], categories [{id, name}],
                                annotations [{image_id, category_id, segmentation (polygons | RLE), iscrowd}]
  <file_name>                   images, relative to the annotation file's folder (or image_dir)"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        ann_file: str = "annotations.json",
        image_dir: str | None = None,
        classes: Sequence[str] = ("damage",),
        label_map: Mapping[Any, str | None] | None = None,
        crowd: str = "keep",
        group_pattern: str | None = DEFAULT_GROUP_PATTERN,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, classes, label_map, group_pattern, image_classes)
        self.set_coco_layout(ann_file, image_dir, crowd, CROWD_MODES)

    def records(self, split: str | None = None) -> list[Record]:
        """Every listed image whose file exists, sorted by path; the rest is in ``problems``.

        Raises:
            DataError: Missing root or annotation file, a file that is not COCO, or no usable image.
        """
        self.check_split(split)
        self.start()
        ann_path, index = self.open_annotations()
        for kind, message in index.problems:
            self.report(kind, ann_path, message.removeprefix(f"{ann_path}: "))
        records: list[Record] = []
        for _image_id, entry, image, where in self.listed_images(index, ann_path):
            record = self._record(image, entry, index, where)
            if record is not None:
                records.append(record)
        return self.finish(records, f"no usable image listed in {self.ann_file}")

    def _record(self, image: Path, entry: dict[str, Any], index: CocoIndex, where: str) -> Record | None:
        size = None
        try:
            size = (int(entry["width"]), int(entry["height"]))
        except (KeyError, TypeError, ValueError):
            pass
        if size is None or min(size) <= 0:
            size = self.image_size(image)
            if size is None:
                return None
        width, height = size
        polygons: dict[str, list[Polygon]] = {}
        ignored: dict[str, list[Polygon]] = {}
        for annotation in index.annotations[entry["id"]]:
            ann_where = f"{where} annotation {annotation.get('id', '?')}"
            category = annotation.get("category_id")
            if category not in index.categories:
                self.report("unknown_label", ann_where, f"category id {category!r} is not in categories; skipped")
                continue
            crowd = bool(annotation.get("iscrowd", 0))
            if crowd and self.crowd == "skip":
                self.stats["crowd_skipped"] += 1
                continue
            try:
                geometry = coco_polygons(annotation.get("segmentation"), height, width)
            except ValueError as exc:
                self.report("bad_annotation", ann_where, f"{exc}; skipped")
                continue
            if is_rle(annotation.get("segmentation")):
                self.stats["rle_regions"] += 1
            target = ignored if crowd and self.crowd == "ignore" else polygons
            if not geometry:
                self.report("degenerate_ring", ann_where, "empty segmentation; skipped")
                continue
            self.add_regions(target, index.categories[category], geometry, size, ann_where)
            if crowd:
                self.stats[f"crowd_{self.crowd}"] += 1
        meta: dict[str, Any] = {"image_id": entry["id"]}
        if ignored:
            meta["ignore_polygons"] = ignored
        return self.make_record(image, polygons, size, meta=meta)


__all__ = [
    "CROWD_MODES",
    "CocoIndex",
    "CocoSegmentation",
    "coco_bbox_xyxy",
    "coco_polygons",
    "decode_rle",
    "is_rle",
    "load_coco",
]
