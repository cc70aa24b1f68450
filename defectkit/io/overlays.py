"""Drawing a sample's findings over its photo and saving the result as a JPEG beside the run."""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectkit.io.atomic import atomic_write_bytes

# Distinct, saturated RGB colours (Tableau/Kelly-like). Indexed by a hash of the class name rather
# than by class order so that a class keeps its colour across images, runs and data sets whose
# class lists differ.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)

MASK_ALPHA = 0.4
JPEG_QUALITY = 90
# Coordinates are clipped to this many image sizes beyond the border before cv2 sees them:
# cv2 draws with int32 fixed-point maths and wraps around on absurd values.
_COORD_MARGIN = 4
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(class_name: str) -> tuple[int, int, int]:
    """The RGB colour used for ``class_name`` in every overlay.

    Args:
        class_name: A defect class name.

    Returns:
        An ``(r, g, b)`` tuple of ints in 0..255, the same in every process (crc32, not ``hash``,
        which Python salts per process).

    Example:
        >>> class_colour("scratch") == class_colour("scratch")
        True
    """
    return PALETTE[zlib.crc32(str(class_name).encode("utf-8")) % len(PALETTE)]


def draw_overlay(image: np.ndarray, sample_like: Any) -> np.ndarray:
    """Draw a sample's masks, instances and gate decision over a copy of its image.

    Masks are filled translucently in their class colour; each confident instance's polygon is
    outlined as a closed polyline (its box only when it has no polygon) and labelled ``"class score"``
    (a detector's boxes under its calibrated review threshold, ``confident=False``, are not drawn); a
    translucent header band across the top states the gate decision and score. The result has the
    input's height and width, so pixel coordinates stay comparable with the prediction.

    Args:
        image: HxWx3 uint8 RGB (HxW grayscale and HxWx4 are accepted too). Never modified.
        sample_like: Anything with the :class:`~defectkit.sample.Sample` attributes ``instances``,
            ``masks``, ``map_classes``, ``gate_label`` and ``gate_score``; missing ones are treated
            as empty.

    Returns:
        A new HxWx3 uint8 RGB array.

    Example:
        >>> import numpy as np
        >>> from defectkit.sample import Instance, Record, Sample
        >>> img = np.zeros((64, 64, 3), np.uint8)
        >>> inst = Instance("dent", 0.9, (10, 10, 30, 30), 400.0, [[10, 10], [30, 10], [30, 30]])
        >>> s = Sample(Record("a.jpg"), gate_label="defect", gate_score=0.93, instances=[inst])
        >>> draw_overlay(img, s).shape
        (64, 64, 3)
    """
    out = _as_rgb_uint8(image)
    height, width = out.shape[:2]
    if height == 0 or width == 0:
        return out

    big_side = max(height, width)
    line_thickness = max(1, round(big_side / 400))
    font_scale = min(3.0, max(0.35, big_side / 1500))
    text_thickness = max(1, round(font_scale * 1.5))

    map_classes = list(getattr(sample_like, "map_classes", None) or [])
    _fill_masks(out, getattr(sample_like, "masks", None), map_classes)

    labels: list[tuple[str, tuple[int, int], tuple[int, int, int]]] = []
    for inst in shown_instances(sample_like):
        name = str(getattr(inst, "class_name", "?"))
        colour = class_colour(name)
        anchor = _draw_instance(out, inst, colour, line_thickness)
        if anchor is not None:
            labels.append((f"{name} {_fmt_score(getattr(inst, 'score', None))}", anchor, colour))
    # Labels after all outlines so a later outline never crosses an earlier label.
    for text, anchor, colour in labels:
        _put_label(out, text, anchor, colour, font_scale, text_thickness)

    _draw_header(out, sample_like, font_scale, text_thickness)
    return out


