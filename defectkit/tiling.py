"""Sliced inference geometry (as in SAHI): windows over a large image, merging the detections of
overlapping windows, blending dense per-window maps without seams, and slicing training boxes so
that training sees exactly the windows prediction will.

Every stage that works window by window takes its windows from here: :func:`image_windows` (or
:func:`slice_windows`) makes them, :func:`window_batches` crops them in batches across images, and
:func:`stitch_maps` joins per-window maps (the Tiling stage, the anomaly gate's own tiling,
Zero-DCE's tiles and bands).

Pure functions on arrays and tensors; no model code. Windows are ``(x1, y1, x2, y2)`` integer
pixel-edge coordinates: the crop is ``image[y1:y2, x1:x2]``.

Example:
    >>> windows = slice_windows(1000, 1500, 512, 512, 0.2, 0.2)
    >>> windows[0], windows[-1]
    ((0, 0, 512, 512), (988, 488, 1500, 1000))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area, box_iou, nms

from defectkit.errors import ConfigError
from defectkit.sample import Detections

Window = tuple[int, int, int, int]
"""``(x1, y1, x2, y2)`` integer pixel-edge coordinates of a slice: ``image[y1:y2, x1:x2]``."""

Box = tuple[str, float, float, float, float]
"""``(class_name, x1, y1, x2, y2)``: a ground-truth box in pixel-edge coordinates."""

MERGE_METHODS = ("GREEDYNMM", "NMM", "NMS", "WBF")
MATCH_METRICS = ("IOS", "IOU")
BLEND_PROFILES = ("linear", "cosine")


# ----------------------------------------------------------------------------- windows
def _pair(value: int | float | Sequence[int | float], what: str) -> tuple[float, float]:
    """``(height, width)`` from one number or a pair."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value), float(value)
    try:
        first, second = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number or a (height, width) pair, got {value!r}") from None
    return float(first), float(second)


