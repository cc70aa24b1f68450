"""Reader for the production system's polygon JSON: one record per image with damage level and regions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from defectkit.data.class_mapped import ClassMappedDataset, parse_size
from defectkit.data.grouping import DEFAULT_GROUP_PATTERN, Polygon
from defectkit.errors import ConfigError, DataError
from defectkit.io.images import IMAGE_SUFFIXES
from defectkit.registry import DATASETS
from defectkit.sample import Record

POLYGON_JSON_CLASSES = ("scratch", "dent", "spacing")
# The production system's ids: 0 is background (outlines of "nothing"), dropped on purpose.
POLYGON_JSON_LABEL_MAP: dict[Any, str | None] = {0: None, 1: "scratch", 2: "dent", 3: "spacing"}
# Keys a record may use to name its image file explicitly (otherwise image_id is the name).
FILE_KEYS = ("file_name", "image_path", "path")


@DATASETS.register_module()
class PolygonJson(ClassMappedDataset):
    """Polygon JSON of the production system: ``image_id``, ``damage_level`` and ``regions`` per image.

    Records come from ``<root>/annotations.json`` (a list of image records), from one JSON per image
    in ``<root>/labels/``, or both. Each record::

        {"image_id": "0001_as-12", "damage_level": 1,            # 0 no damage, 1 damage
         "width": 800, "height": 600,                             # optional
         "file_name": "0001_as-12.jpg",                           # optional, relative to images/
         "regions": [{"class_name": 1, "points": [[x, y], ...]}]} # 0 background, 1 scratch, 2 dent, 3 spacing

    The image is ``images/<file_name>``, else ``images/<image_id>`` when the id has a suffix, else
    ``images/<image_id>.<any image suffix>``; paths leaving the root are refused and reported.
    ``points`` may also be a list of rings (outer, then holes). ``label`` is 1 when a configured
    region exists or ``damage_level`` is 1; a level contradicting the regions is reported
    (``level_mismatch``). Duplicate ``image_id``: the first is kept, later ones reported. Images
    in ``images/`` that no record names are reported (``missing_label``).

    Args:
        data_root: Folder with ``images/`` and ``annotations.json`` and/or ``labels/``.
        classes: The config's class names.
        label_map: Source ``class_name`` -> class name, or None to drop (the default drops 0,
            background). ``1`` and ``"1"`` are the same label.
        annotation_file: Name of the all-in-one file at the root.
        label_dir: Folder of per-image JSON files.
        image_dir: Folder of the images, relative to the root.
        group_pattern: Regex for the group key in the image file name; None for no groups.
        image_classes: Names of the image-level labels.

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="PolygonJson", data_root="data/claims",
        ...                               classes=["scratch", "dent", "spacing"],
        ...                               label_map={0: None, 1: "scratch", 2: "dent", 3: "spacing"}))
        >>> records = reader.records()  # doctest: +SKIP
        >>> reader.problem_counts  # doctest: +SKIP
        Counter({'degenerate_ring': 2})
    """

    LAYOUT = """\
