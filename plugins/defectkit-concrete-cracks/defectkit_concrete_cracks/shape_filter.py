"""A mask rule of the crack domain: a crack is long and thin, a stain or a pore is not."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from defectkit.errors import ConfigError
from defectkit.registry import STAGES
from defectkit.sample import Sample
from defectkit.stages.base import Stage


def elongation(points: np.ndarray) -> float:
    """Long side over short side of the smallest rotated rectangle around ``points`` (Nx2 x, y).

    A short side under one pixel counts as one pixel, so a straight one-pixel line of length L has
    elongation L.

    Example:
        >>> elongation(np.array([[0, 0], [20, 0], [20, 2], [0, 2]]))
        10.0
    """
    if len(points) < 2:
        return 1.0
    (_, _), (width, height), _ = cv2.minAreaRect(np.asarray(points, np.float32))
    long_side, short_side = max(width, height), max(min(width, height), 1.0)
    return float(max(long_side, 1.0) / short_side)


@STAGES.register_module()
class CrackShapeFilter(Stage):
    """Remove mask regions and instances that are not crack-shaped (after a mask policy).

    Each 8-connected region of the masks of ``classes`` is kept only if its :func:`elongation` is at
    least ``min_elongation``; the instances of removed regions go too.

    Args:
        min_elongation: Smallest long-over-short side ratio of a crack region (>= 1).
        classes: Mask classes to filter; None filters every class.
        name: Stage name.

    Like every stage it also takes ``enabled=False`` in a config, which passes samples through.

    Example:
        >>> from defectkit.sample import Instance, Record
        >>> masks = np.zeros((1, 32, 32), bool); masks[0, 4, 2:30] = True; masks[0, 20:26, 20:26] = True
        >>> sample = Sample(Record("s.png"), image=np.zeros((32, 32, 3), np.uint8), masks=masks, map_classes=["defect"])
        >>> sample = CrackShapeFilter(min_elongation=4)([sample])[0].sample
        >>> int(sample.masks.sum())  # the line stays, the square blob goes
        28
    """

    def __init__(self, min_elongation: float = 4.0, classes: Sequence[str] | None = None, name: str | None = None) -> None:
        super().__init__(name or "crack_shape_filter")
        if min_elongation < 1:
            raise ConfigError(f"min_elongation must be >= 1, got {min_elongation}")
        self.min_elongation = float(min_elongation)
        self.classes = None if classes is None else [str(c) for c in classes]

    def predict(self, samples: list[Sample]) -> list[Sample]:
        for sample in samples:
            if sample.masks is None:
                continue
            for channel, class_name in enumerate(sample.map_classes):
                if self.classes is None or class_name in self.classes:
                    self._filter_channel(sample, channel, class_name)
        return samples

    def _filter_channel(self, sample: Sample, channel: int, class_name: str) -> None:
        assert sample.masks is not None
        mask = sample.masks[channel].astype(np.uint8)
        count, labels = cv2.connectedComponents(mask, connectivity=8)
        removed = np.zeros(mask.shape, bool)
        for region in range(1, count):
            ys, xs = np.nonzero(labels == region)
            if elongation(np.stack([xs, ys], axis=1)) < self.min_elongation:
                removed |= labels == region
        if not removed.any():
            return
        sample.masks[channel] &= ~removed
        kept = []
        for instance in sample.instances:
            if instance.class_name == class_name and instance.polygon:
                x, y = (int(round(v)) for v in np.mean(np.asarray(instance.polygon), axis=0))
                inside = 0 <= y < removed.shape[0] and 0 <= x < removed.shape[1]
                # An instance whose outline lies on removed pixels belonged to a removed region.
                ring = np.asarray(instance.polygon).round().astype(int)
                ring[:, 0] = ring[:, 0].clip(0, removed.shape[1] - 1)
                ring[:, 1] = ring[:, 1].clip(0, removed.shape[0] - 1)
                if removed[ring[:, 1], ring[:, 0]].mean() > 0.5 or (inside and removed[y, x]):
                    continue
            kept.append(instance)
        sample.instances = kept

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "min_elongation": self.min_elongation, "classes": self.classes, "enabled": self.enabled}


__all__ = ["CrackShapeFilter", "elongation"]