def shown_instances(sample_like: Any) -> list[Any]:
    """The instances an overlay draws: all but those marked ``confident=False``.

    Example:
        >>> from defectkit.sample import Instance
        >>> from types import SimpleNamespace
        >>> low = Instance("lesion", 0.15, (0, 0, 4, 4), 16.0, confident=False)
        >>> high = Instance("lesion", 0.6, (8, 8, 12, 12), 16.0)
        >>> [i.score for i in shown_instances(SimpleNamespace(instances=[high, low]))]
        [0.6]
    """
    return [inst for inst in getattr(sample_like, "instances", None) or [] if getattr(inst, "confident", True)]


def write_overlay(path: str | Path, image_rgb: np.ndarray) -> Path:
    """Save an RGB image as a quality-90 JPEG, atomically.

    Encodes in memory and writes the bytes with
    :func:`~defectkit.io.atomic.atomic_write_bytes`, because ``cv2.imwrite`` cannot open
    non-ASCII paths on every platform and would leave a partial file if interrupted.

    Args:
        path: Destination file; parent folders are created.
        image_rgb: HxWx3 uint8 RGB (HxW grayscale and HxWx4 are accepted too).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: The image is empty or too large for JPEG (over 65535 px a side).

    Example:
        >>> write_overlay("run/overlays/été photo.jpg", overlay)  # doctest: +SKIP
    """
    path = Path(path)
    atomic_write_bytes(path, encode_overlay(image_rgb, path))
    return path


def encode_overlay(image_rgb: np.ndarray, name: str | Path = "overlay") -> bytes:
    """An RGB image as the bytes of a quality-90 JPEG (what :func:`write_overlay` writes).

    Args:
        image_rgb: HxWx3 uint8 RGB (HxW grayscale and HxWx4 are accepted too).
        name: The overlay's file name, for error messages.

    Raises:
        ValueError: The image is empty or too large for JPEG (over 65535 px a side).
    """
    rgb = _as_rgb_uint8(image_rgb)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{name}: cannot write an empty {rgb.shape[1]}x{rgb.shape[0]} image")
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY]
    )
    if not ok:
        raise ValueError(f"{name}: JPEG encoding failed for a {rgb.shape[1]}x{rgb.shape[0]} image")
    return buf.tobytes()


