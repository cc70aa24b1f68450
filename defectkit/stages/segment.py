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

from defectkit.data.masks import ground_truth_masks, has_annotations
from defectkit.data.transforms import build_augmentation
from defectkit.heads.segmenter import ARCHITECTURES, bce_dice_loss, build_segmenter
from defectkit.registry import STAGES
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext, Segments
from defectkit.stages.network import NetworkStage
from defectkit.training import ImageTensorDataset

DEFAULT_SEGMENT_AUGMENT: dict[str, Any] = dict(
    type="Albumentations",
    transforms=[
        dict(type="HorizontalFlip", p=0.5),
        dict(type="RandomBrightnessContrast", brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ],
)
"""Flips and mild photometric changes: geometry-preserving, cheap on CPU, masks follow the flips."""


@STAGES.register_module()
class Segmenter(NetworkStage, Segments):
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

    model_types = tuple(ARCHITECTURES)
    reserved_model_keys = {"num_classes": "the classes", "pretrained": "the stage"}

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
        super().__init__(
            name or "segmenter", dict(model or dict(type="Unet")), image_size, epochs, batch_size, lr, weight_decay,
            max_images, seed, pretrained, chunk_size,
        )
        self.dice_weight = float(dice_weight)
        self.augment_cfg = None if augment is None else dict(augment)
        if self.augment_cfg is not None:
            build_augmentation(self.augment_cfg, self.seed)  # fail on a bad config now, not after loading data

    def build_network(self, pretrained: bool) -> torch.nn.Module:
        """A U-Net / DeepLabV3+ with one output channel per class."""
        return build_segmenter(self.model_cfg, len(self.classes), pretrained=pretrained)

    # ------------------------------------------------------------------ data
    def _load(self, records: Sequence[Record], context: FitContext, description: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        """Decode records in chunks; keep images and their CxHxW bool masks at ``image_size``."""
        images: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        problems: list[str] = []
        for sample in context.decoded_samples(records, description, self.chunk_size):
            mask, found = ground_truth_masks(sample.record, sample.image.shape[:2], self.classes, scale=sample.scale)
            problems.extend(found)
            image, mask = self._resize(np.ascontiguousarray(sample.image), mask)
            images.append(image)
            masks.append(np.ascontiguousarray(mask, dtype=bool))
        return images, masks, problems

    # ------------------------------------------------------------------ fit
    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Train the segmenter on the annotated ``train`` records (validation loss on annotated ``val``).

        Returns:
            A JSON-able summary: architecture, classes, image counts, per-class positive pixel share
            of the training masks, annotation problems (first few) and the training summary.
        """
        self.take_classes(context, "segment")
        annotated = self.training_subset(train, has_annotations)
        if not annotated:
            raise ValueError(f"{self.name}: no training record has annotations (mask or polygons) to learn from")
        val_annotated = [r for r in val if has_annotations(r)]
        train_images, train_masks, problems = self._load(annotated, context, f"{self.name}: load train")
        val_images, val_masks, val_problems = self._load(val_annotated, context, f"{self.name}: load val")
        problems.extend(val_problems)
        if not train_images:
            raise ValueError(f"{self.name}: none of the {len(annotated)} annotated training images could be decoded")
        self.log_problems(context, problems)

        self.fresh_network()
        augment = build_augmentation(self.augment_cfg, self.seed)
        train_ds = ImageTensorDataset(train_images, train_masks, self.image_size, transform=augment)
        val_ds = ImageTensorDataset(val_images, val_masks, self.image_size) if val_images else None
        dice_weight = self.dice_weight

        def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return bce_dice_loss(logits, targets, dice_weight=dice_weight)

        training = self.train_network(context, train_ds, val_ds, loss_fn)
        stacked = np.stack(train_masks)
        return self.finish_fit(
            context, training, problems, f"{len(train_images)} images", len(val_images),
            train_images=len(train_images),
            val_images=len(val_images),
            skipped_unannotated=len(train) - len([r for r in train if has_annotations(r)]),
            skipped_undecodable=len(annotated) - len(train_images) + len(val_annotated) - len(val_images),
            positive_pixel_share={c: round(float(stacked[:, i].mean()), 6) for i, c in enumerate(self.classes)},
        )

    # ------------------------------------------------------------------ predict
    def probability_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """CxHxW float32 sigmoid maps in [0, 1] of HxWx3 uint8 images, each at its own resolution."""
        model = self.network().eval()
        out: list[np.ndarray] = []
        for batch, x in self.input_batches(images):
            with torch.no_grad():
                probs = torch.sigmoid(model(x).float())
            for image, p in zip(batch, probs):
                height, width = image.shape[:2]
                if (height, width) != tuple(p.shape[-2:]):
                    p = F.interpolate(p[None], size=(height, width), mode="bilinear", align_corners=False)[0]
                out.append(p.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False))
        return out

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Set ``prob_maps`` (CxHxW float32, image resolution) and ``map_classes`` of active samples."""
        active = self.active_samples(samples)
        for sample, maps in zip(active, self.probability_maps([s.image for s in active])):
            sample.prob_maps = maps
            sample.map_classes = list(self.classes)
        return samples


__all__ = ["DEFAULT_SEGMENT_AUGMENT", "Segmenter", "has_annotations"]
