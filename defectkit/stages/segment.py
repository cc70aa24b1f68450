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
from defectkit.data.sampling import oversampling_sampler
from defectkit.data.transforms import Compose, ForegroundCrop, build_augmentation
from defectkit.errors import ConfigError
from defectkit.heads.segmenter import ARCHITECTURES, BestThresholdIoU, build_segmenter, segmentation_loss
from defectkit.registry import STAGES
from defectkit.sample import Record, Sample
from defectkit.stages.base import Exportable, ExportSpec, FitContext, Segments
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


BEST_EPOCH_CHOICES: dict[str, str] = {"val_loss": "val_loss", "val_iou": "val_score"}
"""The Segmenter's ``best_epoch_by`` names and the training loop's criterion each stands for."""


@STAGES.register_module()
class Segmenter(NetworkStage, Segments, Exportable):
    """Per-class defect probability maps from a U-Net or DeepLabV3+ on EfficientNet-Lite0.

    Fitting: the training records with annotations (mask file or polygons) are decoded in chunks
    through ``context.load_samples`` (so earlier stages, e.g. enhancement, apply), their ground truth
    rasterised per class of ``context.classes`` (:func:`ground_truth_masks`), and both kept at
    ``image_size``. The network (offline ImageNet encoder) is trained with BCE + ``dice_weight`` x
    a region term (``loss``) by the shared Lightning loop (:func:`defectkit.training.fit_head`);
    with annotated validation records the weights of the best validation epoch are kept. With
    ``train_crop`` the network trains on crops of the images kept at ``image_size``
    (:class:`~defectkit.data.transforms.ForegroundCrop`: ``foreground_share`` of them centred on a
    defect of a class drawn uniformly among those present), so ``image_size`` can stay near the
    photos' own resolution, where thin defects keep their width, at the cost per step of the crop.
    Validation then uses one seeded crop per image.

    Prediction: images are resized to ``image_size`` in batches (the network is fully
    convolutional, so a model trained on crops predicts the whole image at once), optionally
    averaged with the horizontally flipped prediction (``tta_flip``), the sigmoid maps resized
    back to each image's resolution (bilinear) and stored as ``sample.prob_maps`` with
    ``sample.map_classes``.

    Args:
        model: Head config: ``dict(type="Unet")`` or ``dict(type="DeepLabV3Plus")`` plus smp keyword
            arguments (e.g. ``decoder_channels``), or ``dict(type="mmseg", config=...)`` for an
            OpenMMLab segmentor (the ``[openmmlab]`` extra, :mod:`defectkit.heads.openmmlab`).
        image_size: ``(height, width)`` images are resized to; multiples of 32.
        epochs: Training epochs.
        batch_size: Images per training step.
        predict_batch_size: Images per prediction batch; None: 2 on the CPU (fastest there,
            measured), ``batch_size`` on a GPU.
        lr: Peak AdamW learning rate (of the decoder and head).
        encoder_lr_ratio: The pretrained encoder's learning rate as a share of ``lr`` (e.g. 0.1 keeps
            its ImageNet features from being overwritten while the new decoder learns); 1: one rate.
        freeze_pretrained_bn: Keep the running statistics of the encoder's batch-norm layers as
            ImageNet left them while the rest trains (their scale and shift still learn).
        frozen_layers: Parameter-name prefixes of layers that keep their pretrained weights and
            statistics for the whole fit, e.g. ``("encoder.model.conv_stem.", "encoder.model.bn1.",
            "encoder.model.blocks.0.", "encoder.model.blocks.1.")``: the Lite0 encoder's stem and
            first two stages (stride 4), whose backward pass each step then skips. Empty: all train.
        weight_decay: AdamW weight decay.
        ema_decay: Keep an exponential moving average of the weights (decay per training step, e.g.
            0.995); validation scores the average and the stage keeps it. None: no average.
        max_minutes: Wall-clock budget of the training epochs (validation included, data loading
            not): after each epoch the epoch count is cut to what fits at the pace so far and the
            schedule ends with it (:func:`~defectkit.training.fit_head`), so a slower machine trains
            fewer epochs. None: exactly ``epochs``.
        dice_weight: Weight of the region term next to BCE (0: BCE only).
        loss: Region term: ``"bce_dice"`` (soft Dice per image), ``"bce_batch_dice"`` (per class over the
            batch), ``"bce_focal_tversky"`` (per image), ``"bce_batch_focal_tversky"`` (per class over
            the batch) or ``"bce_lovasz"`` (see :func:`~defectkit.heads.segmenter.segmentation_loss`).
        train_crop: ``(height, width)`` crops to train on (multiples of 32, at most ``image_size``),
            or None to train on whole images.
        foreground_share: With ``train_crop``, the share of crops centred on a defect.
        oversample: Class-aware sampling of the training images by the classes their masks hold:
            :func:`defectkit.data.sampling.oversampling_sampler` options (e.g.
            ``dict(threshold=0.5, keep_epoch_length=True)``: images of classes in under half of the
            photos drawn more often, at an unchanged number of steps), or None for a plain shuffle.
        progressive_resize: ``dict(scale=..., share=...)``: the first ``share`` of the planned epochs
            train on batches shrunk by ``scale`` (sides rounded to multiples of 32; masks
            area-averaged), the rest at full size (progressive resizing): a low-resolution epoch
            costs a fraction of a full one, so a time budget (``max_minutes``) holds more epochs.
            Validation runs at full size. None: every epoch at full size.
        best_epoch_by: Which validation epoch's weights the stage keeps: ``"val_loss"`` (the lowest
            validation loss) or ``"val_iou"`` (the highest mean over classes of the data-set IoU at
            each class's best threshold, :class:`~defectkit.heads.segmenter.BestThresholdIoU`: what
            the calibrated mask policy will make of the maps). Both are logged for every epoch.
        tta_flip: Average each prediction with that of the horizontally flipped image (twice the
            prediction cost).
        tta_scales: Input scales whose maps are averaged at prediction, relative to ``image_size``
            (each side rounded to a multiple of 32), e.g. ``(1.0, 1.25)``; ``(1.0,)``: one pass.
            Each scale costs a pass (two with ``tta_flip``) of ``scale**2`` times the pixels; the
            photo is resized to that size for the network (exported networks take any size).
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

    # "mmseg": an OpenMMLab segmentor (defectkit.heads.openmmlab; needs the [openmmlab] extra).
    model_types = (*ARCHITECTURES, "mmseg")
    reserved_model_keys = {"num_classes": "the classes", "pretrained": "the stage"}

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        image_size: Sequence[int] = (320, 320),
        epochs: int = 10,
        batch_size: int = 8,
        predict_batch_size: int | None = None,
        lr: float = 1e-3,
        encoder_lr_ratio: float = 1.0,
        freeze_pretrained_bn: bool = False,
        frozen_layers: Sequence[str] = (),
        weight_decay: float = 1e-4,
        ema_decay: float | None = None,
        max_minutes: float | None = None,
        dice_weight: float = 0.5,
        loss: str = "bce_dice",
        train_crop: Sequence[int] | None = None,
        foreground_share: float = 0.67,
        oversample: dict[str, Any] | None = None,
        progressive_resize: dict[str, float] | None = None,
        best_epoch_by: str = "val_loss",
        tta_flip: bool = False,
        tta_scales: Sequence[float] = (1.0,),
        augment: dict[str, Any] | None = DEFAULT_SEGMENT_AUGMENT,
        max_images: int | None = None,
        seed: int = 0,
        pretrained: bool = True,
        chunk_size: int = 32,
        name: str | None = None,
    ) -> None:
        super().__init__(
            name or "segmenter", dict(model or dict(type="Unet")), image_size, epochs, batch_size, lr, weight_decay,
            max_images, seed, pretrained, chunk_size, predict_batch_size=predict_batch_size, ema_decay=ema_decay, max_minutes=max_minutes,
            freeze_pretrained_bn=freeze_pretrained_bn, frozen_layers=frozen_layers,
        )
        self.dice_weight = float(dice_weight)
        self.encoder_lr_ratio = float(encoder_lr_ratio)
        if not 0.0 < self.encoder_lr_ratio <= 1.0:
            raise ConfigError(f"Segmenter encoder_lr_ratio must be in (0, 1], got {encoder_lr_ratio!r}")
        self.loss_name = str(loss)
        segmentation_loss(self.loss_name, self.dice_weight)  # an unknown name fails now
        self.train_crop = None if train_crop is None else (int(train_crop[0]), int(train_crop[1]))
        if self.train_crop is not None and (
            any(v < 32 or v % 32 for v in self.train_crop) or any(c > s for c, s in zip(self.train_crop, self.image_size))
        ):
            raise ConfigError(
                f"Segmenter train_crop must be multiples of 32 no larger than image_size {list(self.image_size)}, "
                f"got {list(self.train_crop)}"
            )
        self.foreground_share = float(foreground_share)
        ForegroundCrop((32, 32), self.foreground_share)  # a share outside [0, 1] fails now
        self.oversample_cfg = None if oversample is None else dict(oversample)
        if self.oversample_cfg is not None:
            self.check_options("oversample", oversampling_sampler, self.oversample_cfg, label_sets=[], seed=0)
        self.progressive_resize = None if progressive_resize is None else dict(progressive_resize)
        if self.progressive_resize is not None:
            keys = set(self.progressive_resize)
            if keys != {"scale", "share"}:
                raise ConfigError(f"Segmenter progressive_resize takes exactly the keys 'scale' and 'share', got {sorted(keys)}")
            if not all(isinstance(v, (int, float)) and 0.0 < v < 1.0 for v in self.progressive_resize.values()):
                raise ConfigError(f"Segmenter progressive_resize scale and share must be numbers in (0, 1), "
                                  f"got {self.progressive_resize}")
        if best_epoch_by not in BEST_EPOCH_CHOICES:
            raise ConfigError(f"Segmenter best_epoch_by must be one of {list(BEST_EPOCH_CHOICES)}, got {best_epoch_by!r}")
        self.best_epoch_by = str(best_epoch_by)
        self.tta_flip = bool(tta_flip)
        self.tta_scales = self.tta_scale_options(tta_scales)
        self.augment_cfg = None if augment is None else dict(augment)
        if self.augment_cfg is not None:
            build_augmentation(self.augment_cfg, self.seed)  # fail on a bad config now, not after loading data

    def pretrained_prefix(self) -> str:
        """The encoder: ``encoder.`` in smp models, ``model.backbone.`` in OpenMMLab segmentors."""
        return "model.backbone." if self.model_cfg["type"] == "mmseg" else "encoder."

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
        if self.train_crop is None:
            train_ds = ImageTensorDataset(train_images, train_masks, self.image_size, transform=augment)
            val_ds = ImageTensorDataset(val_images, val_masks, self.image_size) if val_images else None
        else:
            crop = ForegroundCrop(self.train_crop, self.foreground_share, seed=self.seed)
            train_ds = ImageTensorDataset(train_images, train_masks, self.image_size, transform=Compose([crop, augment]),
                                          output_size=self.train_crop)
            # One seeded crop per validation image: the validation loss stays comparable between
            # epochs and costs a crop's forward pass, not a whole photo's.
            val_crop = ForegroundCrop(self.train_crop, self.foreground_share, seed=self.seed + 1)
            val_pairs = [val_crop(image, mask) for image, mask in zip(val_images, val_masks)]
            val_ds = (ImageTensorDataset([i for i, _ in val_pairs], [m for _, m in val_pairs], self.train_crop)
                      if val_pairs else None)
        sampler = None
        if self.oversample_cfg is not None:
            label_sets = [[c for c, present in zip(self.classes, mask.reshape(len(self.classes), -1).any(1)) if present]
                          for mask in train_masks]
            sampler = oversampling_sampler(label_sets, self.seed, **self.oversample_cfg)
        lr_scales = None if self.encoder_lr_ratio == 1.0 else {self.pretrained_prefix(): self.encoder_lr_ratio}
        training = self.train_network(context, train_ds, val_ds, segmentation_loss(self.loss_name, self.dice_weight),
                                      sampler=sampler, lr_scales=lr_scales, val_score=BestThresholdIoU(),
                                      best_epoch_by=BEST_EPOCH_CHOICES[self.best_epoch_by],
                                      progressive_resize=None if self.progressive_resize is None else
                                      (self.progressive_resize["scale"], self.progressive_resize["share"]))
        stacked = np.stack(train_masks)
        return self.finish_fit(
            context, training, problems, f"{len(train_images)} images", len(val_images),
            loss=self.loss_name,
            encoder_lr_ratio=self.encoder_lr_ratio,
            freeze_pretrained_bn=self.freeze_pretrained_bn,
            oversample=self.oversample_cfg,
            progressive_resize=self.progressive_resize,
            best_epoch_by=self.best_epoch_by,
            train_crop=None if self.train_crop is None else list(self.train_crop),
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
        # Each scale's input size, sides rounded to the encoder's multiple of 32 (1.5 x 288x384 -> 448x576).
        sizes = [None if scale == 1.0 else self.scaled_input_size(scale) for scale in self.tta_scales]
        for batch, x in self.input_batches(images):
            with torch.no_grad():
                passes = []
                for size in sizes:
                    scaled = x if size is None else self.network_input(batch, size)
                    maps = self._flip_averaged(model, scaled)
                    if maps.shape[-2:] != x.shape[-2:]:
                        maps = F.interpolate(maps, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
                    passes.append(maps)
                probs = torch.stack(passes).mean(0) if len(passes) > 1 else passes[0]
            for image, p in zip(batch, probs):
                height, width = image.shape[:2]
                if (height, width) != tuple(p.shape[-2:]):
                    p = F.interpolate(p[None], size=(height, width), mode="bilinear", align_corners=False)[0]
                out.append(p.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False))
        return out

    def _flip_averaged(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid maps of input ``x``, averaged with those of the mirrored input when ``tta_flip``."""
        probs = torch.sigmoid(self.forward(model, x).float())
        if self.tta_flip:
            probs = (probs + torch.sigmoid(self.forward(model, x.flip(-1)).float()).flip(-1)) / 2
        return probs

    def export_module(self, images: Sequence[np.ndarray]) -> ExportSpec:
        """The U-Net / DeepLabV3+ (logits) with its inputs for ``images``; compared as sigmoid maps and 0.5 masks."""
        if self.model_cfg["type"] == "mmseg":
            # mmseg resizes its logits to sizes read as Python numbers, which tracing freezes: an exported
            # file would only take the size it was traced at, not the other sizes tta_scales runs.
            raise ConfigError(f"stage {self.name!r}: export covers the Unet and DeepLabV3Plus heads; an mmseg model runs in PyTorch "
                              f"(predict.runtime=torch)")
        model = self.network("export").eval()
        inputs = torch.cat([x for _, x in self.input_batches(images)]).cpu()
        # Height and width stay free: ``tta_scales`` runs the network at other sizes than ``image_size``
        # (no measurable cost in ONNX Runtime or OpenVINO at the base size, docs/performance.md).
        return ExportSpec(
            module=model, inputs=inputs, dynamic_axes={0: "batch", 2: "height", 3: "width"}, activation=torch.sigmoid, tolerance=1e-3,
            decision=lambda p: p >= 0.5, min_agreement=0.999,
        )

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Set ``prob_maps`` (CxHxW float32, image resolution) and ``map_classes`` of active samples."""
        active = self.active_samples(samples)
        for sample, maps in zip(active, self.probability_maps([s.image for s in active])):
            sample.prob_maps = maps
            sample.map_classes = list(self.classes)
        return samples


__all__ = ["DEFAULT_SEGMENT_AUGMENT", "Segmenter", "has_annotations"]
