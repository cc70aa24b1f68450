"""Detector stage: a one-stage box detector (FCOS or RetinaNet on EfficientNet-Lite0) giving instances.

The stage fills ``sample.instances`` with boxes (``polygon`` empty) in image coordinates. Its
:meth:`Detector.detect` follows the detector protocol of the
:class:`~defectkit.stages.tiling.Tiling` stage (``detect(images) -> list[Detections]`` plus
``classes``), so the same trained detector runs on whole images or on slices of large ones; with
``train_slices`` (or inside a Tiling stage) it also trains on the windows sliced inference uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import albumentations as A
import numpy as np
import torch

from defectkit.data.copy_paste import CopyPaste
from defectkit.data.sampling import oversampling_sampler
from defectkit.data.transforms import build_albumentation
from defectkit.errors import ConfigError, StateError
from defectkit.heads.detector import (
    DETECTOR_TYPES,
    DenseOutputs,
    DetectorEnsemble,
    EnsembleDenseOutputs,
    build_detector,
    detections_from_dense,
    head_output_widths,
    input_size,
)
from defectkit.registry import STAGES
from defectkit.runtime import inference_mode
from defectkit.sample import Detections, Record, Sample, detections_to_instances
from defectkit.stages.base import Detects, Exportable, ExportSpec, FitContext, TrainsOnSlices
from defectkit.stages.network import NetworkStage
from defectkit.tiling import merge_detections
from defectkit.training import BoxTensorDataset, collate_boxes, resize_with_boxes

DEFAULT_DETECT_AUGMENT: dict[str, Any] = dict(
    type="Albumentations",
    transforms=[
        dict(type="HorizontalFlip", p=0.5),
        dict(type="RandomBrightnessContrast", brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ],
)
"""Flips (boxes follow) and mild photometric changes: faces are left-right symmetric, cheap on CPU."""

DEFAULT_TRAIN_SLICES: dict[str, Any] = dict(overlap=0.2, min_visible_ratio=0.3, min_side=2.0, keep_empty=0.1)
"""Sliced-training settings a ``train_slices`` dict does not set (``size`` has no default)."""

TTA_FUSE_IOU = 0.55
"""IOU above which boxes of different passes (flipped image, ensemble members) are fused (the WBF paper's value)."""

Item = tuple[np.ndarray, np.ndarray, np.ndarray]
"""A training item: HxWx3 uint8 image at ``image_size``, Nx4 float32 xyxy boxes, N int64 labels."""


def has_box_annotations(record: Record) -> bool:
    """Whether ``record`` can train a detector: it has a box list (empty: checked, nothing found) or is a normal image."""
    return record.boxes is not None or record.label == 0


class BoxAugment:
    """An albumentations pipeline from an ``Albumentations`` config whose geometric transforms move boxes too.

    Boxes are Pascal VOC ``(x1, y1, x2, y2)`` pixels; boxes a transform pushes out of the image are
    clipped, and dropped when less than ``min_visibility`` of their area remains.

    Args:
        cfg: ``dict(type="Albumentations", transforms=[...], p=1.0, seed=None)`` as for
            :class:`~defectkit.data.transforms.Albumentations`.
        seed: Seed used when ``cfg`` sets none.
        min_visibility: Smallest visible share of a box after a crop-like transform.

    Example:
        >>> flip = BoxAugment(dict(type="Albumentations", transforms=[dict(type="HorizontalFlip", p=1.0)]), seed=0)
        >>> _, boxes, labels = flip(np.zeros((10, 20, 3), np.uint8), np.array([[0, 0, 5, 5]], np.float32), np.array([0]))
        >>> boxes.tolist(), labels.tolist()
        ([[15.0, 0.0, 20.0, 5.0]], [0])
    """

    def __init__(self, cfg: dict[str, Any], seed: int, min_visibility: float = 0.3) -> None:
        args = dict(cfg)
        if args.pop("type", None) != "Albumentations":
            raise ConfigError(
                f"Detector augment must be dict(type='Albumentations', transforms=[...]) (only albumentations moves "
                f"boxes with the image), got {cfg!r}"
            )
        unknown = sorted(set(args) - {"transforms", "p", "seed"})
        if unknown:
            raise ConfigError(f"Detector augment got unknown key(s) {', '.join(map(repr, unknown))}; valid: transforms, p, seed")
        transforms = args.get("transforms")
        if not isinstance(transforms, (list, tuple)):
            raise ConfigError(f"Detector augment transforms must be a list of dicts, got {transforms!r}")
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=float(min_visibility), clip=True)
        seed_value = args.get("seed")
        self.compose = A.Compose(
            [build_albumentation(t) for t in transforms], bbox_params=bbox_params, p=float(args.get("p", 1.0)),
            seed=int(seed) if seed_value is None else int(seed_value),
        )

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Item:
        out = self.compose(image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                           labels=np.asarray(labels, np.int64).reshape(-1))
        return (out["image"], np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
                np.asarray(out["labels"], dtype=np.int64).reshape(-1))


