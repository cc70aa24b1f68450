"""Multi-label segmenters (segmentation-models-pytorch) on an offline EfficientNet-Lite encoder (Lite0 by default).

Every builder returns a plain smp model with ``num_classes`` output channels of *logits*: apply a
sigmoid per channel (classes may overlap, e.g. a scratch inside a dent). Nothing is downloaded: smp
is asked for no encoder weights and ``pretrained`` (the default) copies the ImageNet weights from the
installed package into the timm model inside the encoder (:func:`load_pretrained_weights`).

Example:
    >>> from defectkit.registry import HEADS, build
    >>> model = build(HEADS, dict(type="Unet", num_classes=2, pretrained=False))
    >>> model(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from defectkit.errors import ConfigError
from defectkit.heads.backbones import BACKBONE_NAME, DEFAULT_BACKBONE, load_pretrained_weights, timm_name
from defectkit.registry import HEADS
from defectkit.training.loop import ValidationScore

ENCODER_NAME = f"tu-{BACKBONE_NAME}"
"""smp's name for the default timm encoder (EfficientNet-Lite0)."""

ARCHITECTURES = ("Unet", "DeepLabV3Plus")
"""Architectures :func:`build_segmenter` knows (the ``type`` names registered in HEADS)."""


def _build(arch: type[nn.Module], num_classes: int, pretrained: bool, backbone: str = DEFAULT_BACKBONE, **kwargs: Any) -> nn.Module:
    """An smp ``arch`` on the EfficientNet-Lite ``backbone`` with ``num_classes`` logit channels, optionally ImageNet-initialised."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    valid = [n for n in inspect.signature(arch.__init__).parameters if n not in ("self", "encoder_name", "encoder_weights", "classes", "activation")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"{arch.__name__} got unknown option(s) {', '.join(map(repr, unknown))}; valid options: backbone, {', '.join(valid)}")
    model = arch(f"tu-{timm_name(backbone)}", encoder_weights=None, classes=int(num_classes), activation=None, **kwargs)
    if pretrained:
        load_pretrained_weights(model.encoder.model, backbone=backbone)
    return model


@HEADS.register_module(name="Unet")
def unet(num_classes: int = 1, pretrained: bool = True, backbone: str = DEFAULT_BACKBONE, **kwargs: Any) -> nn.Module:
    """U-Net on EfficientNet-Lite (``backbone``: lite0, lite1, lite2) with ``num_classes`` sigmoid (multi-label) logit channels."""
    return _build(smp.Unet, num_classes, pretrained, backbone, **kwargs)


@HEADS.register_module(name="DeepLabV3Plus")
def deeplabv3plus(num_classes: int = 1, pretrained: bool = True, backbone: str = DEFAULT_BACKBONE, **kwargs: Any) -> nn.Module:
    """DeepLabV3+ on EfficientNet-Lite (``backbone``: lite0, lite1, lite2) with ``num_classes`` sigmoid (multi-label) logit channels."""
    return _build(smp.DeepLabV3Plus, num_classes, pretrained, backbone, **kwargs)


def build_segmenter(cfg: dict[str, Any], num_classes: int, pretrained: bool = True) -> nn.Module:
    """Build a registered segmenter from ``cfg`` (``type`` plus smp keyword arguments) for ``num_classes``."""
    from defectkit.registry import build

    args = dict(cfg)
    args["num_classes"] = int(num_classes)
    args["pretrained"] = bool(pretrained)
    return build(HEADS, args)


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor, dice_weight: float = 0.5, eps: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy with logits plus ``dice_weight`` times the soft Dice loss.

    The Dice term is computed per image and channel and averaged (so a small defect counts as much
    as a large one); ``eps`` smooths empty channels (an empty prediction on an empty target costs 0).

    Args:
        logits: NxCxHxW raw outputs.
        targets: NxCxHxW targets in [0, 1] (multi-label: channels may overlap).
        dice_weight: Weight of the Dice term; 0 gives plain BCE.
        eps: Dice smoothing.

    Returns:
        A scalar loss.

    Example:
        >>> logits = torch.full((1, 1, 4, 4), 10.0)
        >>> float(bce_dice_loss(logits, torch.ones(1, 1, 4, 4))) < 1e-3
        True
    """
    targets = targets.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, targets)
    if dice_weight:
        probs = torch.sigmoid(logits).flatten(2)
        flat = targets.flatten(2)
        intersection = (probs * flat).sum(-1)
        dice = (2 * intersection + eps) / (probs.sum(-1) + flat.sum(-1) + eps)
        loss = loss + float(dice_weight) * (1 - dice).mean()
    return loss


