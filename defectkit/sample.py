"""The types that flow through a pipeline: a :class:`Record` names an image and its ground truth,
a :class:`Sample` carries the decoded image and everything the stages add to it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Record:
    """One image of a data set: where it is and what is known about it, no pixels.

    Attributes:
        path: Image file.
        label: Image-level class index into the data set's ``image_classes`` (e.g. 0 normal, 1 defect),
            or None when unknown (unlabelled test images).
        category: Finer source label (e.g. the defect type folder), used for stratified splits and reports.
        mask_path: A mask image beside the photo (single-class masks), when the format has one.
        polygons: Per-class outlines ``{class_name: [polygon, ...]}``, each polygon a list of rings
            (outer first, then holes), each ring ``[[x, y], ...]``.
        boxes: Ground-truth boxes ``[(class_name, x1, y1, x2, y2), ...]``.
        group: Photos sharing a group key (vehicle, claim) never land on both sides of a split.
        meta: Anything else a reader wants to keep (source ids, damage level...).
    """

    path: str
    label: int | None = None
    category: str | None = None
    mask_path: str | None = None
    polygons: dict[str, list[list[list[list[float]]]]] | None = None
    boxes: list[tuple[str, float, float, float, float]] | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A stable identifier (the path) used to resume runs and deduplicate results."""
        return self.path


