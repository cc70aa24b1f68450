"""OpenMMLab heads: an mmdet detector or an mmseg segmentor from an OpenMMLab config, as a defectkit head.

Both need the ``[openmmlab]`` extra (mmcv, mmdet, mmsegmentation; ``bash scripts/install-openmmlab.sh``),
imported only when such a head is built: the default install never loads them.

* ``dict(type="mmdet", config=...)`` (for the :class:`~defectkit.stages.detect.Detector` stage) wraps
  an mmdet detector in the protocol torchvision's detectors follow, which the stage, its tiling and
  the training loop already speak: in train mode ``model(images, targets)`` returns mmdet's loss
  terms, in eval mode ``model(images)`` returns ``{"boxes", "scores", "labels"}`` per image.
* ``dict(type="mmseg", config=...)`` (for the :class:`~defectkit.stages.segment.Segmenter` stage)
  wraps an mmseg segmentor as ``model(x) -> logits`` (N x classes x H x W at the input's size), the
  same as the smp heads: the stage trains it with its own multi-label loss (sigmoid per class), so
  the config's ``loss_decode`` and any auxiliary head are not used (the auxiliary head is dropped).

``config`` is an OpenMMLab config file (its ``model`` and ``default_scope`` are used; a file is
Python and runs when read, like defectkit's own configs: use files you trust), the ``model``
dict itself, or a preset of :data:`PRESETS` (``"tood_lite"``, ``"atss_lite"``, ``"deeplabv3plus_lite"``).
``num_classes`` is set wherever the model config has one (the stage's classes).
Inputs are defectkit's [-1, 1] RGB tensors; they are turned back into the 0-255 BGR images OpenMMLab
pipelines load and normalised with the config's ``data_preprocessor`` mean, std and ``bgr_to_rgb``,
so configs and checkpoints made for OpenMMLab's own pipelines see what they were trained on. The
preprocessor's padding and batch augmentations are not applied (the stage resizes to
``image_size``, a multiple of 32, and augments itself).

Nothing downloads: an ``init_cfg`` whose checkpoint is a URL (``torchvision://``, ``open-mmlab://``,
``http``) is refused. Offline ImageNet weights come from :class:`EfficientNetLite`, registered in
OpenMMLab's model registry as ``"DefectkitEfficientNetLite"``. ``checkpoint`` loads OpenMMLab weights
(a Runner checkpoint or a bare state dict) with ``torch.load(weights_only=True)``: only tensors,
containers, numbers, strings and numpy arrays are unpickled, never arbitrary objects. A file that
needs more is refused, unless ``trust_checkpoint=True`` says it comes from a source the user trusts
(then it is unpickled in full, which can run code).

Example:
    >>> from defectkit.registry import HEADS, build
    >>> model = build(HEADS, dict(type="mmdet", config=tood_lite_config(), num_classes=1,
    ...                           image_size=(256, 256), pretrained=False))  # doctest: +SKIP
    >>> sorted(model.eval()([torch.zeros(3, 256, 256)])[0])                   # doctest: +SKIP
    ['boxes', 'labels', 'scores']
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defectkit.errors import ConfigError
from defectkit.heads.backbones import DEFAULT_BACKBONE, create_feature_extractor
from defectkit.registry import HEADS
from defectkit.training import EpochAware

INSTALL_HINT = "install the [openmmlab] extra with: bash scripts/install-openmmlab.sh"
"""How to get mmcv, mmdet and mmsegmentation (mmcv builds from source the first time: about 5 minutes on 2 CPU cores)."""

_DOWNLOAD_PREFIXES = ("http://", "https://", "torchvision://", "open-mmlab://", "openmmlab://", "mmcls://", "modelzoo://")


def _import_openmmlab(package: str) -> Any:
    """Import ``package`` (mmdet or mmseg) and register defectkit's offline backbone with OpenMMLab."""
    import importlib

    try:
        # package is one of the literals "mmdet" / "mmseg" passed by this module, never config text.
        module = importlib.import_module(package)  # trusted-ok: a literal package name, see above
        importlib.import_module(f"{package}.models")  # trusted-ok: as above; registers its models, heads and losses
    except ImportError as error:
        raise ConfigError(f"model type {package!r} needs {package} ({error}); {INSTALL_HINT}") from None
    _register_backbone()
    return module


