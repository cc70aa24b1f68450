"""Multi-label segmenters (segmentation-models-pytorch) on the offline EfficientNet-Lite0 encoder.

Every builder returns a plain smp model with ``num_classes`` output channels of *logits*: apply a
sigmoid per channel (classes may overlap, e.g. a scratch inside a dent). Nothing is downloaded: smp
is asked for no encoder weights and ``pretrained`` (the default) copies the ImageNet weights from the
installed package into the timm model inside the encoder (:func:`load_lite0_weights`).

Example:
    >>> from defectkit.registry import HEADS, build
    >>> model = build(HEADS, dict(type="Unet", num_classes=2, pretrained=False))
    >>> model(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

import inspect
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from defectkit.errors import ConfigError
from defectkit.heads.backbones import BACKBONE_NAME, load_lite0_weights
from defectkit.registry import HEADS

ENCODER_NAME = f"tu-{BACKBONE_NAME}"
"""smp's name for the timm EfficientNet-Lite0 encoder."""

ARCHITECTURES = ("Unet", "DeepLabV3Plus")
"""Architectures :func:`build_segmenter` knows (the ``type`` names registered in HEADS)."""


def _build(arch: type[nn.Module], num_classes: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """An smp ``arch`` on the Lite0 encoder with ``num_classes`` logit channels, optionally ImageNet-initialised."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    valid = [n for n in inspect.signature(arch.__init__).parameters if n not in ("self", "encoder_name", "encoder_weights", "classes", "activation")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"{arch.__name__} got unknown option(s) {', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}")
    model = arch(ENCODER_NAME, encoder_weights=None, classes=int(num_classes), activation=None, **kwargs)
    if pretrained:
        load_lite0_weights(model.encoder.model)
    return model


@HEADS.register_module(name="Unet")
def unet(num_classes: int = 1, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """U-Net on EfficientNet-Lite0 with ``num_classes`` sigmoid (multi-label) logit channels."""
    return _build(smp.Unet, num_classes, pretrained, **kwargs)


@HEADS.register_module(name="DeepLabV3Plus")
def deeplabv3plus(num_classes: int = 1, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """DeepLabV3+ on EfficientNet-Lite0 with ``num_classes`` sigmoid (multi-label) logit channels."""
    return _build(smp.DeepLabV3Plus, num_classes, pretrained, **kwargs)


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


__all__ = ["ARCHITECTURES", "ENCODER_NAME", "bce_dice_loss", "build_segmenter", "deeplabv3plus", "unet"]
