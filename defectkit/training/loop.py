"""The one supervised training loop every trainable head uses, built on Lightning.

A head is any ``nn.Module`` mapping an NCHW batch to outputs; a loss is any callable
``(outputs, targets) -> scalar tensor``. Heads that compute their own loss (torchvision's detectors:
``head(images, targets)`` returns a dict of loss terms in train mode) are trained with
``loss_fn=None``. :func:`fit_head` wraps head and loss in :class:`HeadModule` and runs a quiet CPU
``lightning.Trainer`` (AdamW, or Adam with L2 weight decay; a cosine or constant learning rate per
step; optional gradient-norm clipping, frozen-backbone warm-up, an exponential moving average of the
weights and restore of the best validation epoch). :class:`ImageTensorDataset` turns in-memory
``(HxWx3 uint8 image, target)`` pairs into tensors with the backbones' [-1, 1] scaling; targets may be
class indices (classifiers) or HxW / CxHxW masks (segmenters), which are resized and augmented
together with the image. :class:`BoxTensorDataset` does the same for images with boxes (detectors).

Example:
    >>> from torch import nn
    >>> from defectkit.training import ImageTensorDataset, fit_head
    >>> train = ImageTensorDataset(images, labels, size=(64, 64))            # doctest: +SKIP
    >>> head = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    >>> summary = fit_head(head, train, None, nn.CrossEntropyLoss(), epochs=2, batch_size=8)  # doctest: +SKIP
    >>> summary["train_loss"]                                                # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

# Lightning's import prints nothing, but its Trainer logs "GPU available..." banners; those are
# silenced per fit by :func:`_quiet_lightning`.
import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from defectkit.data.transforms import Resize
from defectkit.heads.backbones import to_input_tensor
from defectkit.runtime import lightning_accelerator, memory_format, training_precision

LossFn = Callable[[Any, Any], torch.Tensor]
ProgressFactory = Callable[[str, int], Callable[[int], None]]
ImageTransform = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]
BoxTransform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class ImageTensorDataset(Dataset):
    """In-memory ``(image, target)`` pairs as ``(3xHxW float tensor in [-1, 1], target tensor)``.

    Images are resized to ``size`` once, at construction (memory stays bounded by the training
    size, not the photo size); each ``__getitem__`` then applies ``transform`` (augmentation) and
    converts like :func:`defectkit.heads.backbones.to_input_tensor`.

    Targets:
        * an ``int`` (class index) becomes a ``torch.long`` scalar;
        * a float / float array becomes a ``torch.float32`` tensor (regression, soft labels);
        * a HxW or CxHxW mask array (same height/width as its image) is resized with nearest
          neighbour, augmented with the image, and returned as ``torch.long`` (HxW integer class
          map) or ``torch.float32`` (bool masks, CxHxW multi-label masks).

    Args:
        images: HxWx3 uint8 RGB images (any size; grey HxW images are repeated to 3 channels).
        targets: One target per image.
        size: ``(height, width)`` every image (and mask) is resized to.
        transform: Optional ``(image, mask) -> (image, mask)`` (see :mod:`defectkit.data.transforms`),
            applied per access after resizing; if its result is not ``output_size``, it is resized to it.
        output_size: ``(height, width)`` of the items (default: ``size``); smaller than ``size``
            when ``transform`` crops (e.g. :class:`~defectkit.data.transforms.ForegroundCrop`), so
            the network trains on crops of images kept at ``size``.

    Example:
        >>> images = [np.zeros((40, 50, 3), np.uint8), np.full((30, 30, 3), 255, np.uint8)]
        >>> ds = ImageTensorDataset(images, [0, 1], size=(32, 32))
        >>> x, y = ds[1]
        >>> tuple(x.shape), float(x.max()), int(y)
        ((3, 32, 32), 1.0, 1)
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        targets: Sequence[Any],
        size: Sequence[int],
        transform: ImageTransform | None = None,
        output_size: Sequence[int] | None = None,
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets")
        self.size = (int(size[0]), int(size[1]))
        self.output_size = self.size if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.transform = transform
        self._resize = Resize(self.size)
        self._resize_output = Resize(self.output_size)
        self.images: list[np.ndarray] = []
        self.targets: list[Any] = []
        for image, target in zip(images, targets):
            image = np.asarray(image)
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            mask = _as_mask(target)
            if image.shape[:2] != self.size:
                image, mask = self._resize(np.ascontiguousarray(image), mask)
            self.images.append(image)
            self.targets.append(mask if mask is not None else target)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.images[index], self.targets[index]
        mask = _as_mask(target)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        if image.shape[:2] != self.output_size:
            image, mask = self._resize_output(np.ascontiguousarray(image), mask)
        x = to_input_tensor(np.ascontiguousarray(image)[None])[0]
        return x, _target_tensor(mask if mask is not None else target)


def _as_mask(target: Any) -> np.ndarray | None:
    """The target as a mask array when it is one (2-D or 3-D array), else None."""
    if isinstance(target, np.ndarray) and target.ndim in (2, 3):
        return target
    return None


def _target_tensor(target: Any) -> torch.Tensor:
    """Class indices -> long, bool/multi-label masks and floats -> float32, integer HxW maps -> long."""
    if isinstance(target, torch.Tensor):
        return target
    if isinstance(target, (bool, np.bool_)):
        return torch.tensor(float(target))
    if isinstance(target, (int, np.integer)):
        return torch.tensor(int(target), dtype=torch.long)
    if isinstance(target, (float, np.floating)):
        return torch.tensor(float(target), dtype=torch.float32)
    array = np.ascontiguousarray(target)
    # A CxHxW mask is multi-label (BCE-style float targets); an integer HxW map holds class indices.
    if array.dtype == bool or array.ndim == 3 or np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(array.astype(np.float32))
    return torch.from_numpy(array.astype(np.int64))


