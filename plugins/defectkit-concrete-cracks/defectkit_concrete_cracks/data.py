"""Readers for crack photos: a folder layout, and a generated set in that layout."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from defectkit.data.base import ImageDataset
from defectkit.io.images import IMAGE_SUFFIXES
from defectkit.registry import DATASETS
from defectkit.sample import Record


@DATASETS.register_module()
class CrackFolder(ImageDataset):
    """Photos of concrete sorted into intact and cracked, with one crack mask per cracked photo.

    Args:
        data_root: The folder drawn in :attr:`LAYOUT`.
        image_classes: Image-level labels; intact photos get the first, cracked ones the second.

    Example:
        >>> reader = CrackFolder("no/such/root")
        >>> reader.records()
        Traceback (most recent call last):
        ...
        defectkit.errors.DataError: no/such/root: data root does not exist. CrackFolder expects this layout:
        ...
    """

    LAYOUT = (
        "<root>/\n"
        "  intact/<name>.png          photos without cracks\n"
        "  cracked/<name>.png         photos with cracks\n"
        "  cracked_masks/<name>.png   white where the crack is (same size as the photo)"
    )

    def __init__(self, data_root: str | os.PathLike[str], image_classes: Sequence[str] = ("normal", "defect")) -> None:
        super().__init__(data_root, image_classes)

    def records(self, split: str | None = None) -> list[Record]:
        """Every intact photo (label 0) and every cracked photo with a mask (label 1, ``mask_path`` set)."""
        self.check_split(split)
        root = self.check_root()
        self.problems = []
        found: list[Record] = []
        for path in _images(root / "intact"):
            found.append(Record(path=str(path), label=0, category="intact"))
        masks = {p.stem: p for p in _images(root / "cracked_masks")}
        for path in _images(root / "cracked"):
            mask = masks.get(path.stem)
            if mask is None:
                self.problems.append(f"{path}: cracked photo without cracked_masks/{path.stem}.png; skipped")
                continue
            found.append(Record(path=str(path), label=1, category="crack", mask_path=str(mask)))
        return self.require_records(found, "no photos in intact/ or cracked/")


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


@DATASETS.register_module()
class SyntheticConcreteCracks(CrackFolder):
    """A generated :class:`CrackFolder` set: concrete-like texture, random-walk cracks, exact masks.

    The set is written once under ``data_root`` (kept if it is already there) and then read.

    Args:
        data_root: Where the images are written.
        n_intact: Photos without cracks.
        n_cracked: Photos with one or two cracks.
        image_size: Side of the square photos in pixels.
        seed: Seeds the texture and the cracks.
        image_classes: As for :class:`CrackFolder`.
    """

    def __init__(
        self,
        data_root: str | os.PathLike[str] = "work_dirs/_builtin/concrete_cracks",
        n_intact: int = 40,
        n_cracked: int = 20,
        image_size: int = 128,
        seed: int = 0,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, image_classes)
        if n_intact < 1 or n_cracked < 1 or image_size < 32:
            raise ValueError(f"n_intact and n_cracked must be >= 1 and image_size >= 32, got {n_intact}, {n_cracked}, {image_size}")
        self.n_intact, self.n_cracked, self.image_size, self.seed = n_intact, n_cracked, image_size, seed

    def records(self, split: str | None = None) -> list[Record]:
        if not (self.root / "intact").is_dir():
            write_synthetic_cracks(self.root, self.n_intact, self.n_cracked, self.image_size, self.seed)
        return super().records(split)


def write_synthetic_cracks(root: str | os.PathLike[str], n_intact: int = 40, n_cracked: int = 20, image_size: int = 128, seed: int = 0) -> Path:
    """Write a :class:`CrackFolder` set of generated concrete photos; returns the root.

    Example:
        >>> import tempfile
        >>> root = write_synthetic_cracks(tempfile.mkdtemp(), n_intact=2, n_cracked=1, image_size=64)
        >>> [len(CrackFolder(root).records()), sorted(p.name for p in root.iterdir())]
        [3, ['cracked', 'cracked_masks', 'intact']]
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder in ("intact", "cracked", "cracked_masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(n_intact):
        Image.fromarray(_concrete(rng, image_size)).save(root / "intact" / f"intact_{index:04d}.png")
    for index in range(n_cracked):
        image = _concrete(rng, image_size)
        mask = np.zeros((image_size, image_size), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            _draw_crack(rng, image, mask)
        Image.fromarray(image).save(root / "cracked" / f"crack_{index:04d}.png")
        Image.fromarray(mask).save(root / "cracked_masks" / f"crack_{index:04d}.png")
    return root


def _concrete(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey mottled texture with pores and aggregate specks."""
    base = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    mottled = cv2.GaussianBlur(base, (0, 0), sigmaX=size / 16) * 40 + cv2.GaussianBlur(base, (0, 0), 1.0) * 12
    grey = 150 + float(rng.uniform(-15, 15)) + mottled
    for _ in range(int(rng.integers(size // 8, size // 4))):
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(grey, centre, int(rng.integers(1, 3)), float(rng.uniform(60, 210)), -1)
    tint = np.array([1.0, 0.98, 0.95], np.float32) * float(rng.uniform(0.95, 1.05))
    return np.clip(grey[:, :, None] * tint, 0, 255).astype(np.uint8)


def _draw_crack(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """A jagged dark line across a good part of the photo, drawn into ``image`` and ``mask``."""
    size = mask.shape[0]
    point = rng.uniform(0.1, 0.9, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    points = [point.copy()]
    for _ in range(int(rng.integers(12, 24))):
        angle += rng.normal(0, 0.35)
        point = point + np.array([np.cos(angle), np.sin(angle)]) * size / 24
        points.append(point.copy())
    polyline = np.clip(np.array(points), 0, size - 1).round().astype(np.int32).reshape(-1, 1, 2)
    width = int(rng.integers(2, 4))
    cv2.polylines(mask, [polyline], False, 255, width)
    darkness = float(rng.uniform(0.25, 0.45))
    image[mask > 0] = (image[mask > 0] * darkness).astype(np.uint8)


__all__ = ["CrackFolder", "SyntheticConcreteCracks", "write_synthetic_cracks"]
