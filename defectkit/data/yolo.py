"""Reader for YOLO box labels: ``images/NAME.jpg`` + ``labels/NAME.txt`` lines ``class_id cx cy w h``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from defectkit.data.box_dataset import DEFAULT_MAX_OVERSHOOT, Box, BoxDataset
from defectkit.errors import ConfigError, DataError
from defectkit.io.images import IMAGE_SUFFIXES
from defectkit.registry import DATASETS
from defectkit.sample import Record

UNLABELLED_MODES = ("skip", "normal")

# Normalised values written as 1.0000001 by float rounding are still inside the image.
NORMALISED_SLACK = 1e-6


@DATASETS.register_module()
class YoloBoxes(BoxDataset):
    """YOLO (Ultralytics/Darknet) box labels: one text file per image, one ``class_id cx cy w h`` line per box.

    Images pair with labels by their path below ``images/`` and ``labels/``
    (``images/train/a.jpg`` -> ``labels/train/a.txt``). Two layouts are read: ``images/`` +
    ``labels/`` at the root (``split`` names a subfolder of ``images/``), or split folders each
    holding ``images/`` + ``labels/`` (a Roboflow export's ``train/``, ``valid/``...; ``split``
    names one of them). Coordinates are the box centre and size as fractions of the image; the
    image header gives its size. An empty label file is an image without boxes (label 0).

    Class names by id come from, in order: ``names``; ``data.yaml`` (``names: [...]`` or
    ``{id: name}``) at the root; ``classes.txt`` at the root (one name per line); else the config's
    ``classes`` in order. They then go through ``label_map``.

    Malformed label files raise :class:`DataError` naming the file and line: a line without
    exactly five fields (polygon lines included), a non-integer class id, an id without a name,
    a non-numeric value, a value outside [0, 1], an empty box, a box far outside the image.

    Args:
        data_root: A folder with ``images/`` + ``labels/``, or a folder of such folders.
        classes: The config's class names.
        names: Class name of each class id (list, or ``{id: name}``); None to look it up as above.
        label_map: Class name -> config class (None drops it; ``"*"`` catches every other name).
        images_without_labels: ``"skip"`` (noted in ``problems``) or ``"normal"`` (an image
            without boxes, the Ultralytics convention for background images).
        group_pattern: Regex for the group key in the file name; None for no groups.
        max_overshoot: Fraction of the image side a box may reach past it (clipped) before the file
            is rejected.
        image_suffixes: Suffixes of image files (case-insensitive).
        image_classes: Names of the image-level labels.

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="YoloBoxes", data_root="acne_yolo", classes=["lesion"],
        ...                               label_map={"*": "lesion"}))
        >>> records = reader.records(split="valid")  # doctest: +SKIP
        >>> records[0].boxes[:1]  # doctest: +SKIP
        [('lesion', 330.0, 523.0, 350.0, 540.0)]
    """

    LAYOUT = """\
<root>/
  images/[<split>/]<name>.jpg   photo
  labels/[<split>/]<name>.txt   one box per line: class_id cx cy w h (fractions of the image, 0..1)
  data.yaml | classes.txt       (optional) class names by id: names: [...] | one name per line