class EpochAware:
    """Ability of a head whose training depends on the epoch; the loop calls :meth:`set_epoch` as each epoch starts.

    E.g. mmdet's TOOD assigns labels with ATSS for its first epochs, then task-aligned, reading the
    epoch where mmengine's Runner would have put it (:class:`~defectkit.heads.openmmlab.MMDetDetector`).
    """

    def set_epoch(self, epoch: int) -> None:
        """Training epoch ``epoch`` (0-based) starts."""
        raise NotImplementedError

    def loss_comparable_from(self) -> int:
        """First epoch from which validation losses compare with later ones (the loss itself may change before it).

        The loop keeps the weights of the best validation epoch only among these: TOOD's focal
        loss of its ATSS epochs and its quality focal loss afterwards are on different scales.
        """
        return 0


class ValidationScore:
    """A score of a head's validation outputs (higher is better), kept per epoch in the fit's history.

    With ``fit_head(..., best_epoch_by="val_score")`` it, not the validation loss, picks the epoch
    whose weights the head keeps: a loss can keep falling (or rising) for reasons the task's metric
    does not share, e.g. a segmenter's BCE grows with its confidence while its masks still improve.
    The loop calls :meth:`reset` before each validation pass, :meth:`update` with every batch's
    outputs and targets, and :meth:`compute` after the pass.
    """

    name: str = "val_score"
    """How the score is called in the epoch log lines."""

    def reset(self) -> None:
        """Forget the previous validation pass."""
        raise NotImplementedError

    def update(self, outputs: Any, targets: Any) -> None:
        """Count one validation batch: the head's outputs and the batch's targets."""
        raise NotImplementedError

    def compute(self) -> float | None:
        """The score of the pass so far; None when there was nothing to score (e.g. no positives)."""
        raise NotImplementedError


BEST_EPOCH_CRITERIA = ("val_loss", "val_score")
"""What :func:`fit_head`'s ``best_epoch_by`` can select the kept epoch by."""


def head_loss(head: nn.Module, x: Any, targets: Any) -> torch.Tensor:
    """The loss of a head that computes its own: ``head(x, targets)``, a scalar or a dict of terms (summed).

    torchvision's detectors return their loss terms only in train mode. In eval mode (validation)
    only the head's own ``training`` flag is switched on for the call, not its children's: the loss
    is computed while batch norm keeps its running statistics and dropout stays off.

    Example:
        >>> class Toy(nn.Module):
        ...     def forward(self, x, targets):
        ...         return {"a": x.sum(), "b": torch.tensor(1.0)} if self.training else [x]
        >>> float(head_loss(Toy().eval(), torch.ones(2), None))
        3.0
    """
    if head.training:
        out = head(x, targets)
    else:
        head.training = True
        try:
            out = head(x, targets)
        finally:
            head.training = False
    return sum(out.values()) if isinstance(out, dict) else out  # type: ignore[return-value]


