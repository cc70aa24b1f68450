"""Ground-truth masks for a record, one channel per defect class, whatever the annotation format."""

from __future__ import annotations

import numpy as np

from defectkit.io.images import load_mask
from defectkit.polygons import polygons_to_mask
from defectkit.sample import Record


def has_annotations(record: Record) -> bool:
    """Whether ``record`` carries pixel ground truth (a mask file or polygons)."""
    return bool(record.mask_path) or bool(record.polygons)


def ground_truth_masks(
    record: Record, shape: tuple[int, int], classes: list[str], scale: float = 1.0
) -> tuple[np.ndarray, list[str]]:
    """Build a CxHxW bool mask for ``record`` (C = ``len(classes)``).

    A single ``mask_path`` fills the first class (binary data sets); ``polygons`` fill the channel of
    their class, all regions of a class merged by logical OR. Images without annotations give empty
    masks.

    Returns:
        The masks and the problems found while rasterising (degenerate polygons, unknown classes).
    """
    masks = np.zeros((len(classes), *shape), dtype=bool)
    problems: list[str] = []
    if record.mask_path and classes:
        masks[0] = load_mask(record.mask_path, shape)
    for class_name, polygons in (record.polygons or {}).items():
        if class_name not in classes:
            problems.append(f"{record.path}: class {class_name!r} is not in the config's classes {classes}")
            continue
        if scale != 1.0:
            # The image was decoded at reduced size; annotations are in the file's coordinates.
            polygons = [[[[x * scale, y * scale] for x, y in ring] for ring in polygon] for polygon in polygons]
        mask, found = polygons_to_mask(polygons, shape)
        masks[classes.index(class_name)] |= mask
        problems.extend(f"{record.path}: {p}" for p in found)
    return masks, problems