def _register_backbone() -> None:
    from mmengine.registry import MODELS

    if "DefectkitEfficientNetLite" not in MODELS.module_dict:
        MODELS.register_module(name="DefectkitEfficientNetLite", module=EfficientNetLite)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature maps with offline ImageNet weights, as an OpenMMLab backbone.

    Registered in mmengine's root model registry as ``"DefectkitEfficientNetLite"``, which mmdet's and
    mmseg's registries fall back to, so OpenMMLab configs name it like any of their backbones. Its
    inputs are [-1, 1] RGB: give the model ``data_preprocessor=dict(mean=[127.5] * 3,
    std=[127.5] * 3, bgr_to_rgb=True)``.

    Args:
        backbone: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        out_indices: Stages to return: 0-4 are strides 2, 4, 8, 16, 32 (Lite0: 16, 24, 40, 112, 320
            channels).
        pretrained: Load the ImageNet weights from the installed package. The head builders set it
            (False when a saved state's weights follow).
        output_stride: 32, or 16 / 8 to dilate the last stages instead of striding them (DeepLab).
        init_cfg: Accepted for OpenMMLab's config convention; must be None (the weights come from
            ``pretrained``).

    Example:
        >>> body = EfficientNetLite(out_indices=(2, 3, 4), pretrained=False)
        >>> [tuple(f.shape) for f in body(torch.zeros(1, 3, 64, 64))]
        [(1, 40, 8, 8), (1, 112, 4, 4), (1, 320, 2, 2)]
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, out_indices: Sequence[int] = (2, 3, 4), pretrained: bool = True,
                 output_stride: int = 32, init_cfg: dict[str, Any] | None = None) -> None:
        super().__init__()
        if init_cfg is not None:
            raise ConfigError(f"DefectkitEfficientNetLite takes its weights from pretrained=True, not init_cfg {init_cfg!r}")  # offline-ok
        self.body = create_feature_extractor(out_indices=tuple(int(i) for i in out_indices), pretrained=bool(pretrained), backbone=backbone,
                                             output_stride=int(output_stride))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.body(x))


