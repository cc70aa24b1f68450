"""Per-class rules that turn probability maps into masks, then into polygon instances."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch

from defectkit.data.masks import ground_truth_masks, has_annotations
from defectkit.errors import ConfigError
from defectkit.polygons import mask_to_polygons
from defectkit.registry import STAGES
from defectkit.sample import Instance, Record, Sample
from defectkit.stages.base import FitContext, Stage, TrainableStage


@dataclass(frozen=True)
class MaskRule:
    """How one class's probability map becomes a mask.

    Attributes:
        threshold: Probability above which a pixel is the class (after CRF, if used).
        crf: Refine with a dense CRF (fine boundaries such as scratches); needs ``defectkit[crf]``.
        crf_iterations: Mean-field iterations of the CRF.
        crf_floor: The CRF runs only around pixels above this probability (plus ``crf_margin``);
            elsewhere the map is left as is, so sparse damage costs little.
        crf_margin: Pixels of context kept around those pixels.
        crf_max_side: The CRF works on the region downscaled to at most this many pixels a side
            (its cost grows with the pixel count); 0 keeps full resolution.
        open_px: Morphological opening kernel (removes specks); 0 disables it.
        close_px: Morphological closing kernel (fills pinholes, joins fragments); 0 disables it.
        min_area: Connected regions with fewer pixels are dropped.
        polygon_epsilon: Douglas-Peucker tolerance for outlines, in pixels.
    """

    threshold: float = 0.5
    crf: bool = False
    crf_iterations: int = 5
    crf_floor: float = 0.1
    crf_margin: int = 32
    crf_max_side: int = 384
    open_px: int = 0
    close_px: int = 0
    min_area: int = 0
    polygon_epsilon: float = 1.0


@STAGES.register_module()
class MaskPolicy(Stage):
    """Apply a :class:`MaskRule` per class to ``sample.prob_maps``; set ``masks`` and polygon ``instances``.

    Args:
        rules: ``{class_name: dict(threshold=..., crf=..., open_px=..., close_px=..., min_area=...)}``;
            the key ``"default"`` applies to classes without their own rule.
        name: Stage name in the pipeline.

    Example:
        >>> policy = MaskPolicy(rules=dict(scratch=dict(crf=True), dent=dict(threshold=0.6, min_area=200)))
        >>> samples = policy.predict(samples)  # doctest: +SKIP
    """

    def __init__(self, rules: dict[str, dict[str, Any]] | None = None, name: str | None = None) -> None:
        super().__init__(name or "mask_policy")
        self.rules: dict[str, MaskRule] = {}
        for class_name, rule in (rules or {}).items():
            try:
                self.rules[class_name] = MaskRule(**rule)
            except TypeError as exc:
                valid = ", ".join(MaskRule.__dataclass_fields__)
                raise ConfigError(f"mask rule for {class_name!r}: {exc}; valid options: {valid}") from exc
        if any(rule.crf for rule in self.rules.values()):
            _require_crf()
        self.default_rule = self.rules.get("default", MaskRule())

    def rule_for(self, class_name: str) -> MaskRule:
        return self.rules.get(class_name, self.default_rule)

    def predict(self, samples: list[Sample]) -> list[Sample]:
        for sample in samples:
            if sample.prob_maps is None:
                continue
            masks = np.zeros(sample.prob_maps.shape, dtype=bool)
            instances: list[Instance] = []
            for channel, class_name in enumerate(sample.map_classes):
                prob = sample.prob_maps[channel]
                rule = self.rule_for(class_name)
                mask, components = _mask_and_components(prob, rule, sample.image)
                masks[channel] = mask
                instances.extend(_instances(components, prob, class_name, rule))
            sample.masks = masks
            sample.instances = [i for i in sample.instances if i.polygon == []] + instances
        return samples

    def describe(self) -> dict[str, Any]:
        return {"type": "MaskPolicy", "name": self.name, "rules": {k: vars(v) for k, v in self.rules.items()}}


DEFAULT_THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""Thresholds :class:`CalibratedMaskPolicy` tries: 0.05 to 0.95 in steps of 0.05."""

