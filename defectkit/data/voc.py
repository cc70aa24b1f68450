"""Reader for Pascal VOC box annotations: one XML per image, beside it or in ``Annotations/``."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defectkit.data.box_dataset import DEFAULT_MAX_OVERSHOOT, Box, BoxDataset
from defectkit.errors import DataError
from defectkit.io.images import IMAGE_SUFFIXES
from defectkit.registry import DATASETS
from defectkit.sample import Record

BNDBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


@DATASETS.register_module()
class VocBoxes(BoxDataset):
    """Pascal VOC XML boxes (``<object><name>`` + ``<bndbox>``), one XML file per image.

    Two layouts are read. Side by side: every ``<name>.xml`` pairs with the image of the same stem
    in the same folder, searched through the root and its subfolders (a Roboflow export's
    ``train/``, ``valid/``, ``test/``; ``split`` names one of them). VOC devkit: ``Annotations/`` +
    ``JPEGImages/``, with ``split`` reading the names listed in ``ImageSets/Main/<split>.txt``.

    Object names go through ``label_map``; an XML without objects is an image without boxes
    (label 0). VOC counts pixels from 1 and its ``xmax`` is the last pixel inside the box, so with
    ``one_based`` (default) ``xmin``/``ymin`` move by one to become pixel edges. ``<difficult>``
    boxes are kept (counted in ``stats["difficult_boxes"]``). ``<size>`` gives the image size;
    when it is missing or zero the image header is read.

    Malformed files raise :class:`DataError` naming the file and object: XML that does not parse,
    a missing ``<name>``/``<bndbox>``/coordinate, a non-numeric value, an empty box, a box far
    outside the image. Images without an XML (and XMLs without an image) are noted in ``problems``.

    Records: ``boxes``, ``label``, ``category`` (rarest class present), ``group`` (``group_pattern``
    on the file name), ``meta`` = ``width``, ``height``, ``damaged_area_ratio``, ``annotation``
    (the XML path).

    Args:
        data_root: A folder of images with their XMLs (optionally in split subfolders), or a VOC
            devkit folder with ``Annotations/`` and ``JPEGImages/``.
        classes: The config's class names.
        label_map: Object name -> class name (None drops it; ``"*"`` catches every other name).
        one_based: Coordinates count pixels from 1 (Pascal VOC); False for exports writing 0-based edges.
        group_pattern: Regex for the group key in the file name; None for no groups.
        max_overshoot: Fraction of the image side a box may reach past it (clipped) before the file
            is rejected.
        image_suffixes: Suffixes of image files (case-insensitive).
        image_classes: Names of the image-level labels.

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="VocBoxes", data_root="../shared/data/acne04/valid",
        ...                               classes=["lesion"], label_map={"*": "lesion"},
        ...                               group_pattern=r"levle\\d+_\\d+"))
        >>> records = reader.records()  # doctest: +SKIP
        >>> len(records), sum(len(r.boxes) for r in records)  # doctest: +SKIP
        (283, 3425)
    """

    LAYOUT = """\
<root>/                         images with their Pascal VOC XML beside them:
  [<split>/]<name>.jpg          photo (optional split folders: train/, valid/, test/...)
  [<split>/]<name>.xml          <annotation><size><width/><height/></size>
                                  <object><name/><bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object>...