# ---------------------------------------------------------------------------------------- configs
def tood_lite_config(num_classes: int = 1, channels: int = 96, stacked_convs: int = 2, anchor_scale: int = 4,
                     backbone: str = DEFAULT_BACKBONE, atss: bool = False) -> dict[str, Any]:
    """An mmdet TOOD (or, with ``atss``, ATSS) model config on EfficientNet-Lite + FPN, sized like the default FCOS.

    The defaults mirror :func:`~defectkit.heads.detector.fcos`'s CPU sizing: P3-P5 of a 96-channel
    FPN, 2 convs in the head's shared tower (mmdet's COCO configs use 256 channels and 6 / 4 convs on
    P3-P7 of a ResNet-50, about 1.7 s per 512 px image forward on two CPU cores). ``anchor_scale`` is
    the anchor side in strides that ATSS's assignment (TOOD's first epochs, and ATSS throughout)
    measures IOU against: 4 (32 px at P3) instead of COCO's 8, for lesions of 5-60 px.

    Example:
        >>> cfg = tood_lite_config(num_classes=2)
        >>> cfg["type"], cfg["bbox_head"]["type"], cfg["bbox_head"]["num_classes"]
        ('TOOD', 'TOODHead', 2)
    """
    strides = [8, 16, 32]
    anchors = dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=int(anchor_scale), scales_per_octave=1, strides=strides)
    coder = dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2])
    test_cfg = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6), max_per_img=100)
    common = dict(
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True, pad_size_divisor=32),
        backbone=dict(type="DefectkitEfficientNetLite", backbone=backbone, out_indices=[2, 3, 4]),
        neck=dict(type="FPN", in_channels=_lite_channels(backbone)[2:], out_channels=int(channels), num_outs=len(strides)),
        test_cfg=test_cfg,
    )
    if atss:
        head = dict(
            type="ATSSHead", num_classes=int(num_classes), in_channels=int(channels), stacked_convs=int(stacked_convs),
            feat_channels=int(channels), anchor_generator=anchors, bbox_coder=coder,
            loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        )
        train_cfg = dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False)
        return dict(type="ATSS", bbox_head=head, train_cfg=train_cfg, **common)
    head = dict(
        type="TOODHead", num_classes=int(num_classes), in_channels=int(channels), stacked_convs=int(stacked_convs),
        feat_channels=int(channels), anchor_type="anchor_free", anchor_generator=anchors, bbox_coder=coder,
        initial_loss_cls=dict(type="FocalLoss", use_sigmoid=True, activated=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, activated=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
    )
    # TOOD's published schedule: ATSS assignment for the first 4 of 12 epochs, then task-aligned.
    train_cfg = dict(initial_epoch=4, initial_assigner=dict(type="ATSSAssigner", topk=9),
                     assigner=dict(type="TaskAlignedAssigner", topk=13), alpha=1, beta=6, allowed_border=-1, pos_weight=-1, debug=False)
    return dict(type="TOOD", bbox_head=head, train_cfg=train_cfg, **common)


def deeplabv3plus_lite_config(num_classes: int = 1, channels: int = 256, backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """An mmseg DeepLabV3+ (depthwise-separable ASPP head) on EfficientNet-Lite, decoding from strides 16 and 4.

    As smp's DeepLabV3+ (the car config's default head) builds it: the encoder's last stage dilated
    to output stride 16, ASPP rates 12 / 24 / 36, 48 channels from stride 4; group norm in the head
    (see below). (At output stride 32, mmseg's rates 6 / 12 / 18 and batch norm it trained to
    validation mIoU 0.082 on the car photos, against 0.235 for smp's: docs/results.md.)

    Example:
        >>> cfg = deeplabv3plus_lite_config(num_classes=3)
        >>> cfg["decode_head"]["type"], cfg["decode_head"]["num_classes"]
        ('DepthwiseSeparableASPPHead', 3)
    """
    lite = _lite_channels(backbone)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True, size_divisor=32),
        backbone=dict(type="DefectkitEfficientNetLite", backbone=backbone, out_indices=[1, 4], output_stride=16),
        decode_head=dict(
            type="DepthwiseSeparableASPPHead", in_channels=lite[4], in_index=1, channels=int(channels), dilations=(1, 12, 24, 36),
            c1_in_channels=lite[1], c1_channels=48, dropout_ratio=0.1, num_classes=int(num_classes),
            # Group norm, not mmseg's batch norm: its separable decoder puts a batch norm right after
            # each depthwise conv, whose running statistics fell far behind the fast-moving depthwise
            # weights under AdamW: on the car photos the validation loss in eval mode rose to 18-32
            # against a training loss of 0.56, and came back to 0.63 with that norm on batch statistics.
            norm_cfg=dict(type="GN", num_groups=16, requires_grad=True), align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


PRESETS = {
    "tood_lite": lambda: tood_lite_config(),
    "atss_lite": lambda: tood_lite_config(atss=True),
    "deeplabv3plus_lite": lambda: deeplabv3plus_lite_config(),
}
"""Model configs ``config`` may name instead of a file: TOOD / ATSS (mmdet) and DeepLabV3+ (mmseg) on
EfficientNet-Lite0, sized for the CPU like defectkit's own heads."""


def _lite_channels(backbone: str) -> list[int]:
    """Channels of the EfficientNet-Lite stages at strides 2-32 (read from the network, no weights loaded)."""
    return list(create_feature_extractor(out_indices=(0, 1, 2, 3, 4), pretrained=False, backbone=backbone).feature_info.channels())


# ---------------------------------------------------------------------------------------- building
def _model_config(config: str | os.PathLike[str] | dict[str, Any], key: str) -> tuple[dict[str, Any], str | None]:
    """The model dict and ``default_scope`` of an OpenMMLab config file, or of a model dict."""
    from mmengine.config import Config

    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config](), None
    if isinstance(config, dict):
        if "model" in config and "type" not in config:  # a whole config as a dict
            return copy.deepcopy(dict(config["model"])), config.get("default_scope")
        return copy.deepcopy(dict(config)), None
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"{key}: {str(path)!r} is neither an OpenMMLab config file nor a preset ({', '.join(PRESETS)})")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as error:  # a broken user file: one line naming it
        raise ConfigError(f"{key}: cannot read OpenMMLab config {str(path)!r}: {type(error).__name__}: {error}") from None
    if "model" not in cfg:
        raise ConfigError(f"{key}: OpenMMLab config {str(path)!r} has no 'model'")
    return cfg.to_dict()["model"], cfg.get("default_scope")


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict inside a nested config."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _walk(value)


