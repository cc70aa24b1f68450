"""Tiling stage: sliced inference (as in SAHI) around a detector or segmenter, for small defects on
large images.

Each image is cut into overlapping windows (:func:`defectkit.tiling.slice_windows`); the windows of
every image in the batch are sent through the wrapped ("inner") stage together, ``batch_size`` at a
time, and the results are put back together in image coordinates.

Inner-stage abilities, declared by subclassing the classes of :mod:`defectkit.stages.base`
(any object that declares one works, registered or not):

* Detector (:class:`~defectkit.stages.base.Detects`): ``detect(images: list[np.ndarray]) -> list[Detections]`` (one
  :class:`~defectkit.sample.Detections` per HxWx3 uint8 image, in that image's own coordinates)
  and ``classes: list[str]`` (what ``labels`` index). The windows' boxes are shifted back,
  optionally joined by a whole-image pass (``full_image``), merged
  (:func:`defectkit.tiling.merge_detections`) and stored as ``sample.instances``.
* Segmenter (:class:`~defectkit.stages.base.Segments`): ``probability_maps(images: list[np.ndarray]) -> list[np.ndarray]`` (CxHxW float32 per
  image, at the image's resolution) and ``classes``. The windows' maps are blended without seams
  (:func:`defectkit.tiling.stitch_maps`) into ``sample.prob_maps`` / ``sample.map_classes``.
* Whole or sliced, chosen on validation (detectors, ``choose_on_val``): after the inner detector is
  fitted, the annotated validation images are detected both ways (windows merged with the
  whole-image pass, and the whole image alone) and scored by mAP50
  (:class:`~defectkit.evaluation.detection.DetectionMAP`, as the run's own evaluation scores
  them). Slicing is kept only when it scores higher; otherwise the stage predicts on whole images.
  The choice and both scores are saved with the stage, restored on load and shown in its
  description (the report); a log line says which was chosen and why. Slicing pays off only when
  the detector learned the scale the windows show (sliced or multi-scale training), so this keeps
  a detector trained on whole photos from being made worse by its windows. Each mode's best-F1
  score per class on validation is saved with the choice too; the running mode's
  (``confident_scores``) is the review threshold: boxes under it stay in the predictions and the
  metrics (``min_score`` keeps them, as mAP rewards every ranked box) but are marked
  ``confident=False`` and left out of overlays and the review app.
* Training and state, when the inner stage has them: ``fit(train, val, context)``,
  ``state_tensors()``, ``load_state_tensors(tensors, extra)``, ``fitted``, ``describe()``. Fitting
  is delegated as is; an inner stage that trains on slices itself (:class:`~defectkit.stages.base.TrainsOnSlices`) defines
  ``configure_slicing(slice_size, overlap)``, called before ``fit`` with this stage's
  ``(height, width)`` slice size and overlap ratios so training uses the windows prediction uses
  (:func:`defectkit.tiling.slice_training_items`).

* Anomaly gate (:class:`~defectkit.stages.base.TilesItself`): ``configure_tiling(slice_size, overlap)`` and ``predict(samples)``. A gate's
  threshold is calibrated on the scores it computes, so the windows cannot be cut outside it: this
  stage hands the gate its slicing before ``fit`` and the gate scores every window of an image
  itself (memory bank of normal windows, image score = highest window score, window maps blended
  without seams; :class:`~defectkit.stages.anomaly_gate.AnomalyGate` ``tiles``). The saved gate
  keeps the tiling it was calibrated with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from defectkit.errors import ConfigError, StateError
from defectkit.evaluation.detection import DetectionF1, DetectionMAP
from defectkit.evaluation.records import box_summary
from defectkit.registry import STAGES
from defectkit.sample import Detections, Record, Sample, detections_to_instances
from defectkit.stages.base import Detects, FitContext, Segments, TilesItself, TrainsOnSlices
from defectkit.stages.wrapping import WrappingStage
from defectkit.tiling import (
    BLEND_PROFILES,
    Window,
    check_merge_options,
    image_windows,
    merge_detections,
    overlap_pair,
    slice_size_pair,
    stitch_maps,
    window_batches,
)

DEFAULT_MERGE: dict[str, Any] = dict(method="GREEDYNMM", match_metric="IOS", threshold=0.5, class_agnostic=False)
"""Greedy merging on intersection over the smaller box: joins a defect cut at a window border with
its other half and with the whole-image box, without chaining neighbouring defects together."""

MODES = ("sliced", "whole")
"""How a detector-wrapping Tiling stage predicts: on windows (merged with a whole-image pass when
``full_image``) or on whole images only."""


def _inner_kind(inner: Any) -> str:
    """``"detector"``, ``"segmenter"`` or ``"gate"`` by the ability ``inner`` declares (stages.base)."""
    if isinstance(inner, Detects):
        return "detector"
    if isinstance(inner, Segments):
        return "segmenter"
    if isinstance(inner, TilesItself):
        return "gate"
    raise ConfigError(
        f"Tiling inner stage {type(inner).__name__} is neither a detector (detect(images) -> list[Detections]), "
        f"a segmenter (probability_maps(images) -> list of CxHxW maps) nor a gate that tiles itself "
        f"(configure_tiling(slice_size, overlap))"
    )


@STAGES.register_module()
class Tiling(WrappingStage, Detects, Segments):
    """Run a detector, segmenter or anomaly gate on overlapping windows of each image and reassemble the results.

    Fitting, saved state and ``fitted`` are the inner stage's (:class:`WrappingStage`).

    Args:
        inner: The wrapped stage as a config dict (``dict(type="Segmenter", ...)``, built from
            STAGES), or an already-built object following the inner-stage protocol (module
            docstring), e.g. a stage built in Python or a test double.
        slice_size: Window size: one number or ``(height, width)`` in pixels of the stage's input
            image. Images smaller than a window along an axis get one window spanning that axis.
        overlap: Overlap of neighbouring windows as a share of the window size: one ratio or
            ``(height_ratio, width_ratio)``, each in [0, 1).
        merge: How duplicate boxes of overlapping windows are merged (detectors only):
            ``dict(method="GREEDYNMM"|"NMM"|"NMS", match_metric="IOS"|"IOU", threshold=0.5,
            class_agnostic=False)``; unset keys take these defaults.
        full_image: Also run the detector on the whole image and merge its boxes in (large defects
            no window holds whole). Default: True for detectors; segmenters do not take it.
        batch_size: Windows per call of the inner stage; windows of all images of the batch are
            pooled, so one call may mix images.
        min_score: Drop boxes scoring below this before merging them (detectors), so low-scoring
            boxes never widen a merged one. Default: the inner detector's ``min_score`` if it has
            one, else 0.
        blend: Taper of the window maps' blending weights, ``"linear"`` or ``"cosine"`` (segmenters).
        enabled: False runs the inner stage on whole images, as if it were not wrapped (same saved
            state), e.g. to measure what slicing adds: ``--cfg-options pipeline.0.enabled=False``.
        choose_on_val: Detectors: after fitting, score sliced and whole-image detection on the
            annotated validation images (mAP50) and keep slicing only if it scores higher (module
            docstring); the choice is saved with the stage. Default: True for detectors (when
            ``enabled``); False always slices as configured. Segmenters and gates do not take it.
        name: Stage name (file stem of its saved state).

    Example:
        >>> tiling = build(STAGES, dict(type="Tiling", slice_size=(256, 256), overlap=0.25,
        ...                             inner=dict(type="Segmenter", image_size=(256, 256))))  # doctest: +SKIP
        >>> tiling.fit(train_records, val_records, context)                                    # doctest: +SKIP
        >>> tiling.predict(samples)[0].prob_maps.shape                                          # doctest: +SKIP
        (2, 2048, 3072)
    """

    settings_key = "tiling"
    handles_enabled = True  # switched off, it runs the inner stage on whole images

    def __init__(
        self,
        inner: dict[str, Any] | Any = None,
        slice_size: int | Sequence[int] = (512, 512),
        overlap: float | Sequence[float] = 0.2,
        merge: dict[str, Any] | None = None,
        full_image: bool | None = None,
        batch_size: int = 8,
        min_score: float | None = None,
        blend: str = "linear",
        enabled: bool = True,
        choose_on_val: bool | None = None,
        name: str | None = None,
    ) -> None:
        self.slice_size = slice_size_pair(slice_size)
        self.overlap = overlap_pair(overlap)
        self.merge = self._merge_options(merge)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"Tiling batch_size must be a whole number >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        if min_score is not None and not 0.0 <= float(min_score) <= 1.0:
            raise ConfigError(f"Tiling min_score must be in [0, 1] (or None: the inner detector's), got {min_score!r}")
        self.min_score = None if min_score is None else float(min_score)
        if blend not in BLEND_PROFILES:
            raise ConfigError(f"Tiling blend must be one of {', '.join(BLEND_PROFILES)}, got {blend!r}")
        self.blend = blend
        self.enabled = bool(enabled)
        super().__init__(inner, name or "tiling")
        self.kind = _inner_kind(self.inner)
        if self.kind != "detector" and full_image:
            raise ConfigError(f"Tiling full_image applies to detectors only; a {self.kind}'s window maps are blended on their own")
        self.full_image = self.kind == "detector" if full_image is None else bool(full_image)
        if self.kind != "detector" and choose_on_val:
            raise ConfigError(f"Tiling choose_on_val applies to detectors only (scored by mAP50), not to a {self.kind}")
        self.choose_on_val = self.kind == "detector" if choose_on_val is None else bool(choose_on_val)
        # The validation comparison (None until fitted or loaded with one): the mode kept and both scores.
        self.choice: dict[str, Any] | None = None

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _merge_options(merge: dict[str, Any] | None) -> dict[str, Any]:
        if merge is not None and not isinstance(merge, dict):
            raise ConfigError(f"Tiling merge must be a dict with keys {', '.join(DEFAULT_MERGE)}, got {merge!r}")
        unknown = sorted(set(merge or {}) - set(DEFAULT_MERGE))
        if unknown:
            raise ConfigError(
                f"Tiling merge got unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(DEFAULT_MERGE)}"
            )
        options = {**DEFAULT_MERGE, **(merge or {})}
        options["method"], options["match_metric"] = check_merge_options(
            options["method"], options["match_metric"], options["threshold"]
        )
        options["threshold"] = float(options["threshold"])
        options["class_agnostic"] = bool(options["class_agnostic"])
        return options

    @property
    def score_threshold(self) -> float:
        """The ``min_score`` in effect: this stage's, else the inner detector's, else 0."""
        if self.min_score is not None:
            return self.min_score
        return float(self.inner.min_score or 0.0) if isinstance(self.inner, Detects) else 0.0

    @property
    def mode(self) -> str:
        """``"sliced"`` or ``"whole"``: how :meth:`predict` runs now.

        Whole when the config switches slicing off (``enabled=False``) or when the validation
        comparison found whole images better (and ``choose_on_val`` is on); sliced otherwise.
        """
        if not self.enabled:
            return "whole"
        if self.choose_on_val and self.choice is not None:
            return str(self.choice["mode"])
        return "sliced"

    def windows(self, height: int, width: int, mode: str | None = None) -> list[Window]:
        """The windows of an image of ``height x width`` pixels (one, the whole image, in whole mode).

        Args:
            height: Image height.
            width: Image width.
            mode: ``"sliced"`` or ``"whole"``; default: :attr:`mode`.

        Example:
            >>> tiling.windows(100, 250)  # slice_size=100, overlap=0.2      # doctest: +SKIP
            [(0, 0, 100, 100), (80, 0, 180, 100), (150, 0, 250, 100)]
        """
        return image_windows(height, width, None if (mode or self.mode) == "whole" else self.slice_size, self.overlap)

    # ------------------------------------------------------------------ predict
    def _run_inner(self, method: str, images: list[np.ndarray]) -> list[Any]:
        # The inner stage's declared ability (Detects / Segments), called by name, not looked up.
        results = list(self.inner.detect(images) if method == "detect" else self.inner.probability_maps(images))
        if len(results) != len(images):
            raise RuntimeError(f"{self.name}: inner {method} returned {len(results)} results for {len(images)} images")
        return results

    def _window_results(
        self, images: Sequence[np.ndarray], method: str, mode: str | None = None,
    ) -> tuple[list[list[Window]], list[list[Any]]]:
        """Every image's windows and the inner stage's result for each, in batches over all images."""
        windows = [self.windows(*image.shape[:2], mode=mode) for image in images]
        results: list[list[Any]] = [[] for _ in images]
        for batch in window_batches(images, windows, self.batch_size):
            for (i, _, _), result in zip(batch, self._run_inner(method, [crop for _, _, crop in batch])):
                results[i].append(result)
        return windows, results

    def _confident(self, detections: Detections) -> Detections:
        keep = np.asarray(detections.scores) >= self.score_threshold
        return Detections(detections.boxes[keep], detections.scores[keep], detections.labels[keep])

    def _detect(self, images: Sequence[np.ndarray], mode: str | None = None) -> list[Detections]:
        windows, found = self._window_results(images, "detect", mode)
        parts = [
            [self._confident(detections).shifted(x1, y1) for (x1, y1, _, _), detections in zip(windows_of_image, image_found)]
            for windows_of_image, image_found in zip(windows, found)
        ]
        if self.full_image:
            # An image that fits one window was already seen whole.
            whole = [i for i, image in enumerate(images) if windows[i] != [(0, 0, image.shape[1], image.shape[0])]]
            for start in range(0, len(whole), self.batch_size):
                chunk = whole[start : start + self.batch_size]
                for i, detections in zip(chunk, self._run_inner("detect", [images[i] for i in chunk])):
                    parts[i].append(self._confident(detections))
        merged = []
        for image_parts in parts:
            joined = Detections.concatenate(image_parts)
            # A single pass has no duplicates to merge; leave the detector's own output alone.
            merged.append(joined if len(image_parts) == 1 else merge_detections(
                joined, self.merge["method"], self.merge["match_metric"], self.merge["threshold"],
                self.merge["class_agnostic"],
            ))
        return merged

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Sliced detection of HxWx3 uint8 images: merged boxes in each image's coordinates.

        Makes a detector-wrapping Tiling itself follow the detector protocol.
        """
        if self.kind != "detector":
            raise RuntimeError(f"{self.name}: detect needs a detector inside, this Tiling wraps a {self.kind}")
        return self._detect(images)

    def probability_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Sliced CxHxW float32 maps of HxWx3 uint8 images, window maps blended at each image's resolution."""
        if self.kind != "segmenter":
            raise RuntimeError(f"{self.name}: probability_maps needs a segmenter inside, this Tiling wraps a {self.kind}")
        windows, maps = self._window_results(images, "probability_maps")
        out = []
        for image, windows_of_image, image_maps in zip(images, windows, maps):
            height, width = image.shape[:2]
            out.append(stitch_maps([np.asarray(m) for m in image_maps], windows_of_image, height, width, profile=self.blend))
        return out

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Set ``instances`` (detector) or ``prob_maps`` and ``map_classes`` (segmenter) of active samples.

        A gate inside tiles itself (module docstring): its own ``predict`` runs.
        """
        if self.kind == "gate":
            return self.inner.predict(samples)  # it refuses to predict before fit or load itself
        active = self.active_samples(samples)
        if not active:
            return samples
        images = [s.image for s in active]
        if self.kind == "detector":
            self._set_instances(active, self._detect(images))
        else:
            for sample, maps in zip(active, self.probability_maps(images)):
                sample.prob_maps = maps
                sample.map_classes = self.classes
        return samples

    @property
    def confident_scores(self) -> dict[str, float]:
        """Per class, the score from which a box is shown to reviewers: the best-F1 threshold on
        validation of the mode that runs (:attr:`mode`; empty before the comparison: every box is shown)."""
        return dict(((self.choice or {}).get(self.mode) or {}).get("f1_thresholds") or {})

    def _set_instances(self, samples: Sequence[Sample], found: Sequence[Detections]) -> None:
        classes, confident_scores = self.classes, self.confident_scores
        for sample, detections in zip(samples, found):
            sample.instances = detections_to_instances(detections, classes, self.score_threshold, confident_scores)

    # ------------------------------------------------------------------ fit
    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Fit the inner stage, then (detectors, ``choose_on_val``) choose sliced or whole on ``val``.

        Returns:
            The inner stage's summary plus this stage's settings (with the choice) under ``"tiling"``.
        """
        self.choice = None
        summary = super().fit(train, val, context)
        if self.kind == "detector" and self.enabled and self.choose_on_val:
            self.choice = self.compare_on_val(val, context)
            summary[self.settings_key] = self.settings()
        return summary

    def compare_on_val(self, val: Sequence[Record], context: FitContext, chunk_size: int = 8) -> dict[str, Any] | None:
        """Score sliced and whole-image detection on the box-annotated ``val`` records; keep the better.

        Both modes are scored as the run's evaluation scores a prediction (boxes at
        :attr:`score_threshold`, :class:`DetectionMAP` mAP50 and :class:`DetectionF1` mean F1 in
        original image coordinates), on the same decoded images (earlier stages applied; images an
        earlier gate finished count with no boxes, as in a run). Slicing is kept only when its
        mAP50 is strictly higher: on a tie the single cheaper pass wins. Each mode's best-F1 score
        per class is kept for :attr:`confident_scores`.

        Returns:
            ``{"mode", "reason", "val_images", "sliced": {"map50", "mean_f1", "f1_thresholds"},
            "whole": {...}}``,
            or None (slicing kept as configured) when no validation image has box annotations.
        """
        annotated = [r for r in val if r.boxes is not None]
        if not annotated:
            context.log(f"{self.name}: no validation image has box annotations; sliced inference kept as configured, "
                        f"not checked against whole images")
            return None
        classes = self.classes
        metrics = {mode: (DetectionMAP(classes), DetectionF1(classes)) for mode in MODES}
        images = 0
        for chunk in context.decoded_chunks(annotated, f"{self.name}: sliced vs whole on val", chunk_size):
            images += len(chunk)
            active = [s for s in chunk if s.active]
            for mode in MODES:
                for sample in chunk:
                    sample.instances = []
                if active:
                    self._set_instances(active, self._detect([s.image for s in active], mode))
                for sample in chunk:
                    boxes = box_summary(sample)
                    if boxes is not None:
                        for metric in metrics[mode]:
                            metric.update({"key": sample.record.key, "boxes": boxes})
        scores = {}
        for mode, (map_metric, f1_metric) in metrics.items():
            values = {**map_metric.compute(), **f1_metric.compute()}
            scores[mode] = {
                "map50": float(values.get("map50", 0.0)),
                "mean_f1": float(values.get("mean_f1", 0.0)),
                "f1_thresholds": {c: float(values[f"f1_threshold.{c}"]) for c in classes if f"f1_threshold.{c}" in values},
            }
        sliced, whole = scores["sliced"]["map50"], scores["whole"]["map50"]
        mode = "sliced" if sliced > whole else "whole"
        if mode == "sliced":
            reason = f"sliced inference scores higher on validation (mAP50 {sliced:.3f} vs {whole:.3f} on whole images)"
        else:
            reason = (f"sliced inference does not beat whole images on validation (mAP50 {sliced:.3f} vs {whole:.3f}); "
                      f"falling back to whole-image detection")
        context.log(f"{self.name}: {mode} chosen on {images} validation images: {reason}")
        # mAP rewards every box a detector ranks, so min_score stays low; a reviewer is shown the boxes
        # from the score where F1 peaked on validation, about as many per photo as there are defects.
        confident_scores = scores[mode]["f1_thresholds"]
        if confident_scores:
            shown = ", ".join(f"{c} {v:.2f}" for c, v in confident_scores.items())
            context.log(f"{self.name}: boxes shown to reviewers from score {shown} (best F1 on validation)")
        return {"mode": mode, "reason": reason, "val_images": images, **scores}

    def load_state_tensors(self, tensors: dict[str, Any], extra: dict[str, Any]) -> None:
        """Restore the inner stage and the saved sliced-vs-whole choice (other settings come from the config)."""
        super().load_state_tensors(tensors, extra)
        choice = dict(extra.get(self.settings_key) or {}).get("choice")
        if choice is not None and choice.get("mode") not in MODES:
            raise StateError(f"{self.name}: saved choice {choice!r} is not one of {', '.join(MODES)}; retrain the stage")
        self.choice = None if choice is None else dict(choice)

    def prepare_inner_fit(self) -> None:
        """Give an inner stage that trains on slices (``configure_slicing``) this stage's windows."""
        if self.kind == "gate":
            self.inner.configure_tiling(self.slice_size if self.enabled else None, self.overlap)
            return
        if isinstance(self.inner, TrainsOnSlices) and self.enabled:
            self.inner.configure_slicing(self.slice_size, self.overlap)

    def settings(self) -> dict[str, Any]:
        """The slicing settings as JSON."""
        return {
            "slice_size": list(self.slice_size),
            "overlap": list(self.overlap),
            "merge": dict(self.merge),
            "full_image": self.full_image,
            "batch_size": self.batch_size,
            "min_score": self.score_threshold,
            "blend": self.blend,
            "enabled": self.enabled,
            "choose_on_val": self.choose_on_val,
            "choice": self.choice,
            "mode": self.mode,
        }

    def report_notes(self) -> list[str]:
        """One line for the report's summary: how this stage predicted and why (detectors)."""
        if self.kind != "detector":
            return []
        if not self.enabled:
            return [f"{self.name}: whole images (slicing switched off in the config)"]
        if self.choice is None or not self.choose_on_val:
            return [f"{self.name}: sliced inference as configured (not compared with whole images on validation)"]
        notes = [f"{self.name}: {self.choice['mode']} inference, chosen on {self.choice['val_images']} validation images: "
                 f"{self.choice['reason']}"]
        if self.confident_scores:
            shown = ", ".join(f"{c} from {v:.2f}" for c, v in self.confident_scores.items())
            notes.append(f"{self.name}: overlays and the review app show boxes scoring {shown} (best F1 on validation); "
                         f"predictions.jsonl and the metrics keep every box from {self.score_threshold:.2f}")
        return notes

    def describe(self) -> dict[str, Any]:
        """Type, name, kind (detector or segmenter), slicing settings and the inner stage's description."""
        return {**super().describe(), "kind": self.kind}


__all__ = ["DEFAULT_MERGE", "MODES", "Tiling"]