<root>/
  images/<name>.jpg             photos
  annotations.json              [{"image_id": "<name>", "damage_level": 0|1,
                                  "regions": [{"class_name": 0-3, "points": [[x, y], ...]}, ...]}, ...]
  labels/<name>.json            and/or one such record per image (either file kind may be absent)"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        classes: Sequence[str] = POLYGON_JSON_CLASSES,
        label_map: Mapping[Any, str | None] | None = POLYGON_JSON_LABEL_MAP,
        annotation_file: str = "annotations.json",
        label_dir: str = "labels",
        image_dir: str = "images",
        group_pattern: str | None = DEFAULT_GROUP_PATTERN,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, classes, label_map, group_pattern, image_classes)
        for name, value in (("annotation_file", annotation_file), ("label_dir", label_dir), ("image_dir", image_dir)):
            if os.path.isabs(value) or ".." in Path(value).parts:
                raise ConfigError(f"PolygonJson: {name} must be relative to the data root, got {value!r}")
        self.annotation_file = annotation_file
        self.label_dir = label_dir
        self.image_dir = image_dir

    def layout_details(self) -> str:
        return f"annotation_file={self.annotation_file!r}, label_dir={self.label_dir!r}, image_dir={self.image_dir!r}"

    def records(self, split: str | None = None) -> list[Record]:
        """Every annotated image, sorted by path; everything skipped is in ``problems``.

        Raises:
            DataError: Missing root, no annotation file and no label folder, or no usable record.
        """
        self.check_split(split)
        self.start()
        root = self.check_root()
        annotation_file = root / self.annotation_file
        label_dir = root / self.label_dir
        if not annotation_file.is_file() and not label_dir.is_dir():
            raise self.layout_error(f"neither {self.annotation_file} nor {self.label_dir}/ exists")
        image_dir = root / self.image_dir
        records: list[Record] = []
        by_id: dict[str, str] = {}
        used_images: set[Path] = set()
        for source, raw in self._raw_records(annotation_file, label_dir):
            record = self._read_record(raw, source, image_dir, by_id)
            if record is not None:
                records.append(record)
                used_images.add(Path(record.path))
        if image_dir.is_dir():
            for entry in sorted(image_dir.rglob("*")):
                if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES and entry not in used_images:
                    self.report("missing_label", entry, "image without an annotation record, ignored")
        return self.finish(records, "no usable annotation record")

    def _raw_records(self, annotation_file: Path, label_dir: Path) -> Iterator[tuple[str, Any]]:
        if annotation_file.is_file():
            data = self._load_json(annotation_file)
            if isinstance(data, dict) and isinstance(data.get("records"), list):
                data = data["records"]
            if isinstance(data, list):
                for index, raw in enumerate(data):
                    yield f"{annotation_file} record {index}", raw
            elif data is not None:
                self.report("bad_annotation", annotation_file, "expected a list of image records; file skipped")
        if label_dir.is_dir():
            for path in sorted(label_dir.iterdir()):
                if path.name.startswith("."):
                    continue
                if not path.is_file() or path.suffix.lower() != ".json":
                    self.report("ignored_file", path, "not a .json label file, ignored")
                    continue
                data = self._load_json(path)
                if isinstance(data, dict):
                    # A per-image file may leave out image_id: its name says which image it is.
                    data.setdefault("image_id", path.stem)
                    yield str(path), data
                elif isinstance(data, list):
                    for index, raw in enumerate(data):
                        yield f"{path} record {index}", raw
                elif data is not None:
                    self.report("bad_annotation", path, "expected an image record object; file skipped")

    def _load_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.report("bad_annotation", path, f"unreadable JSON ({exc}); file skipped")
            return None

    def _read_record(self, raw: Any, source: str, image_dir: Path, by_id: dict[str, str]) -> Record | None:
        if not isinstance(raw, dict) or raw.get("image_id") in (None, ""):
            self.report("bad_annotation", source, "record without an image_id; skipped")
            return None
        image_id = str(raw["image_id"])
        where = f"{source} (image_id {image_id!r})"
        if image_id in by_id:
            self.report("duplicate_image", where, f"image_id already read from {by_id[image_id]}; first kept")
            return None
        by_id[image_id] = source
        image = self._find_image(raw, image_id, image_dir, where)
        if image is None:
            return None
        size = parse_size(raw.get("width"), raw.get("height")) or self.image_size(image)
        if size is None:
            return None
        level = raw.get("damage_level")
        if level is not None and level not in (0, 1):
            self.report("bad_annotation", where, f"damage_level {level!r} is not 0 or 1; ignored")
            level = None
        polygons: dict[str, list[Polygon]] = {}
        regions = raw.get("regions") or []
        if not isinstance(regions, list):
            self.report("bad_annotation", where, "regions is not a list; regions skipped")
            regions = []
        for index, region in enumerate(regions):
            region_where = f"{where} region {index}"
            if not isinstance(region, dict) or "class_name" not in region or "points" not in region:
                self.report("bad_annotation", region_where, "region needs 'class_name' and 'points'; skipped")
                continue
            self.add_regions(polygons, region["class_name"], region["points"], size, region_where)
        record = self.make_record(
            image, polygons, size, damaged=level == 1, meta={"image_id": image_id, "damage_level": level}
        )
        if level == 0 and record.polygons:
            self.report("level_mismatch", where, "damage_level 0 but damage regions are outlined; labelled 1")
        elif level == 1 and not record.polygons:
            self.report("level_mismatch", where, "damage_level 1 without any configured region; no masks")
        return record

    def _find_image(self, raw: dict[str, Any], image_id: str, image_dir: Path, where: str) -> Path | None:
        name = next((str(raw[k]) for k in FILE_KEYS if raw.get(k)), None)
        if name is None and Path(image_id).suffix.lower() in IMAGE_SUFFIXES:
            name = image_id
        try:
            if name is not None:
                candidates = [self.resolve(os.path.join(self.image_dir, name))]
            else:
                base = self.resolve(os.path.join(self.image_dir, image_id))
                candidates = [base.with_name(base.name + s) for s in IMAGE_SUFFIXES]
                candidates += [base.with_name(base.name + s.upper()) for s in IMAGE_SUFFIXES]
        except DataError as exc:
            self.report("outside_root", where, f"{exc}; record skipped")
            return None
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        shown = candidates[0] if name is not None else f"{image_dir / image_id}.*"
        self.report("missing_image", where, f"image file {shown} not found; record skipped")
        return None


__all__ = ["POLYGON_JSON_CLASSES", "POLYGON_JSON_LABEL_MAP", "PolygonJson"]