or split folders each holding images/ + labels/:
  <split>/images/<name>.jpg
  <split>/labels/<name>.txt"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        classes: Sequence[str],
        names: Sequence[str] | Mapping[int, str] | None = None,
        label_map: Mapping[Any, str | None] | None = None,
        images_without_labels: str = "skip",
        group_pattern: str | None = None,
        max_overshoot: float = DEFAULT_MAX_OVERSHOOT,
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, classes, label_map, group_pattern, max_overshoot, image_classes)
        if images_without_labels not in UNLABELLED_MODES:
            raise ConfigError(
                f"YoloBoxes: images_without_labels must be one of {UNLABELLED_MODES}, got {images_without_labels!r}"
            )
        self.names = None if names is None else _names_by_id(names, "YoloBoxes names", ConfigError)
        self.images_without_labels = images_without_labels
        self.image_suffixes = tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in image_suffixes)

    def class_names(self) -> dict[int, str]:
        """``{class id: name}`` from ``names``, ``data.yaml``, ``classes.txt`` or the config's classes.

        Raises:
            DataError: ``data.yaml`` or ``classes.txt`` cannot be read or lists no usable names.
        """
        if self.names is not None:
            return self.names
        root = self.check_root()
        yaml_path, txt_path = root / "data.yaml", root / "classes.txt"
        if yaml_path.is_file():
            try:
                data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise DataError(f"{yaml_path}: cannot read it as YAML ({exc}); fix it or pass names=[...]") from exc
            if isinstance(data, dict) and data.get("names") is not None:
                return _names_by_id(data["names"], f"{yaml_path}: names", DataError)
        if txt_path.is_file():
            try:
                lines = txt_path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{txt_path}: cannot read it ({exc}); fix it or pass names=[...]") from exc
            return _names_by_id([line.strip() for line in lines if line.strip()], str(txt_path), DataError)
        return dict(enumerate(self.classes))

    def records(self, split: str | None = None) -> list[Record]:
        """Every image with a label file (or every image, with ``images_without_labels="normal"``), sorted by path.

        Raises:
            DataError: Missing root, no ``images/`` + ``labels/`` folders, a malformed label file,
                or no usable image.
        """
        root = self.check_root()
        folders = self._folders(root)
        allowed = sorted({name for _, _, name in folders if name is not None} | _subfolders(root / "images"))
        self.check_split(split, allowed)
        self.start()
        names = self.class_names()
        records: list[Record] = []
        for images_dir, labels_dir, name in folders:
            if split is not None and name is None:
                images_dir, labels_dir = images_dir / split, labels_dir / split
            elif split is not None and name != split:
                continue
            records.extend(self._read_folder(images_dir, labels_dir, names))
        return self.finish(records, "no image with a label file in images/ + labels/")

    def _folders(self, root: Path) -> list[tuple[Path, Path, str | None]]:
        """``(images dir, labels dir, split name)`` of the root (split None) or of each split folder."""
        if (root / "images").is_dir() and (root / "labels").is_dir():
            return [(root / "images", root / "labels", None)]
        found = [
            (p / "images", p / "labels", p.name)
            for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (p / "images").is_dir() and (p / "labels").is_dir()
        ]
        if not found:
            raise self.layout_error("no images/ + labels/ folders at the root or one level below it")
        return found

    def _read_folder(self, images_dir: Path, labels_dir: Path, names: dict[int, str]) -> list[Record]:
        images = {}
        for image in sorted(images_dir.rglob("*")):
            relative = image.relative_to(images_dir)
            if image.is_file() and image.suffix.lower() in self.image_suffixes and not _hidden(relative):
                images[relative.with_suffix("")] = image
        labels = {}
        for label in sorted(labels_dir.rglob("*.txt")):
            relative = label.relative_to(labels_dir)
            if label.is_file() and not _hidden(relative):
                labels[relative.with_suffix("")] = label
        for stem in sorted(set(labels) - set(images)):
            self.report("missing_image", labels[stem], f"label file without an image {images_dir / stem}.*; ignored")
        records = []
        for stem, image in images.items():
            label = labels.get(stem)
            if label is None and self.images_without_labels == "skip":
                self.report("missing_label", image, f"image without a label file {labels_dir / stem}.txt; ignored")
                continue
            size = self.image_size(image)
            if size is None:
                continue
            if label is None:
                self.stats["images_without_labels"] += 1
                records.append(self.make_box_record(image, [], size))
            else:
                boxes = self._read_label(label, size, names)
                records.append(self.make_box_record(image, boxes, size, meta={"annotation": str(label)}))
        return records

    def _read_label(self, label: Path, size: tuple[int, int], names: dict[int, str]) -> list[Box]:
        try:
            lines = label.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{label}: cannot read the label file ({exc}); fix or remove it") from exc
        width, height = size
        boxes: list[Box] = []
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label}:{number}"
            if len(fields) != 5:
                hint = " (a segmentation polygon? YoloBoxes reads boxes only)" if len(fields) > 5 else ""
                raise DataError(f"{where}: expected 5 fields 'class_id cx cy w h', got {len(fields)}{hint}")
            class_id = _class_id(fields[0], where)
            if class_id not in names:
                raise DataError(
                    f"{where}: class id {class_id} has no name (known ids: {sorted(names)}); "
                    "fix the label or list the names in data.yaml, classes.txt or names=[...]"
                )
            cx, cy, w, h = (_fraction(value, field, where) for value, field in zip(fields[1:], ("cx", "cy", "w", "h")))
            if w <= 0 or h <= 0:
                raise DataError(f"{where}: empty box (w={w:g}, h={h:g}); fix or remove the line")
            edges = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
            self.add_box(boxes, names[class_id], edges, size, where)
        return boxes


def _class_id(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{where}: class id {text!r} is not a whole number") from None


def _fraction(text: str, field: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {field} {text!r} is not a number") from None
    if not math.isfinite(value) or not -NORMALISED_SLACK <= value <= 1 + NORMALISED_SLACK:
        raise DataError(
            f"{where}: {field} {text} is outside [0, 1]; YOLO coordinates are fractions of the image size, "
            "not pixels"
        )
    return min(max(value, 0.0), 1.0)


def _names_by_id(names: Any, what: str, error: type[Exception]) -> dict[int, str]:
    """``{id: name}`` from a list of names or an ``{id: name}`` mapping."""
    if isinstance(names, Mapping):
        try:
            by_id = {int(key): str(value) for key, value in names.items()}
        except (TypeError, ValueError):
            raise error(f"{what} must map whole-number class ids to names, got {dict(names)!r}") from None
    elif isinstance(names, (list, tuple)):
        by_id = {index: str(name) for index, name in enumerate(names)}
    else:
        raise error(f"{what} must be a list of class names or an {{id: name}} mapping, got {names!r}")
    if not by_id:
        raise error(f"{what} lists no class names")
    return by_id


def _subfolders(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


__all__ = ["UNLABELLED_MODES", "YoloBoxes"]