def slice_size_pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of a slice from one size or a pair; both must be integers >= 1.

    Example:
        >>> slice_size_pair(512), slice_size_pair((256, 384))
        ((512, 512), (256, 384))
    """
    height, width = _pair(value, "slice_size")
    if height != int(height) or width != int(width) or height < 1 or width < 1:
        raise ConfigError(f"slice_size must be whole pixels >= 1 (one size or (height, width)), got {value!r}")
    return int(height), int(width)


def overlap_pair(value: float | Sequence[float]) -> tuple[float, float]:
    """``(height_ratio, width_ratio)`` of slice overlap from one ratio or a pair, each in [0, 1).

    Example:
        >>> overlap_pair(0.2)
        (0.2, 0.2)
    """
    height_ratio, width_ratio = _pair(value, "overlap")
    for ratio in (height_ratio, width_ratio):
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"overlap ratios must be in [0, 1) (a share of the slice size), got {value!r}")
    return height_ratio, width_ratio


def _axis_starts(image_size: int, slice_size: int, overlap: int, keep_size: bool = True) -> list[tuple[int, int]]:
    """``(start, end)`` of the windows along one axis, the last one shifted to end at the border
    (``keep_size``) or cut there."""
    if image_size <= slice_size:
        return [(0, image_size)]
    step = slice_size - overlap
    spans = []
    start = 0
    while True:
        end = start + slice_size
        if end >= image_size:
            spans.append((image_size - slice_size, image_size) if keep_size else (start, image_size))
            return spans
        spans.append((start, end))
        start += step


def slice_windows(
    image_height: int,
    image_width: int,
    slice_height: int,
    slice_width: int,
    overlap_height_ratio: float = 0.2,
    overlap_width_ratio: float = 0.2,
    keep_size: bool = True,
) -> list[Window]:
    """Overlapping windows covering an image, with SAHI's ``get_slice_bboxes`` geometry.

    Windows step by ``slice - overlap`` pixels (``overlap = int(ratio * slice)``), row by row from
    the top left. A window that would cross the right or bottom border is shifted inward so that it
    ends exactly at the border, so every window has the slice size unless the image itself is
    smaller; an image smaller than a slice along an axis gets one window spanning that axis. With
    ``keep_size=False`` that last window is cut at the border instead (with no overlap: tiles that
    cover each pixel once, for work that gives the same result however the image is cut).

    Args:
        image_height: Image height in pixels (>= 1).
        image_width: Image width in pixels (>= 1).
        slice_height: Window height in pixels (>= 1).
        slice_width: Window width in pixels (>= 1).
        overlap_height_ratio: Vertical overlap of neighbouring windows as a share of ``slice_height``, in [0, 1).
        overlap_width_ratio: Horizontal overlap as a share of ``slice_width``, in [0, 1).
        keep_size: Shift the last window of a row or column inward (SAHI) rather than cut it at the border.

    Returns:
        ``(x1, y1, x2, y2)`` windows, row-major.

    Raises:
        ConfigError: A size below 1 or a ratio outside [0, 1).

    Example:
        >>> slice_windows(100, 250, 100, 100, 0.2, 0.2)
        [(0, 0, 100, 100), (80, 0, 180, 100), (150, 0, 250, 100)]
        >>> slice_windows(100, 250, 100, 100, 0, 0, keep_size=False)
        [(0, 0, 100, 100), (100, 0, 200, 100), (200, 0, 250, 100)]
    """
    for name, value in (("image_height", image_height), ("image_width", image_width),
                        ("slice_height", slice_height), ("slice_width", slice_width)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be a whole number of pixels >= 1, got {value!r}")
    overlap_height_ratio, overlap_width_ratio = overlap_pair((overlap_height_ratio, overlap_width_ratio))
    rows = _axis_starts(int(image_height), int(slice_height), int(overlap_height_ratio * slice_height), keep_size)
    columns = _axis_starts(int(image_width), int(slice_width), int(overlap_width_ratio * slice_width), keep_size)
    return [(x1, y1, x2, y2) for y1, y2 in rows for x1, x2 in columns]


def image_windows(
    image_height: int,
    image_width: int,
    slice_size: Sequence[int] | None,
    overlap: Sequence[float] = (0.2, 0.2),
) -> list[Window]:
    """The windows a stage processes an image in: the whole image when ``slice_size`` is None,
    else :func:`slice_windows` with ``(height, width)`` ``slice_size`` and ``overlap`` ratios.

    Example:
        >>> image_windows(100, 250, None), image_windows(100, 250, (100, 100), (0.2, 0.2))[1]
        ([(0, 0, 250, 100)], (80, 0, 180, 100))
    """
    if slice_size is None:
        return [(0, 0, int(image_width), int(image_height))]
    return slice_windows(image_height, image_width, slice_size[0], slice_size[1], overlap[0], overlap[1])


def window_batches(
    images: Sequence[np.ndarray],
    windows: Sequence[Sequence[Window]],
    batch_size: int,
) -> Iterator[list[tuple[int, Window, np.ndarray]]]:
    """The crops of every image's windows, ``batch_size`` at a time across images.

    Batching across images keeps a network's batches full when each image has few windows.

    Args:
        images: HxW(xC) arrays.
        windows: Per image, its windows (e.g. from :func:`image_windows`).
        batch_size: Crops per batch (>= 1).

    Yields:
        Lists of ``(image index, window, contiguous crop)``, image by image and window by window.

    Example:
        >>> images = [np.zeros((10, 20)), np.zeros((10, 10))]
        >>> batches = list(window_batches(images, [image_windows(10, 20, (10, 10)), [(0, 0, 10, 10)]], 2))
        >>> [[(i, w) for i, w, _ in batch] for batch in batches]
        [[(0, (0, 0, 10, 10)), (0, (8, 0, 18, 10))], [(0, (10, 0, 20, 10)), (1, (0, 0, 10, 10))]]
    """
    jobs = [(i, window) for i, image_windows_ in enumerate(windows) for window in image_windows_]
    step = max(1, int(batch_size))
    for start in range(0, len(jobs), step):
        yield [(i, (x1, y1, x2, y2), np.ascontiguousarray(images[i][y1:y2, x1:x2]))
               for i, (x1, y1, x2, y2) in jobs[start : start + step]]


# ----------------------------------------------------------------------------- merging detections
def _pairwise_intersection(rows: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """RxN intersection areas of xyxy boxes."""
    top_left = torch.maximum(rows[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(rows[:, None, 2:], boxes[None, :, 2:])
    return (bottom_right - top_left).clamp(min=0).prod(dim=2)


_MATCH_ROWS = 1024
"""Rows of the match matrix computed at once: bounds the float temporaries to ~1024 x N x 8 bytes."""


def _match_matrix(boxes: torch.Tensor, match_metric: str, match_threshold: float) -> np.ndarray:
    """NxN bool: pairs whose IOU, or intersection over the smaller box's area (IOS), exceeds the threshold."""
    areas = box_area(boxes)
    matches = np.zeros((len(boxes), len(boxes)), dtype=bool)
    for start in range(0, len(boxes), _MATCH_ROWS):
        rows = boxes[start : start + _MATCH_ROWS]
        if match_metric == "IOU":
            metric = box_iou(rows, boxes)
        else:
            row_areas = areas[start : start + _MATCH_ROWS]
            smaller = torch.minimum(row_areas[:, None], areas[None, :]).clamp(min=1e-9)  # zero-area boxes match nothing
            metric = _pairwise_intersection(rows, boxes) / smaller
        matches[start : start + len(rows)] = (metric > match_threshold).numpy()
    np.fill_diagonal(matches, False)
    return matches


