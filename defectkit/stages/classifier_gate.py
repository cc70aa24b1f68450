"""Image-level gate: a supervised EfficientNet-Lite0 classifier that lets only suspicious images through.

Unlike :class:`~defectkit.stages.anomaly_gate.AnomalyGate` (fitted on normal images), this gate
learns every image class of the data set (e.g. ``normal`` / ``damaged`` / ``contaminated``) and
decides on ``P(any positive class)``. Its threshold is calibrated for *recall*: segmentation is
expensive, but a missed defect costs more than a wasted segmentation, so the gate keeps at least
``target_recall`` of the positive validation images and skips (finishes) the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from defectkit.data.split import stable_order
from defectkit.data.transforms import build_augmentation
from defectkit.heads.backbones import create_classifier
from defectkit.registry import STAGES
from defectkit.sample import Record, Sample
from defectkit.stages.base import Exportable, ExportSpec, FitContext
from defectkit.stages.network import NetworkStage
from defectkit.training import ImageTensorDataset

DEFAULT_GATE_AUGMENT: dict[str, Any] = dict(
    type="Albumentations",
    transforms=[
        dict(type="HorizontalFlip", p=0.5),
        dict(type="RandomBrightnessContrast", brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ],
)
"""Mild augmentation: the gate only needs image-level cues, and strong warps cost CPU time."""

_DISABLED_NOTE = "disabled: every image passes to the next stage"

CLASSIFIER_TYPE = "EfficientNetLite0"
"""The gate's network (its saved model description): timm's ``tf_efficientnet_lite0`` with a new head."""


def recall_threshold(scores: np.ndarray, positive: np.ndarray, target_recall: float) -> float:
    """Highest decision threshold (positive when ``score >= threshold``) with recall >= ``target_recall``.

    Any threshold between the k-th highest positive score (k = the fewest positives that reach the
    target) and the next lower score of *any* image makes the same decisions on these images; the
    midpoint is returned so that tiny numerical differences at prediction time cannot flip the
    k-th positive.

    Args:
        scores: Scores of all calibration images (higher = more likely positive).
        positive: Bool, which images are positive.
        target_recall: Wanted share of positives at or above the threshold, in (0, 1].

    Returns:
        The threshold; ``-inf`` when there is no positive (then everything passes).

    Example:
        >>> recall_threshold(np.array([0.1, 0.4, 0.6, 0.9]), np.array([False, True, False, True]), 1.0)
        0.25
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    pos = np.sort(scores[positive])[::-1]
    if pos.size == 0:
        return -math.inf
    k = min(pos.size, max(1, math.ceil(target_recall * pos.size - 1e-9)))
    kth = float(pos[k - 1])
    lower = scores[scores < kth]
    return (kth + float(lower.max())) / 2 if lower.size else kth - 1e-6


