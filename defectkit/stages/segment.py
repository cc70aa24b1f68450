"""Segmenter stage: a supervised multi-label U-Net / DeepLabV3+ giving per-class probability maps.

The stage fills ``sample.prob_maps`` (CxHxW float32 in [0, 1], image resolution) and
``sample.map_classes`` (the config's defect classes); :class:`~defectkit.stages.mask_policy.MaskPolicy`
turns them into masks and polygons. Classes are independent sigmoids, so overlapping regions (a
scratch inside a dent) keep every class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectkit.data.masks import ground_truth_masks
from defectkit.data.split import stable_order_key
from defectkit.data.transforms import Resize, build_augmentation
from defectkit.heads.backbones import to_input_tensor
from defectkit.heads.segmenter import ARCHITECTURES, bce_dice_loss, build_segmenter
from defectkit.registry import STAGES
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext, TrainableStage
from defectkit.training import ImageTensorDataset, fit_head

DEFAULT_SEGMENT_AUGMENT: dict[str, Any] = dict(
    type="Albumentations",
    transforms=[
        dict(type="HorizontalFlip", p=0.5),
        dict(type="RandomBrightnessContrast", brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ],
)
"""Flips and mild photometric changes: geometry-preserving, cheap on CPU, masks follow the flips."""


def has_annotations(record: Record) -> bool:
    """Whether ``record`` carries pixel ground truth (a mask file or polygons)."""
    return bool(record.mask_path) or bool(record.polygons)


@STAGES.register_module()
class Segmenter(TrainableStage):
    """Per-class defect probability maps from a U-Net or DeepLabV3+ on EfficientNet-Lite0.

    Fitting: the training records with annotations (mask file or polygons) are decoded in chunks
    through ``context.load_samples`` (so earlier stages, e.g. enhancement, apply), their ground truth
    rasterised per class of ``context.classes`` (:func:`ground_truth_masks`), and both kept at
    ``image_size``. The network (offline ImageNet encoder) is trained with BCE + ``dice_weight`` x
    soft Dice by the shared Lightning loop (:func:`defectkit.training.fit_head`); with annotated
    validation records the weights of the best validation epoch are kept.

    Prediction: images are resized to ``image_size`` in batches, the sigmoid maps resized back to
    each image's resolution (bilinear) and stored as ``sample.prob_maps`` with
    ``sample.map_classes``.

    Args:
        model: Head config: ``dict(type="Unet")`` or ``dict(type="DeepLabV3Plus")`` plus smp keyword
            arguments (e.g. ``decoder_channels``).
        image_size: ``(height, width)`` images are resized to; multiples of 32.
        epochs: Training epochs.
        batch_size: Images per step and per prediction batch.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        dice_weight: Weight of the soft Dice term next to BCE (0: BCE only).
        augment: Albumentations config dict (``build(TRANSFORMS, ...)``) or None; default: horizontal
            flips and mild brightness/contrast.
        max_images: Train on at most this many annotated images (a deterministic subset).
        seed: Seeds the subset, shuffling, augmentation and initialisation.
        pretrained: Start the encoder from the offline ImageNet weights.
        chunk_size: Records decoded at once while loading.
        name: Stage name (file stem of its saved state).

    Example:
        >>> seg = build(STAGES, dict(type="Segmenter", model=dict(type="Unet"), image_size=(320, 320),
        ...                          epochs=10))                               # doctest: +SKIP
        >>> summary = seg.fit(train_records, val_records, context)            # doctest: +SKIP
        >>> seg.predict(samples)[0].prob_maps.shape                            # doctest: +SKIP
        (2, 480, 640)
    """

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        image_size: Sequence[int] = (320, 320),
        epochs: int = 10,
        batch_size: int = 8,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        dice_weight: float = 0.5,
        augment: dict[str, Any] | None = DEFAULT_SEGMENT_AUGMENT,
        max_images: int | None = None,
        seed: int = 0,
        pretrained: bool = True,
        chunk_size: int = 32,
        name: str | None = None,
    ) -> None:
        super().__init__(name or "segmenter")
        self.model_cfg = dict(model or dict(type="Unet"))
        if self.model_cfg.get("type") not in ARCHITECTURES:
            raise ValueError(f"Segmenter model type must be one of {list(ARCHITECTURES)}, got {self.model_cfg.get('type')!r}")
        for key in ("num_classes", "pretrained"):
            if key in self.model_cfg:
                raise ValueError(f"Segmenter model config must not set {key!r} (it comes from the classes / the stage)")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if any(v < 32 or v % 32 for v in self.image_size):
            raise ValueError(f"Segmenter image_size must be multiples of 32 (>= 32), got {list(self.image_size)}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.dice_weight = float(dice_weight)
        self.augment_cfg = None if augment is None else dict(augment)
        if self.augment_cfg is not None:
            build_augmentation(self.augment_cfg, int(seed))  # fail on a bad config now, not after loading data
        self.max_images = None if max_images is None else int(max_images)
        self.seed = int(seed)
        self.pretrained = bool(pretrained)
        self.chunk_size = max(1, int(chunk_size))
        self.classes: list[str] = []
        self.model: torch.nn.Module | None = None
        self.summary: dict[str, Any] = {}
        self._resize = Resize(self.image_size)

    # ------------------------------------------------------------------ data
    def _load(self, records: Sequence[Record], context: FitContext, description: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        """Decode records in chunks; keep images and their CxHxW bool masks at ``image_size``."""
        advance = context.progress(description, len(records))
        images: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        problems: list[str] = []
        for start in range(0, len(records), self.chunk_size):
            chunk = list(records[start : start + self.chunk_size])
            for sample in context.load_samples(chunk):
                if not sample.ok or sample.image is None:
                    continue
                mask, found = ground_truth_masks(sample.record, sample.image.shape[:2], self.classes, scale=sample.scale)
                problems.extend(found)
                image, mask = self._resize(np.ascontiguousarray(sample.image), mask)
                images.append(image)
                masks.append(np.ascontiguousarray(mask, dtype=bool))
            advance(len(chunk))
        return images, masks, problems

    # ------------------------------------------------------------------ fit
    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Train the segmenter on the annotated ``train`` records (validation loss on annotated ``val``).

        Returns:
            A JSON-able summary: architecture, classes, image counts, per-class positive pixel share
            of the training masks, annotation problems (first few) and the training summary.
        """
        self.classes = [str(c) for c in context.classes]
        if not self.classes:
            raise ValueError(f"{self.name}: the config has no defect classes to segment")
        annotated = sorted((r for r in train if has_annotations(r)), key=lambda r: stable_order_key(self.seed, r.path))
        if self.max_images is not None:
            annotated = annotated[: self.max_images]
        if not annotated:
            raise ValueError(f"{self.name}: no training record has annotations (mask or polygons) to learn from")
        val_annotated = [r for r in val if has_annotations(r)]
        train_images, train_masks, problems = self._load(annotated, context, f"{self.name}: load train")
        val_images, val_masks, val_problems = self._load(val_annotated, context, f"{self.name}: load val")
        problems.extend(val_problems)
        if not train_images:
            raise ValueError(f"{self.name}: none of the {len(annotated)} annotated training images could be decoded")
        for problem in problems[:10]:
            context.log(f"{self.name}: {problem}")

        torch.manual_seed(self.seed)  # decoder and head initialisation
        self.model = build_segmenter(self.model_cfg, len(self.classes), pretrained=self.pretrained)
        augment = build_augmentation(self.augment_cfg, self.seed)
        train_ds = ImageTensorDataset(train_images, train_masks, self.image_size, transform=augment)
        val_ds = ImageTensorDataset(val_images, val_masks, self.image_size) if val_images else None
        dice_weight = self.dice_weight

        def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return bce_dice_loss(logits, targets, dice_weight=dice_weight)

        training = fit_head(
            self.model, train_ds, val_ds, loss_fn,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            progress=context.progress, description=f"{self.name}: train", seed=self.seed,
            restore_best=val_ds is not None,
        )
        self.model.eval()
        self.fitted = True
        stacked = np.stack(train_masks)
        self.summary = {
            "arch": self.model_cfg["type"],
            "classes": self.classes,
            "image_size": list(self.image_size),
            "train_images": len(train_images),
            "val_images": len(val_images),
            "skipped_unannotated": len(train) - len([r for r in train if has_annotations(r)]),
            "skipped_undecodable": len(annotated) - len(train_images) + len(val_annotated) - len(val_images),
            "positive_pixel_share": {c: round(float(stacked[:, i].mean()), 6) for i, c in enumerate(self.classes)},
            "annotation_problems": len(problems),
            "training": training,
        }
        context.log(
            f"{self.name}: trained {self.model_cfg['type']} on {len(train_images)} images "
            f"(val {len(val_images)}); train loss {training['train_loss']}, best val loss {training['best_val_loss']}"
        )
        return self.summary

    # ------------------------------------------------------------------ predict
    def probability_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """CxHxW float32 sigmoid maps in [0, 1] of HxWx3 uint8 images, each at its own resolution."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: predict before fit or load")
        self.model.eval()
        out: list[np.ndarray] = []
        for b in range(0, len(images), self.batch_size):
            batch = images[b : b + self.batch_size]
            x = to_input_tensor([self._resize(np.ascontiguousarray(im))[0] for im in batch])
            with torch.no_grad():
                probs = torch.sigmoid(self.model(x).float())
                for image, p in zip(batch, probs):
                    height, width = image.shape[:2]
                    if (height, width) != tuple(p.shape[-2:]):
                        p = F.interpolate(p[None], size=(height, width), mode="bilinear", align_corners=False)[0]
                    out.append(p.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False))
        return out

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Set ``prob_maps`` (CxHxW float32, image resolution) and ``map_classes`` of active samples."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: predict before fit or load")
        active = [s for s in samples if s.active and s.image is not None]
        if not active:
            return samples
        for sample, maps in zip(active, self.probability_maps([s.image for s in active])):
            sample.prob_maps = maps
            sample.map_classes = list(self.classes)
        return samples

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The network's weights; architecture, classes and image size as JSON."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: nothing to save before fit or load")
        tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}
        extra = {
            "arch": self.model_cfg["type"],
            "model": self.model_cfg,
            "classes": self.classes,
            "image_size": list(self.image_size),
            "summary": self.summary,
        }
        return tensors, extra

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Rebuild the network (no ImageNet weights needed) and restore its weights."""
        self.model_cfg = dict(extra.get("model") or dict(type=extra["arch"]))
        self.classes = [str(c) for c in extra.get("classes", [])]
        if not self.classes:
            raise ValueError(f"{self.name}: saved state has no classes")
        self.image_size = tuple(int(v) for v in extra.get("image_size", self.image_size))  # type: ignore[assignment]
        self._resize = Resize(self.image_size)
        self.summary = dict(extra.get("summary", {}))
        model = build_segmenter(self.model_cfg, len(self.classes), pretrained=False)
        weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(weights, strict=True)
        self.model = model.eval()
        self.fitted = True

    def describe(self) -> dict[str, Any]:
        """Type, name, architecture, classes, image size and the fit summary (without the loss history)."""
        info: dict[str, Any] = {**super().describe(), "arch": self.model_cfg.get("type"),
                                "image_size": list(self.image_size), "classes": self.classes}
        return {**info, **{k: v for k, v in self.summary.items() if k not in info and k != "training"}}


__all__ = ["DEFAULT_SEGMENT_AUGMENT", "Segmenter", "has_annotations"]