def _prepare(model_cfg: dict[str, Any], num_classes: int, pretrained: bool, key: str) -> dict[str, Any]:
    """Set ``num_classes`` and the backbone's ``pretrained``; refuse configs that would download weights."""
    for node in _walk(model_cfg):
        if "num_classes" in node:
            node["num_classes"] = int(num_classes)
        if node.get("type") == "DefectkitEfficientNetLite":
            node["pretrained"] = bool(pretrained)
        init = node.get("init_cfg")
        for entry in init if isinstance(init, list) else [init]:
            checkpoint = entry.get("checkpoint") if isinstance(entry, dict) else None
            if isinstance(checkpoint, str) and checkpoint.startswith(_DOWNLOAD_PREFIXES):
                raise ConfigError(
                    f"{key}: init_cfg checkpoint {checkpoint!r} would be downloaded; defectkit never downloads at run time: "
                    f"use a local file (checkpoint=...), or type='DefectkitEfficientNetLite' for offline ImageNet weights"
                )
        if isinstance(node.get("pretrained"), str) and node["pretrained"].startswith(_DOWNLOAD_PREFIXES):
            raise ConfigError(f"{key}: pretrained {node['pretrained']!r} would be downloaded; defectkit never downloads at run time")
    return model_cfg


def _build_model(package: str, model_cfg: dict[str, Any], scope: str | None, num_classes: int, pretrained: bool,
                 checkpoint: str | None, trust_checkpoint: bool, key: str) -> nn.Module:
    """Build ``model_cfg`` in ``package``'s registry, initialised as its Runner would, then ``checkpoint`` loaded over it.

    Initialisation and ``checkpoint`` are skipped without ``pretrained`` (a saved state's weights follow).
    """
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    module = _import_openmmlab(package)
    registry = module.registry.MODELS
    model_cfg = _prepare(model_cfg, num_classes, pretrained, key)
    scope = scope or package
    # The config's default_scope decides where unprefixed type names are looked up, as in its Runner.
    with DefaultScope.overwrite_default_scope(scope):
        try:
            # A ConfigDict, as a Runner passes it: heads read their train_cfg / test_cfg by attribute.
            model = registry.build(ConfigDict(model_cfg))
        except (KeyError, TypeError, ValueError, AssertionError) as error:
            raise ConfigError(f"{key}: cannot build the {package} model: {type(error).__name__}: {error}") from None
        if pretrained:
            # Layer initialisation (e.g. the classifier's prior-probability bias) as the Runner does it;
            # skipped when a saved state's weights follow.
            with _quiet_mmengine():
                model.init_weights()
    if checkpoint is not None and pretrained:
        load_openmmlab_checkpoint(model, checkpoint, trusted=trust_checkpoint)
    return model


