"""Group keys, categories and split strata of damage data sets, and the base of the class-mapped readers.

Photos of one vehicle or claim share a *group key* (the ``as-123``/``sc-123`` case token of AI-Hub
file names) so a split never puts one case on both sides. The stratum of a record combines its
*category* (the rarest configured class it contains) with a bin of its damaged-area ratio, so rare
classes and small damages reach every split part.

:class:`ClassMappedDataset` is what the polygon readers (:mod:`~defectkit.data.polygon_json`,
:mod:`~defectkit.data.aihub`, :mod:`~defectkit.data.coco`, :mod:`~defectkit.data.mask_folder`) share:
the config's ``classes`` and ``label_map``, polygon checks and problem counting.

Example:
    >>> from defectkit.data.split import split_records
    >>> group_key("0000002_as-0036229.jpg")
    'as-0036229'
    >>> parts = split_records(records, ratios=(0.8, 0.1, 0.1), stratum=damage_stratum)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from defectkit.errors import ConfigError
from defectkit.sample import Record

DEFAULT_GROUP_PATTERN = r"(?:as|sc)-\d+"
"""The AI-Hub case token (``0000002_as-0036229.jpg`` -> ``as-0036229``): one vehicle/claim."""

AREA_CUTS = (0.01, 0.05)
"""Damaged-area ratio cut points between the ``small``, ``medium`` and ``large`` bins."""

AREA_BINS = ("small", "medium", "large")
NORMAL_CATEGORY = "normal"
# Category of an image labelled as damaged (e.g. damage_level 1) without any outlined region.
UNLOCATED_CATEGORY = "damage"
# Side of the reduced raster the damaged-area ratio is measured on: the ratio feeds stratification
# bins only, so 1-2 % error is irrelevant, and 256 px keeps reading 10k images fast.
AREA_RATIO_SIDE = 256

Ring = list[list[float]]
Polygon = list[Ring]


# -- group keys and strata ------------------------------------------------------------------------


def group_key(
    name: str | os.PathLike[str], pattern: str | re.Pattern[str] | None = DEFAULT_GROUP_PATTERN
) -> str | None:
    """The group key in a file name: the regex's first capturing group, or its whole match.

    Args:
        name: File name or path; only the last component is searched.
        pattern: Regular expression; None disables grouping.

    Returns:
        The key, or None when there is no pattern or it does not match.

    Example:
        >>> group_key("/data/images/0000459_sc-226797.jpg")
        'sc-226797'
        >>> group_key("claim42_front.jpg", r"claim(\\d+)_")
        '42'
        >>> group_key("no_token.jpg") is None
        True
    """
    if pattern is None:
        return None
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    match = regex.search(Path(name).name)
    if match is None:
        return None
    return match.group(1) if regex.groups else match.group(0)


def area_bin(ratio: float, cuts: Sequence[float] = AREA_CUTS) -> str:
    """``"small"``, ``"medium"`` or ``"large"`` for a damaged-area ratio, by two ascending cut points.

    Example:
        >>> area_bin(0.004), area_bin(0.02), area_bin(0.3)
        ('small', 'medium', 'large')
    """
    low, high = cuts
    if ratio < low:
        return AREA_BINS[0]
    return AREA_BINS[1] if ratio < high else AREA_BINS[2]


def damage_stratum(record: Record, cuts: Sequence[float] = AREA_CUTS) -> str:
    """Split stratum of a record: its category plus the bin of its damaged-area ratio.

    Normal images (and records without a ``damaged_area_ratio`` in ``meta``) are stratified by
    category alone.

    Example:
        >>> damage_stratum(Record(path="a.jpg", label=1, category="dent", meta={"damaged_area_ratio": 0.02}))
        'dent/medium'
        >>> parts = split_records(records, ratios=(0.8, 0.1, 0.1), stratum=damage_stratum)  # doctest: +SKIP
    """
    category = str(record.category if record.category is not None else record.label)
    ratio = record.meta.get("damaged_area_ratio")
    if category == NORMAL_CATEGORY or ratio is None:
        return category
    return f"{category}/{area_bin(float(ratio), cuts)}"


def area_ratio_cuts(records: Iterable[Record]) -> tuple[float, float]:
    """Terciles of the damaged-area ratio of the damaged records, as cut points for :func:`damage_stratum`.

    Fixed cuts (:data:`AREA_CUTS`) keep strata comparable across data sets; terciles keep the bins
    equally full on a data set whose damages are all large (or all small).

    Example:
        >>> stratum = make_damage_stratum(area_ratio_cuts(records))  # doctest: +SKIP
    """
    ratios = [float(r.meta["damaged_area_ratio"]) for r in records if r.label and "damaged_area_ratio" in r.meta]
    if not ratios:
        return AREA_CUTS
    low, high = np.quantile(ratios, [1 / 3, 2 / 3])
    return float(low), float(high)


def make_damage_stratum(cuts: Sequence[float] = AREA_CUTS) -> Callable[[Record], str]:
    """:func:`damage_stratum` with other cut points, for ``split_records(stratum=...)``."""
    low, high = (float(c) for c in cuts)
    if not 0 <= low <= high:
        raise ConfigError(f"area cut points must be ascending non-negative ratios, got {tuple(cuts)}")

    def stratum(record: Record) -> str:
        return damage_stratum(record, (low, high))

    return stratum


def damaged_area_ratio(
    polygons: Mapping[str, Sequence[Polygon]], size: tuple[int, int], side: int = AREA_RATIO_SIDE
) -> float:
    """Area of the union of all regions (holes excluded, overlaps counted once) over the image area.

    Rasterised on a grid of at most ``side`` pixels per side, so overlapping classes and holes are
    handled exactly as the training masks will be, at a cost independent of the image size.

    Args:
        polygons: ``{class: [polygon, ...]}`` as in :attr:`Record.polygons`.
        size: ``(width, height)`` of the image.
        side: Longest side of the reduced raster.

    Example:
        >>> square = [[[0, 0], [49, 0], [49, 49], [0, 49]]]
        >>> round(damaged_area_ratio({"dent": [square]}, (100, 100)), 2)
        0.25
    """
    width, height = size
    if width <= 0 or height <= 0:
        return 0.0
    scale = min(1.0, side / max(width, height))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.zeros((out_h, out_w), np.uint8)
    for class_polygons in polygons.values():
        for polygon in class_polygons:
            layer = np.zeros_like(canvas)
            for index, ring in enumerate(polygon):
                # Pixel centres sit at integer coordinates; scale about them so edges stay put.
                pts = np.asarray(ring, np.float64) * scale
                limit = 4 * max(out_w, out_h) + 16
                pts = np.clip(np.round(pts), -limit, limit).astype(np.int32).reshape(-1, 1, 2)
                cv2.fillPoly(layer, [pts], 1 if index == 0 else 0)
            canvas |= layer
    return float(canvas.mean())


def rarest_present(present: Iterable[str], image_counts: Mapping[str, int], classes: Sequence[str]) -> str | None:
    """The class of ``present`` in the fewest images (ties: earlier in ``classes``), None if empty."""
    order = {name: index for index, name in enumerate(classes)}
    candidates = [c for c in present if c in order]
    if not candidates:
        return None
    return min(candidates, key=lambda c: (image_counts.get(c, 0), order[c]))


def assign_categories(records: Sequence[Record], classes: Sequence[str]) -> Counter[str]:
    """Set each record's ``category`` to the rarest configured class it contains (in place).

    Rarity is the number of images of ``records`` containing the class, so an image with a scratch
    and a rare breakage is stratified as breakage and the rare class spreads over every split part.
    Images without regions get ``"normal"`` (label 0) or ``"damage"`` (labelled damaged, no region).

    Returns:
        Images per class.
    """
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(name for name, polys in (record.polygons or {}).items() if polys)
    for record in records:
        present = [name for name, polys in (record.polygons or {}).items() if polys]
        rarest = rarest_present(present, counts, classes)
        if rarest is not None:
            record.category = rarest
        else:
            record.category = UNLOCATED_CATEGORY if record.label else NORMAL_CATEGORY
    return counts


# -- polygon nesting ---------------------------------------------------------------------------------


__all__ = [
    "AREA_CUTS",
    "DEFAULT_GROUP_PATTERN",
    "area_bin",
    "area_ratio_cuts",
    "assign_categories",
    "damage_stratum",
    "damaged_area_ratio",
    "group_key",
    "make_damage_stratum",
    "rarest_present",
]