def _groups(matches: np.ndarray, order: np.ndarray, method: str) -> np.ndarray:
    """For each box (indexed as in ``matches``), the index of the kept box it merges into, or -1 when dropped.

    ``order`` lists the boxes by decreasing score. The scan is inherently sequential (who keeps
    whom depends on earlier decisions); each step is a vectorised row operation.
    """
    owner = np.full(len(order), -1, dtype=np.int64)
    claimed = np.zeros(len(order), dtype=bool)
    for index in order:
        if method == "NMM":
            # A box not yet in a group starts one; any group member pulls its unclaimed matches in,
            # so a chain of overlaps becomes one box.
            if not claimed[index]:
                owner[index] = index
                claimed[index] = True
            fresh = matches[index] & ~claimed
            owner[fresh] = owner[index]
            claimed |= fresh
        else:
            if claimed[index]:
                continue
            owner[index] = index
            claimed[index] = True
            fresh = matches[index] & ~claimed
            if method == "GREEDYNMM":
                owner[fresh] = index
            claimed |= fresh  # NMS: suppressed, owner stays -1
    return owner


def merge_detections(
    detections: Detections,
    method: str = "GREEDYNMM",
    match_metric: str = "IOS",
    match_threshold: float = 0.5,
    class_agnostic: bool = False,
    passes: int = 1,
) -> Detections:
    """Merge the duplicate boxes that overlapping windows (and the whole-image pass) produce.

    Boxes match when their IOU, or their IOS (intersection over the smaller box's area), is above
    ``match_threshold``; unless ``class_agnostic``, only boxes of the same label match. IOS is what
    recognises the half of a defect cut at a window border inside the whole defect's box.
    Boxes are visited by decreasing score:

    * ``"NMS"``: a box survives unless it matches a surviving higher-scoring box.
    * ``"GREEDYNMM"``: each surviving box absorbs the lower-scoring boxes it matches itself.
    * ``"NMM"``: like GREEDYNMM, but absorbed boxes pull in their own matches too, so a chain of
      overlapping pieces becomes one box.
    * ``"WBF"``: weighted box fusion (Solovyev et al., 2021), grouped as GREEDYNMM: the merged box
      is the score-weighted mean of its members, its score their summed score over
      ``max(passes, members)``, so a box that only some of ``passes`` predictions found is
      down-weighted. Suits fusing several passes over the same pixels (test-time flips), where
      members are estimates of one box rather than pieces of it.

    Otherwise a merged box is the union (enclosing box) of its members, with the highest member score and its
    label. These are SAHI's postprocess semantics, except that SAHI re-checks each match against
    the growing merged box and silently drops members that no longer match; here every matched box
    is merged.

    Args:
        detections: Boxes of one image, in image coordinates.
        method: ``"GREEDYNMM"``, ``"NMM"`` or ``"NMS"``.
        match_metric: ``"IOS"`` or ``"IOU"``.
        match_threshold: Matches need a metric strictly above this, in [0, 1].
        class_agnostic: Let boxes of different labels match.
        passes: ``"WBF"`` only: how many predictions of the image were pooled into ``detections``.

    Returns:
        The merged detections, by decreasing score.

    Raises:
        ConfigError: An unknown method or metric, or a threshold outside [0, 1].

    Example:
        >>> whole = Detections(np.array([[10, 10, 50, 50], [40, 10, 50, 50]], np.float32),
        ...                    np.array([0.9, 0.6], np.float32), np.array([0, 0]))
        >>> merge_detections(whole).boxes.tolist()
        [[10.0, 10.0, 50.0, 50.0]]
    """
    method, match_metric = check_merge_options(method, match_metric, match_threshold)
    if len(detections) == 0:
        return Detections.empty()
    boxes = torch.as_tensor(np.asarray(detections.boxes, dtype=np.float32)).reshape(-1, 4)
    scores = torch.as_tensor(np.asarray(detections.scores, dtype=np.float32)).reshape(-1)
    labels = torch.as_tensor(np.asarray(detections.labels, dtype=np.int64)).reshape(-1)

    if method == "NMS" and match_metric == "IOU":
        keep = nms(boxes, scores, match_threshold) if class_agnostic else batched_nms(boxes, scores, labels, match_threshold)
        keep_np = keep.numpy()
        return Detections(boxes.numpy()[keep_np].copy(), scores.numpy()[keep_np].copy(), labels.numpy()[keep_np].copy())

    owner = np.full(len(scores), -1, dtype=np.int64)
    # Matching only ever happens within a class (unless agnostic), so one small matrix per class
    # keeps memory at the size of the largest class instead of N^2 over all boxes.
    partitions = [torch.arange(len(scores))] if class_agnostic else [
        torch.nonzero(labels == label).flatten() for label in torch.unique(labels)
    ]
    for members in partitions:
        member_scores = scores[members].numpy()
        order = np.argsort(-member_scores, kind="stable")
        matches = _match_matrix(boxes[members], match_metric, match_threshold)
        local_owner = _groups(matches, order, "GREEDYNMM" if method == "WBF" else method)
        member_ids = members.numpy()
        owner[member_ids] = np.where(local_owner >= 0, member_ids[np.maximum(local_owner, 0)], -1)

    kept_mask = owner >= 0
    kept_ids = np.unique(owner[kept_mask])
    if method == "WBF":
        return _fuse_weighted(boxes.numpy(), scores.numpy(), labels.numpy(), owner, kept_ids, max(1, int(passes)))
    kept_owner = torch.as_tensor(owner[kept_mask])
    # Group boxes by owner: enclosing box = min of the top-left and max of the bottom-right corners.
    slot = torch.as_tensor(np.searchsorted(kept_ids, kept_owner.numpy()))
    member_boxes = boxes[torch.as_tensor(kept_mask)]
    merged = torch.empty((len(kept_ids), 4), dtype=torch.float32)
    merged[:, :2] = torch.full((len(kept_ids), 2), math.inf).scatter_reduce(
        0, slot[:, None].expand(-1, 2), member_boxes[:, :2], reduce="amin")
    merged[:, 2:] = torch.full((len(kept_ids), 2), -math.inf).scatter_reduce(
        0, slot[:, None].expand(-1, 2), member_boxes[:, 2:], reduce="amax")
    kept_scores = scores.numpy()[kept_ids]  # the owner is its group's best-scoring box
    by_score = np.argsort(-kept_scores, kind="stable")
    return Detections(
        merged.numpy()[by_score].copy(),
        kept_scores[by_score].astype(np.float32),
        labels.numpy()[kept_ids][by_score].astype(np.int64),
    )