@contextlib.contextmanager
def _quiet_mmengine() -> Iterator[None]:
    """mmengine logs every parameter's initialisation at INFO level: hundreds of lines in a training log."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_openmmlab_checkpoint(model: nn.Module, path: str | os.PathLike[str], trusted: bool = False) -> dict[str, int]:
    """Load OpenMMLab weights from ``path`` into ``model``; returns counts of loaded, missing and skipped tensors.

    A Runner checkpoint's ``state_dict`` (or a bare state dict) is read with ``torch.load(weights_only=True)``:
    tensors, containers, numbers, strings and numpy arrays only; the message hub a Runner checkpoint
    also holds is read into inert stand-ins and dropped (:func:`_checkpoint_globals`). Anything
    else is refused, unless ``trusted``. Tensors whose shape differs from the model's (e.g. a COCO classifier for 80
    classes) are skipped and counted, as mmengine's loader does.

    Raises:
        ConfigError: The file is missing, unreadable, or holds objects that are not weights.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"checkpoint {str(file)!r} does not exist")
    try:
        if trusted:
            # Only with trust_checkpoint=True, the user's explicit statement that the file is trusted.
            payload = torch.load(file, map_location="cpu", weights_only=False)  # trusted-ok: explicit opt-in
        else:
            with torch.serialization.safe_globals(_checkpoint_globals()):
                payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's message is a paragraph; the line that names what the file holds is the useful one.
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        lines = str(error).strip().splitlines()
        reason = f"it holds {unsupported.group(1)}, which is not weights" if unsupported else (lines[0] if lines else type(error).__name__)
        hint = "" if trusted else " (only weights are unpickled; if the file comes from a source you trust, set trust_checkpoint=True)"
        raise ConfigError(f"checkpoint {str(file)!r} cannot be loaded: {reason}{hint}") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint {str(file)!r} holds no state dict of tensors")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    model.load_state_dict(matching, strict=False)
    return {"loaded": len(matching), "missing": len(set(own) - set(matching)), "skipped": len(state) - len(matching)}


class _DiscardedState:
    """Stands in for a Runner checkpoint's message-hub buffers (mmengine's ``HistoryBuffer``): built and ignored."""

    def __setstate__(self, state: Any) -> None:
        pass


def _discarded_attribute(obj: Any, name: str) -> None:
    """Stands in for ``getattr``, which pickles a HistoryBuffer's bound statistics methods: nothing is looked up."""
    return None