def _chain(steps: Sequence[Callable[[np.ndarray, np.ndarray, np.ndarray], Item]]) -> Callable[[np.ndarray, np.ndarray, np.ndarray], Item] | None:
    """One per-item transform applying ``steps`` in order (None when there are none)."""
    if not steps:
        return None

    def apply(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Item:
        for step in steps:
            image, boxes, labels = step(image, boxes, labels)
        return image, boxes, labels

    return apply


@STAGES.register_module()
class Detector(NetworkStage, Detects, TrainsOnSlices, Exportable):
    """Defect boxes from a one-stage detector (FCOS or RetinaNet) on EfficientNet-Lite0.

    Fitting: training records with box annotations (a ``boxes`` list, possibly empty, or a normal
    image: :func:`has_box_annotations`) are decoded in chunks through ``context.load_samples`` (so
    earlier stages apply); their boxes, given in original image coordinates, are mapped onto the
    decoded image, which is resized to ``image_size`` with its boxes (or, with ``train_slices``,
    cut into the windows sliced inference uses, each resized to ``image_size``). Box class names
    index into ``context.classes``. Per training item, ``copy_paste`` pastes lesions from other
    training images, then ``augment`` flips and changes brightness/contrast (boxes follow). The
    network (offline ImageNet backbone) is trained with its own focal + box losses by the shared
    Lightning loop (:func:`defectkit.training.fit_head`), optionally drawing items with
    class-aware ``oversample`` weights; with annotated validation records the weights of the best
    validation epoch are kept.

    Prediction: :meth:`detect` resizes images to ``image_size`` in batches and maps the boxes back
    to each image's own pixels; :meth:`predict` stores boxes scoring at least ``min_score`` as
    ``sample.instances`` (box only). The detector makes no image-level decision: ``gate_label`` /
    ``gate_score`` stay as an earlier gate left them (as with the Tiling stage).

    Args:
        model: Head config: ``dict(type="fcos")`` (default) or ``dict(type="retinanet")`` plus the
            head's options (``fpn_channels``, ``score_thresh``, ``nms_thresh``,
            ``detections_per_img``, ...; see :mod:`defectkit.heads.detector`), or
            ``dict(type="mmdet", config=...)`` for an OpenMMLab detector (TOOD, ATSS, ...; the
            ``[openmmlab]`` extra, :mod:`defectkit.heads.openmmlab`). ``num_classes``,
            ``pretrained`` and ``image_size`` come from the stage.
        image_size: ``(height, width)`` the network sees; multiples of 32.
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
            fewer epochs. The members of an ``ensemble`` share it equally. None: exactly ``epochs``.
        freeze_pretrained_bn: Keep the running statistics of the backbone's batch-norm layers as
            ImageNet left them while the rest trains (their scale and shift still learn). On by
            default: every detector in docs/results.md trained this way (batches of 8 photos).
        frozen_layers: Parameter-name prefixes (of one network) whose layers keep their pretrained
            weights and statistics for the whole fit, e.g. ``("backbone.body.conv_stem.",
            "backbone.body.bn1.", "backbone.body.blocks.0.", "backbone.body.blocks.1.")`` for the
            Lite0 backbone's stem and first two stages. Empty: all train.
        warmup_steps: Linear learning-rate warm-up steps (new detection heads diverge easily at
            full rate).
        augment: Albumentations config (``dict(type="Albumentations", transforms=[...])``) whose
            geometric transforms move the boxes, or None; default: horizontal flips and mild
            brightness/contrast.
        min_score: Boxes scoring below this are not reported by :meth:`predict` (:meth:`detect`
            returns everything above the head's ``score_thresh``). Keep it low where mAP is the
            metric: mAP rewards every ranked box. Inside a :class:`~defectkit.stages.tiling.Tiling`
            stage, reviewers are shown only the boxes from the best-F1 score on validation.
        tta_flip: Also detect on the horizontally flipped image and fuse both passes' boxes
            (weighted box fusion, IOU 0.55: a box found in one pass only keeps half its score);
            twice the prediction cost.
        tta_scales: Input scales at which every image is detected, relative to ``image_size``
            (each side rounded to a multiple of 32, as the Segmenter's ``tta_scales``), e.g.
            ``(1.0, 1.1)``; the passes' boxes are fused like ``tta_flip``'s (with ``tta_flip``,
            every scale is also detected flipped). ``(1.0,)``: one pass. Each scale costs a pass of
            ``scale**2`` times the pixels. Post-processing: a trained detector takes it from the
            config without retraining (fcos and retinanet heads; an exported file takes any size).
        ensemble: Networks trained, one after the other, from seeds ``seed``, ``seed + 1``, ...
            (initialisation, data order, augmentation and copy-paste); their boxes are fused like
            ``tta_flip``'s passes (a box found by one member of two keeps half its score, and
            ``min_score`` applies to the fused scores). Each member costs one training and one
            prediction pass; 1: a single network.
        focal: ``dict(alpha=0.25, gamma=2.0)``: the classification focal loss's parameters.
        train_slices: Sliced training: ``dict(size=(h, w), overlap=0.2, min_visible_ratio=0.3,
            min_side=2.0, keep_empty=0.1)`` (see :func:`defectkit.tiling.slice_training_items`),
            windows of the decoded image, each resized to ``image_size`` as :meth:`detect` resizes
            a slice (set ``image_size`` to the slice size to keep pixels 1:1); None: whole images,
            unless a Tiling stage around this one configures its slicing
            (:meth:`configure_slicing`); False: whole images always.
        copy_paste: Box copy-paste augmentation: :class:`defectkit.data.copy_paste.CopyPaste` options
            (e.g. ``dict(p=0.5, max_pastes=3, box_alpha="ellipse")``; ``seed`` defaults to the
            stage's), or None.
        oversample: Class-aware oversampling: :func:`defectkit.data.sampling.oversampling_sampler`
            options (e.g. ``dict(threshold=0.1)``, or ``dict()`` for its defaults), or None.
        max_images: Train on at most this many annotated images (a deterministic subset).
        seed: Seeds the subset, slicing, shuffling, augmentation and initialisation.
        pretrained: Start the backbone from the offline ImageNet weights.
        chunk_size: Records decoded at once while loading.
        name: Stage name (file stem of its saved state).

    Example:
        >>> det = build(STAGES, dict(type="Detector", model=dict(type="fcos"), image_size=(640, 640),
        ...                          epochs=12, copy_paste=dict(p=0.5)))      # doctest: +SKIP
        >>> summary = det.fit(train_records, val_records, context)            # doctest: +SKIP
        >>> det.predict(samples)[0].instances[0].box                           # doctest: +SKIP
        (312.4, 201.9, 330.8, 219.0)
    """

    # "mmdet": an OpenMMLab detector (defectkit.heads.openmmlab; needs the [openmmlab] extra).
    model_types = (*DETECTOR_TYPES, "mmdet")
    # Post-processing, not weights: a trained detector can be re-thresholded from the config.
    model_fields_not_checked = ("score_thresh", "nms_thresh", "detections_per_img", "box_vote_iou")
    reserved_model_keys = {
        "num_classes": "the classes", "pretrained": "the stage", "image_size": "the stage",
        "focal_alpha": "the stage's focal option", "focal_gamma": "the stage's focal option",
    }

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        image_size: Sequence[int] = (640, 640),
        epochs: int = 12,
        batch_size: int = 8,
        predict_batch_size: int | None = None,
        lr: float = 5e-4,
        weight_decay: float = 1e-4,
        ema_decay: float | None = None,
        max_minutes: float | None = None,
        freeze_pretrained_bn: bool = True,
        frozen_layers: Sequence[str] = (),
        warmup_steps: int = 20,
        augment: dict[str, Any] | None = DEFAULT_DETECT_AUGMENT,
        min_score: float = 0.3,
        tta_flip: bool = False,
        tta_scales: Sequence[float] = (1.0,),
        ensemble: int = 1,
        focal: dict[str, float] | None = None,
        train_slices: dict[str, Any] | bool | None = None,
        copy_paste: dict[str, Any] | None = None,
        oversample: dict[str, Any] | None = None,
        max_images: int | None = None,
        seed: int = 0,
        pretrained: bool = True,
        chunk_size: int = 32,
        name: str | None = None,
    ) -> None:
        super().__init__(
            name or "detector", dict(model or dict(type="fcos")), image_size, epochs, max(1, int(batch_size)), lr,
            weight_decay, max_images, seed, pretrained, chunk_size, predict_batch_size=predict_batch_size,
            freeze_pretrained_bn=freeze_pretrained_bn, ema_decay=ema_decay, max_minutes=max_minutes,
            frozen_layers=frozen_layers,
        )
        self.warmup_steps = max(0, int(warmup_steps))
        self.augment_cfg = None if augment is None else dict(augment)
        if self.augment_cfg is not None:
            BoxAugment(self.augment_cfg, self.seed)  # fail on a bad config now, not after loading data
        if not 0.0 <= float(min_score) <= 1.0:
            raise ConfigError(f"Detector min_score must be in [0, 1], got {min_score!r}")
        self.min_score = float(min_score)
        self.tta_flip = bool(tta_flip)
        self.tta_scales = self.tta_scale_options(tta_scales)
        if int(ensemble) < 1:
            raise ConfigError(f"Detector ensemble must be >= 1 (networks to train and fuse), got {ensemble!r}")
        self.ensemble = int(ensemble)
        self.focal = self._focal_options(focal)
        self.openmmlab = self.model_cfg["type"] == "mmdet"
        if self.openmmlab and self.runs_other_input_sizes:
            raise ConfigError("Detector tta_scales other than (1.0,) apply to the fcos and retinanet heads, not to an mmdet model")
        if self.openmmlab and focal is not None and self.focal != self._focal_options(None):
            raise ConfigError("Detector focal applies to the fcos and retinanet heads; an mmdet model sets its losses in its OpenMMLab config")
        self.train_slices = self._slice_options(train_slices)
        self.copy_paste_cfg = None if copy_paste is None else dict(copy_paste)
        if self.copy_paste_cfg is not None:
            self.check_options("copy_paste", CopyPaste, {"seed": self.seed, **self.copy_paste_cfg})
        self.oversample_cfg = None if oversample is None else dict(oversample)
        if self.oversample_cfg is not None:
            self.check_options("oversample", oversampling_sampler, self.oversample_cfg, label_sets=[], seed=0)

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _focal_options(focal: dict[str, float] | None) -> dict[str, float]:
        options = dict(alpha=0.25, gamma=2.0)  # torchvision's (and the RetinaNet paper's) values
        unknown = sorted(set(focal or {}) - set(options))
        if unknown:
            raise ConfigError(f"Detector focal got unknown key(s) {', '.join(map(repr, unknown))}; valid keys: alpha, gamma")
        options.update({k: float(v) for k, v in (focal or {}).items()})
        if options["gamma"] < 0:
            raise ConfigError(f"Detector focal gamma must be >= 0, got {options['gamma']}")
        return options

    @staticmethod
    def _slice_options(train_slices: dict[str, Any] | bool | None) -> dict[str, Any] | bool | None:
        if train_slices is None or train_slices is False:
            return train_slices
        if not isinstance(train_slices, dict) or "size" not in train_slices:
            raise ConfigError(f"Detector train_slices must be dict(size=(h, w), ...), None or False, got {train_slices!r}")
        unknown = sorted(set(train_slices) - {"size", *DEFAULT_TRAIN_SLICES})
        if unknown:
            raise ConfigError(f"Detector train_slices got unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"valid keys: size, {', '.join(DEFAULT_TRAIN_SLICES)}")
        return {**DEFAULT_TRAIN_SLICES, **train_slices}

    def configure_slicing(self, slice_size: Sequence[int], overlap: Sequence[float]) -> None:
        """Train on the windows a Tiling stage around this one predicts on (called by Tiling before ``fit``).

        The slice size and overlap become Tiling's; the other ``train_slices`` settings are kept.
        ``train_slices=False`` opts out: the detector then trains on whole images.
        """
        if self.train_slices is False:
            return
        base = self.train_slices if isinstance(self.train_slices, dict) else DEFAULT_TRAIN_SLICES
        self.train_slices = {**base, "size": [int(v) for v in slice_size], "overlap": [float(v) for v in overlap]}

    def pretrained_prefix(self) -> str:
        """The backbone of one network: ``backbone.body.`` in FCOS / RetinaNet (the pyramid on top
        is new), ``model.backbone.`` in an OpenMMLab detector."""
        return "model.backbone." if self.model_cfg["type"] == "mmdet" else "backbone.body."

    def build_network(self, pretrained: bool) -> torch.nn.Module:
        """An FCOS / RetinaNet for the classes, its input size and focal loss from the stage (a
        :class:`~defectkit.heads.detector.DetectorEnsemble` of them with ``ensemble`` > 1)."""
        head_cfg = {**self.model_cfg, "image_size": self.image_size}
        if not self.openmmlab:  # an OpenMMLab config sets its own losses
            head_cfg.update(focal_alpha=self.focal["alpha"], focal_gamma=self.focal["gamma"])
        if self.ensemble == 1:
            return build_detector(head_cfg, len(self.classes), pretrained=pretrained)
        return DetectorEnsemble([build_detector(head_cfg, len(self.classes), pretrained=pretrained) for _ in range(self.ensemble)])

    def members(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The detectors in ``model``: its ensemble's members, or ``model`` itself."""
        return list(model.members) if isinstance(model, DetectorEnsemble) else [model]

    def saved_settings(self) -> dict[str, Any]:
        """The focal loss parameters (part of the head) and the ensemble size (the networks saved)."""
        return {"focal": self.focal, "ensemble": self.ensemble}

    def restore_settings(self, extra: dict[str, Any]) -> None:
        self.focal = self._focal_options(extra.get("focal"))

    def check_saved_model(self, extra: dict[str, Any]) -> None:
        """Also refuse saved networks whose number differs from the config's ``ensemble``."""
        super().check_saved_model(extra)
        saved = extra.get("ensemble", 1) if isinstance(extra, dict) else None
        if saved != self.ensemble:
            raise StateError(
                f"stage {self.name!r}: the saved detector has {saved!r} network(s) but the config's ensemble is "
                f"{self.ensemble}; refusing to load (retrain, or set ensemble={saved!r} as trained)"
            )

    # ------------------------------------------------------------------ data
    def _image_boxes(self, sample: Sample) -> tuple[list[tuple[str, float, float, float, float]], list[str]]:
        """The record's boxes in decoded-image coordinates (known classes, valid boxes) and problems."""
        assert sample.image is not None
        sx, sy = sample.original_factors()  # image -> original; boxes go the other way
        kept, problems = [], []
        for index, box in enumerate(sample.record.boxes or []):
            try:
                class_name, x1, y1, x2, y2 = box
                x1, y1, x2, y2 = float(x1) / sx, float(y1) / sy, float(x2) / sx, float(y2) / sy
            except (TypeError, ValueError):
                problems.append(f"{sample.record.path}: box {index} is not (class, x1, y1, x2, y2): {box!r}")
                continue
            if class_name not in self.classes:
                problems.append(f"{sample.record.path}: box class {class_name!r} is not in the config's classes {self.classes}")
            elif not all(np.isfinite((x1, y1, x2, y2))) or x2 <= x1 or y2 <= y1:
                problems.append(f"{sample.record.path}: box {index} {[x1, y1, x2, y2]} is empty or not finite")
            else:
                kept.append((str(class_name), x1, y1, x2, y2))
        return kept, problems

    def _arrays(self, boxes: Sequence[tuple[str, float, float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
        coords = np.asarray([b[1:] for b in boxes], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray([self.classes.index(b[0]) for b in boxes], dtype=np.int64)
        return coords, labels

    def _items(self, sample: Sample, rng: np.random.Generator) -> tuple[list[Item], list[str]]:
        """A decoded sample as training items at ``image_size``: the whole image, or its training slices."""
        image = np.ascontiguousarray(sample.image)
        boxes, problems = self._image_boxes(sample)
        if not isinstance(self.train_slices, dict):
            coords, labels = self._arrays(boxes)
            resized, coords = resize_with_boxes(image, coords, self.image_size)
            return [(resized, coords, labels)], problems
        from defectkit.tiling import slice_training_items

        options = self.train_slices
        items = []
        for (x1, y1, x2, y2), window_boxes in slice_training_items(
            image.shape[0], image.shape[1], boxes, options["size"], options["overlap"],
            options["min_visible_ratio"], options["min_side"], options["keep_empty"], rng,
        ):
            coords, labels = self._arrays(window_boxes)
            # A copy: a view would keep the whole decoded photo alive for as long as the slice.
            crop, coords = resize_with_boxes(image[y1:y2, x1:x2].copy(), coords, self.image_size)
            items.append((crop, coords, labels))
        return items, problems

    def _load(self, records: Sequence[Record], context: FitContext, description: str, seed: int) -> tuple[list[Item], int, list[str]]:
        """Decode records in chunks into training items; returns the items, decoded image count and problems."""
        rng = np.random.default_rng(seed)  # one generator for the whole set: slices do not repeat a pattern
        items: list[Item] = []
        decoded = 0
        problems: list[str] = []
        for sample in context.decoded_samples(records, description, self.chunk_size):
            decoded += 1
            sample_items, found = self._items(sample, rng)
            items.extend(sample_items)
            problems.extend(found)
        return items, decoded, problems

    def _dataset(self, items: Sequence[Item], transform: Callable[[np.ndarray, np.ndarray, np.ndarray], Item] | None) -> BoxTensorDataset:
        return BoxTensorDataset([i[0] for i in items], [i[1] for i in items], [i[2] for i in items], self.image_size,
                                transform=transform)

    def _copy_paste_step(self, items: Sequence[Item], seed: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], Item] | None:
        """Copy-paste over a bank of every training item's boxes (None when not configured).

        The bank is cut from the items at ``image_size`` (whole images or slices), so pasted lesions
        keep the scale the network sees. The dataset's per-item transform does not say which item
        it is, so an image may get one of its own lesions back: about one paste in N for N training
        images, and harmless.
        """
        if self.copy_paste_cfg is None:
            return None
        paste = CopyPaste.from_items([i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
                                     **{"seed": seed, **self.copy_paste_cfg})

        def step(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Item:
            pasted, new_boxes, new_labels, _ = paste(image, boxes, labels)
            return pasted, new_boxes, new_labels

        return step

    def _sampler(self, items: Sequence[Item], seed: int) -> torch.utils.data.Sampler | None:
        """Class-aware oversampling: a seeded sampler over the items' LVIS repeat factors."""
        if self.oversample_cfg is None:
            return None
        label_sets = [[self.classes[label] for label in item[2]] for item in items]
        return oversampling_sampler(label_sets, seed, **self.oversample_cfg)

    # ------------------------------------------------------------------ fit
    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Train the detector on the box-annotated ``train`` records (validation loss on annotated ``val``).

        Returns:
            A JSON-able summary: head type, classes, image and item (slice) counts, boxes per class,
            annotation problems and the training summary.
        """
        self.take_classes(context, "detect")
        annotated = self.training_subset(train, has_box_annotations)
        if not any(r.boxes for r in annotated):
            raise ValueError(f"{self.name}: no training record has boxes to learn from")
        val_annotated = [r for r in val if has_box_annotations(r)]
        train_items, train_decoded, problems = self._load(annotated, context, f"{self.name}: load train", self.seed)
        val_items, val_decoded, val_problems = self._load(val_annotated, context, f"{self.name}: load val", self.seed + 1)
        problems.extend(val_problems)
        if not train_items:
            raise ValueError(f"{self.name}: none of the {len(annotated)} annotated training images gave a training item")
        self.log_problems(context, problems)

        members = self.members(self.fresh_network())
        val_ds = self._dataset(val_items, None) if val_items else None
        summaries = []
        for index, member in enumerate(members):
            seed = self.seed + index
            # Paste first, then augment: pasted lesions are flipped and re-lit with the rest of the image.
            steps = [step for step in (self._copy_paste_step(train_items, seed),) if step is not None]
            if self.augment_cfg is not None:
                steps.append(BoxAugment(self.augment_cfg, seed))
            summaries.append(self.train_network(
                context, self._dataset(train_items, _chain(steps)), val_ds, None, network=member, seed=seed,
                description="train" if len(members) == 1 else f"train member {index + 1}/{len(members)} (seed {seed})",
                warmup_steps=self.warmup_steps, collate_fn=collate_boxes, sampler=self._sampler(train_items, seed),
                # Each member of an ensemble gets an equal share of the stage's time budget.
                max_minutes=None if self.max_minutes is None else self.max_minutes / len(members),
            ))
        training = summaries[0] if len(summaries) == 1 else _ensemble_training(summaries)
        labels = np.concatenate([i[2] for i in train_items]) if train_items else np.zeros(0, np.int64)
        return self.finish_fit(
            context, training, problems, f"{len(train_items)} items from {train_decoded} images", len(val_items),
            train_images=train_decoded,
            train_items=len(train_items),
            val_images=val_decoded,
            val_items=len(val_items),
            train_boxes={c: int((labels == i).sum()) for i, c in enumerate(self.classes)},
            train_slices=self.train_slices if isinstance(self.train_slices, dict) else None,
            copy_paste=self.copy_paste_cfg,
            oversample=self.oversample_cfg,
            focal=self.focal,
            ensemble=self.ensemble,
            freeze_pretrained_bn=self.freeze_pretrained_bn,
            skipped_unannotated=len(train) - len([r for r in train if has_box_annotations(r)]),
            skipped_undecodable=len(annotated) - train_decoded + len(val_annotated) - val_decoded,
        )

    # ------------------------------------------------------------------ predict
    @property
    def runs_other_input_sizes(self) -> bool:
        """True when a ``tta_scales`` pass is not at ``image_size``: the exported file must take any height and width."""
        return any(size != self.image_size for size in self.tta_input_sizes())

    def tta_input_sizes(self) -> list[tuple[int, int]]:
        """The network input size of each ``tta_scales`` pass (duplicates after rounding dropped)."""
        return list(dict.fromkeys(self.scaled_input_size(scale) for scale in self.tta_scales))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Boxes in HxWx3 uint8 images, each in its own pixel coordinates (batches of :meth:`prediction_batch_size`).

        Every image is resized to ``image_size`` for the network and its boxes scaled back, so
        images of any size (whole photos, slices) can be mixed in one call. The passes of every
        ensemble member, at every input size (:meth:`tta_input_sizes`) and, with
        ``tta_flip``, of the flipped images (their boxes flipped back) are fused by weighted box
        fusion.
        """
        mirrored_images = [np.ascontiguousarray(image[:, ::-1]) for image in images] if self.tta_flip else None
        passes: list[list[Detections]] = []
        for size in self.tta_input_sizes():
            passes.extend(self._detect_passes(images, size))
            if mirrored_images is not None:
                for mirrored in self._detect_passes(mirrored_images, size):
                    passes.append([_unflip(found, float(image.shape[1])) for image, found in zip(images, mirrored)])
        if len(passes) == 1:
            return passes[0]
        return [merge_detections(Detections.concatenate(list(found)), "WBF", "IOU", TTA_FUSE_IOU, passes=len(passes))
                for found in zip(*passes)]

    def _detect_passes(self, images: Sequence[np.ndarray], size: tuple[int, int] | None = None) -> list[list[Detections]]:
        """Each member's boxes for ``images`` at network input ``size`` (default ``image_size``; one
        list per member, one entry per image)."""
        model = self.network("detect").eval()
        members = self.members(model)
        height_in, width_in = size = size or self.image_size
        out: list[list[Detections]] = [[] for _ in members]
        for batch, x in self.input_batches(images, size):
            if self.exported is not None:
                # The exported file runs the convolutions (all members' at once); decoding and NMS stay torchvision's.
                dense = self.exported(x.cpu()).float()
                found = [detections_from_dense(member, dense[:, index] if len(members) > 1 else dense, size)
                         for index, member in enumerate(members)]
            else:
                with inference_mode(self.device):
                    found = []
                    for member in members:
                        # mmdet models (tta_scales (1.0,) only) only ever see the trained size.
                        with input_size(member, size) if size != self.image_size else nullcontext():
                            found.append([{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in r.items()}
                                          for r in member(list(x))])
            for index, results in enumerate(found):
                for image, result in zip(batch, results):
                    height, width = image.shape[:2]
                    boxes = result["boxes"].numpy().astype(np.float32)
                    # Clipping to the image can flatten a border box to no area: not a finding.
                    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                    detections = Detections(
                        boxes[keep], result["scores"].numpy().astype(np.float32)[keep],
                        result["labels"].numpy().astype(np.int64)[keep],
                    )
                    out[index].append(detections.scaled(width / width_in, height / height_in))
        return out

    def export_module(self, images: Sequence[np.ndarray]) -> ExportSpec:
        """The detector's convolutions (:class:`~defectkit.heads.detector.DenseOutputs`: backbone, pyramid and
        head) with its inputs for ``images``; box decoding, thresholds and NMS stay in PyTorch.

        Compared on the raw head outputs relative to their scale, and on which locations' class
        logits clear the head's ``score_thresh``.
        """
        if self.openmmlab:
            raise ConfigError(f"stage {self.name!r}: export covers the fcos and retinanet heads; an mmdet model runs in PyTorch "
                              f"(predict.runtime=torch)")
        model = self.network("export").eval()
        first = self.members(model)[0]
        classes = head_output_widths(first)["cls_logits"]
        cut = float(torch.logit(torch.tensor(float(first.score_thresh)).clamp(1e-6, 1 - 1e-6)))
        inputs = torch.cat([x for _, x in self.input_batches(images)]).cpu()
        module = EnsembleDenseOutputs(model) if isinstance(model, DetectorEnsemble) else DenseOutputs(model)
        # Any input height and width (tta_scales); the output's locations follow them.
        locations = 2 if isinstance(model, DetectorEnsemble) else 1
        return ExportSpec(
            module=module, inputs=inputs, tolerance=1e-4, relative=True,
            dynamic_axes={0: "batch", 2: "height", 3: "width"}, output_axes={0: "batch", locations: "locations"},
            decision=lambda out: out[..., :classes] > cut, min_agreement=0.999,
        )

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Set ``instances`` (boxes scoring at least ``min_score``, image coordinates) of active samples."""
        active = self.active_samples(samples)
        for sample, detections in zip(active, self.detect([s.image for s in active])):
            sample.instances = detections_to_instances(detections, self.classes, self.min_score)
        return samples

    def describe(self) -> dict[str, Any]:
        """Type, name, head type, image size, classes, min score and the fit summary (without the loss history)."""
        return self.network_description(min_score=self.min_score, ensemble=self.ensemble, tta_flip=self.tta_flip,
                                        tta_scales=list(self.tta_scales))


def _unflip(found: Detections, width: float) -> Detections:
    """Boxes found in a horizontally flipped image of ``width`` pixels, in the image's own coordinates."""
    boxes = np.stack([width - found.boxes[:, 2], found.boxes[:, 1], width - found.boxes[:, 0], found.boxes[:, 3]], axis=1)
    return Detections(boxes.reshape(-1, 4), found.scores, found.labels)


def _ensemble_training(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One training summary for an ensemble: losses averaged over members, seconds, steps and time budgets summed.

    ``history`` and ``best_epoch`` are the first member's (the report plots one loss curve); every
    member's own summary is under ``members``.
    """
    def mean(key: str) -> float | None:
        values = [s[key] for s in summaries if s.get(key) is not None]
        return round(float(np.mean(values)), 6) if values else None

    return {
        **summaries[0],
        "train_loss": mean("train_loss"), "last_val_loss": mean("last_val_loss"), "best_val_loss": mean("best_val_loss"),
        "seconds": round(sum(float(s.get("seconds") or 0) for s in summaries), 2),
        "steps": sum(int(s.get("steps") or 0) for s in summaries),
        "max_minutes": None if summaries[0].get("max_minutes") is None else sum(float(s["max_minutes"]) for s in summaries),
        "members": list(summaries),
    }


__all__ = ["DEFAULT_DETECT_AUGMENT", "DEFAULT_TRAIN_SLICES", "BoxAugment", "Detector", "has_box_annotations"]