def _fuse_weighted(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, owner: np.ndarray, kept_ids: np.ndarray, passes: int,
) -> Detections:
    """Weighted box fusion of the groups ``owner`` assigns (see :func:`merge_detections`)."""
    slot = np.searchsorted(kept_ids, owner[owner >= 0])
    member_boxes, member_scores = boxes[owner >= 0].astype(np.float64), scores[owner >= 0].astype(np.float64)
    score_sum = np.bincount(slot, weights=member_scores, minlength=len(kept_ids))
    counts = np.bincount(slot, minlength=len(kept_ids))
    fused = np.stack([np.bincount(slot, weights=member_boxes[:, k] * member_scores, minlength=len(kept_ids))
                      for k in range(4)], axis=1) / np.maximum(score_sum, 1e-12)[:, None]
    fused_scores = score_sum / np.maximum(counts, passes)
    by_score = np.argsort(-fused_scores, kind="stable")
    return Detections(fused[by_score].astype(np.float32), fused_scores[by_score].astype(np.float32),
                      labels[kept_ids][by_score].astype(np.int64))


def check_merge_options(method: str, match_metric: str, match_threshold: float) -> tuple[str, str]:
    """Validate and normalise merge options (upper-case names).

    Raises:
        ConfigError: An unknown method or metric, or a threshold outside [0, 1].

    Example:
        >>> check_merge_options("nmm", "iou", 0.5)
        ('NMM', 'IOU')
    """
    method_name, metric_name = str(method).upper(), str(match_metric).upper()
    if method_name not in MERGE_METHODS:
        raise ConfigError(f"merge method must be one of {', '.join(MERGE_METHODS)}, got {method!r}")
    if metric_name not in MATCH_METRICS:
        raise ConfigError(f"match_metric must be one of {', '.join(MATCH_METRICS)}, got {match_metric!r}")
    if not 0.0 <= float(match_threshold) <= 1.0:
        raise ConfigError(f"match threshold must be in [0, 1], got {match_threshold!r}")
    return method_name, metric_name