def _checkpoint_globals() -> list[Any]:
    """What torch's weights-only unpickler may build besides tensors and containers.

    numpy arrays, dtypes and scalars (Runner checkpoints' metadata), under numpy 2's and numpy 1's
    names; and inert stand-ins for the message hub's buffers and the ``getattr`` calls inside them,
    which only the discarded ``message_hub`` entry holds: the real class and function are never
    reached, so pickled code cannot run.
    """
    import numpy as np

    multiarray = np._core.multiarray  # type: ignore[attr-defined]
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
                          (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                          (multiarray.scalar, "numpy.core.multiarray.scalar")]
    allowed += [type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")]
    allowed += [(_DiscardedState, "mmengine.logging.history_buffer.HistoryBuffer"), (_discarded_attribute, "builtins.getattr")]
    return allowed


def _to_openmmlab_input(x: torch.Tensor, preprocessor: nn.Module, bgr_to_rgb: bool) -> torch.Tensor:
    """defectkit's NCHW [-1, 1] RGB as the model's normalised input: 0-255 pixels in the channel order, mean and std of
    the model's data preprocessor.

    OpenMMLab pipelines load BGR images, which the preprocessor flips to RGB when its ``bgr_to_rgb``
    is set: the model consumes RGB then, and BGR otherwise.
    """
    pixels = x * 127.5 + 127.5
    if not bgr_to_rgb:
        pixels = pixels.flip(1)
    if preprocessor._enable_normalize:
        pixels = (pixels - preprocessor.mean.view(1, -1, 1, 1)) / preprocessor.std.view(1, -1, 1, 1)
    return pixels


def _stack(images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images if images.ndim == 4 else images[None]
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) != 1:
        raise ValueError(f"OpenMMLab heads take images of one size per batch, got {sorted(sizes)}")
    return torch.stack(list(images))


class MMDetDetector(nn.Module, EpochAware):
    """An mmdet detector behind torchvision's detection interface (see the module docstring).

    ``score_thresh``, ``nms_thresh`` and ``detections_per_img`` are the model's ``test_cfg``
    ``score_thr``, ``nms.iou_threshold`` and ``max_per_img`` (the names the stage re-thresholds a
    trained detector by). mmdet heads that read the epoch from mmengine's message hub (TOOD switches
    its label assigner after ``initial_epoch``) get it from the training loop through
    :meth:`set_epoch`, as mmengine's Runner would set it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.epoch = 0
        self.bgr_to_rgb = bool(model.data_preprocessor._channel_conversion)  # mmengine's ImgDataPreprocessor
        # TOOD's train_cfg.initial_epoch: the epochs before it train another loss (ATSS assignment, focal loss).
        self.initial_epoch = int((model.train_cfg or {}).get("initial_epoch", 0))

    @property
    def test_cfg(self) -> Any:
        return self.model.bbox_head.test_cfg if hasattr(self.model, "bbox_head") else self.model.test_cfg

    @property
    def score_thresh(self) -> float:
        return float(self.test_cfg.get("score_thr", 0.05))

    def set_epoch(self, epoch: int) -> None:
        # Put into mmengine's message hub at each loss computation: the hub is global, and another
        # detector (an ensemble's next member) may have trained since.
        self.epoch = int(epoch)

    def loss_comparable_from(self) -> int:
        return self.initial_epoch

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor],
                targets: Sequence[dict[str, torch.Tensor]] | None = None) -> Any:
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        x = _stack(images)
        height, width = int(x.shape[2]), int(x.shape[3])
        inputs = _to_openmmlab_input(x, self.model.data_preprocessor, self.bgr_to_rgb)
        samples = []
        for index in range(len(x)):
            sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                                                 batch_input_shape=(height, width), scale_factor=(1.0, 1.0)))
            if targets is not None:
                sample.gt_instances = InstanceData(bboxes=targets[index]["boxes"].float(), labels=targets[index]["labels"].long())
            samples.append(sample)
        if self.training:
            if targets is None:
                raise ValueError("in training mode the detector needs targets")
            from mmengine.logging import MessageHub

            MessageHub.get_current_instance().update_info("epoch", self.epoch)
            losses = self.model.loss(inputs, samples)
            return {name: _total(value) for name, value in losses.items() if "loss" in name}
        found = self.model.predict(inputs, samples, rescale=False)
        # Clipped to the image, as torchvision's detectors do (some mmdet heads leave boxes across the border).
        limits = x.new_tensor([width, height, width, height])
        return [{"boxes": torch.minimum(s.pred_instances.bboxes.clamp_min(0), limits), "scores": s.pred_instances.scores,
                 "labels": s.pred_instances.labels} for s in found]


def _total(value: Any) -> torch.Tensor:
    """mmdet loss terms are tensors or lists of per-level tensors: one scalar."""
    if isinstance(value, torch.Tensor):
        return value.sum()
    return torch.stack([v.sum() for v in value]).sum()


class MMSegSegmentor(nn.Module):
    """An mmseg segmentor as ``model(x) -> logits`` at the input's size (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.bgr_to_rgb = bool(model.data_preprocessor.channel_conversion)  # mmseg's SegDataPreProcessor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[2]), int(x.shape[3])
        inputs = _to_openmmlab_input(x, self.model.data_preprocessor, self.bgr_to_rgb)
        metas = [dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width))] * len(x)
        logits = self.model.encode_decode(inputs, metas)
        if tuple(logits.shape[2:]) != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits


@HEADS.register_module(name="mmdet")
def mmdet_detector(
    config: str | dict[str, Any] | None = None,
    num_classes: int = 1,
    image_size: Sequence[int] = (640, 640),
    pretrained: bool = True,
    checkpoint: str | None = None,
    trust_checkpoint: bool = False,
    score_thresh: float | None = None,
    nms_thresh: float | None = None,
    detections_per_img: int | None = None,
) -> MMDetDetector:
    """An mmdet detector from an OpenMMLab ``config`` (file, model dict or preset; default ``"tood_lite"``).

    Args:
        config: An OpenMMLab config file, its ``model`` dict, or a preset of :data:`PRESETS`
            (``"tood_lite"``, ``"atss_lite"``); None: ``"tood_lite"``.
        num_classes: Set wherever the model config has ``num_classes`` (the stage sets it).
        image_size: The stage's input size (the stage resizes; any multiple of 32 works).
        pretrained: Initialise as mmengine's Runner does (offline ImageNet backbone weights, the
            heads' own initialisation) and load ``checkpoint``; False when saved weights follow.
        checkpoint: A local OpenMMLab checkpoint loaded over the initial weights when training
            starts (:func:`load_openmmlab_checkpoint`).
        trust_checkpoint: Unpickle ``checkpoint`` in full (it can run code): only for trusted files.
        score_thresh: The ``test_cfg``'s ``score_thr``; None keeps the config's.
        nms_thresh: The ``test_cfg``'s ``nms.iou_threshold``; None keeps the config's.
        detections_per_img: The ``test_cfg``'s ``max_per_img``; None keeps the config's.
    """
    del image_size  # the stage resizes to it; mmdet models take any multiple of 32
    model_cfg, scope = _model_config("tood_lite" if config is None else config, "model.config")
    model = _build_model("mmdet", model_cfg, scope, num_classes, pretrained, checkpoint, bool(trust_checkpoint), "model.config")
    detector = MMDetDetector(model)
    test_cfg = detector.test_cfg
    if score_thresh is not None:
        test_cfg["score_thr"] = float(score_thresh)
    if nms_thresh is not None:
        test_cfg.setdefault("nms", {})["iou_threshold"] = float(nms_thresh)
    if detections_per_img is not None:
        test_cfg["max_per_img"] = int(detections_per_img)
    return detector


@HEADS.register_module(name="mmseg")
def mmseg_segmentor(
    config: str | dict[str, Any] | None = None,
    num_classes: int = 1,
    pretrained: bool = True,
    checkpoint: str | None = None,
    trust_checkpoint: bool = False,
) -> MMSegSegmentor:
    """An mmseg segmentor from an OpenMMLab ``config`` (file, model dict or preset; default ``"deeplabv3plus_lite"``).

    Each class is an independent sigmoid channel (the stage's loss), so decode heads get
    ``num_classes`` output channels; the auxiliary head, which defectkit's loss would not train, is removed.

    Args:
        config: An OpenMMLab config file, its ``model`` dict, or the preset ``"deeplabv3plus_lite"``
            (:data:`PRESETS`); None: that preset.
        num_classes: Output channels of the decode head (the stage sets it).
        pretrained: Initialise as mmengine's Runner does and load ``checkpoint``; False when saved
            weights follow.
        checkpoint: A local OpenMMLab checkpoint loaded over the initial weights when training
            starts (:func:`load_openmmlab_checkpoint`).
        trust_checkpoint: Unpickle ``checkpoint`` in full (it can run code): only for trusted files.
    """
    model_cfg, scope = _model_config("deeplabv3plus_lite" if config is None else config, "model.config")
    model_cfg.pop("auxiliary_head", None)
    for node in _walk(model_cfg):
        if "num_classes" in node and "out_channels" in node:
            node["out_channels"] = int(num_classes)
    model = _build_model("mmseg", model_cfg, scope, num_classes, pretrained, checkpoint, bool(trust_checkpoint), "model.config")
    return MMSegSegmentor(model)


__all__ = [
    "INSTALL_HINT", "PRESETS", "EfficientNetLite", "MMDetDetector", "MMSegSegmentor", "deeplabv3plus_lite_config",
    "load_openmmlab_checkpoint", "mmdet_detector", "mmseg_segmentor", "tood_lite_config",
]
