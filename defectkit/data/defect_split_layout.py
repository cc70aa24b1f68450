"""Reader for the competition layout: train defect/normal image folders, masks beside, unlabelled test."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from defectkit.data.base import ImageDataset
from defectkit.io.images import IMAGE_SUFFIXES
from defectkit.registry import DATASETS
from defectkit.sample import Record

DEFECT_IMAGES = ("train", "defect_images")
DEFECT_MASKS = ("train", "defect_masks")
NORMAL_IMAGES = ("train", "normal_images")
TEST_IMAGES = ("test", "images")


@DATASETS.register_module()
class DefectSplitLayout(ImageDataset):
    """Labelled train images split into defect and normal folders, masks by name, unlabelled test.

    :meth:`records` returns the train images: defect images with label 1, category ``"defect"``
    and the same-name mask from ``train/defect_masks`` (None, and a note in ``problems``, when it
    is missing); normal images with label 0, category ``"normal"``. :meth:`unlabelled_records`
    returns ``test/images`` with label None.

    Args:
        data_root: Folder holding ``train/`` and optionally ``test/``.
        image_suffixes: Suffixes of image files (case-insensitive).
        image_classes: Names of the image-level labels (0 normal, 1 defect).

    Example:
        >>> reader = DefectSplitLayout("data/competition")  # doctest: +SKIP
        >>> train = reader.records()  # doctest: +SKIP
        >>> test = reader.unlabelled_records()  # doctest: +SKIP
        >>> {r.category for r in train}, test[0].label  # doctest: +SKIP
        ({'defect', 'normal'}, None)
    """

    LAYOUT = """\
<root>/
  train/
    defect_images/<name>.png    images with a defect (label 1)
    defect_masks/<name>.png     their masks, same file names
    normal_images/<name>.png    defect-free images (label 0)
  test/
    images/<name>.png           unlabelled images (optional)"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, image_classes=image_classes)
        self.image_suffixes = tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in image_suffixes)

    def records(self, split: str | None = None) -> list[Record]:
        """The labelled train images, sorted by path (``split`` may be None or ``"train"``).

        ``split="test"`` returns :meth:`unlabelled_records`.

        Raises:
            DataError: Missing root, or no images in ``train/defect_images`` and ``train/normal_images``.
        """
        self.check_split(split, allowed=("train", "test"))
        if split == "test":
            return self.unlabelled_records()
        self.problems = []
        root = self.check_root()
        defect_dir, mask_dir, normal_dir = (root.joinpath(*p) for p in (DEFECT_IMAGES, DEFECT_MASKS, NORMAL_IMAGES))
        if not defect_dir.is_dir() and not normal_dir.is_dir():
            raise self.layout_error("neither train/defect_images nor train/normal_images exists")

        records: list[Record] = []
        defects = self._images(defect_dir)
        masks = {p.name: p for p in self._images(mask_dir)}
        # Masks are often saved as PNG beside JPEG photos, so fall back to matching by stem.
        masks_by_stem = {p.stem: p for p in masks.values()}
        used_masks: set[Path] = set()
        for image in defects:
            mask = masks.get(image.name) or masks_by_stem.get(image.stem)
            if mask is None:
                self.problems.append(f"{image}: defect image without a mask in {mask_dir}")
            else:
                used_masks.add(mask)
            records.append(
                Record(path=str(image), label=1, category="defect", mask_path=None if mask is None else str(mask))
            )
        for mask in sorted(set(masks.values()) - used_masks):
            self.problems.append(f"{mask}: mask without a defect image of the same name, ignored")
        for image in self._images(normal_dir):
            records.append(Record(path=str(image), label=0, category="normal"))
        return self.require_records(records, "no images in train/defect_images or train/normal_images")

    def unlabelled_records(self) -> list[Record]:
        """The unlabelled ``test/images``, label None, sorted by path.

        Raises:
            DataError: Missing root or ``test/images`` folder, or no images in it.
        """
        root = self.check_root()
        test_dir = root.joinpath(*TEST_IMAGES)
        if not test_dir.is_dir():
            raise self.layout_error("no test/images folder")
        records = [Record(path=str(p), label=None, category=None) for p in self._images(test_dir)]
        return self.require_records(records, "no images in test/images")

    def _images(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        images = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and entry.suffix.lower() in self.image_suffixes:
                images.append(entry)
            else:
                self.problems.append(f"{entry}: not an image file, ignored")
        return images


__all__ = ["DefectSplitLayout"]