# ----------------------------------------------------------------------------- blending dense maps
def _ramp_pair(ramp: int | Sequence[int]) -> tuple[int, int]:
    height, width = _pair(ramp, "ramp")
    if height < 0 or width < 0 or height != int(height) or width != int(width):
        raise ConfigError(f"ramp must be whole pixels >= 0 (one length or (height, width)), got {ramp!r}")
    return int(height), int(width)


def _axis_weights(start: int, end: int, image_size: int, ramp: int, profile: str) -> np.ndarray:
    """1-D weights of a window along one axis: tapering towards ends that lie inside the image."""
    length = end - start
    weights = np.ones(length, dtype=np.float64)
    if ramp <= 0 or length == 0:
        return weights
    # Pixel-centre distance from the edge over the ramp: the edge pixel gets a small positive
    # weight, so a pixel only one window covers still has a defined value.
    position = np.minimum((np.arange(length) + 0.5) / ramp, 1.0)
    taper = position if profile == "linear" else 0.5 - 0.5 * np.cos(np.pi * position)
    if start > 0:
        weights = np.minimum(weights, taper)
    if end < image_size:
        weights = np.minimum(weights, taper[::-1])
    return weights


def blend_weights(
    window: Window,
    image_height: int,
    image_width: int,
    ramp: int | Sequence[int],
    profile: str = "linear",
) -> np.ndarray:
    """Blending weights of one window: 1 inside, falling towards the window's edges that lie inside
    the image (never towards the image border, where no other window takes over).

    Args:
        window: ``(x1, y1, x2, y2)``.
        image_height: Height of the whole image.
        image_width: Width of the whole image.
        ramp: Taper length in pixels (one, or ``(height, width)``); 0 = flat weights. Use at most the
            windows' overlap so the taper lies where another window covers the pixels.
        profile: ``"linear"`` or ``"cosine"`` taper.

    Returns:
        ``(y2 - y1) x (x2 - x1)`` float32 weights in (0, 1].

    Example:
        >>> blend_weights((0, 0, 4, 1), 1, 8, ramp=2)[0].tolist()
        [1.0, 1.0, 0.75, 0.25]
    """
    if profile not in BLEND_PROFILES:
        raise ConfigError(f"blend profile must be one of {', '.join(BLEND_PROFILES)}, got {profile!r}")
    ramp_y, ramp_x = _ramp_pair(ramp)
    x1, y1, x2, y2 = (int(v) for v in window)
    rows = _axis_weights(y1, y2, int(image_height), ramp_y, profile)
    columns = _axis_weights(x1, x2, int(image_width), ramp_x, profile)
    return np.outer(rows, columns).astype(np.float32)


def window_overlaps(windows: Sequence[Window]) -> tuple[int, int]:
    """The smallest positive overlap between neighbouring windows, vertically and horizontally (0: none).

    This is the default blending ramp: within it every tapered pixel is also covered by a neighbour.

    Example:
        >>> window_overlaps(slice_windows(100, 250, 100, 100, 0.2, 0.2))
        (0, 20)
    """
    def smallest(spans: set[tuple[int, int]]) -> int:
        ordered = sorted(spans)
        overlaps = [prev_end - start for (_, prev_end), (start, _) in zip(ordered, ordered[1:]) if prev_end > start]
        return min(overlaps) if overlaps else 0

    return smallest({(w[1], w[3]) for w in windows}), smallest({(w[0], w[2]) for w in windows})


