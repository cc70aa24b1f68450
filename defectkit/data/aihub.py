"""Reader for the AI-Hub car-damage layout: ``images/NAME.jpg`` + ``labels/NAME.json`` MultiPolygon labels."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defectkit.data.class_mapped import ClassMappedDataset, parse_size
from defectkit.data.grouping import DEFAULT_GROUP_PATTERN, Polygon
from defectkit.io.images import IMAGE_SUFFIXES
from defectkit.registry import DATASETS
from defectkit.sample import Record

AIHUB_CLASSES = ("scratch", "dent", "spacing", "breakage")
AIHUB_LABEL_MAP = {"Scratched": "scratch", "Crushed": "dent", "Separated": "spacing", "Breakage": "breakage"}


@DATASETS.register_module()
class AihubDamage(ClassMappedDataset):
    """AI-Hub "car damage images" (SOCAR): one JSON of MultiPolygon damage outlines per photo.

    The root is either one folder with ``images/`` and ``labels/``, or a folder of such folders
    (e.g. ``sample_damage/``, ``sample_damage_part/``, ``dataset_subset/``), all read. Images and
    labels pair by file stem. Each annotation's ``label_key`` field (``damage``: Scratched, Crushed,
    Separated, Breakage) goes through ``label_map``; annotations whose field is null (car-part
    outlines) are counted in ``stats["annotations_without_<label_key>"]``, not reported. An image
    whose label file has no damage annotation gets label 0.

    Records: ``group`` = the ``as-…``/``sc-…`` case token of the file name (one vehicle/claim),
    ``category`` = rarest class present, ``meta`` = ``width``, ``height`` (from the label),
    ``damaged_area_ratio``, ``folder``, ``case_id`` and ``car_type`` (the label's category).

    Args:
        data_root: A folder with ``images/`` + ``labels/``, or a folder of such folders.
        classes: The config's class names.
        label_map: Source ``damage`` value -> class name (None drops it on purpose).
        label_key: Annotation field holding the source label (``"part"`` reads car parts instead).
        group_pattern: Regex for the group key in the file name; None for no groups.
        image_suffixes: Suffixes of image files (case-insensitive; content decides the format, so
            PNG data named ``.jpg`` is fine).
        image_classes: Names of the image-level labels.

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="AihubDamage", data_root="../shared/data/aihub_car_damage",
        ...                               classes=["scratch", "dent", "spacing", "breakage"]))
        >>> records = reader.records()  # doctest: +SKIP
        >>> records[0].group, sorted(records[0].polygons)  # doctest: +SKIP
        ('as-0036229', ['scratch'])
    """

    LAYOUT = """\