DEFAULT_MIN_AREA_GRID: tuple[int, ...] = (0, 64, 256, 1024, 4096)
"""Minimum region areas (pixels) :class:`CalibratedMaskPolicy` tries besides each rule's own."""


@STAGES.register_module()
class CalibratedMaskPolicy(MaskPolicy, TrainableStage):
    """A :class:`MaskPolicy` whose per-class thresholds and minimum areas are chosen on the validation images.

    A segmenter trained briefly (as on a CPU) is often under-confident: its maps separate damage
    from paint, but rarely cross 0.5 for rare classes. Fitting runs the stages before this one on
    the annotated validation records and, for every class with ground truth there, keeps the
    pair of ``grid`` threshold and ``min_area_grid`` minimum region area whose masks (the class's
    whole rule: CRF, morphology, then the area filter) reach the highest data-set IoU, the metric
    :class:`~defectkit.evaluation.segmentation.SegmentationIoU` reports. Dropping small regions
    also removes the specks that would each become an outline for a reviewer; among areas within
    ``area_tolerance`` of the best IoU the largest is kept, so outlines are not multiplied for a
    negligible gain. Classes without validation pixels keep their configured rule. The choices are
    saved with the stage.

    Args:
        rules: As for :class:`MaskPolicy`; each rule's ``threshold`` and ``min_area`` are the fallback.
        grid: Thresholds to try.
        min_area_grid: Minimum region areas (pixels at the photo's decoded resolution) to try, besides
            the rule's own ``min_area``; empty: keep the rule's.
        area_tolerance: IoU a larger minimum area may cost and still be preferred.
        name: Stage name (file stem of its saved state).

    Example:
        >>> policy = build(STAGES, dict(type="CalibratedMaskPolicy", rules=dict(dent=dict(close_px=7))))  # doctest: +SKIP
        >>> policy.fit(train_records, val_records, context)["thresholds"]                                 # doctest: +SKIP
        {'scratch': 0.35, 'dent': 0.3}
    """

    def __init__(
        self,
        rules: dict[str, dict[str, Any]] | None = None,
        grid: Sequence[float] = DEFAULT_THRESHOLD_GRID,
        min_area_grid: Sequence[int] = DEFAULT_MIN_AREA_GRID,
        area_tolerance: float = 0.005,
        name: str | None = None,
    ) -> None:
        super().__init__(rules, name)
        self.grid = tuple(float(t) for t in grid)
        if not self.grid or not all(0.0 < t < 1.0 for t in self.grid):
            raise ConfigError(f"CalibratedMaskPolicy grid must be thresholds in (0, 1), got {list(grid)!r}")
        self.min_area_grid = tuple(int(a) for a in min_area_grid)
        if any(a < 0 for a in self.min_area_grid):
            raise ConfigError(f"CalibratedMaskPolicy min_area_grid must be areas >= 0, got {list(min_area_grid)!r}")
        self.area_tolerance = float(area_tolerance)
        self.thresholds: dict[str, float] = {}
        self.min_areas: dict[str, int] = {}
        self.summary: dict[str, Any] = {}

    def rule_for(self, class_name: str) -> MaskRule:
        rule = super().rule_for(class_name)
        if class_name in self.thresholds:
            rule = replace(rule, threshold=self.thresholds[class_name])
        if class_name in self.min_areas:
            rule = replace(rule, min_area=self.min_areas[class_name])
        return rule

    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Choose each class's threshold and minimum area on the annotated ``val`` records (data-set IoU).

        Returns:
            ``thresholds`` and ``min_areas`` per calibrated class, the validation IoU each reached,
            and the image count.
        """
        annotated = [r for r in val if has_annotations(r)]
        intersection: dict[str, np.ndarray] = {}
        union: dict[str, np.ndarray] = {}
        areas: dict[str, tuple[int, ...]] = {}
        images = 0
        for sample in context.decoded_samples(annotated, f"{self.name}: calibrate", chunk_size=16):
            if sample.prob_maps is None:
                continue
            images += 1
            truth, _ = ground_truth_masks(sample.record, sample.prob_maps.shape[-2:], sample.map_classes, scale=sample.scale)
            for channel, class_name in enumerate(sample.map_classes):
                rule = super().rule_for(class_name)
                class_areas = areas.setdefault(class_name, tuple(sorted({rule.min_area, *self.min_area_grid})))
                prob = sample.prob_maps[channel]
                if rule.crf:
                    prob = refine_with_crf(sample.image, prob, rule)  # independent of the threshold: once
                    rule = replace(rule, crf=False)
                inter = intersection.setdefault(class_name, np.zeros((len(self.grid), len(class_areas))))
                uni = union.setdefault(class_name, np.zeros((len(self.grid), len(class_areas))))
                gt = truth[channel]
                gt_pixels = int(np.count_nonzero(gt))
                for k, threshold in enumerate(self.grid):
                    mask = apply_rule(prob, replace(rule, threshold=threshold, min_area=0))
                    # One labelling per threshold; each area filter then removes whole regions.
                    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
                    region_area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
                    region_hits = np.bincount(labels[gt], minlength=count).astype(np.int64)
                    region_area[0], region_hits[0] = 0, 0  # background
                    for j, min_area in enumerate(class_areas):
                        kept = region_area >= max(min_area, 1)
                        hits = int(region_hits[kept].sum())
                        inter[k, j] += hits
                        uni[k, j] += int(region_area[kept].sum()) + gt_pixels - hits
        self.thresholds, self.min_areas, reached = {}, {}, {}
        for class_name, inter in intersection.items():
            if not union[class_name].any() or not inter.any():
                continue  # no validation pixels of the class, or no threshold finds any: keep the rule's
            iou = inter / np.maximum(union[class_name], 1)
            best_k, _ = np.unravel_index(int(np.argmax(iou)), iou.shape)
            # Per area, the best threshold; then the largest area within the tolerance of the best IoU.
            best_per_area = iou.max(axis=0)
            j = max(j for j in range(len(best_per_area)) if best_per_area[j] >= best_per_area.max() - self.area_tolerance)
            k = int(np.argmax(iou[:, j]))
            self.thresholds[class_name] = self.grid[k]
            self.min_areas[class_name] = int(areas[class_name][j])
            reached[class_name] = round(float(iou[k, j]), 4)
        if not self.thresholds:
            context.log(f"{self.name}: no validation image with ground truth and maps; the rules' thresholds stay")
        else:
            context.log(
                f"{self.name}: thresholds {self.thresholds}, minimum areas {self.min_areas} "
                f"(validation IoU {reached}, {images} images)"
            )
        self.fitted = True
        self.summary = {"thresholds": dict(self.thresholds), "min_areas": dict(self.min_areas), "val_iou": reached,
                        "val_images": images}
        return self.summary

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """No tensors; the calibrated thresholds and fit summary as JSON."""
        return {}, {"thresholds": dict(self.thresholds), "min_areas": dict(self.min_areas), "summary": self.summary}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.thresholds = {str(k): float(v) for k, v in extra.get("thresholds", {}).items()}
        self.min_areas = {str(k): int(v) for k, v in extra.get("min_areas", {}).items()}
        self.summary = dict(extra.get("summary", {}))
        self.fitted = True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "type": "CalibratedMaskPolicy", "thresholds": dict(self.thresholds),
                "min_areas": dict(self.min_areas)}


def apply_rule(prob: np.ndarray, rule: MaskRule, image: np.ndarray | None = None) -> np.ndarray:
    """Turn one HxW probability map into an HxW bool mask with ``rule``."""
    return _mask_and_components(prob, rule, image)[0]


_Components = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Connected components of a mask: the label image, the stats rows and which labels the mask keeps."""