def stitch_maps(
    maps: Sequence[np.ndarray],
    windows: Sequence[Window],
    image_height: int,
    image_width: int,
    ramp: int | Sequence[int] | None = None,
    profile: str = "linear",
) -> np.ndarray:
    """Blend per-window CxhXw maps into one CxHxW map without seams.

    Each pixel is the weighted mean of the windows covering it, with :func:`blend_weights`, so the
    maps of overlapping windows cross-fade instead of meeting at a hard edge. Identical values in
    the overlaps are reproduced exactly. Pixels no window covers are 0. A single window over the
    whole image returns its map as it is (float32).

    Args:
        maps: One CxhXw array per window, ``h x w`` the window's size.
        windows: ``(x1, y1, x2, y2)`` of each map.
        image_height: Height of the whole image.
        image_width: Width of the whole image.
        ramp: Taper length in pixels; default: the windows' smallest overlap (:func:`window_overlaps`).
        profile: ``"linear"`` or ``"cosine"``.

    Returns:
        CxHxW float32.

    Raises:
        ValueError: No maps, or a map whose size or channel count does not match.

    Example:
        >>> windows = slice_windows(64, 96, 64, 64, 0.25, 0.25)
        >>> full = np.random.rand(2, 64, 96).astype(np.float32)
        >>> tiles = [full[:, y1:y2, x1:x2] for x1, y1, x2, y2 in windows]
        >>> bool(np.allclose(stitch_maps(tiles, windows, 64, 96), full))
        True
    """
    if len(maps) != len(windows) or not maps:
        raise ValueError(f"stitch_maps needs one map per window, got {len(maps)} maps for {len(windows)} windows")
    channels = maps[0].shape[0]
    if len(maps) == 1 and tuple(int(v) for v in windows[0]) == (0, 0, int(image_width), int(image_height)):
        # One window over the whole image: its map is the result (blending would divide by weights of 1).
        if maps[0].ndim != 3 or maps[0].shape[1:] != (int(image_height), int(image_width)):
            raise ValueError(f"map of window {windows[0]} has shape {maps[0].shape}, expected {(channels, image_height, image_width)}")
        return np.asarray(maps[0], dtype=np.float32)
    ramp = window_overlaps(windows) if ramp is None else ramp
    total = np.zeros((channels, int(image_height), int(image_width)), dtype=np.float32)
    weight_sum = np.zeros((int(image_height), int(image_width)), dtype=np.float32)
    for tile, window in zip(maps, windows):
        x1, y1, x2, y2 = (int(v) for v in window)
        if tile.ndim != 3 or tile.shape != (channels, y2 - y1, x2 - x1):
            raise ValueError(f"map of window {window} has shape {tile.shape}, expected {(channels, y2 - y1, x2 - x1)}")
        weights = blend_weights(window, image_height, image_width, ramp, profile)
        total[:, y1:y2, x1:x2] += tile.astype(np.float32, copy=False) * weights
        weight_sum[y1:y2, x1:x2] += weights
    np.divide(total, weight_sum, out=total, where=weight_sum > 0)
    return total