@dataclass
class Detections:
    """Boxes a detector found in one image (or one slice of it), in that image's pixel coordinates.

    Attributes:
        boxes: Nx4 float32 ``(x1, y1, x2, y2)`` pixel-edge coordinates.
        scores: N float32 confidences in [0, 1].
        labels: N int64 class indices into the detector's classes.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(len(self.scores))

    def shifted(self, dx: float, dy: float) -> "Detections":
        """These boxes moved by ``(dx, dy)``: slice coordinates to image coordinates."""
        offset = np.asarray([dx, dy, dx, dy], dtype=np.float32)
        return Detections(self.boxes + offset, self.scores.copy(), self.labels.copy())

    def scaled(self, sx: float, sy: float) -> "Detections":
        """These boxes in an image ``sx`` times wider and ``sy`` times taller."""
        factor = np.asarray([sx, sy, sx, sy], dtype=np.float32)
        return Detections(self.boxes * factor, self.scores.copy(), self.labels.copy())

    @staticmethod
    def concatenate(parts: "list[Detections]") -> "Detections":
        if not parts:
            return Detections.empty()
        return Detections(
            np.concatenate([p.boxes for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.scores for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.labels for p in parts]).astype(np.int64, copy=False),
        )


@dataclass
class Instance:
    """One predicted defect: a connected region or a box.

    ``confident`` is False for a box a detector reports for the metrics (mAP rewards every box it
    ranks) but scores below the threshold its stage calibrated on validation for reviewers: such
    boxes stay in ``predictions.jsonl`` and the evaluation, and are left out of overlays and the
    review app.
    """

    class_name: str
    score: float
    box: tuple[float, float, float, float]
    area: float
    polygon: list[list[float]] = field(default_factory=list)
    confident: bool = True

    def scaled(self, sx: float, sy: float) -> "Instance":
        """This instance in coordinates ``sx`` times wider and ``sy`` times taller (e.g. back to the
        original image from a reduced working copy).

        Boxes are pixel-edge coordinates and scale directly; polygon vertices are pixel centres
        (``x`` is the centre of pixel column ``x``), so they map as ``(x + 0.5) * s - 0.5``.
        """
        if sx == 1.0 and sy == 1.0:
            return self
        x1, y1, x2, y2 = self.box
        return Instance(
            self.class_name,
            self.score,
            (x1 * sx, y1 * sy, x2 * sx, y2 * sy),
            self.area * sx * sy,
            [[(x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5] for x, y in self.polygon],
            self.confident,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "score": round(float(self.score), 5),
            "box": [round(float(v), 1) for v in self.box],
            "area": round(float(self.area), 1),
            "polygon": [[round(float(x), 1), round(float(y), 1)] for x, y in self.polygon],
            "confident": bool(self.confident),
        }


MIN_BOX_SIDE = 1.0
"""Boxes narrower or lower than this many pixels are not reported: they cover no whole pixel, and
scaling, clipping to the image or merging can leave such slivers of a real box."""


def detections_to_instances(
    detections: Detections,
    classes: list[str],
    min_score: float = 0.0,
    confident_scores: Mapping[str, float] | None = None,
) -> list[Instance]:
    """A detector's boxes as the instances a sample reports (box only, no polygon).

    Every detector path (whole image or sliced) converts here, so instances look the same whoever
    produced them.

    Args:
        detections: Boxes in the sample image's coordinates.
        classes: The detector's class names; ``labels`` index into them.
        min_score: Keep boxes scoring at least this.
        confident_scores: Per class, the score from which a box is ``confident`` (shown to
            reviewers); classes not in it, or None, mark every kept box confident.

    Returns:
        Instances by decreasing score, ``area`` the box's area; boxes with a side under
        :data:`MIN_BOX_SIDE` pixels are left out.

    Raises:
        ValueError: A label that is not an index into ``classes``.

    Example:
        >>> found = Detections(np.array([[2, 3, 12, 8]], np.float32), np.array([0.8], np.float32), np.array([1]))
        >>> detections_to_instances(found, ["scratch", "dent"])[0].area
        50.0
    """
    labels = np.asarray(detections.labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"detection labels {sorted(set(labels.tolist()))} do not all index the classes {classes}")
    confident_from = dict(confident_scores or {})
    instances = []
    for index in np.argsort(-np.asarray(detections.scores, dtype=np.float64), kind="stable"):
        score = float(detections.scores[index])
        if score < min_score:
            continue
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[index])
        if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
            continue
        area = (x2 - x1) * (y2 - y1)
        name = classes[int(labels[index])]
        instances.append(Instance(name, score, (x1, y1, x2, y2), area, [], score >= confident_from.get(name, 0.0)))
    return instances


@dataclass
class Enhancement:
    """What an enhancement stage (:mod:`defectkit.stages.enhance`) did to a sample's image.

    Attributes:
        enhanced: Whether the image was changed (the stage's rule may leave bright photos alone).
        luma_before: Mean luma (0-255) of the image the stage received.
        luma_after: Mean luma of the image it passed on.
        stage: Name of the stage that enhanced it (None when it left the image alone).
    """

    enhanced: bool
    luma_before: float
    luma_after: float
    stage: str | None = None


@dataclass
class Roi:
    """The region a :class:`~defectkit.stages.roi_crop.RoiCrop` stage ran its inner stage on.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in ``sample.image`` pixels.
        source: Where it came from: ``"record"`` (the record's meta), ``"localizer"`` or ``"whole image"``.
    """

    box: tuple[int, int, int, int]
    source: str


@dataclass
class Sample:
    """A decoded image and what the pipeline's stages have found in it.

    Attributes:
        record: Where the image came from and its ground truth, if any.
        image: HxWx3 uint8 RGB, as decoded (None once released or when decoding failed).
        error: Why this input could not be processed; set instead of raising so a batch goes on.
        finished: Set by a gate: later stages skip this sample.
        gate_label: The gate's image-level decision (e.g. ``"normal"``, ``"defect"``).
        gate_score: The gate's score for the positive (defect) decision; higher is more defective.
        prob_maps: CxHxW float32 per-class probability or anomaly maps in [0, 1], image resolution.
        masks: CxHxW bool masks after the mask policy.
        map_classes: Class name of each channel of ``prob_maps``/``masks``.
        instances: Defects found, with polygons and boxes in image coordinates.
        timings: Seconds each stage spent on this sample (batch time split evenly).
        enhancement: What an enhancement stage did to ``image`` (None: no enhancement stage ran).
        anomaly_score: An anomaly gate's raw anomaly score, before it is combined into ``gate_score``.
        gate_probabilities: A classifier gate's probability of each image class.
        roi: The region a RoiCrop stage ran its inner stage on.
        extras: Free-form notes of plugin stages (JSON-able); defectkit's own stages write the typed
            fields above instead and never read this.
        scale: Size of ``image`` over the size of the file along the long side: 1.0 when decoded at
            full size, less when a large photo was decoded at reduced working size. Stages work in
            ``image`` coordinates; :meth:`to_prediction` maps back to the original.
        original_size: ``(height, width)`` of the full-resolution upright image (None: same as ``image``).
    """

    record: Record
    image: np.ndarray | None = None
    error: str | None = None
    finished: bool = False
    gate_label: str | None = None
    gate_score: float | None = None
    prob_maps: np.ndarray | None = None
    masks: np.ndarray | None = None
    map_classes: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    enhancement: Enhancement | None = None
    anomaly_score: float | None = None
    gate_probabilities: dict[str, float] | None = None
    roi: Roi | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    original_size: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def active(self) -> bool:
        """Whether later stages should still process this sample."""
        return self.error is None and not self.finished

    def original_factors(self) -> tuple[float, float]:
        """``(sx, sy)`` that map ``image`` coordinates to original image coordinates."""
        if self.original_size is not None and self.image is not None:
            height, width = self.image.shape[:2]
            return self.original_size[1] / max(width, 1), self.original_size[0] / max(height, 1)
        factor = 1.0 / self.scale if self.scale > 0 else 1.0
        return factor, factor

    def to_prediction(self) -> dict[str, Any]:
        """The sample as one ``predictions.jsonl`` line, in original image coordinates.

        ``height``/``width`` are the original (upright) size; when the image was decoded at reduced
        size, polygons, boxes and areas are mapped back and ``scale`` says by how much it was reduced.
        """
        line: dict[str, Any] = {"path": self.record.path, "status": "ok" if self.ok else "error"}
        if self.error is not None:
            line["error"] = self.error
            return line
        if self.original_size is not None:
            line["height"], line["width"] = int(self.original_size[0]), int(self.original_size[1])
        elif self.image is not None:
            line["height"], line["width"] = int(self.image.shape[0]), int(self.image.shape[1])
        sx, sy = self.original_factors()
        if sx != 1.0 or sy != 1.0:
            line["scale"] = round(float(self.scale), 6)
        line["gate"] = {
            "label": self.gate_label,
            "score": None if self.gate_score is None else round(float(self.gate_score), 6),
        }
        line["instances"] = [inst.scaled(sx, sy).to_dict() for inst in self.instances]
        line["timings_ms"] = {k: round(v * 1000, 2) for k, v in self.timings.items()}
        return line