<root>/                         one folder with images/ + labels/, or several such folders:
  <folder>/                     e.g. sample_damage/, dataset_subset/ (optional level)
    images/<name>.jpg           photo (name holds the case token, e.g. 0000002_as-0036229.jpg)
    labels/<name>.json          {"images": {"width", "height", "file_name"},
                                 "annotations": [{"segmentation": [[[[x, y], ...], hole...], ...],
                                                  "damage": "Scratched"|"Crushed"|"Separated"|"Breakage"|null,
                                                  "part": ...}, ...]}"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        classes: Sequence[str] = AIHUB_CLASSES,
        label_map: Mapping[Any, str | None] | None = AIHUB_LABEL_MAP,
        label_key: str = "damage",
        group_pattern: str | None = DEFAULT_GROUP_PATTERN,
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, classes, label_map, group_pattern, image_classes)
        self.label_key = label_key
        self.image_suffixes = tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in image_suffixes)

    def folders(self) -> list[Path]:
        """The folders holding ``images/`` + ``labels/``: the root itself, or its direct subfolders."""
        root = self.check_root()
        if _is_pair_folder(root):
            return [root]
        found = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and _is_pair_folder(p)]
        if not found:
            raise self.layout_error("no images/ + labels/ folders at the root or one level below it")
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and not entry.name.startswith(".") and entry not in found:
                self.report("ignored_folder", entry, "folder ignored (no images/ + labels/ inside)")
        return found

    def records(self, split: str | None = None) -> list[Record]:
        """Every photo with a label file, sorted by path; unpaired files are reported in ``problems``.

        Raises:
            DataError: Missing root, no ``images/`` + ``labels/`` folder, or no labelled photo.
        """
        self.check_split(split)
        self.start()
        records: list[Record] = []
        seen_names: dict[str, Path] = {}
        for folder in self.folders():
            for record in self._read_folder(folder):
                name = Path(record.path).name
                if name in seen_names:
                    # Kept: another folder may hold a different photo under the same name.
                    self.report("duplicate_name", record.path, f"same file name as {seen_names[name]}; both kept")
                else:
                    seen_names[name] = Path(record.path)
                records.append(record)
        return self.finish(records, "no photo with a label file in images/ + labels/")

    def _read_folder(self, folder: Path) -> list[Record]:
        images: dict[str, Path] = {}
        for entry in sorted((folder / "images").iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_file() or entry.suffix.lower() not in self.image_suffixes:
                self.report("ignored_file", entry, "not an image file, ignored")
            elif entry.stem in images:
                self.report("duplicate_image", entry, f"same name stem as {images[entry.stem].name}; first kept")
            else:
                images[entry.stem] = entry
        labels: dict[str, Path] = {}
        for entry in sorted((folder / "labels").iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and entry.suffix.lower() == ".json":
                labels[entry.stem] = entry
            else:
                self.report("ignored_file", entry, "not a .json label file, ignored")
        for stem in sorted(set(labels) - set(images)):
            self.report("missing_image", labels[stem], f"label file without an image {folder / 'images' / stem}.*")
        records = []
        for stem, image in sorted(images.items()):
            label = labels.get(stem)
            if label is None:
                self.report("missing_label", image, f"image without a label file {folder / 'labels' / stem}.json")
                continue
            record = self._read_label(image, label, folder.name)
            if record is not None:
                records.append(record)
        return records

    def _read_label(self, image: Path, label: Path, folder: str) -> Record | None:
        try:
            data = json.loads(label.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.report("bad_annotation", label, f"unreadable label file ({exc}); image skipped")
            return None
        if not isinstance(data, dict) or not isinstance(data.get("annotations", []), list):
            self.report("bad_annotation", label, "expected an object with an 'annotations' list; image skipped")
            return None
        info = data.get("images")
        # AI-Hub writes "images" as one object; tolerate a one-element list as other exports do.
        if isinstance(info, list) and len(info) == 1:
            info = info[0]
        size = None
        if isinstance(info, dict):
            size = parse_size(info.get("width"), info.get("height"))
            if info.get("file_name") not in (None, image.name):
                self.report("name_mismatch", label, f"names image {info.get('file_name')!r}, paired with {image.name}")
        if size is None:
            size = self.image_size(image)
            if size is None:
                return None
        polygons: dict[str, list[Polygon]] = {}
        for index, annotation in enumerate(data.get("annotations") or []):
            where = f"{label} annotation {index}"
            if not isinstance(annotation, dict):
                self.report("bad_annotation", where, "not an object; skipped")
                continue
            source = annotation.get(self.label_key)
            if source is None:
                # Part outlines (damage null) are another task's labels, not damage that went missing.
                self.stats[f"annotations_without_{self.label_key}"] += 1
                continue
            if "segmentation" not in annotation:
                self.report("bad_annotation", where, f"label {source!r} has no segmentation; skipped")
                continue
            self.add_regions(polygons, source, annotation["segmentation"], size, where)
        categories = data.get("categories") if isinstance(data.get("categories"), dict) else {}
        meta = {"folder": folder, "case_id": categories.get("id"), "car_type": categories.get("supercategory_name")}
        record = self.make_record(image, polygons, size, meta=meta)
        if not record.polygons:
            self.stats["images_without_regions"] += 1
        return record


def _is_pair_folder(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "labels").is_dir()


__all__ = ["AIHUB_CLASSES", "AIHUB_LABEL_MAP", "AihubDamage"]