def batch_dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per class over the whole batch, averaged over the classes present in the batch.

    Unlike the per-image Dice of :func:`bce_dice_loss`, a class absent from an image adds no Dice
    term of its own: with several classes that each appear in a minority of images, per-image Dice
    mostly rewards predicting nothing (any probability mass on an empty channel costs up to 1),
    which stalls rare classes for many epochs. Classes absent from the whole batch are left to the
    BCE term (segmentation_models_pytorch's ``DiceLoss`` convention).

    Example:
        >>> perfect = torch.full((2, 2, 4, 4), -10.0)
        >>> perfect[0, 0] = 10.0                         # class 0 in image 0 only; class 1 nowhere
        >>> targets = (perfect > 0).float()
        >>> float(batch_dice_loss(perfect, targets)) < 1e-3
        True
    """
    probs, flat, present = _per_class_over_batch(logits, targets)
    if not bool(present.any()):
        return probs.sum() * 0.0  # keeps the graph: a batch without defects has no Dice term
    dice = (2 * (probs * flat).sum(-1) + eps) / (probs.sum(-1) + flat.sum(-1) + eps)
    return (1 - dice)[present].mean()


def _per_class_over_batch(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities and targets as C x (N*H*W) rows, one per class over the batch, and which classes are present."""
    channels = logits.shape[1]
    probs = torch.sigmoid(logits.float()).transpose(0, 1).reshape(channels, -1)
    flat = targets.to(probs.dtype).transpose(0, 1).reshape(channels, -1)
    return probs, flat, flat.sum(-1) > 0


def focal_tversky_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, eps: float = 1.0,
) -> torch.Tensor:
    """Focal Tversky loss (Abraham & Khan, 2019) per image and channel, averaged.

    The Tversky index weighs false negatives by ``beta`` and false positives by ``alpha``: with
    ``beta > alpha`` missing a thin scratch costs more than painting a little around it, which
    suits rare, small classes. ``(1 - TI) ** gamma`` with ``gamma < 1`` keeps the gradient of
    nearly solved channels from vanishing.

    Example:
        >>> float(focal_tversky_loss(torch.full((1, 1, 4, 4), 10.0), torch.ones(1, 1, 4, 4))) < 1e-2
        True
    """
    targets = targets.to(logits.dtype)
    return _focal_tversky(torch.sigmoid(logits).flatten(2), targets.flatten(2), alpha, beta, gamma, eps).mean()


def batch_focal_tversky_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, eps: float = 1.0,
) -> torch.Tensor:
    """Focal Tversky loss per class over the whole batch, averaged over the classes present in the batch.

    :func:`focal_tversky_loss`'s index, counted as :func:`batch_dice_loss` counts Dice: an image
    without a class adds no term of its own (per image, an empty channel rewards predicting nothing),
    and classes absent from the whole batch are left to the BCE term.

    Example:
        >>> perfect = torch.full((2, 2, 4, 4), -10.0)
        >>> perfect[0, 0] = 10.0                         # class 0 in image 0 only; class 1 nowhere
        >>> float(batch_focal_tversky_loss(perfect, (perfect > 0).float())) < 1e-2
        True
    """
    probs, flat, present = _per_class_over_batch(logits, targets)
    if not bool(present.any()):
        return probs.sum() * 0.0  # keeps the graph: a batch without defects has no region term
    return _focal_tversky(probs, flat, alpha, beta, gamma, eps)[present].mean()


def _focal_tversky(probs: torch.Tensor, targets: torch.Tensor, alpha: float, beta: float, gamma: float, eps: float) -> torch.Tensor:
    """``(1 - Tversky index) ** gamma`` over the last dimension of probabilities and targets."""
    true_pos = (probs * targets).sum(-1)
    false_neg = ((1 - probs) * targets).sum(-1)
    false_pos = (probs * (1 - targets)).sum(-1)
    tversky = (true_pos + eps) / (true_pos + float(alpha) * false_pos + float(beta) * false_neg + eps)
    return (1 - tversky).clamp_min(0) ** float(gamma)