# ----------------------------------------------------------------------------- sliced training
def slice_annotations(
    boxes: Sequence[Box],
    window: Window,
    min_visible_ratio: float = 0.3,
    min_side: float = 2.0,
) -> list[Box]:
    """Ground-truth boxes as a detector trained on one window should see them.

    Boxes are clipped to the window and moved to its coordinates. A clipped remnant is dropped when
    less than ``min_visible_ratio`` of the box's area is visible, or when clipping left a side
    shorter than ``min_side`` pixels (a box that was already that thin keeps its size).

    Args:
        boxes: ``(class_name, x1, y1, x2, y2)`` in image pixel-edge coordinates.
        window: ``(x1, y1, x2, y2)``.
        min_visible_ratio: Smallest visible share of a box's area to keep it, in [0, 1].
        min_side: Smallest side in pixels a clipped box may have.

    Returns:
        The kept boxes in window coordinates.

    Example:
        >>> slice_annotations([("scratch", 80, 10, 120, 30), ("dent", 98, 50, 108, 60)], (0, 0, 100, 100))
        [('scratch', 80.0, 10.0, 100.0, 30.0)]
    """
    if not 0.0 <= min_visible_ratio <= 1.0:
        raise ConfigError(f"min_visible_ratio must be in [0, 1], got {min_visible_ratio!r}")
    if min_side < 0:
        raise ConfigError(f"min_side must be >= 0 pixels, got {min_side!r}")
    wx1, wy1, wx2, wy2 = (float(v) for v in window)
    kept: list[Box] = []
    for class_name, x1, y1, x2, y2 in boxes:
        cx1, cy1, cx2, cy2 = max(x1, wx1), max(y1, wy1), min(x2, wx2), min(y2, wy2)
        width, height = cx2 - cx1, cy2 - cy1
        if width <= 0 or height <= 0:
            continue
        area = (x2 - x1) * (y2 - y1)
        if area <= 0 or width * height < min_visible_ratio * area:
            continue
        if width < min(min_side, x2 - x1) or height < min(min_side, y2 - y1):
            continue
        kept.append((class_name, float(cx1 - wx1), float(cy1 - wy1), float(cx2 - wx1), float(cy2 - wy1)))
    return kept


def slice_training_items(
    image_height: int,
    image_width: int,
    boxes: Sequence[Box],
    slice_size: int | Sequence[int],
    overlap_ratio: float | Sequence[float] = 0.2,
    min_visible_ratio: float = 0.3,
    min_side: float = 2.0,
    keep_empty: float = 1.0,
    rng: np.random.Generator | int | None = None,
) -> Iterator[tuple[Window, list[Box]]]:
    """The training slices of one image and their boxes, on the windows prediction uses.

    Windows come from :func:`slice_windows` with the same slice size and overlap as the
    :class:`~defectkit.stages.tiling.Tiling` stage, and boxes from :func:`slice_annotations`.
    Slices without any box are mostly wasted work for a detector on CPU, so ``keep_empty`` keeps
    each of them only with that probability.

    Args:
        image_height: Image height.
        image_width: Image width.
        boxes: ``(class_name, x1, y1, x2, y2)`` in image coordinates.
        slice_size: One size or ``(height, width)``.
        overlap_ratio: One ratio or ``(height_ratio, width_ratio)``, each in [0, 1).
        min_visible_ratio: See :func:`slice_annotations`.
        min_side: See :func:`slice_annotations`.
        keep_empty: Probability of keeping a slice without boxes, in [0, 1] (1: keep all, 0: none).
        rng: Generator or seed for the empty-slice draws (pass one generator for a whole data set
            so images do not repeat the same pattern); None: seed 0.

    Yields:
        ``(window, boxes in window coordinates)``, in :func:`slice_windows` order.

    Example:
        >>> items = list(slice_training_items(100, 250, [("dent", 10, 10, 30, 30)], 100, 0.2, keep_empty=0.0))
        >>> items
        [((0, 0, 100, 100), [('dent', 10.0, 10.0, 30.0, 30.0)])]
    """
    if not 0.0 <= keep_empty <= 1.0:
        raise ConfigError(f"keep_empty must be a probability in [0, 1], got {keep_empty!r}")
    slice_height, slice_width = slice_size_pair(slice_size)
    overlap_height, overlap_width = overlap_pair(overlap_ratio)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    for window in slice_windows(image_height, image_width, slice_height, slice_width, overlap_height, overlap_width):
        window_boxes = slice_annotations(boxes, window, min_visible_ratio, min_side)
        # Draw for empty slices only, and only when it decides something, so the sequence of kept
        # slices does not depend on keep_empty=1.0 vs the generator's state.
        if not window_boxes and keep_empty < 1.0 and generator.random() >= keep_empty:
            continue
        yield window, window_boxes


__all__ = [
    "BLEND_PROFILES",
    "Box",
    "MATCH_METRICS",
    "MERGE_METHODS",
    "Window",
    "blend_weights",
    "check_merge_options",
    "image_windows",
    "merge_detections",
    "overlap_pair",
    "slice_annotations",
    "slice_size_pair",
    "slice_training_items",
    "slice_windows",
    "stitch_maps",
    "window_batches",
    "window_overlaps",
]
