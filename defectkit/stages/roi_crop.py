"""Region-of-interest crop: run a stage on the part of the photo that matters (the car), map it back.

Photos from the field show the car and a lot of street; segmenting only the car's box spends the
segmenter's input pixels on paint. The box comes from the record (given boxes) or from a box
localizer (any stage with ``detect(images) -> list[Detections]``, e.g. a Detector trained on a
"car" class); the inner stage's maps, masks and instances are put back into image coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from defectkit.errors import ConfigError
from defectkit.registry import STAGES, build
from defectkit.sample import Instance, Roi, Sample
from defectkit.stages.base import Detects
from defectkit.stages.wrapping import WrappingStage

Box = tuple[int, int, int, int]


@STAGES.register_module()
class RoiCrop(WrappingStage):
    """Crop each image to its region of interest, run ``inner`` on the crop, map the results back.

    The box is, in order: ``record.meta[meta_key]`` (``[x1, y1, x2, y2]`` in original image
    pixels), else the localizer's highest-scoring box of ``localizer_class`` above
    ``min_score``, else the whole image (recorded in ``sample.roi.source``). It is
    grown by ``margin`` (a share of its size) and clipped to the image.

    After the inner stage, ``prob_maps`` and ``masks`` are pasted into full-size arrays (zero
    outside the box), instance boxes and polygons are shifted back, and gate fields the inner stage
    set are kept. Fitting and state are the inner stage's (:class:`WrappingStage`); it trains on
    whole images, so a margin that keeps some context around the car helps it match.

    Args:
        inner: The stage to run on the crops, as a config dict or a built stage.
        localizer: Optional box localizer config (a stage with ``detect``) or built object; it is
            used as already trained (load or fit it with its own stage).
        localizer_class: Class name of the localizer's boxes to use; None takes any class.
        meta_key: Record ``meta`` key holding a given box.
        margin: Grow the box by this share of its width and height on each side.
        min_score: Localizer boxes scoring below this are ignored.
        min_side: Boxes smaller than this many pixels on a side are ignored (whole image used).
        name: Stage name (file stem of its saved state).

    Example:
        >>> roi = build(STAGES, dict(type="RoiCrop", inner=dict(type="Segmenter"), margin=0.05))  # doctest: +SKIP
        >>> roi.predict(samples)[0].roi  # doctest: +SKIP
        {'box': [40, 12, 760, 590], 'source': 'record'}
    """

    settings_key = "roi_crop"

    def __init__(
        self,
        inner: dict[str, Any] | Any = None,
        localizer: dict[str, Any] | Any = None,
        localizer_class: str | None = None,
        meta_key: str = "roi",
        margin: float = 0.05,
        min_score: float = 0.3,
        min_side: int = 16,
        name: str | None = None,
    ) -> None:
        if not 0.0 <= float(margin) <= 1.0:
            raise ConfigError(f"RoiCrop margin must be a share in [0, 1], got {margin!r}")
        self.margin = float(margin)
        self.meta_key = str(meta_key)
        self.min_score = float(min_score)
        self.min_side = max(1, int(min_side))
        self.localizer_class = localizer_class
        self.localizer = build(STAGES, localizer) if isinstance(localizer, dict) else localizer
        if self.localizer is not None and not isinstance(self.localizer, Detects):
            raise ConfigError(f"RoiCrop localizer {type(self.localizer).__name__} is not a detector (defectkit.stages.base.Detects)")
        super().__init__(inner, name or "roi_crop")

    def use_device(self, device: torch.device) -> None:
        """The inner stage and the localizer run on ``device``."""
        super().use_device(device)
        if self.localizer is not None:
            self.localizer.use_device(device)

    def settings(self) -> dict[str, Any]:
        return {
            "meta_key": self.meta_key,
            "localizer": None if self.localizer is None else type(self.localizer).__name__,
            "localizer_class": self.localizer_class,
            "margin": self.margin,
            "min_score": self.min_score,
        }

    # ------------------------------------------------------------------ boxes
    def given_box(self, sample: Sample) -> Box | None:
        """The record's box in ``sample.image`` coordinates, or None."""
        raw = sample.record.meta.get(self.meta_key)
        if raw is None or sample.image is None:
            return None
        try:
            x1, y1, x2, y2 = (float(v) for v in raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{sample.record.path}: meta[{self.meta_key!r}] must be [x1, y1, x2, y2], got {raw!r}") from exc
        sx, sy = sample.original_factors()
        return self._clip((x1 / sx, y1 / sy, x2 / sx, y2 / sy), sample.image.shape[:2])

    def localized_boxes(self, images: Sequence[np.ndarray]) -> list[Box | None]:
        """The localizer's best box per image (None where it found nothing usable)."""
        if self.localizer is None or not images:
            return [None] * len(images)
        classes = list(self.localizer.classes)
        wanted = None
        if self.localizer_class is not None:
            if self.localizer_class not in classes:
                raise ConfigError(f"RoiCrop localizer_class {self.localizer_class!r} is not among the localizer's classes {classes}")
            wanted = classes.index(self.localizer_class)
        boxes: list[Box | None] = []
        for image, found in zip(images, self.localizer.detect(list(images))):
            keep = found.scores >= self.min_score
            if wanted is not None:
                keep &= found.labels == wanted
            if not keep.any():
                boxes.append(None)
                continue
            best = int(np.flatnonzero(keep)[np.argmax(found.scores[keep])])
            boxes.append(self._clip(tuple(float(v) for v in found.boxes[best]), image.shape[:2]))
        return boxes

    def _clip(self, box: Sequence[float], shape: tuple[int, int]) -> Box | None:
        height, width = shape
        x1, y1, x2, y2 = box
        grow_x, grow_y = self.margin * (x2 - x1), self.margin * (y2 - y1)
        left, top = max(0, int(np.floor(x1 - grow_x))), max(0, int(np.floor(y1 - grow_y)))
        right, bottom = min(width, int(np.ceil(x2 + grow_x))), min(height, int(np.ceil(y2 + grow_y)))
        if right - left < self.min_side or bottom - top < self.min_side:
            return None
        return left, top, right, bottom

    # ------------------------------------------------------------------ predict
    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Run the inner stage on each active sample's region of interest; results in image coordinates."""
        active = self.active_samples(samples)
        if not active:
            return samples
        boxes = [self.given_box(s) for s in active]
        need = [i for i, box in enumerate(boxes) if box is None]
        for i, box in zip(need, self.localized_boxes([active[i].image for i in need])):
            boxes[i] = box
        crops: list[Sample] = []
        for index, (sample, box) in enumerate(zip(active, boxes)):
            height, width = sample.image.shape[:2]
            source = "record" if index not in need else ("localizer" if box is not None else "whole image")
            box = box or (0, 0, width, height)
            sample.roi = Roi(tuple(int(v) for v in box), source)  # type: ignore[arg-type]
            x1, y1, x2, y2 = box
            crops.append(replace(sample, image=np.ascontiguousarray(sample.image[y1:y2, x1:x2]), instances=[],
                                 prob_maps=None, masks=None, timings={}, extras={}, roi=None, original_size=(y2 - y1, x2 - x1), scale=1.0))
        self.inner.predict(crops)
        for sample, crop in zip(active, crops):
            assert sample.roi is not None
            self._paste_back(sample, crop, sample.roi.box)
        return samples

    @staticmethod
    def _paste_back(sample: Sample, crop: Sample, box: Sequence[int]) -> None:
        x1, y1, x2, y2 = box
        height, width = sample.image.shape[:2]
        for field in ("prob_maps", "masks"):
            part = getattr(crop, field)
            if part is not None:
                full = np.zeros((part.shape[0], height, width), dtype=part.dtype)
                full[:, y1:y2, x1:x2] = part
                setattr(sample, field, full)
        if crop.map_classes:
            sample.map_classes = list(crop.map_classes)
        sample.instances = sample.instances + [_shifted(inst, x1, y1) for inst in crop.instances]
        sample.gate_label, sample.gate_score = crop.gate_label or sample.gate_label, crop.gate_score if crop.gate_score is not None else sample.gate_score
        sample.finished = sample.finished or crop.finished
        sample.error = crop.error or sample.error
        sample.extras.update(crop.extras)
        sample.enhancement = crop.enhancement or sample.enhancement
        sample.anomaly_score = crop.anomaly_score if crop.anomaly_score is not None else sample.anomaly_score
        sample.gate_probabilities = crop.gate_probabilities or sample.gate_probabilities


def _shifted(instance: Instance, dx: int, dy: int) -> Instance:
    bx1, by1, bx2, by2 = instance.box
    return Instance(
        instance.class_name,
        instance.score,
        (bx1 + dx, by1 + dy, bx2 + dx, by2 + dy),
        instance.area,
        [[x + dx, y + dy] for x, y in instance.polygon],
        instance.confident,
    )


__all__ = ["RoiCrop"]