@STAGES.register_module()
class ClassifierGate(NetworkStage, Exportable):
    """Classify each image into the data set's image classes; skip the ones confidently normal.

    Fitting: an EfficientNet-Lite0 (offline ImageNet weights) with a new head for the config's
    ``image_classes`` is fine-tuned on the training images with the shared Lightning loop
    (:func:`defectkit.training.fit_head`; class-weighted cross entropy, AdamW, cosine schedule,
    weights of the best validation epoch). The decision score is ``P(any positive class)``; its
    threshold is the highest that keeps the recall of positive validation images at
    ``target_recall`` (training images when validation has no positive).

    Prediction: ``gate_score`` is ``P(positive)``; ``gate_label`` is the most probable positive
    class when ``gate_score >= threshold``, else the most probable other class (``"normal"``), and
    those images are ``finished``: later stages (segmentation) skip them.

    When the training data lacks either side (e.g. every image damaged), the gate cannot learn to
    skip anything: ``fit`` logs why and the gate passes every image through, as with ``enabled=False``.

    Args:
        image_size: ``(height, width)`` images are resized to (aspect ratio not kept).
        epochs: Training epochs.
        batch_size: Images per training step.
        predict_batch_size: Images per prediction batch; None: 2 on the CPU (fastest there,
            measured), ``batch_size`` on a GPU.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        ema_decay: Keep an exponential moving average of the weights (decay per training step, e.g.
            0.995); validation scores the average and the stage keeps it. None: no average.
        max_minutes: Wall-clock budget of the training epochs (validation included, data loading
            not): after each epoch the epoch count is cut to what fits at the pace so far and the
            schedule ends with it (:func:`~defectkit.training.fit_head`), so a slower machine trains
            fewer epochs. None: exactly ``epochs``.
        augment: Albumentations config dict (``build(TRANSFORMS, ...)``) or None for none; default:
            horizontal flips and mild brightness/contrast.
        target_recall: Share of positive validation images the threshold must keep.
        positive_classes: Image classes that need segmentation; default every class but index 0.
        max_images: Train on at most this many images (a deterministic class-stratified subset).
        freeze_backbone_epochs: Train only the new classifier layer for this many first epochs.
        class_weighting: Weight the loss by inverse class frequency (rare classes count as much).
        seed: Seeds the subset, shuffling, augmentation and initialisation.
        enabled: False passes every image through untouched (and ``fit`` trains nothing).
        chunk_size: Records decoded at once while loading (bounds memory: images are kept at
            ``image_size`` only).
        name: Stage name (file stem of its saved state).

    Example:
        >>> gate = build(STAGES, dict(type="ClassifierGate", image_size=(224, 224), epochs=5,
        ...                           target_recall=0.98))                    # doctest: +SKIP
        >>> summary = gate.fit(train_records, val_records, context)           # doctest: +SKIP
        >>> summary["val_recall"], summary["val_skip_share"]                  # doctest: +SKIP
        (0.98, 0.41)
    """

    handles_enabled = True  # switched off, it still fits (nothing) and records why, so its state says so
    model_types = (CLASSIFIER_TYPE,)
    size_multiple = 1  # the classifier pools globally: any input size works

    def __init__(
        self,
        image_size: Sequence[int] = (224, 224),
        epochs: int = 5,
        batch_size: int = 16,
        predict_batch_size: int | None = None,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        ema_decay: float | None = None,
        max_minutes: float | None = None,
        augment: dict[str, Any] | None = DEFAULT_GATE_AUGMENT,
        target_recall: float = 0.98,
        positive_classes: Sequence[str] | None = None,
        max_images: int | None = None,
        freeze_backbone_epochs: int = 0,
        class_weighting: bool = True,
        seed: int = 0,
        enabled: bool = True,
        chunk_size: int = 64,
        name: str | None = None,
    ) -> None:
        # The architecture is fixed (not an option): the saved model description names it, so
        # weights of another network are refused on load.
        super().__init__(
            name or "classifier_gate", dict(type=CLASSIFIER_TYPE), image_size, epochs, batch_size, lr, weight_decay,
            max_images, seed, True, chunk_size, predict_batch_size=predict_batch_size, ema_decay=ema_decay, max_minutes=max_minutes,
        )
        if not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        self.augment_cfg = None if augment is None else dict(augment)
        if self.augment_cfg is not None:
            build_augmentation(self.augment_cfg, int(seed))  # fail on a bad augmentation config now, not after loading data
        self.target_recall = float(target_recall)
        self.positive_names = None if positive_classes is None else [str(c) for c in positive_classes]
        self.freeze_backbone_epochs = int(freeze_backbone_epochs)
        self.class_weighting = bool(class_weighting)
        self.enabled = bool(enabled)
        self.positive: list[int] = []
        self.threshold = 0.5
        # False when fit found nothing to learn (one side missing): the gate then passes everything.
        self.active = False

    @property
    def image_classes(self) -> list[str]:
        """The data set's image classes, the classifier's outputs (the network's ``classes``)."""
        return self.classes

    @image_classes.setter
    def image_classes(self, value: list[str]) -> None:
        self.classes = value

    def build_network(self, pretrained: bool) -> torch.nn.Module:
        """EfficientNet-Lite0 with a new head for the image classes."""
        return create_classifier(len(self.classes), pretrained=pretrained)

    def network_expected(self) -> bool:
        """Only a gate that learned something (``active``) has a network; otherwise it passes everything."""
        return self.active

    def saved_settings(self) -> dict[str, Any]:
        """The positive class indices and whether the gate is on and trained."""
        return {"positive": self.positive, "enabled": self.enabled, "active": self.active}

    def restore_settings(self, extra: dict[str, Any]) -> None:
        self.positive = [int(i) for i in extra.get("positive", [])]
        self.active = bool(extra.get("active", False))

    # ------------------------------------------------------------------ helpers
    def _resolve_classes(self, image_classes: Sequence[str]) -> None:
        """Set ``image_classes`` and the positive class indices from the config's names."""
        self.image_classes = [str(c) for c in image_classes]
        if len(self.image_classes) < 2:
            raise ValueError(f"ClassifierGate needs at least two image classes, got {self.image_classes}")
        if self.positive_names is None:
            self.positive = list(range(1, len(self.image_classes)))
        else:
            unknown = [c for c in self.positive_names if c not in self.image_classes]
            if unknown:
                raise ValueError(f"positive_classes {unknown} are not image classes {self.image_classes}")
            self.positive = sorted(self.image_classes.index(c) for c in self.positive_names)
        if not self.positive or len(self.positive) == len(self.image_classes):
            raise ValueError(
                f"positive_classes must name some but not all of {self.image_classes}, got {self.positive_names}"
            )

    def _subset(self, records: list[Record]) -> list[Record]:
        """At most ``max_images`` records, every class in proportion (at least one each), order-independent."""
        ordered = stable_order(records, self.seed)
        if self.max_images is None or len(ordered) <= self.max_images:
            return ordered
        by_label: dict[int, list[Record]] = {}
        for record in ordered:
            by_label.setdefault(int(record.label), []).append(record)  # type: ignore[arg-type]
        labels = sorted(by_label)
        # Largest-remainder quotas (they sum to max_images), then at least one image per class,
        # taken back from the largest classes.
        exact = {c: self.max_images * len(by_label[c]) / len(ordered) for c in labels}
        quota = {c: int(exact[c]) for c in labels}
        for c in sorted(labels, key=lambda c: quota[c] - exact[c])[: self.max_images - sum(quota.values())]:
            quota[c] += 1
        for c in labels:
            if quota[c] == 0:
                quota[c] = 1
                donor = max(labels, key=lambda d: quota[d])
                if quota[donor] > 1 and sum(quota.values()) > self.max_images:
                    quota[donor] -= 1
        chosen = [r for c in labels for r in by_label[c][: quota[c]]]
        return stable_order(chosen, self.seed)

    def _load(self, records: Sequence[Record], context: FitContext, description: str) -> tuple[list[np.ndarray], list[int]]:
        """Decode labelled records in chunks and keep them resized; undecodable ones are skipped."""
        records = [r for r in records if r.label is not None]
        for record in records:
            if not 0 <= int(record.label) < len(self.image_classes):  # type: ignore[arg-type]
                raise ValueError(f"{record.path}: label {record.label} is not an index into {self.image_classes}")
        images: list[np.ndarray] = []
        labels: list[int] = []
        for chunk in context.decoded_chunks(records, description, self.chunk_size):
            for sample in chunk:
                assert sample.image is not None  # decoded_chunks keeps decoded samples only
                images.append(self._resize(np.ascontiguousarray(sample.image))[0])
                labels.append(int(sample.record.label))  # type: ignore[arg-type]
        return images, labels

    def _probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax class probabilities (N x classes, float64) of HxWx3 uint8 images, batched."""
        model = self.network().eval()
        out = [torch.softmax(self.forward(model, x).double(), dim=1).numpy() for _, x in self.input_batches(images)]
        return np.concatenate(out) if out else np.zeros((0, len(self.image_classes)))

    def export_module(self, images: Sequence[np.ndarray]) -> ExportSpec | None:
        """The classifier (logits) with its inputs for ``images``, compared as softmax probabilities and
        argmax labels; None when fit found nothing to learn (the gate passes everything)."""
        self.require_ready("export")
        if not self.active or self.model is None:
            return None
        inputs = torch.cat([x for _, x in self.input_batches(images)]).cpu()
        return ExportSpec(
            module=self.network("export").eval(), inputs=inputs, activation=lambda logits: torch.softmax(logits, dim=1),
            tolerance=1e-3, decision=lambda p: p.argmax(dim=1), min_agreement=1.0,
        )

    def _positive_score(self, probs: np.ndarray) -> np.ndarray:
        return probs[:, self.positive].sum(axis=1)

    def _disable(self, context: FitContext, reason: str) -> dict[str, Any]:
        """Fall back to passing everything, loudly: a silent no-op gate would look like a trained one."""
        self.active, self.model, self.fitted = False, None, True
        message = (
            f"{self.name}: cannot train the classifier gate: {reason}. It will pass every image to the "
            f"next stage; set enabled=False for this stage (or drop it) to make that explicit."
        )
        context.log(message)
        self.summary = {"enabled": self.enabled, "trained": False, "note": _DISABLED_NOTE, "reason": reason,
                        "image_classes": self.image_classes}
        return self.summary

    # ------------------------------------------------------------------ fit
    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Fine-tune the classifier on ``train`` and calibrate the recall threshold on ``val``.

        Returns:
            A JSON-able summary: image counts per class, the training summary (losses, seconds),
            ``threshold``, ``calibrated_on`` and, on validation, ``val_recall``, ``val_precision``
            and ``val_skip_share`` (share of images that would skip segmentation).
        """
        self._resolve_classes(context.image_classes)
        if not self.enabled:
            self.active, self.model, self.fitted = False, None, True
            self.summary = {"enabled": False, "trained": False, "note": _DISABLED_NOTE}
            return self.summary
        labelled = [r for r in train if r.label is not None]
        present = {int(r.label) for r in labelled}  # type: ignore[arg-type]
        if len(present) < 2:
            names = [self.image_classes[i] for i in sorted(present) if i < len(self.image_classes)]
            return self._disable(context, f"the training data has only one image class ({names or 'none'})")
        if not present & set(self.positive) or not present - set(self.positive):
            missing = "positive" if not present & set(self.positive) else "negative (e.g. normal)"
            return self._disable(context, f"the training data has no {missing} images")

        subset = self._subset(labelled)
        train_images, train_labels = self._load(subset, context, f"{self.name}: load train")
        val_images, val_labels = self._load(list(val), context, f"{self.name}: load val")
        if len(set(train_labels)) < 2:
            return self._disable(context, "fewer than two image classes decoded from the training data")

        n_classes = len(self.image_classes)
        counts = np.bincount(np.asarray(train_labels), minlength=n_classes).astype(np.float64)
        weight = None
        if self.class_weighting:
            # Inverse frequency normalised so a balanced set gets weight 1; absent classes get 0
            # (they never occur as targets, the value is irrelevant but must be finite).
            weight = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
        loss_fn = torch.nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight, dtype=torch.float32))

        self.fresh_network()  # seeded: the new classifier layer starts the same every run
        augment = build_augmentation(self.augment_cfg, self.seed)
        train_ds = ImageTensorDataset(train_images, train_labels, self.image_size, transform=augment)
        val_ds = ImageTensorDataset(val_images, val_labels, self.image_size) if val_images else None
        training = self.train_network(
            context, train_ds, val_ds, loss_fn,
            frozen=lambda name: not name.startswith("classifier."), freeze_epochs=self.freeze_backbone_epochs,
        )
        self.active = True
        self.mark_fitted()

        positive_set = set(self.positive)
        val_pos = np.array([y in positive_set for y in val_labels], dtype=bool)
        val_scores = self._positive_score(self._probabilities(val_images)) if val_images else np.zeros(0)
        if val_pos.any():
            calibrated_on = "val"
            self.threshold = recall_threshold(val_scores, val_pos, self.target_recall)
        else:
            # Scores of the images it was trained on are optimistic: the real recall may fall short.
            calibrated_on = "train"
            train_pos = np.array([y in positive_set for y in train_labels], dtype=bool)
            train_scores = self._positive_score(self._probabilities(train_images))
            self.threshold = recall_threshold(train_scores, train_pos, self.target_recall)
            context.log(
                f"{self.name}: validation has no positive image; threshold calibrated on training images "
                f"(recall on new images may be below {self.target_recall})"
            )
        calibration = self._rates(val_scores, val_pos)
        self.summary = {
            "enabled": True,
            "trained": True,
            "image_classes": self.image_classes,
            "positive_classes": [self.image_classes[i] for i in self.positive],
            "train_images": len(train_images),
            "train_per_class": {c: int(n) for c, n in zip(self.image_classes, counts)},
            "val_images": len(val_images),
            "val_positives": int(val_pos.sum()),
            "skipped_undecodable": len(subset) - len(train_images) + sum(1 for r in val if r.label is not None) - len(val_images),
            "class_weights": None if weight is None else [round(float(w), 4) for w in weight],
            "threshold": float(self.threshold),
            "target_recall": self.target_recall,
            "calibrated_on": calibrated_on,
            **calibration,
            "training": training,
        }
        context.log(
            f"{self.name}: threshold {self.threshold:.4f} ({calibrated_on}); val recall {calibration['val_recall']}, "
            f"precision {calibration['val_precision']}, would skip {calibration['val_skip_share']} of val images"
        )
        return self.summary

    def _rates(self, scores: np.ndarray, positive: np.ndarray) -> dict[str, float | None]:
        """Recall, precision and skip share of the current threshold on scored images (None when undefined)."""
        passed = scores >= self.threshold
        tp = int((passed & positive).sum())
        return {
            "val_recall": round(tp / int(positive.sum()), 4) if positive.any() else None,
            "val_precision": round(tp / int(passed.sum()), 4) if passed.any() else None,
            "val_skip_share": round(float((~passed).mean()), 4) if scores.size else None,
        }

    # ------------------------------------------------------------------ predict
    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Set ``gate_score``, ``gate_label`` and ``finished`` (negative images); disabled: no change."""
        if not self.enabled:
            return samples  # pass-through: every image goes on to the next stage
        active = self.active_samples(samples)
        if not self.active:
            return samples  # fit found nothing to learn (see summary["reason"]): pass-through
        if not active:
            return samples
        probs = self._probabilities([s.image for s in active if s.image is not None])  # all of them: active_samples
        scores = self._positive_score(probs)
        negative = [i for i in range(len(self.image_classes)) if i not in self.positive]
        for sample, p, score in zip(active, probs, scores):
            is_positive = bool(score >= self.threshold)
            # The argmax class, but always on the side the threshold decided.
            side = self.positive if is_positive else negative
            sample.gate_score = float(score)
            sample.gate_label = self.image_classes[side[int(np.argmax(p[side]))]]
            sample.finished = sample.finished or not is_positive
            sample.gate_probabilities = {c: round(float(v), 6) for c, v in zip(self.image_classes, p)}
        return samples

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The shared network state (weights only when trained) plus the threshold as a float64 tensor."""
        tensors, extra = super().state_tensors()
        # A tensor, not JSON: the threshold is -inf when calibration saw no positive image.
        tensors["threshold"] = torch.tensor([self.threshold], dtype=torch.float64)
        return tensors, extra

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Rebuild the classifier (no ImageNet weights needed) and restore weights and threshold."""
        super().load_state_tensors(tensors, extra)
        self.threshold = float(tensors["threshold"][0])

    def describe(self) -> dict[str, Any]:
        """Type, name, whether it gates at all, classes, threshold and the fit summary."""
        info: dict[str, Any] = {**super().describe(), "enabled": self.enabled, "image_size": list(self.image_size)}
        if not self.enabled or (self.fitted and not self.active):
            info["note"] = _DISABLED_NOTE
        if self.active:
            info.update(
                image_classes=self.image_classes,
                positive_classes=[self.image_classes[i] for i in self.positive],
                threshold=float(self.threshold),
                target_recall=self.target_recall,
            )
        return {**info, **{k: v for k, v in self.summary.items() if k not in info and k != "training"}}
