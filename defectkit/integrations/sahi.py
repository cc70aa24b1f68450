"""SAHI adapter: any defectkit detector as a ``sahi`` ``DetectionModel``, for SAHI's own tools
(``get_sliced_prediction``, its COCO evaluation and visualisation).

Needs the optional ``sahi`` package, installed with the ``[sahi]`` extra
(``pip install 'defectkit[sahi]'``); it is not a default dependency because it requires the
non-headless ``opencv-python``. defectkit's own sliced inference,
:class:`defectkit.stages.tiling.Tiling`, does not need it.

Example:
    >>> from sahi.predict import get_sliced_prediction                          # doctest: +SKIP
    >>> from defectkit.integrations.sahi import DefectkitDetectionModel         # doctest: +SKIP
    >>> model = DefectkitDetectionModel(detector, confidence_threshold=0.25)    # doctest: +SKIP
    >>> result = get_sliced_prediction(image, model, slice_height=512, slice_width=512)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction
except ImportError as exc:  # sahi itself, or its opencv / shapely dependencies
    raise ImportError(
        "defectkit.integrations.sahi needs the optional 'sahi' package: install the [sahi] extra with "
        "pip install 'defectkit[sahi]' (it brings the non-headless opencv-python). "
        f"defectkit's Tiling stage does sliced inference without it. ({exc})"
    ) from exc

from defectkit.sample import Detections
from defectkit.stages.base import Detects


def _per_image(value: Sequence[Any] | None, count: int, default: Any) -> list[Any]:
    """SAHI passes shifts and shapes either per image (``[[x, y], ...]``) or once (``[x, y]``)."""
    if value is None:
        return [default] * count
    items = list(value)
    if items and not isinstance(items[0], (list, tuple, np.ndarray)):
        items = [items]
    if len(items) == 1 and count > 1:
        items = items * count
    if len(items) != count:
        raise ValueError(f"got {len(items)} shifts or shapes for {count} images")
    return items


class DefectkitDetectionModel(DetectionModel):
    """Wrap an object with ``detect(images) -> list[Detections]`` and ``classes`` (a defectkit
    detector stage, fitted or loaded) as a SAHI detection model.

    Category ids are the detector's label indices, category names its ``classes``. Batched SAHI
    calls (``batch_size`` of ``get_sliced_prediction``) go to the detector in one ``detect`` call.

    Args:
        detector: The detector (see the inner-stage protocol of :mod:`defectkit.stages.tiling`).
        confidence_threshold: Drop boxes scoring below this.
        category_remapping: SAHI's optional ``{category_name: new_id}`` remapping.
        device: Passed to SAHI; the detector keeps its own device.

    Example:
        >>> model = DefectkitDetectionModel(detector)   # doctest: +SKIP
        >>> model.category_names                        # doctest: +SKIP
        ['scratch', 'dent']
    """

    def __init__(
        self,
        detector: Any,
        confidence_threshold: float = 0.3,
        category_remapping: dict[str, int] | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(
            model=detector,
            device=device,
            confidence_threshold=confidence_threshold,
            category_remapping=category_remapping,
            load_at_init=True,
        )

    def load_model(self) -> None:
        """Not supported: a defectkit detector is built and loaded by defectkit, then passed as ``detector``."""
        raise ValueError("DefectkitDetectionModel wraps an existing detector: pass it as DefectkitDetectionModel(detector)")

    def set_model(self, model: Any, **kwargs: Any) -> None:
        """Use ``model`` (a defectkit detector) and name the categories after its classes."""
        if not isinstance(model, Detects):
            raise TypeError(f"{type(model).__name__} is not a defectkit detector (a stage with the Detects ability)")
        self.model = model
        self.category_mapping = {str(i): str(name) for i, name in enumerate(model.classes)}

    @property
    def category_names(self) -> list[str]:
        return [str(name) for name in self.model.classes]

    @property
    def num_categories(self) -> int:
        return len(self.model.classes)

    @property
    def has_mask(self) -> bool:
        return False

    def _detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return list(self.model.detect([np.ascontiguousarray(image) for image in images]))

    def perform_inference(self, image: np.ndarray) -> None:
        """Detect in one HxWx3 RGB image."""
        self._batch_images = None
        self._original_predictions = self._detect([image])

    def perform_batch_inference(self, images: list[np.ndarray]) -> None:
        """Detect in several images with one ``detect`` call."""
        # Left unset, SAHI's base class would replay the batch one image at a time.
        self._batch_images = None
        self._original_predictions = self._detect(images)

    def _create_object_prediction_list_from_original_predictions(
        self,
        shift_amount_list: Sequence[Any] | None = None,
        full_shape_list: Sequence[Any] | None = None,
    ) -> None:
        found: list[Detections] = self._original_predictions or []
        shifts = _per_image(shift_amount_list, len(found), [0, 0])
        shapes = _per_image(full_shape_list, len(found), None)
        names = self.category_names
        per_image = []
        for detections, shift, shape in zip(found, shifts, shapes):
            predictions = []
            for box, score, label in zip(detections.boxes, detections.scores, detections.labels):
                x1, y1, x2, y2 = (max(float(v), 0.0) for v in box)
                if score < self.confidence_threshold or x2 <= x1 or y2 <= y1:
                    continue
                predictions.append(ObjectPrediction(
                    bbox=[x1, y1, x2, y2],
                    category_id=int(label),
                    category_name=names[int(label)],
                    score=float(score),
                    shift_amount=[int(v) for v in shift],
                    full_shape=None if shape is None else [int(v) for v in shape],
                ))
            per_image.append(predictions)
        self._object_prediction_list_per_image = per_image


__all__ = ["DefectkitDetectionModel"]