def overlay_name(path: str) -> str:
    """A file name for the overlay of input ``path``, unique per full path and safe on any disk.

    The readable part is the input's stem reduced to ASCII letters, digits, ``-``, ``_`` and
    ``.``; a hash of the full path keeps two ``img.jpg`` from different folders apart.

    Args:
        path: The input image path, exactly as the run names it (not resolved, so names stay
            stable when a run is resumed from another working directory).

    Returns:
        ``"<stem>_<10 hex digits>.jpg"``.

    Example:
        >>> overlay_name("lot 3/Kratzer ä.png")
        'Kratzer_a_1bf4e059e4.jpg'
    """
    path = str(path)
    digest = hashlib.sha1(path.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    # Split on both separators: a Windows path read on Linux still yields its real stem.
    base = re.split(r"[\\/]", path)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem).strip("._-")[:60] or "image"
    return f"{safe}_{digest}.jpg"


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """A contiguous HxWx3 uint8 copy of ``image``, which callers may then draw on freely."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] >= 4:
        arr = arr[:, :, :3]
    elif arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        else:
            arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.array(arr, dtype=np.uint8, order="C", copy=True)


def _fill_masks(out: np.ndarray, masks: Any, map_classes: list[str]) -> None:
    if masks is None:
        return
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.size == 0:
        return
    height, width = out.shape[:2]
    for index, channel in enumerate(masks):
        mask = channel.astype(bool)
        if mask.shape != (height, width):
            # Masks should match the image; a stage working at another resolution must not crash
            # the report, so scale it rather than give up.
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        if not mask.any():
            continue
        name = map_classes[index] if index < len(map_classes) else f"class{index}"
        colour = np.array(class_colour(name), dtype=np.float32)
        blended = out[mask].astype(np.float32) * (1 - MASK_ALPHA) + colour * MASK_ALPHA
        out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _clip_points(points: Any, height: int, width: int) -> np.ndarray | None:
    """Finite polygon vertices as int32 ``(N, 1, 2)``, or None when there are none."""
    try:
        arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return None
    arr = arr[np.isfinite(arr).all(axis=1)]
    if len(arr) == 0:
        return None
    arr[:, 0] = np.clip(arr[:, 0], -_COORD_MARGIN * width, (_COORD_MARGIN + 1) * width)
    arr[:, 1] = np.clip(arr[:, 1], -_COORD_MARGIN * height, (_COORD_MARGIN + 1) * height)
    return np.rint(arr).astype(np.int32).reshape(-1, 1, 2)


def _draw_instance(
    out: np.ndarray, inst: Any, colour: tuple[int, int, int], thickness: int
) -> tuple[int, int] | None:
    """Outline one instance; return where its label goes (top-left of the outline)."""
    height, width = out.shape[:2]
    points = _clip_points(getattr(inst, "polygon", None) or [], height, width)
    if points is not None:
        # LINE_8, not LINE_AA: anti-aliasing blends thin outlines into the photo, so their colour
        # would no longer match the class legend or the mask fill.
        cv2.polylines(out, [points], isClosed=True, color=colour, thickness=thickness, lineType=cv2.LINE_8)
        return int(points[:, 0, 0].min()), int(points[:, 0, 1].min())
    box = getattr(inst, "box", None)
    if box is None:
        return None
    corners = _clip_points([[box[0], box[1]], [box[2], box[3]]], height, width) if len(box) >= 4 else None
    if corners is None or len(corners) < 2:
        return None
    (x1, y1), (x2, y2) = corners[0, 0], corners[1, 0]
    cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), colour, thickness, cv2.LINE_8)
    return int(min(x1, x2)), int(min(y1, y2))


def _put_label(
    out: np.ndarray,
    text: str,
    anchor: tuple[int, int],
    colour: tuple[int, int, int],
    scale: float,
    thickness: int,
) -> None:
    """Write ``text`` on a class-coloured tag just above ``anchor``, kept inside the image."""
    height, width = out.shape[:2]
    (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(1, thickness)
    tag_h = th + baseline + 2 * pad
    x = int(min(max(anchor[0], 0), max(width - tw - 2 * pad, 0)))
    # Above the outline when there is room, otherwise just inside it.
    y_top = anchor[1] - tag_h if anchor[1] - tag_h >= 0 else max(anchor[1], 0)
    y_top = int(min(y_top, max(height - tag_h, 0)))
    cv2.rectangle(out, (x, y_top), (x + tw + 2 * pad, y_top + tag_h), colour, cv2.FILLED)
    # Black on light colours, white on dark ones, so the text is readable on every palette entry.
    text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(out, text, (x + pad, y_top + pad + th), _FONT, scale, text_colour, thickness, cv2.LINE_AA)


def _draw_header(out: np.ndarray, sample_like: Any, scale: float, thickness: int) -> None:
    label = getattr(sample_like, "gate_label", None)
    score = getattr(sample_like, "gate_score", None)
    n_inst = len(shown_instances(sample_like))
    text = f"gate: {label if label is not None else '-'}  score: {_fmt_score(score)}  instances: {n_inst}"
    (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    if tw > out.shape[1] * 0.95:
        # Narrow images (small crops) would cut the decision off: shrink the text to fit, and drop
        # the instance count if even the smallest readable size is too wide.
        scale = max(0.3, scale * out.shape[1] * 0.95 / tw)
        (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
        if tw > out.shape[1] * 0.95:
            text = f"{label if label is not None else '-'} {_fmt_score(score)}"
            (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(2, thickness * 2)
    band_h = min(out.shape[0], th + baseline + 2 * pad)
    # Darken rather than paint over, so defects at the top edge stay visible under the header.
    band = out[:band_h]
    band[:] = (band.astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (pad, pad + th), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def _fmt_score(score: Any) -> str:
    try:
        value = float(score)
    except (TypeError, ValueError):
        return "-"
    return f"{value:.2f}" if math.isfinite(value) else str(value)