def lovasz_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge (Berman et al., 2018) per channel over the batch: a convex surrogate of IoU itself.

    Example:
        >>> float(lovasz_loss(torch.full((1, 1, 4, 4), 10.0), torch.ones(1, 1, 4, 4))) == 0.0
        True
    """
    channels = logits.shape[1]
    flat_logits = logits.transpose(0, 1).reshape(channels, -1)
    flat_targets = targets.to(logits.dtype).transpose(0, 1).reshape(channels, -1)
    return torch.stack([_lovasz_hinge_flat(flat_logits[c], flat_targets[c]) for c in range(channels)]).mean()


def _lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    gt_sorted = labels[order]
    total = gt_sorted.sum()
    intersection = total - gt_sorted.cumsum(0)
    union = total + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(jaccard) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return torch.dot(F.relu(errors_sorted), jaccard)


class BestThresholdIoU(ValidationScore):
    """Validation score of a multi-label segmenter: the mean over classes of each class's IoU at its best threshold.

    Each class's IoU is counted over the whole validation set (as the evaluation's data-set IoU is)
    at every threshold ``k / bins``, and the best is kept: what the maps would score once
    :class:`~defectkit.stages.mask_policy.CalibratedMaskPolicy` picks a threshold per class, which
    0.5 would not show for an under-confident rare class. Classes without a positive validation
    pixel do not count. The sigmoid probabilities are binned per class, positives and negatives
    apart, so one pass scores every threshold.

    Args:
        bins: Probability bins; the thresholds are ``1 / bins`` ... ``(bins - 1) / bins``.

    Example:
        >>> score = BestThresholdIoU(bins=10)
        >>> score.reset()
        >>> targets = torch.zeros(1, 2, 4, 4)
        >>> targets[0, 0, :2] = 1                            # class 0: the top half; class 1: nowhere
        >>> logits = torch.where(targets > 0, 0.0, -3.0)     # positives at p=0.5, negatives at p=0.05
        >>> score.update(logits, targets)
        >>> round(score.compute(), 3)                        # class 0 is perfect at any cut in (0.05, 0.5]
        1.0
    """

    name = "val_iou"

    def __init__(self, bins: int = 20) -> None:
        if int(bins) < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = int(bins)
        self._counts: torch.Tensor | None = None  # 2 x C x bins: negatives, positives

    def reset(self) -> None:
        self._counts = None

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        channels = outputs.shape[1]
        bins = (torch.sigmoid(outputs.float()) * self.bins).long().clamp_(0, self.bins - 1)
        # one bincount over (label, class, bin) codes
        codes = bins + torch.arange(channels, device=bins.device).view(1, channels, 1, 1) * self.bins
        codes = codes + (targets > 0.5).long() * (channels * self.bins)
        counts = torch.bincount(codes.flatten(), minlength=2 * channels * self.bins).view(2, channels, self.bins).cpu()
        self._counts = counts if self._counts is None else self._counts + counts

    def compute(self) -> float | None:
        if self._counts is None:
            return None
        negatives, positives = self._counts.double()
        # predicted positive at threshold k / bins: the pixels in bins k and above
        true_pos = positives.flip(1).cumsum(1).flip(1)[:, 1:]
        false_pos = negatives.flip(1).cumsum(1).flip(1)[:, 1:]
        total_pos = positives.sum(1, keepdim=True)
        iou = true_pos / (total_pos + false_pos).clamp_min(1.0)
        present = total_pos[:, 0] > 0
        return float(iou.max(1).values[present].mean()) if bool(present.any()) else None


SEGMENTATION_LOSSES = ("bce_dice", "bce_batch_dice", "bce_focal_tversky", "bce_batch_focal_tversky", "bce_lovasz")
"""Loss names :func:`segmentation_loss` builds."""


def segmentation_loss(name: str = "bce_dice", dice_weight: float = 0.5) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The multi-label segmentation loss ``name``: BCE plus ``dice_weight`` x a region term.

    ``bce_dice``: soft Dice per image (:func:`bce_dice_loss`); ``bce_batch_dice``: soft Dice per class
    over the batch (:func:`batch_dice_loss`); ``bce_focal_tversky``: :func:`focal_tversky_loss` (per
    image); ``bce_batch_focal_tversky``: :func:`batch_focal_tversky_loss` (per class over the batch);
    ``bce_lovasz``: :func:`lovasz_loss`. BCE keeps every pixel's gradient; the region term counts a
    small defect as much as a large one.

    Raises:
        ConfigError: An unknown name.

    Example:
        >>> loss = segmentation_loss("bce_focal_tversky", dice_weight=1.0)
        >>> float(loss(torch.full((1, 1, 4, 4), 10.0), torch.ones(1, 1, 4, 4))) < 0.01
        True
    """
    if name not in SEGMENTATION_LOSSES:
        raise ConfigError(f"loss must be one of {list(SEGMENTATION_LOSSES)}, got {name!r}")
    weight = float(dice_weight)
    if name == "bce_dice":
        return lambda logits, targets: bce_dice_loss(logits, targets, dice_weight=weight)
    region = {"bce_batch_dice": batch_dice_loss, "bce_focal_tversky": focal_tversky_loss,
              "bce_batch_focal_tversky": batch_focal_tversky_loss, "bce_lovasz": lovasz_loss}[name]

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return bce + weight * region(logits.float(), targets) if weight else bce

    return loss


__all__ = ["ARCHITECTURES", "ENCODER_NAME", "SEGMENTATION_LOSSES", "BestThresholdIoU", "batch_dice_loss", "batch_focal_tversky_loss", "bce_dice_loss",
           "focal_tversky_loss", "lovasz_loss", "segmentation_loss", "build_segmenter", "deeplabv3plus", "unet"]