or the VOC devkit layout:
  Annotations/<name>.xml
  JPEGImages/<name>.jpg
  ImageSets/Main/<split>.txt    (optional) the names of each split"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        classes: Sequence[str],
        label_map: Mapping[Any, str | None] | None = None,
        one_based: bool = True,
        group_pattern: str | None = None,
        max_overshoot: float = DEFAULT_MAX_OVERSHOOT,
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, classes, label_map, group_pattern, max_overshoot, image_classes)
        self.one_based = bool(one_based)
        self.image_suffixes = tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in image_suffixes)

    def records(self, split: str | None = None) -> list[Record]:
        """Every image with an XML, sorted by path; unpaired files are noted in ``problems``.

        Args:
            split: A split subfolder (side-by-side layout) or ``ImageSets/Main/<split>.txt`` (devkit
                layout); None for everything.

        Raises:
            DataError: Missing root, a malformed XML file, or no image with an XML.
        """
        root = self.check_root()
        devkit = (root / "Annotations").is_dir()
        self.check_split(split, self._splits(root, devkit))
        self.start()
        pairs = self._devkit_pairs(root, split) if devkit else self._side_by_side_pairs(root, split)
        records = [self._read_xml(image, xml) for image, xml in pairs]
        return self.finish([r for r in records if r is not None], "no image with a Pascal VOC .xml file")

    def _splits(self, root: Path, devkit: bool) -> list[str]:
        if devkit:
            sets = root / "ImageSets" / "Main"
            return sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
        return sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.rglob("*.xml"))
        )

    # -- pairing -----------------------------------------------------------------------------------

    def _devkit_pairs(self, root: Path, split: str | None) -> list[tuple[Path, Path]]:
        sets = root / "ImageSets" / "Main"
        if not (root / "JPEGImages").is_dir():
            raise self.layout_error("Annotations/ without JPEGImages/")
        images = self._images_by_stem(root / "JPEGImages")
        if split is None:
            xmls = {p.stem: p for p in sorted((root / "Annotations").glob("*.xml"))}
            for stem in sorted(set(images) - set(xmls)):
                self.report("missing_label", images[stem], f"image without {root / 'Annotations' / stem}.xml; ignored")
        else:
            listed = (sets / f"{split}.txt").read_text(encoding="utf-8").split("\n")
            names = [line.split()[0] for line in listed if line.strip()]
            xmls = {}
            for name in names:
                xml = root / "Annotations" / f"{name}.xml"
                if xml.is_file():
                    xmls[name] = xml
                else:
                    self.report("missing_label", sets / f"{split}.txt", f"{name}: no {xml}; skipped")
        return self._pair(images, xmls, root / "JPEGImages")

    def _side_by_side_pairs(self, root: Path, split: str | None) -> list[tuple[Path, Path]]:
        folder = root if split is None else root / split
        pairs: list[tuple[Path, Path]] = []
        for directory in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
            if any(part.startswith(".") for part in directory.relative_to(root).parts):
                continue
            images = self._images_by_stem(directory)
            xmls = {p.stem: p for p in sorted(directory.glob("*.xml"))}
            for stem in sorted(set(images) - set(xmls)):
                self.report("missing_label", images[stem], f"image without {directory / stem}.xml; ignored")
            pairs.extend(self._pair(images, xmls, directory))
        return pairs

    def _images_by_stem(self, folder: Path) -> dict[str, Path]:
        images: dict[str, Path] = {}
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in self.image_suffixes:
                if entry.stem in images:
                    self.report("duplicate_image", entry, f"same name stem as {images[entry.stem].name}; first kept")
                else:
                    images[entry.stem] = entry
        return images

    def _pair(self, images: dict[str, Path], xmls: dict[str, Path], image_folder: Path) -> list[tuple[Path, Path]]:
        pairs = []
        for stem, xml in xmls.items():
            image = images.get(stem)
            if image is None:
                self.report("missing_image", xml, f"annotation without an image {image_folder / stem}.*; ignored")
            else:
                pairs.append((image, xml))
        return pairs

    # -- parsing -----------------------------------------------------------------------------------

    def _read_xml(self, image: Path, xml: Path) -> Record | None:
        try:
            annotation = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            raise DataError(f"{xml}: not a readable Pascal VOC XML file ({exc}); fix or remove it") from exc
        if annotation.tag != "annotation":
            raise DataError(f"{xml}: root element is <{annotation.tag}>, expected <annotation>; is this a Pascal VOC file?")
        size = _declared_size(annotation, xml) or self.image_size(image)
        if size is None:
            return None
        boxes: list[Box] = []
        for index, obj in enumerate(annotation.findall("object")):
            name = (obj.findtext("name") or "").strip()
            where = f"{xml} object {index}" + (f" ({name!r})" if name else "")
            if not name:
                raise DataError(f"{where}: missing <name>; every object needs a class name")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise DataError(f"{where}: missing <bndbox>; every object needs its box")
            xmin, ymin, xmax, ymax = (_number(bndbox, field, where) for field in BNDBOX_FIELDS)
            if xmax < xmin or ymax < ymin or (not self.one_based and (xmax == xmin or ymax == ymin)):
                axis = "xmax before xmin" if xmax < xmin or (xmax == xmin and not self.one_based) else "ymax before ymin"
                raise DataError(
                    f"{where}: empty box ({axis}: xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}); "
                    "fix or remove the object"
                )
            if (obj.findtext("difficult") or "0").strip() == "1":
                self.stats["difficult_boxes"] += 1
            shift = 1.0 if self.one_based else 0.0
            self.add_box(boxes, name, (xmin - shift, ymin - shift, xmax, ymax), size, where)
        return self.make_box_record(image, boxes, size, meta={"annotation": str(xml)})


def _number(parent: ET.Element, field: str, where: str) -> float:
    text = parent.findtext(field)
    if text is None or not text.strip():
        raise DataError(f"{where}: <bndbox> has no <{field}>; a box needs xmin, ymin, xmax and ymax")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: <{field}> is {text.strip()!r}, not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: <{field}> is {text.strip()!r}, not a finite number")
    return value


def _declared_size(annotation: ET.Element, xml: Path) -> tuple[int, int] | None:
    """``<size>``'s ``(width, height)``; None when absent or zero (some exporters write 0 for unknown)."""
    size = annotation.find("size")
    if size is None:
        return None
    values = []
    for field in ("width", "height"):
        text = (size.findtext(field) or "").strip()
        if not text:
            return None
        try:
            values.append(float(text))
        except ValueError:
            raise DataError(f"{xml}: <size><{field}> is {text!r}, not a number") from None
    width, height = values
    if not (math.isfinite(width) and math.isfinite(height)) or width < 0 or height < 0 or width % 1 or height % 1:
        raise DataError(f"{xml}: <size> {width:g}x{height:g} is not a whole number of pixels")
    if width == 0 or height == 0:
        return None
    return int(width), int(height)


__all__ = ["VocBoxes"]
