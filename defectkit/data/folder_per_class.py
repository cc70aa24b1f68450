"""Reader for one folder per class, each image with an optional same-name mask beside it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from defectkit.data.base import ImageDataset
from defectkit.errors import ConfigError
from defectkit.registry import DATASETS
from defectkit.sample import Record


@DATASETS.register_module()
class FolderPerClass(ImageDataset):
    """Images sorted into one folder per class, with an optional same-name mask per image.

    Matches the Magnetic Tile layout (``MT_Blowhole/Imgs/exp1_num_1234.jpg`` with
    ``exp1_num_1234.png`` as its mask). The class named ``normal_class`` gets label 0, every other
    class label 1; ``category`` is the folder name without ``class_prefix``.

    Args:
        data_root: Folder holding the class folders.
        normal_class: Class (without prefix) whose images are defect-free.
        class_prefix: Prefix of class folder names; other folders are reported in ``problems``.
        image_subdir: Subfolder of each class folder with the images; ``""`` for images directly
            in the class folder.
        image_suffixes: Suffixes of image files (case-insensitive). ``.png`` is left out by
            default because in this layout the PNGs are the masks.
        mask_suffix: Suffix of the mask file beside each image (same stem).
        classes: Only read these classes (names without prefix); None reads all.
        image_classes: Names of the image-level labels (0, 1).

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> cfg = dict(type="FolderPerClass", data_root="../shared/data/magnetic_tile")
        >>> reader = build(DATASETS, cfg)
        >>> records = reader.records()  # doctest: +SKIP
        >>> records[0].category, records[0].label  # doctest: +SKIP
        ('Blowhole', 1)
    """

    LAYOUT = """\
<root>/
  <prefix><class>/          e.g. MT_Free/ (normal_class), MT_Blowhole/, MT_Crack/ ...
    <image_subdir>/         e.g. Imgs/ ('' = images directly in the class folder)
      <id>.jpg              image (image_suffixes)
      <id>.png              optional mask, same name (mask_suffix)"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        normal_class: str = "Free",
        class_prefix: str = "MT_",
        image_subdir: str = "Imgs",
        image_suffixes: Sequence[str] = (".jpg", ".jpeg", ".bmp", ".tif", ".tiff"),
        mask_suffix: str | None = ".png",
        classes: Sequence[str] | None = None,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, image_classes=image_classes)
        self.normal_class = normal_class
        self.class_prefix = class_prefix
        self.image_subdir = image_subdir or ""
        self.image_suffixes = tuple(_dotted(s) for s in image_suffixes)
        self.mask_suffix = _dotted(mask_suffix) if mask_suffix else None
        if not self.image_suffixes:
            raise ConfigError("FolderPerClass: image_suffixes must name at least one suffix")
        if self.mask_suffix is not None and self.mask_suffix in self.image_suffixes:
            # Otherwise every mask would also be listed as an image of its own.
            raise ConfigError(
                f"FolderPerClass: mask_suffix {self.mask_suffix!r} is also in image_suffixes {self.image_suffixes}; "
                "remove it from one of them"
            )
        if os.path.isabs(self.image_subdir) or ".." in Path(self.image_subdir).parts:
            raise ConfigError(f"FolderPerClass: image_subdir must be a relative folder name, got {image_subdir!r}")
        self.classes = None if classes is None else tuple(classes)

    def layout_details(self) -> str:
        return (
            f"prefix={self.class_prefix!r}, image_subdir={self.image_subdir!r}, normal_class={self.normal_class!r}, "
            f"images {'/'.join(self.image_suffixes)}, masks {self.mask_suffix or 'none'}"
        )

    def class_folders(self) -> dict[str, Path]:
        """``{class name: class folder}`` of the classes found (after the ``classes`` allow-list)."""
        root = self.check_root()
        found: dict[str, Path] = {}
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                # Files at the root are usually README/SOURCE notes, not misplaced data.
                continue
            if not entry.name.startswith(self.class_prefix) or entry.name == self.class_prefix:
                self.problems.append(f"{entry}: folder ignored, name does not start with {self.class_prefix!r}")
                continue
            found[entry.name[len(self.class_prefix) :]] = entry
        if not found:
            raise self.layout_error(f"no class folders named {self.class_prefix!r}<class> found")
        if self.classes is not None:
            missing = [c for c in self.classes if c not in found]
            if missing:
                raise self.layout_error(
                    f"class(es) {', '.join(map(repr, missing))} not found; found: {', '.join(sorted(found))}"
                )
            found = {c: found[c] for c in self.classes}
        return dict(sorted(found.items()))

    def records(self, split: str | None = None) -> list[Record]:
        """Every image of every class, sorted by path; stray files are noted in ``problems``.

        Raises:
            DataError: Missing root, no class folders, an unknown class in ``classes``, or no images.
        """
        self.check_split(split)
        self.problems = []
        folders = self.class_folders()
        if self.normal_class not in folders and (self.classes is None or self.normal_class in self.classes):
            self.problems.append(
                f"{self.root}: no normal class folder {self.class_prefix + self.normal_class!r}; all images are defects"
            )
        records: list[Record] = []
        for category, folder in folders.items():
            image_dir = folder / self.image_subdir if self.image_subdir else folder
            if not image_dir.is_dir():
                self.problems.append(f"{image_dir}: missing image folder, class {category!r} skipped")
                continue
            label = 0 if category == self.normal_class else 1
            records.extend(self._scan(image_dir, category, label))
        return self.require_records(
            records, f"no images with suffix {'/'.join(self.image_suffixes)} in the class folders"
        )

    def _scan(self, image_dir: Path, category: str, label: int) -> list[Record]:
        entries = sorted(p for p in image_dir.iterdir() if not p.name.startswith("."))
        images = [p for p in entries if p.is_file() and p.suffix.lower() in self.image_suffixes]
        masks = {}
        if self.mask_suffix is not None:
            masks = {p.stem: p for p in entries if p.is_file() and p.suffix.lower() == self.mask_suffix}
        image_stems = {p.stem for p in images}
        seen_stems: set[str] = set()
        records = []
        for image in images:
            if image.stem in seen_stems:
                # a.jpg and a.bmp would share one mask; keep the first and say so.
                self.problems.append(f"{image}: another image has the same name stem; mask is shared")
            seen_stems.add(image.stem)
            mask = masks.get(image.stem)
            records.append(
                Record(
                    path=str(image),
                    label=label,
                    category=category,
                    mask_path=None if mask is None else str(mask),
                    group=None,
                )
            )
        for entry in entries:
            if entry.is_dir():
                self.problems.append(f"{entry}: subfolder ignored (images are read from {image_dir} only)")
            elif entry.suffix.lower() in self.image_suffixes:
                continue
            elif self.mask_suffix is not None and entry.suffix.lower() == self.mask_suffix:
                if entry.stem not in image_stems:
                    self.problems.append(f"{entry}: mask without an image of the same name, ignored")
            else:
                self.problems.append(f"{entry}: not an image file, ignored")
        return records


def _dotted(suffix: str) -> str:
    suffix = suffix.strip().lower()
    if not suffix:
        raise ConfigError("file suffixes must not be empty")
    return suffix if suffix.startswith(".") else "." + suffix


__all__ = ["FolderPerClass"]