def _mask_and_components(prob: np.ndarray, rule: MaskRule, image: np.ndarray | None) -> tuple[np.ndarray, _Components | None]:
    """The bool mask of ``rule`` and its 8-connected components (None when the mask is empty).

    One labelling serves both the small-region filter and the instances: dropping whole components
    leaves the others' labels as a fresh labelling would give them. (Labelling each class twice took
    two thirds of the policy's time on 800x600 car photos.)
    """
    if rule.crf and image is not None:
        prob = refine_with_crf(image, prob, rule)
    mask = (prob > rule.threshold).astype(np.uint8)
    if rule.open_px > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(rule.open_px))
    if rule.close_px > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(rule.close_px))
    if not cv2.countNonZero(mask):
        return mask.astype(bool), None
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= max(1, rule.min_area)
    keep[0] = False  # the background
    if not keep[1:].all():
        mask = keep[labels]  # a lookup per pixel: the kept components' pixels
    return mask.astype(bool), (labels, stats, keep)


def _instances(components: _Components | None, prob: np.ndarray, class_name: str, rule: MaskRule) -> list[Instance]:
    if components is None:
        return []
    labels, stats, keep = components
    instances = []
    for label in np.flatnonzero(keep):
        x, y, w, h, area = (int(v) for v in stats[label])
        component = labels[y : y + h, x : x + w] == label
        polygons = mask_to_polygons(component, epsilon=rule.polygon_epsilon)
        if not polygons:
            continue
        outline = (np.asarray(polygons[0], dtype=float) + (x, y)).tolist()
        score = float(prob[y : y + h, x : x + w][component].mean())
        instances.append(Instance(class_name, score, (float(x), float(y), float(x + w), float(y + h)), float(area), outline))
    return instances


