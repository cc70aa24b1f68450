"""Decoding photos from disk into HxWx3 uint8 RGB, with errors that say what is wrong with the file."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from defectkit.errors import ImageDecodeError

if TYPE_CHECKING:
    from defectkit.sample import Record, Sample

# Pillow's own bomb limit raises only above 2x this; an explicit cap keeps a hostile upload from
# allocating gigabytes. 100 MP covers any real camera.
MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file as upright HxWx3 uint8 RGB.

    Handles grayscale, palette, RGBA (alpha dropped), 16-bit and CMYK
    files and EXIF orientation.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (decompression bombs).

    Raises:
        ImageDecodeError: Empty, truncated, oversized or non-image files, naming the file.

    Example:
        >>> image = load_image("photo.jpg")  # doctest: +SKIP
        >>> image.shape, image.dtype
        ((600, 800, 3), dtype('uint8'))
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise ImageDecodeError(
                        f"{path}: {img.width}x{img.height} pixels exceeds the limit of {max_pixels} "
                        "(raise max_pixels if this is a real photo)"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb_array(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{path}: not an image file (no known image format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{path}: image too large ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: corrupt or truncated image ({exc})") from exc


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float scans: stretch the used range to 8 bits rather than clip to 255.
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        gray = arr.round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_mask(path: str | Path, shape: tuple[int, int] | None = None, threshold: int = 127) -> np.ndarray:
    """Read a mask image as HxW bool (pixels above ``threshold``), resized to ``shape`` if given.

    Raises:
        ImageDecodeError: The mask cannot be read.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            gray = np.asarray(img.convert("L"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: cannot read mask ({exc})") from exc
    mask = gray > threshold
    if shape is not None and mask.shape != tuple(shape):
        import cv2

        mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image file suffix (content is checked only when decoding)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES



def decode_record(record: "Record") -> "Sample":
    """Decode one record into a :class:`~defectkit.sample.Sample`; a failure becomes ``sample.error``."""
    from defectkit.errors import DataError
    from defectkit.sample import Sample

    try:
        return Sample(record=record, image=load_image(record.path))
    except DataError as exc:
        return Sample(record=record, error=str(exc))
    except MemoryError:
        return Sample(record=record, error=f"{record.path}: out of memory while decoding")


def decode_records(records: "Sequence[Record]", executor: "Executor | None" = None) -> "list[Sample]":
    """Decode records in order, in parallel when given an executor (PIL releases the GIL while decoding)."""
    if executor is None:
        return [decode_record(r) for r in records]
    return list(executor.map(decode_record, records))
