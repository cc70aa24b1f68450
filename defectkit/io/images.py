"""Decoding photos from disk into HxWx3 uint8 RGB, with errors that say what is wrong with the file."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from defectkit.errors import ImageDecodeError

if TYPE_CHECKING:
    from defectkit.sample import Record, Sample

# Pillow's own bomb check warns above ~89 MP and raises above ~179 MP; the explicit cap below is the
# one that counts (checked on the header, before any pixel is decoded), so a hostile upload cannot
# allocate gigabytes. 100 MP covers any real camera.
MAX_PIXELS = 100_000_000
# Working-size policy of batch runs: images whose long side exceeds this are decoded at reduced size
# (JPEG DCT scaling, then area resampling) so a run's memory stays bounded whatever the input size;
# predictions are mapped back to original coordinates by :meth:`defectkit.sample.Sample.to_prediction`.
DEFAULT_MAX_SIDE = 4096
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    """An upright HxWx3 uint8 RGB image and the size of the file it came from.

    Attributes:
        image: The decoded pixels, at most ``max_side`` on the long side when a limit was given.
        original_size: ``(height, width)`` of the full-resolution image, upright (after EXIF rotation).
    """

    image: np.ndarray
    original_size: tuple[int, int]

    @property
    def scale(self) -> float:
        """Decoded over original size along the long side (1.0 when decoded at full size)."""
        return max(self.image.shape[:2]) / max(self.original_size)


def read_image(path: str | Path, max_pixels: int | None = None, max_side: int | None = None) -> DecodedImage:
    """Decode an image file as upright HxWx3 uint8 RGB, reduced to ``max_side`` if it is larger.

    Handles grayscale, palette, RGBA (alpha dropped), 16-bit and CMYK files and EXIF orientation.
    A JPEG larger than ``max_side`` is decoded directly at 1/2, 1/4 or 1/8 scale (``Image.draft``),
    so its full-size pixels never exist in memory; other formats are decoded at full size (bounded
    by ``max_pixels``) and then reduced.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (decompression bombs); None uses
            :data:`MAX_PIXELS` (read at call time).
        max_side: Reduce images whose longer side exceeds this many pixels, keeping the aspect
            ratio; None or 0 decodes at full size.

    Raises:
        ImageDecodeError: Empty, truncated, oversized or non-image files, naming the file.
    """
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit below is checked on the header; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > limit:
                    raise ImageDecodeError(
                        f"{path}: {width}x{height} pixels exceeds the limit of {limit} "
                        "(raise max_pixels if this is a real photo)"
                    )
                if width < 1 or height < 1:
                    raise ImageDecodeError(f"{path}: image has no pixels ({width}x{height})")
                orientation = _orientation(img)
                upright = (width, height) if orientation not in (5, 6, 7, 8) else (height, width)
                target = _target_size(width, height, max_side)
                if target is not None and img.format == "JPEG":
                    img.draft(None, target)  # DCT scaling: decodes at >= target, <= 2x target per side
                img.load()
                if orientation != 1:
                    img = ImageOps.exif_transpose(img)
                array = _to_rgb_array(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{path}: not an image file (no known image format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{path}: image too large ({exc})") from exc
    except MemoryError as exc:
        raise ImageDecodeError(f"{path}: out of memory while decoding") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{path}: corrupt or truncated image ({exc})") from exc
    except Exception as exc:  # a decoder bug on a hostile file must not end the run
        raise ImageDecodeError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    original = (upright[1], upright[0])
    wanted = _target_size(upright[0], upright[1], max_side)
    if wanted is not None and (array.shape[1], array.shape[0]) != wanted:
        import cv2

        array = np.ascontiguousarray(cv2.resize(array, wanted, interpolation=cv2.INTER_AREA))
    return DecodedImage(array, original)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8), or 1 when it is missing or the EXIF block is corrupt."""
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _target_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """``(width, height)`` with the long side reduced to ``max_side``, or None when no reduction is needed."""
    if not max_side or max(width, height) <= max_side:
        return None
    factor = max_side / max(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


def load_image(path: str | Path, max_pixels: int | None = None, *, max_side: int | None = None) -> np.ndarray:
    """Decode an image file as upright HxWx3 uint8 RGB.

    Handles grayscale, palette, RGBA (alpha dropped), 16-bit and CMYK
    files and EXIF orientation.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (decompression bombs); None uses
            :data:`MAX_PIXELS`.
        max_side: Reduce images whose longer side exceeds this (see :func:`read_image`); None
            (default) decodes at full size.

    Raises:
        ImageDecodeError: Empty, truncated, oversized or non-image files, naming the file.

    Example:
        >>> image = load_image("photo.jpg")  # doctest: +SKIP
        >>> image.shape, image.dtype
        ((600, 800, 3), dtype('uint8'))
    """
    return read_image(path, max_pixels=max_pixels, max_side=max_side).image


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


def decode_record(record: "Record", max_side: int | None = DEFAULT_MAX_SIDE, max_pixels: int | None = None) -> "Sample":
    """Decode one record into a :class:`~defectkit.sample.Sample`; a failure becomes ``sample.error``.

    Images larger than ``max_side`` are decoded at reduced size; the sample's ``scale`` and
    ``original_size`` say by how much, so predictions are reported in original coordinates.
    """
    from defectkit.errors import DataError
    from defectkit.sample import Sample

    try:
        decoded = read_image(record.path, max_pixels=max_pixels, max_side=max_side)
    except DataError as exc:
        return Sample(record=record, error=str(exc))
    except MemoryError:
        return Sample(record=record, error=f"{record.path}: out of memory while decoding")
    except Exception as exc:  # never let one file stop a batch
        return Sample(record=record, error=f"{record.path}: cannot decode image ({type(exc).__name__}: {exc})")
    return Sample(record=record, image=decoded.image, scale=decoded.scale, original_size=decoded.original_size)


def decode_records(
    records: "Sequence[Record]", executor: "Executor | None" = None, max_side: int | None = DEFAULT_MAX_SIDE
) -> "list[Sample]":
    """Decode records in order, in parallel when given an executor (PIL releases the GIL while decoding)."""
    if executor is None:
        return [decode_record(r, max_side) for r in records]
    return list(executor.map(lambda r: decode_record(r, max_side), records))