def resize_with_boxes(image: np.ndarray, boxes: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` resized to ``size`` (``(height, width)``) and its Nx4 xyxy pixel-edge boxes scaled with it.

    Example:
        >>> image, boxes = resize_with_boxes(np.zeros((50, 100, 3), np.uint8), np.array([[10, 10, 20, 30]]), (100, 100))
        >>> image.shape, boxes.tolist()
        ((100, 100, 3), [[10.0, 20.0, 20.0, 60.0]])
    """
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if (height, width) == (int(size[0]), int(size[1])):
        return image, boxes
    resized, _ = Resize(size)(np.ascontiguousarray(image))
    factor = np.asarray([size[1] / width, size[0] / height] * 2, dtype=np.float32)
    return resized, boxes * factor


class BoxTensorDataset(Dataset):
    """In-memory images with boxes as ``(3xHxW float tensor in [-1, 1], {"boxes", "labels"})`` pairs.

    The targets are what torchvision's detectors take in train mode: ``boxes`` Nx4 float32 xyxy in
    pixels of the (resized) image, ``labels`` N int64 class indices. Images are resized to ``size``
    once, at construction, boxes scaled with them; each ``__getitem__`` then applies ``transform``
    (e.g. copy-paste, then a box-aware augmentation), clips the boxes to the image and drops those
    narrower or lower than ``min_box_size`` pixels (cropped away, or too small to learn from), so
    every target is valid for the detector.

    Args:
        images: HxWx3 uint8 RGB images (any size).
        boxes: Per image, Nx4 xyxy pixel-edge boxes in that image's coordinates (N may be 0).
        labels: Per image, N class indices.
        size: ``(height, width)`` every image is resized to.
        transform: Optional ``(image, boxes, labels) -> (image, boxes, labels)``, applied per access
            after resizing; if it changes the size, the result is resized back.
        min_box_size: Boxes with a side shorter than this (pixels, at ``size``) are dropped.

    Example:
        >>> ds = BoxTensorDataset([np.zeros((40, 80, 3), np.uint8)], [np.array([[8, 4, 24, 20]])], [np.array([0])],
        ...                       size=(40, 40))
        >>> x, target = ds[0]
        >>> tuple(x.shape), target["boxes"].tolist(), target["labels"].tolist()
        ((3, 40, 40), [[4.0, 4.0, 12.0, 20.0]], [0])
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        size: Sequence[int],
        transform: BoxTransform | None = None,
        min_box_size: float = 1.0,
    ) -> None:
        if not len(images) == len(boxes) == len(labels):
            raise ValueError(f"got {len(images)} images, {len(boxes)} box arrays and {len(labels)} label arrays")
        self.size = (int(size[0]), int(size[1]))
        self.transform = transform
        self.min_box_size = float(min_box_size)
        self.images: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        for image, image_boxes, image_labels in zip(images, boxes, labels):
            image_labels = np.asarray(image_labels, dtype=np.int64).reshape(-1)
            image, image_boxes = resize_with_boxes(np.asarray(image), image_boxes, self.size)
            if len(image_boxes) != len(image_labels):
                raise ValueError(f"got {len(image_boxes)} boxes but {len(image_labels)} labels for one image")
            self.images.append(image)
            self.boxes.append(image_boxes)
            self.labels.append(image_labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, boxes, labels = self.images[index], self.boxes[index].copy(), self.labels[index].copy()
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes, labels)
            image, boxes = resize_with_boxes(image, boxes, self.size)
        height, width = self.size
        limits = np.asarray([width, height, width, height], dtype=np.float32)
        boxes = np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0, limits).astype(np.float32, copy=False)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        x = to_input_tensor(np.ascontiguousarray(image)[None])[0]
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep])),
            "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1)[keep]),
        }
        return x, target


def collate_boxes(items: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Batch :class:`BoxTensorDataset` items: stacked NCHW images and the list of per-image targets."""
    return torch.stack([x for x, _ in items]), [target for _, target in items]


OPTIMIZERS = ("adamw", "adam")
"""Optimizers :func:`fit_head` can use: AdamW (decoupled weight decay) or Adam (L2 weight decay, as some
released recipes train, e.g. Zero-DCE)."""

SCHEDULES = ("cosine", "constant")
"""Per-step learning-rate schedules after the warm-up: cosine decay to ``lr * min_lr_ratio``, or constant ``lr``."""


def low_resolution_batch(x: torch.Tensor, targets: Any, scale: float) -> tuple[torch.Tensor, Any]:
    """An image batch (and its masks) shrunk by ``scale``, each side rounded to a multiple of 32 (at least 32).

    Training the first epochs on such batches (progressive resizing) costs a fraction of a
    full-size epoch's compute. Mask targets of the images' size are shrunk with them: float masks
    (multi-label, ``B x C x H x W``) by area averaging, so a thin defect stays as a fractional target
    instead of vanishing between sampled pixels; integer class maps (``B x H x W``) by nearest
    neighbour. Per-image targets (class indices, scores) stay as they are.

    Raises:
        ValueError: Targets that are neither masks of the images' size nor one value per image
            (e.g. detection boxes, which this does not rescale).

    Example:
        >>> x, y = low_resolution_batch(torch.zeros(2, 3, 96, 128), torch.zeros(2, 4, 96, 128), 0.5)
        >>> tuple(x.shape), tuple(y.shape)
        ((2, 3, 64, 64), (2, 4, 64, 64))
    """
    height, width = x.shape[-2:]
    size = tuple(max(32, int(round(side * scale / 32)) * 32) for side in (height, width))
    small = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    if not isinstance(targets, torch.Tensor) or (targets.ndim > 1 and tuple(targets.shape[-2:]) != (height, width)):
        raise ValueError("progressive_resize shrinks image batches with their mask targets or per-image labels; "
                         f"got targets of type {type(targets).__name__}")
    if targets.ndim == 1:
        return small, targets
    if targets.is_floating_point():
        masks = targets if targets.ndim == 4 else targets[:, None]
        masks = F.interpolate(masks, size=size, mode="area")
        return small, masks if targets.ndim == 4 else masks[:, 0]
    classes = F.interpolate(targets[:, None].float(), size=size, mode="nearest")[:, 0]
    return small, classes.to(targets.dtype)


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


class HeadModule(pl.LightningModule):
    """Generic LightningModule: a head, a loss, AdamW (or Adam) with a per-step cosine (or constant) schedule.

    Train and validation losses are averaged per epoch over samples (not batches) and kept in
    :attr:`history`, so :func:`fit_head` needs no logger.

    Args:
        head: The network; ``head(x)`` gives what ``loss_fn`` takes.
        loss_fn: ``(outputs, targets) -> loss``; None: the head computes its own loss
            (:func:`head_loss`).
        lr: Peak learning rate.
        weight_decay: Weight decay (decoupled for AdamW, an L2 term for Adam).
        min_lr_ratio: The cosine schedule ends at ``lr * min_lr_ratio``.
        warmup_steps: Linear warm-up steps before the schedule (0 = none).
        optimizer: One of :data:`OPTIMIZERS`.
        schedule: One of :data:`SCHEDULES`.
        log: Called with one line per finished epoch (losses, seconds), e.g. ``FitContext.log``;
            progress bars do not show in redirected output, these lines do.
        description: Prefix of those lines.
        lr_scales: Parameter-name prefixes mapped to a factor of ``lr`` for the parameters whose
            names start with them (e.g. ``{"encoder.": 0.1}``); the schedule scales every group alike.
        frozen_norms: Module-name prefixes whose batch-norm layers keep their running statistics:
            they normalise in eval mode while the rest trains (their scale and shift still learn),
            like mmdet's ``norm_eval`` for a pretrained backbone trained in small batches.
        frozen_layers: Parameter-name prefixes of layers that do not train at all (e.g. a
            pretrained encoder's stem and first stages, as mmdet's ``frozen_stages``): their batch
            norms keep their statistics too. :func:`fit_head` turns their gradients off for the fit.
        ema_decay: Keep an exponential moving average of the head's weights and buffers, updated
            after every optimizer step with this decay (warmed up as ``min(decay, (1 + n) / (10 + n))``
            after ``n`` updates, so early, poor weights fade fast); validation scores the average,
            and the best epoch's state is the average's. None: no average.
        max_minutes: Wall-clock budget of the fit (training and validation epochs). After every
            epoch the planned epoch count becomes what fits in the budget at the mean pace so far
            (at most the epochs the trainer was given), and the schedule is stretched or shrunk to
            end with it; an epoch that no longer fits is not started. None: the trainer's epochs.
        val_score: Scored on every validation pass and kept in :attr:`history` as ``val_score``
            (needs ``loss_fn``: the score reads the head's outputs). None: no score.
        best_epoch_by: ``"val_loss"`` (lowest) or ``"val_score"`` (highest ``val_score``): which
            epoch's weights :attr:`best_state` holds (:data:`BEST_EPOCH_CRITERIA`).
        progressive_resize: ``(scale, share)``: the first ``share`` of the planned epochs train on
            image batches shrunk by ``scale`` (see :func:`low_resolution_batch`), the rest at full
            size; validation always runs at full size. None: every epoch at full size.

    Example:
        >>> module = HeadModule(nn.Linear(4, 2), nn.CrossEntropyLoss(), lr=1e-3)
        >>> module(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        head: nn.Module,
        loss_fn: LossFn | None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        min_lr_ratio: float = 0.01,
        warmup_steps: int = 0,
        log: Callable[[str], None] | None = None,
        description: str = "training",
        optimizer: str = "adamw",
        schedule: str = "cosine",
        lr_scales: Mapping[str, float] | None = None,
        frozen_norms: Sequence[str] = (),
        frozen_layers: Sequence[str] = (),
        ema_decay: float | None = None,
        max_minutes: float | None = None,
        val_score: ValidationScore | None = None,
        best_epoch_by: str = "val_loss",
        progressive_resize: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if progressive_resize is not None:
            scale, share = (float(v) for v in progressive_resize)
            if not (0.0 < scale < 1.0 and 0.0 < share < 1.0):
                raise ValueError(f"progressive_resize must be (scale, share) with both in (0, 1), got {progressive_resize}")
            progressive_resize = (scale, share)
        self.progressive_resize = progressive_resize
        # Seconds of each finished epoch (validation included) and whether it trained at low resolution.
        self._epoch_seconds: list[tuple[bool, float]] = []
        # Once an epoch has trained at full size, none goes back to low resolution, even if the
        # time budget's plan grows and its share of low-resolution epochs with it.
        self._full_size_started = False
        self.best_epoch_by = _check_choice("best_epoch_by", best_epoch_by, BEST_EPOCH_CRITERIA)
        if val_score is None and self.best_epoch_by == "val_score":
            raise ValueError('best_epoch_by="val_score" needs a val_score')
        if val_score is not None and loss_fn is None:
            raise ValueError("a val_score reads the head's outputs, so it needs a loss_fn (a head that computes "
                             "its own loss returns no outputs while validating)")
        self.val_score = val_score
        if max_minutes is not None and not float(max_minutes) > 0:
            raise ValueError(f"max_minutes must be > 0 or None, got {max_minutes}")
        self.max_minutes = None if max_minutes is None else float(max_minutes)
        # Set when the fit starts: the epochs asked for, the scheduler's total steps (the time
        # budget may change it) and the fit's start time.
        self.requested_epochs = 0
        self.total_steps = 1
        self._fit_start = time.perf_counter()
        if ema_decay is not None and not 0.0 < float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        # Built when the fit starts, after the head reached its device and memory layout.
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None
        self.optimizer_name = _check_choice("optimizer", optimizer, OPTIMIZERS)
        self.schedule = _check_choice("schedule", schedule, SCHEDULES)
        self.log_line = log
        self.description = description
        self._epoch_start = time.perf_counter()
        self.head = head
        self.loss_fn = loss_fn
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.min_lr_ratio = float(min_lr_ratio)
        self.warmup_steps = int(warmup_steps)
        self.lr_scales = {str(k): float(v) for k, v in (lr_scales or {}).items()}
        for prefix, scale in self.lr_scales.items():
            if not scale > 0:
                raise ValueError(f"lr_scales[{prefix!r}] must be > 0, got {scale}")
        for option, prefixes in (("lr_scales", self.lr_scales), ("frozen_layers", frozen_layers)):
            for prefix in unmatched_prefixes(head, prefixes):
                raise ValueError(f"{option}: no parameter name of the head starts with {prefix!r}")
        self.frozen_layers = tuple(str(p) for p in frozen_layers)
        # A frozen layer's batch norms keep their statistics as well: features that drift with the
        # batches would change what the trained layers above them learnt from.
        self.frozen_norms = _frozen_batch_norms(head, frozen_norms)
        self.frozen_norms += [m for name, m in head.named_modules() if f"{name}.".startswith(self.frozen_layers)
                              and isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in self.frozen_norms]
        self.history: list[dict[str, float | int | None]] = []
        self.memory_format = torch.contiguous_format
        self._sums = {"train": [0.0, 0], "val": [0.0, 0]}
        # The best epoch so far by best_epoch_by (as a value to minimise: the loss, or minus the
        # score) and a CPU copy of the head's weights at it (see fit_head's restore_best). Tracked
        # here, not in a callback: callbacks' epoch-end hooks run before the module's, so a callback
        # would see the previous epoch's history.
        self._best_criterion = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(x)

    def evaluated_head(self) -> nn.Module:
        """The weights validation scores: the moving average with ``ema_decay``, else the head itself."""
        return self.head if self.averaged is None else self.averaged.module

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        self.requested_epochs = int(self.trainer.max_epochs or 1)
        if self.ema_decay is not None:
            self.averaged = torch.optim.swa_utils.AveragedModel(self.head, multi_avg_fn=_ema_average(self.ema_decay),
                                                                use_buffers=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.averaged is not None:
            self.averaged.update_parameters(self.head)

    def train(self, mode: bool = True) -> HeadModule:
        """Train or eval mode, except that the :attr:`frozen_norms` stay in eval mode (statistics fixed)."""
        super().train(mode)
        for norm in self.frozen_norms:
            norm.eval()
        return self

    def _step(self, batch: tuple[torch.Tensor, Any], split: str) -> torch.Tensor:
        x, y = batch
        if split == "train" and self.trains_at_low_resolution(int(self.current_epoch)):
            assert self.progressive_resize is not None
            x, y = low_resolution_batch(x, y, self.progressive_resize[0])
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=self.memory_format)
        head = self.head if split == "train" else self.evaluated_head()
        if self.loss_fn is None:
            loss = head_loss(head, x, y)
        else:
            outputs = head(x)
            loss = self.loss_fn(outputs, y)
            if split == "val" and self.val_score is not None:
                self.val_score.update(outputs.detach(), y)
        n = len(x)
        self._sums[split][0] += float(loss.detach()) * n
        self._sums[split][1] += n
        return loss

    def training_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_epoch_start(self) -> None:
        self._sums["train"] = [0.0, 0]
        if isinstance(self.head, EpochAware):
            self.head.set_epoch(int(self.current_epoch))
        self._epoch_start = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._sums["val"] = [0.0, 0]
        if self.val_score is not None:
            self.val_score.reset()

    def on_train_epoch_end(self) -> None:
        # Lightning runs validation before on_train_epoch_end, so both means of this epoch exist here.
        train_sum, train_n = self._sums["train"]
        val_sum, val_n = self._sums["val"]
        val_loss = val_sum / val_n if val_n else None
        epoch: dict[str, float | int | None] = {
            "epoch": int(self.current_epoch),
            "train_loss": train_sum / train_n if train_n else None,
            "val_loss": val_loss,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self.trainer.optimizers else None,
        }
        if self.val_score is not None:
            epoch["val_score"] = self.val_score.compute() if val_n else None
        low_res = self.trains_at_low_resolution(int(self.current_epoch))
        self._full_size_started = not low_res
        if self.progressive_resize is not None:
            epoch["low_resolution"] = low_res
        self.history.append(epoch)
        now = time.perf_counter()
        self._epoch_seconds.append((low_res, now - self._fit_start - sum(s for _, s in self._epoch_seconds)))
        self._sums["val"] = [0.0, 0]
        if self.max_minutes is not None:
            self._fit_epochs_to_budget()
        comparable = not isinstance(self.head, EpochAware) or self.current_epoch >= self.head.loss_comparable_from()
        score = epoch.get("val_score")
        criterion = val_loss if self.best_epoch_by == "val_loss" else (None if score is None else -float(score))
        if criterion is not None and comparable and criterion < self._best_criterion:
            self._best_criterion, self.best_epoch = criterion, int(self.current_epoch)
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.evaluated_head().state_dict().items()}
        if self.log_line is not None:
            val = "" if val_loss is None else f", val loss {val_loss:.4f}"
            if score is not None:
                val += f", {self.val_score.name} {score:.4f}"  # type: ignore[union-attr]
            scale = f" at {self.progressive_resize[0]:g}x size" if low_res and self.progressive_resize else ""
            self.log_line(
                f"{self.description}: epoch {int(self.current_epoch) + 1}/{self.trainer.max_epochs} "
                f"train loss{scale} {epoch['train_loss']:.4f}{val} ({time.perf_counter() - self._epoch_start:.0f} s)"
            )

    def low_resolution_epochs(self, planned: int) -> int:
        """How many of ``planned`` epochs train at low resolution (the first ones; 0 without ``progressive_resize``).

        A plan made after the first full-size epoch changes nothing: the low-resolution phase is over.
        """
        return 0 if self.progressive_resize is None else int(self.progressive_resize[1] * planned + 0.5)

    def trains_at_low_resolution(self, epoch: int) -> bool:
        """Whether training epoch ``epoch`` (0-based) of the current plan trains on shrunk batches."""
        if self.progressive_resize is None or self._full_size_started:
            return False
        return epoch < self.low_resolution_epochs(int(self.trainer.max_epochs or 1))

    def _fit_epochs_to_budget(self) -> None:
        """Plan as many epochs as fit in :attr:`max_minutes` at the pace so far, and the schedule to match.

        The pace is the mean seconds per epoch, kept apart for low-resolution and full-size epochs
        under ``progressive_resize``. Until a full-size epoch has run, its pace is guessed as the
        low one divided by ``scale**2`` (the pixels it adds); the plan is redone with the measured
        pace after every epoch, and an epoch that no longer fits is not started.
        """
        assert self.max_minutes is not None
        done = int(self.current_epoch) + 1
        elapsed = time.perf_counter() - self._fit_start
        low = [seconds for is_low, seconds in self._epoch_seconds if is_low]
        full = [seconds for is_low, seconds in self._epoch_seconds if not is_low]
        scale = self.progressive_resize[0] if self.progressive_resize is not None else 1.0
        # max(..., 1e-6): a coarse clock can read 0.
        full_pace = max(sum(full) / len(full) if full else sum(low) / len(low) / scale**2, 1e-6)
        low_pace = max(sum(low) / len(low) if low else full_pace * scale**2, 1e-6)
        left = self.max_minutes * 60.0 - elapsed
        planned = done
        for candidate in range(max(done, self.requested_epochs), done, -1):
            cut = 0 if self._full_size_started else self.low_resolution_epochs(candidate)
            if sum(low_pace if epoch < cut else full_pace for epoch in range(done, candidate)) <= left:
                planned = candidate
                break
        if planned == self.trainer.max_epochs:
            return
        self.trainer.fit_loop.max_epochs = planned
        # The step factor reads total_steps, so the cosine decay now ends with the last planned epoch.
        self.total_steps = max(1, planned * int(self.trainer.num_training_batches))
        if self.log_line is not None:
            pace = f"{full_pace:.0f} s per epoch" if not low else f"{low_pace:.0f} s per low-resolution and {full_pace:.0f} s per full-size epoch"
            self.log_line(f"{self.description}: {planned} of {self.requested_epochs} epochs fit in the "
                          f"{self.max_minutes:g} min budget at {pace}")

    def configure_optimizers(self) -> dict[str, Any]:
        # Every parameter goes to the optimizer, frozen or not: Adam(W) skips parameters whose grad is
        # None, so a backbone frozen for the first epochs joins training without rebuilding anything.
        kind = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        optimizer = kind(self._parameter_groups(), lr=self.lr, weight_decay=self.weight_decay)
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup, floor, constant = min(self.warmup_steps, self.total_steps - 1), self.min_lr_ratio, self.schedule == "constant"

        def factor(step: int) -> float:
            """Linear warm-up, then cosine from 1 to ``min_lr_ratio`` over the remaining steps (or constant 1)."""
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if constant:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


    def _parameter_groups(self) -> list[dict[str, Any]]:
        """One group at ``lr``, plus one per ``lr_scales`` prefix (the first matching prefix wins)."""
        groups: dict[str, list[nn.Parameter]] = {"": []}
        for name, parameter in self.head.named_parameters():
            prefix = next((p for p in self.lr_scales if name.startswith(p)), "")
            groups.setdefault(prefix, []).append(parameter)
        return [{"params": params, "lr": self.lr * self.lr_scales.get(prefix, 1.0)}
                for prefix, params in groups.items() if params]


def _ema_average(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """``AveragedModel``'s ``multi_avg_fn``: an exponential moving average whose decay warms up over the first updates.

    ``AveragedModel`` calls it once per device and dtype group, so the update count is read once per
    group, not per tensor (on CUDA each read waits for the device). Integer buffers (batch norm's
    ``num_batches_tracked``) follow the trained network.
    """

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            for kept, now in zip(averaged, current):
                kept.copy_(now)
            return
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        for kept, now in zip(averaged, current):
            kept.lerp_(now, weight)

    return average


def unmatched_prefixes(head: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """The ``prefixes`` that start no parameter name of ``head`` (a misspelt prefix must not select nothing silently).

    Example:
        >>> unmatched_prefixes(nn.Sequential(nn.Linear(2, 2)), ["0.", "encoder."])
        ['encoder.']
    """
    names = [name for name, _ in head.named_parameters()]
    return [prefix for prefix in prefixes if not any(name.startswith(prefix) for name in names)]


def _frozen_batch_norms(head: nn.Module, prefixes: Sequence[str]) -> list[nn.Module]:
    """The batch-norm layers of ``head`` whose module names start with one of ``prefixes``.

    Raises:
        ValueError: A prefix names no batch-norm layer (a misspelt prefix must not freeze nothing silently).
    """
    norms = {name: m for name, m in head.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in norms):
            raise ValueError(f"frozen_norms: no batch-norm layer of the head is named with the prefix {prefix!r}")
    return [m for name, m in norms.items() if name.startswith(tuple(prefixes))]


class _ProgressCallback(pl.Callback):
    """Advances a defectkit progress bar (``FitContext.progress``) once per training batch.

    The bar's total is the requested epochs' batches; a time budget that ends the fit earlier
    completes it at the end, so a finished fit never leaves a bar standing part-way.
    """

    def __init__(self, advance: Callable[[int], None], total: int) -> None:
        self.advance, self.total, self.done = advance, int(total), 0

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        self.advance(1)
        self.done += 1

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.done < self.total:
            self.advance(self.total - self.done)
            self.done = self.total


class _FreezeCallback(pl.Callback):
    """Freezes the parameters ``frozen(name)`` selects for the first ``epochs`` epochs (e.g. a backbone)."""

    def __init__(self, frozen: Callable[[str], bool], epochs: int) -> None:
        self.frozen, self.epochs = frozen, int(epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        freeze = trainer.current_epoch < self.epochs
        for name, param in module.head.named_parameters():
            if self.frozen(name):
                param.requires_grad_(not freeze)
                if freeze:
                    param.grad = None


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banners and its data-loader hints for one fit, then restore everything."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            # "does not have many workers", "no val_dataloader", "small number of batches": deliberate
            # on CPU with tiny data, and noise in a CLI's output.
            warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
            warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers|log_every_n_steps).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        # Trainer(deterministic=True) switches torch's global flag on for good; give it back.
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def fit_head(
    head: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    loss_fn: LossFn | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 1e-4,
    num_workers: int = 0,
    progress: ProgressFactory | None = None,
    description: str = "training",
    seed: int = 0,
    frozen: Callable[[str], bool] | None = None,
    freeze_epochs: int = 0,
    restore_best: bool = False,
    warmup_steps: int = 0,
    deterministic: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    sampler: Sampler | None = None,
    log: Callable[[str], None] | None = None,
    device: torch.device | None = None,
    optimizer: str = "adamw",
    schedule: str = "cosine",
    gradient_clip_val: float | None = None,
    lr_scales: Mapping[str, float] | None = None,
    frozen_norms: Sequence[str] = (),
    frozen_layers: Sequence[str] = (),
    ema_decay: float | None = None,
    max_minutes: float | None = None,
    val_score: ValidationScore | None = None,
    best_epoch_by: str = "val_loss",
    progressive_resize: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Train ``head`` in place with Lightning (on ``device``) and return a JSON-able summary.

    Args:
        head: The network (trained in place; left in ``eval()`` mode).
        train_dataset: Yields ``(input tensor, target)``; shuffled each epoch with ``seed``.
        val_dataset: Evaluated after every epoch (None or empty: no validation).
        loss_fn: ``(head(x), targets) -> scalar loss``; None when the head computes its own loss
            (``head(x, targets)``, e.g. torchvision detectors; see :func:`head_loss`).
        epochs: Training epochs.
        batch_size: Samples per step (the last, smaller batch is kept).
        lr: Peak learning rate (of the cosine schedule; the rate itself with ``schedule="constant"``).
        weight_decay: Weight decay (decoupled for AdamW, an L2 term for Adam).
        num_workers: DataLoader worker processes (0 = load in the training process).
        progress: ``FitContext.progress``-style factory ``(description, total) -> advance(n)``; the
            bar advances once per training batch. None: no progress output at all.
        description: Progress bar label.
        seed: Seeds shuffling, dropout and initialisation (``seed_everything``).
        frozen: Selects parameter names (of ``head``) to freeze for the first ``freeze_epochs``.
        freeze_epochs: Epochs with the ``frozen`` parameters frozen (e.g. warm up a new classifier).
        restore_best: Load the weights of the best validation epoch (``best_epoch_by``) at the end.
        warmup_steps: Linear learning-rate warm-up steps.
        deterministic: Ask torch for deterministic algorithms during the fit (cheap on CPU).
        collate_fn: Batches a list of dataset items (default: stack tensors); detection targets of
            different lengths need :func:`collate_boxes`.
        sampler: Draws the training items of an epoch instead of a seeded shuffle (e.g. a
            ``WeightedRandomSampler`` that oversamples rare classes; seed its own generator).
        log: Receives one line per finished epoch (``"<description>: epoch 3/8 train loss ...,
            val loss ... (41 s)"``), e.g. ``FitContext.log``. None: silent.
        device: Where to train (:func:`defectkit.runtime.resolve_device`); None: the CPU. On CUDA
            with mixed precision; image batches in channels-last layout. The head is left on the
            CPU afterwards (stages move it where they predict).
        optimizer: ``"adamw"`` or ``"adam"`` (:data:`OPTIMIZERS`).
        schedule: ``"cosine"`` (decay to 1 % of ``lr``) or ``"constant"`` (:data:`SCHEDULES`), after the warm-up.
        gradient_clip_val: Clip the global gradient norm of every step to this (None: no clipping).
        lr_scales: Parameter-name prefixes of ``head`` mapped to a factor of ``lr`` (e.g.
            ``{"encoder.": 0.1}``: a pretrained encoder learns at a tenth of the new decoder's rate).
        frozen_norms: Module-name prefixes of ``head`` whose batch-norm layers keep their running
            statistics (e.g. ``("encoder.",)``: the ImageNet statistics of a pretrained encoder,
            which batches of a few images estimate poorly); their scale and shift still learn.
            Every other module trains in train mode, however ``head`` was left before the fit.
        frozen_layers: Parameter-name prefixes of ``head`` whose parameters do not train for the
            whole fit (``frozen`` cannot release them), batch-norm statistics included, e.g. the
            stem and first stages of a pretrained encoder: no gradient flows below the lowest
            trained layer, so each step skips their backward pass. They train again after the fit.
        ema_decay: Train with an exponential moving average of the weights, updated after every
            step with this decay, warmed up as ``min(decay, (1 + n) / (10 + n))`` after ``n``
            updates (0.995 is reached after about 1,800 steps; until then the average weighs
            roughly the last tenth of the steps): validation scores the average, and the head ends with
            the average's weights (those of the best validation epoch with ``restore_best``). None: none.
        max_minutes: Wall-clock budget of the training and validation epochs (not of loading the
            data): after each epoch the epoch count is cut to what fits at the mean pace so far
            (never above ``epochs``) and the cosine schedule ends with the new last epoch, so a
            slower machine trains fewer epochs and a run's result then depends on the machine.
            None: exactly ``epochs``.
        val_score: A :class:`ValidationScore` of the head's validation outputs, computed after every
            validation pass and kept in each history entry as ``val_score`` (needs ``loss_fn``).
        best_epoch_by: What picks the best validation epoch: ``"val_loss"`` (the lowest) or
            ``"val_score"`` (the highest ``val_score``).
        progressive_resize: ``(scale, share)``: the first ``share`` of the planned epochs train on
            image batches (and their masks) shrunk by ``scale``, sides rounded to multiples of 32
            (:func:`low_resolution_batch`), at a fraction of the compute; the rest train at full
            size, and validation always runs at full size. With ``max_minutes`` the plan counts
            the two kinds of epoch at their own pace. None: every epoch at full size.

    Returns:
        ``epochs`` (trained), ``epochs_requested``, ``max_minutes``, ``steps``, ``train_samples``,
        ``val_samples``, ``train_loss`` (last epoch),
        ``last_val_loss``, ``best_val_loss`` (the best epoch's), ``best_epoch``, ``best_epoch_by``,
        ``best_val_score`` (with ``val_score``: the best epoch's), ``val_score_name``, ``restored_best``, ``ema_decay``, ``progressive_resize``,
        ``history`` (per-epoch losses, ``val_score`` and learning rate) and ``seconds``. ``best_epoch`` and each history entry's
        ``epoch`` count from 0 (they index ``history``); the progress log counts epochs from 1.

    Example:
        >>> summary = fit_head(head, train_ds, val_ds, nn.CrossEntropyLoss(), epochs=3, batch_size=16,
        ...                    lr=3e-4, progress=context.progress, restore_best=True)  # doctest: +SKIP
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if gradient_clip_val is not None and not gradient_clip_val > 0:
        raise ValueError(f"gradient_clip_val must be > 0 or None, got {gradient_clip_val}")
    if len(train_dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("fit_head needs at least one training sample")
    start = time.perf_counter()
    has_val = val_dataset is not None and len(val_dataset) > 0  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(int(seed))
    train_loader = DataLoader(
        train_dataset, batch_size=int(batch_size), shuffle=sampler is None, sampler=sampler,
        num_workers=int(num_workers), generator=generator, persistent_workers=num_workers > 0, collate_fn=collate_fn,
    )
    val_loader = (
        DataLoader(val_dataset, batch_size=int(batch_size), shuffle=False, num_workers=int(num_workers),
                   persistent_workers=num_workers > 0, collate_fn=collate_fn)
        if has_val else None
    )
    device = device or torch.device("cpu")
    module = HeadModule(head, loss_fn, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, log=log,
                        description=description, optimizer=optimizer, schedule=schedule, lr_scales=lr_scales,
                        frozen_norms=frozen_norms, frozen_layers=frozen_layers, ema_decay=ema_decay, max_minutes=max_minutes,
                        val_score=val_score, best_epoch_by=best_epoch_by, progressive_resize=progressive_resize)
    # Lightning keeps each submodule's train/eval mode as it finds it, so a part built in eval mode
    # (e.g. a timm feature extractor) would otherwise train with frozen statistics by accident.
    module.train()
    module.memory_format = memory_format(device)
    head.to(memory_format=module.memory_format)  # type: ignore[call-overload]
    accelerator, devices = lightning_accelerator(device)
    callbacks: list[pl.Callback] = []
    if progress is not None:
        total = int(epochs) * len(train_loader)
        callbacks.append(_ProgressCallback(progress(description, total), total))
    fixed = tuple(frozen_layers)
    if frozen is not None and freeze_epochs > 0:
        warm_up = frozen
        # str.startswith(()) is False, so without frozen_layers nothing is excluded or fixed.
        callbacks.append(_FreezeCallback(lambda name: warm_up(name) and not name.startswith(fixed), freeze_epochs))
    fixed_params = [param for name, param in head.named_parameters() if name.startswith(fixed)]

    with _quiet_lightning():
        # PL_GLOBAL_SEED would leak the seed into later, unrelated fits in the same process.
        previous_seed = os.environ.get("PL_GLOBAL_SEED")
        pl.seed_everything(int(seed), workers=True, verbose=False)
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            precision=training_precision(device),  # type: ignore[arg-type]
            max_epochs=int(epochs),
            enable_checkpointing=False,
            logger=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,  # a pre-training validation pass costs time and tells us nothing
            # CUDA has no deterministic kernels for some backward passes (bilinear upsampling): warn there.
            deterministic=deterministic if device.type == "cpu" else ("warn" if deterministic else False),
            callbacks=callbacks,
            # Lightning unscales mixed-precision gradients before clipping, so the bound means the same on every device.
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm="norm",
        )
        try:
            for param in fixed_params:
                param.requires_grad_(False)
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        finally:
            for param in fixed_params:
                param.requires_grad_(True)
            if previous_seed is None:
                os.environ.pop("PL_GLOBAL_SEED", None)
            else:
                os.environ["PL_GLOBAL_SEED"] = previous_seed
    if frozen is not None:
        for name, param in head.named_parameters():
            if frozen(name):
                param.requires_grad_(True)  # a fit shorter than the freeze must not leave the head frozen

    head.cpu()
    # The head ends with the weights validation scored: the best epoch's, else the moving average's, else its own.
    restored = restore_best and module.best_state is not None and module.best_epoch != len(module.history) - 1
    if restored:
        head.load_state_dict(module.best_state)
    elif module.averaged is not None:
        head.load_state_dict(module.averaged.module.state_dict())
    head.eval()
    history = module.history
    val_losses = [h["val_loss"] for h in history if h["val_loss"] is not None]
    best = history[module.best_epoch] if module.best_epoch is not None else {}
    return {
        "epochs": len(history),
        "epochs_requested": int(epochs),
        "max_minutes": module.max_minutes,
        "steps": int(trainer.global_step),
        "train_samples": len(train_dataset),  # type: ignore[arg-type]
        "val_samples": len(val_dataset) if has_val else 0,  # type: ignore[arg-type]
        "train_loss": _round(history[-1]["train_loss"]) if history else None,
        "last_val_loss": _round(val_losses[-1]) if val_losses else None,
        "best_val_loss": _round(best.get("val_loss")),
        "best_epoch": module.best_epoch,
        "best_epoch_by": module.best_epoch_by,
        "best_val_score": _round(best.get("val_score")),
        "val_score_name": None if val_score is None else val_score.name,
        "restored_best": restored,
        "ema_decay": module.ema_decay,
        "progressive_resize": None if module.progressive_resize is None else list(module.progressive_resize),
        "frozen_layers": list(module.frozen_layers),
        "history": [{k: _round(v) if isinstance(v, float) else v for k, v in h.items()} for h in history],
        "seconds": round(time.perf_counter() - start, 2),
    }


def _round(value: float | int | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


__all__ = ["BEST_EPOCH_CRITERIA", "OPTIMIZERS", "SCHEDULES", "BoxTensorDataset", "HeadModule", "ImageTensorDataset",
           "ValidationScore", "collate_boxes", "fit_head", "head_loss", "low_resolution_batch", "resize_with_boxes",
           "unmatched_prefixes"]