def _kernel(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _require_crf() -> None:
    try:
        import pydensecrf.densecrf  # noqa: F401  (the module the pydensecrf2 distribution installs)
    except ImportError as exc:
        raise ConfigError("a mask rule uses crf=True, which needs pydensecrf2: pip install 'defectkit[crf]'") from exc


def refine_with_crf(image: np.ndarray, prob: np.ndarray, rule: MaskRule) -> np.ndarray:
    """Dense CRF on the box around pixels above ``rule.crf_floor``, at most ``rule.crf_max_side`` a side.

    Pixels outside that box keep their probability (below the floor, so below any sensible
    threshold); a map with nothing above the floor is returned unchanged.
    """
    ys, xs = np.nonzero(prob > rule.crf_floor)
    if len(ys) == 0:
        return prob
    height, width = prob.shape
    y0, y1 = max(0, int(ys.min()) - rule.crf_margin), min(height, int(ys.max()) + 1 + rule.crf_margin)
    x0, x1 = max(0, int(xs.min()) - rule.crf_margin), min(width, int(xs.max()) + 1 + rule.crf_margin)
    region_image, region_prob = image[y0:y1, x0:x1], prob[y0:y1, x0:x1]
    region_h, region_w = region_prob.shape
    scale = min(1.0, rule.crf_max_side / max(region_h, region_w)) if rule.crf_max_side > 0 else 1.0
    if scale < 1.0:
        size = (max(1, round(region_w * scale)), max(1, round(region_h * scale)))
        region_image = cv2.resize(region_image, size, interpolation=cv2.INTER_AREA)
        region_prob = cv2.resize(region_prob.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    refined = dense_crf(region_image, region_prob, rule.crf_iterations)
    if scale < 1.0:
        refined = cv2.resize(refined, (region_w, region_h), interpolation=cv2.INTER_LINEAR)
    out = prob.astype(np.float32, copy=True)
    out[y0:y1, x0:x1] = refined
    return out


def dense_crf(image: np.ndarray, prob: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Refine a foreground probability map with a fully connected CRF on the image's colours."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = prob.shape
    fg = np.clip(prob.astype(np.float32), 1e-5, 1 - 1e-5)
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1 - fg, fg]))))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    # pydensecrf's Cython signature needs a writable buffer; decoded images may be read-only views.
    rgb = np.require(image, dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    crf.addPairwiseBilateral(sxy=50, srgb=13, rgbim=rgb, compat=5)
    q = np.asarray(crf.inference(iterations), dtype=np.float32).reshape(2, height, width)
    return q[1]
