"""One-stage box detectors (torchvision FCOS / RetinaNet) on an offline EfficientNet-Lite backbone (Lite0 by default).

Both are plain torchvision detection models: in train mode ``model(images, targets)`` returns a
dict of loss terms, in eval mode ``model(images)`` returns one ``{"boxes", "scores", "labels"}``
dict per image (NMS and the focal loss are torchvision's). What defectkit changes:

* the backbone is EfficientNet-Lite0 (``features_only``, offline ImageNet weights) at strides
  8/16/32 plus a torchvision :class:`~torchvision.ops.FeaturePyramidNetwork` (P3-P5 by default,
  see :class:`LiteFPN` for why);
* inputs are :func:`~defectkit.heads.backbones.to_input_tensor`'s [-1, 1] images, like every
  defectkit head, so the internal normalisation is the identity (mean 0, std 1);
* torchvision's internal resize keeps the given ``image_size`` (callers resize; boxes come back in
  the coordinates of the tensors passed in);
* the focal loss's ``alpha``/``gamma``, fixed at 0.25/2 inside torchvision's heads, are options.

Options of both (keyword arguments of :func:`fcos` / :func:`retinanet`): ``num_classes``,
``image_size`` ``(height, width)`` (multiples of 32), ``pretrained``, ``fpn_channels`` (multiple
of 32), ``extra_levels`` (add P6/P7), ``p2_level`` (add a stride-4 P2), ``score_thresh`` / ``nms_thresh`` / ``detections_per_img`` /
``topk_candidates`` (torchvision's post-processing), ``box_vote_iou`` (box voting after NMS, see
:func:`vote_boxes`), ``focal_alpha`` / ``focal_gamma``. FCOS adds ``head_convs`` (convs per head
branch), ``center_sampling_radius`` (in strides) and ``box_loss_weight`` (the GIoU box loss's weight
beside the focal and centerness losses, 1 by default); RetinaNet adds
``anchor_sizes`` (base size per level, default 16/32/64), ``aspect_ratios`` and
``fg_iou_thresh`` / ``bg_iou_thresh``.

Labels are class indices ``0..num_classes-1`` (sigmoid classifiers: no background class).
defectkit adds nothing to the forward pass that leaves torch (no numpy, no Python-side data
dependence), so the eval model exports to ONNX at a fixed image size like torchvision's own
detectors (checked with ``torch.onnx.export(..., dynamo=False)``, opset 17, against onnxruntime).

Example:
    >>> from defectkit.registry import HEADS, build
    >>> model = build(HEADS, dict(type="fcos", num_classes=1, image_size=(128, 128), pretrained=False)).eval()
    >>> out = model([torch.zeros(3, 128, 128)])
    >>> sorted(out[0])
    ['boxes', 'labels', 'scores']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetHead,
)
from torchvision.ops import FeaturePyramidNetwork, batched_nms, box_iou, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from defectkit.heads.backbones import DEFAULT_BACKBONE, create_feature_extractor
from defectkit.registry import HEADS

DETECTOR_TYPES = ("fcos", "retinanet")
"""Detectors :func:`build_detector` knows (the ``type`` names registered in HEADS)."""

STRIDES = (8, 16, 32)
"""Strides of the Lite0 feature maps feeding the FPN (P3, P4, P5)."""

_STRIDE_INDICES = (2, 3, 4)
"""timm ``out_indices`` of the EfficientNet-Lite stages at strides 8/16/32 (Lite0: 40, 112, 320 channels)."""

_P2_INDEX = 1
"""timm ``out_index`` of the EfficientNet-Lite stage at stride 4 (Lite0: 24 channels), for P2."""


def vote_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nms_thresh: float, limit: int,
    vote_iou: float | None = None,
) -> dict[str, torch.Tensor]:
    """Class-wise NMS keeping at most ``limit`` boxes, then (with ``vote_iou``) box voting.

    Box voting (Gidaris & Komodakis 2015; "soft voting" in many detectors) moves each kept box to
    the score-weighted mean of the candidates of its class that overlap it by at least
    ``vote_iou`` IOU, itself included; scores and labels stay the kept box's. Neighbouring locations
    regress the same object with partly independent errors, so their mean can localise it better
    than the single best-scoring box. On acne04, where most lesions missed at IOU 0.5 are found at
    IOU 0.3, it helped two of three trained detectors and hurt the third (docs/results.md), so it is
    off unless configured.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
        >>> kept = vote_boxes(boxes, torch.tensor([0.9, 0.9, 0.5]), torch.zeros(3, dtype=torch.int64), 0.5, 100, 0.5)
        >>> kept["boxes"].tolist()
        [[1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]]
    """
    keep = batched_nms(boxes, scores, labels, float(nms_thresh))[: int(limit)]
    kept_boxes = boxes[keep]
    if vote_iou is not None and len(keep):
        members = (box_iou(kept_boxes, boxes) >= float(vote_iou)) & (labels[keep][:, None] == labels[None, :])
        weights = scores[None, :] * members  # every kept box is its own member: the sums are > 0
        kept_boxes = (weights @ boxes) / weights.sum(dim=1, keepdim=True)
    return {"boxes": kept_boxes, "scores": scores[keep], "labels": labels[keep]}


class BoxVoting:
    """Mixin for torchvision's FCOS / RetinaNet: their post-processing with :func:`vote_boxes` as the NMS.

    ``box_vote_iou`` None: torchvision's own post-processing, unchanged.
    """

    box_vote_iou: float | None = None
    nms_thresh: float
    detections_per_img: int
    topk_candidates: int

    def postprocess_detections(
        self, head_outputs: dict[str, list[torch.Tensor]], anchors: list[list[torch.Tensor]],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        base = super().postprocess_detections  # type: ignore[misc]
        if self.box_vote_iou is None:
            return base(head_outputs, anchors, image_shapes)
        # torchvision decodes, thresholds and keeps the top candidates per level, then suppresses;
        # the vote needs the candidates before suppression, so its NMS is switched off for this call
        # (no IOU exceeds 1) and vote_boxes suppresses and caps instead.
        nms_thresh, limit = self.nms_thresh, self.detections_per_img
        self.nms_thresh, self.detections_per_img = 1.0, self.topk_candidates * len(anchors[0])
        try:
            candidates = base(head_outputs, anchors, image_shapes)
        finally:
            self.nms_thresh, self.detections_per_img = nms_thresh, limit
        return [vote_boxes(c["boxes"], c["scores"], c["labels"], nms_thresh, limit, self.box_vote_iou) for c in candidates]


class LiteFCOS(BoxVoting, FCOS):
    """torchvision's FCOS with optional box voting (:class:`BoxVoting`)."""


class LiteRetinaNet(BoxVoting, RetinaNet):
    """torchvision's RetinaNet with optional box voting (:class:`BoxVoting`)."""


class LiteFPN(nn.Module):
    """EfficientNet-Lite strides 8/16/32 and a feature pyramid: the backbone torchvision's detectors take.

    P3-P5 only by default: skin lesions on 640 px photos are ~5-60 px, which FCOS assigns to P3/P4
    (regression distance < 64 / < 128 px). P6/P7 (strides 64/128) only serve objects larger than
    ~256 px, i.e. none here, and would add head work and easy negatives. A stride-4 P2 would help
    lesions under ~8 px but costs four times P3's head compute on CPU; slice large photos instead
    (sliced training and inference) so lesions reach P3's range, or add it with ``p2_level=True``.
    ``extra_levels=True`` adds torchvision's P6/P7 for data sets with large objects.

    Args:
        out_channels: Channels of every pyramid level (multiple of 32: the heads use GroupNorm(32)).
        extra_levels: Add P6/P7 (strides 64/128) computed from P5.
        p2_level: Add P2 (stride 4, from the backbone's stride-4 stage) below P3: FCOS then assigns
            objects whose largest centre-to-side distance is under 32 px to it, and the heads run on
            four times P3's positions there.
        pretrained: Start the body from the offline ImageNet weights.
        backbone: ``"lite0"``, ``"lite1"`` or ``"lite2"`` (:data:`~defectkit.heads.backbones.BACKBONES`).

    Example:
        >>> fpn = LiteFPN(64, pretrained=False)
        >>> [tuple(v.shape) for v in fpn(torch.zeros(1, 3, 64, 64)).values()]
        [(1, 64, 8, 8), (1, 64, 4, 4), (1, 64, 2, 2)]
    """

    def __init__(self, out_channels: int = 96, extra_levels: bool = False, pretrained: bool = True, backbone: str = DEFAULT_BACKBONE,
                 p2_level: bool = False) -> None:
        super().__init__()
        if int(out_channels) < 32 or int(out_channels) % 32:
            raise ValueError(f"fpn_channels must be a multiple of 32, got {out_channels}")
        indices = ((_P2_INDEX,) if p2_level else ()) + _STRIDE_INDICES
        self.body = create_feature_extractor(out_indices=indices, pretrained=pretrained, backbone=backbone)
        extra = LastLevelP6P7(int(out_channels), int(out_channels)) if extra_levels else None
        self.fpn = FeaturePyramidNetwork(list(self.body.feature_info.channels()), int(out_channels), extra_blocks=extra)
        self.out_channels = int(out_channels)  # torchvision's detectors read this attribute
        self.strides = ((4,) if p2_level else ()) + STRIDES + ((64, 128) if extra_levels else ())
        self.num_levels = len(self.strides)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


class FocalFCOSHead(FCOSHead):
    """torchvision's FCOS head with the classification focal loss's ``alpha``/``gamma`` and the box loss's weight as options.

    torchvision calls ``sigmoid_focal_loss`` with its defaults (0.25, 2.0) inside
    ``compute_loss``; this head recomputes that one term with its own values (same targets, same
    normalisation by the number of foreground points). The GIoU box loss is scaled by
    ``box_weight`` (1: torchvision's sum of equal terms; detectors tuned for localisation, such as
    mmdet's GFL and ATSS configs, weigh it 2); the centerness loss is left as it is.
    """

    def __init__(
        self, in_channels: int, num_classes: int, num_convs: int = 4, alpha: float = 0.25, gamma: float = 2.0, box_weight: float = 1.0
    ) -> None:
        super().__init__(in_channels, 1, num_classes, num_convs)
        if not box_weight > 0:
            raise ValueError(f"box_loss_weight must be > 0, got {box_weight}")
        self.alpha, self.gamma, self.box_weight = float(alpha), float(gamma), float(box_weight)

    def compute_loss(
        self,
        targets: list[dict[str, torch.Tensor]],
        head_outputs: dict[str, torch.Tensor],
        anchors: list[torch.Tensor],
        matched_idxs: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        cls_logits = head_outputs["cls_logits"]  # N x points x classes
        gt_classes = torch.zeros_like(cls_logits)
        for index, (target, matched) in enumerate(zip(targets, matched_idxs)):
            foreground = matched >= 0
            gt_classes[index, foreground, target["labels"][matched[foreground]]] = 1.0
        num_foreground = sum(int((m >= 0).sum()) for m in matched_idxs)
        loss = sigmoid_focal_loss(cls_logits, gt_classes, alpha=self.alpha, gamma=self.gamma, reduction="sum")
        losses["classification"] = loss / max(1, num_foreground)
        losses["bbox_regression"] = losses["bbox_regression"] * self.box_weight
        return losses


class FocalRetinaNetClassificationHead(RetinaNetClassificationHead):
    """torchvision's RetinaNet classification head with the focal loss's ``alpha``/``gamma`` as options.

    Same targets, ignored anchors (between the IoU thresholds) and per-image normalisation as
    torchvision's ``compute_loss``, which fixes ``alpha=0.25, gamma=2``.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, alpha: float = 0.25, gamma: float = 2.0,
                 norm_layer: Any = None) -> None:
        super().__init__(in_channels, num_anchors, num_classes, norm_layer=norm_layer)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], head_outputs: dict[str, torch.Tensor],
                     matched_idxs: list[torch.Tensor]) -> torch.Tensor:
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs):
            foreground = matched >= 0
            gt_classes = torch.zeros_like(logits)
            gt_classes[foreground, target["labels"][matched[foreground]]] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(logits[valid], gt_classes[valid], alpha=self.alpha, gamma=self.gamma, reduction="sum")
            losses.append(loss / max(1, int(foreground.sum())))
        return torch.stack(losses).sum() / len(targets)


def _check_common(num_classes: int, image_size: Sequence[int]) -> tuple[int, tuple[int, int]]:
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    size = (int(image_size[0]), int(image_size[1]))
    if any(v < 32 or v % 32 for v in size):
        raise ValueError(f"detector image_size must be multiples of 32 (>= 32), got {list(size)}")
    return int(num_classes), size


def _vote_iou(value: float | None) -> float | None:
    if value is not None and not 0.0 < float(value) <= 1.0:
        raise ValueError(f"box_vote_iou must be in (0, 1] or None, got {value}")
    return None if value is None else float(value)


def _transform_args(image_size: tuple[int, int]) -> dict[str, Any]:
    """GeneralizedRCNNTransform settings that keep ``image_size`` inputs as they are.

    Its resize scales the short side to ``min_size`` unless the long side would pass ``max_size``:
    with both taken from ``image_size`` the scale is exactly 1. Mean 0 / std 1: inputs already have
    the backbone's [-1, 1] scaling (:func:`~defectkit.heads.backbones.to_input_tensor`).
    """
    return dict(min_size=min(image_size), max_size=max(image_size), image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])


@HEADS.register_module(name="fcos")
def fcos(
    num_classes: int = 1,
    image_size: Sequence[int] = (640, 640),
    pretrained: bool = True,
    fpn_channels: int = 96,
    head_convs: int = 2,
    extra_levels: bool = False,
    p2_level: bool = False,
    center_sampling_radius: float = 1.5,
    score_thresh: float = 0.2,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    backbone: str = DEFAULT_BACKBONE,
    box_vote_iou: float | None = None,
    box_loss_weight: float = 1.0,
) -> FCOS:
    """Anchor-free FCOS on EfficientNet-Lite (``backbone``: lite0, lite1, lite2) + FPN (P3-P5), for ``image_size`` [-1, 1] inputs."""
    num_classes, size = _check_common(num_classes, image_size)
    # The defaults size the head for CPU (as NanoDet does: 96 channels, 2 convs per branch). The
    # head runs at every P3 position, so torchvision's usual 4 convs x 128-256 channels would cost
    # 4x the Lite0 backbone: 28.5 GFLOP per 640 px image at 128 channels, against 13.1 here.
    body = LiteFPN(fpn_channels, extra_levels, pretrained, backbone, p2_level)
    # FCOS needs one "anchor" per location whose size equals the level's stride: its scale ranges
    # (which level regresses which object size) are derived from these sizes. A location is a
    # positive only inside a box, so a lesion narrower than 8 px at the network's input may fall
    # between P3's points and never be learned: upscale (slice) such images, or use RetinaNet,
    # whose matcher gives every box at least its best anchor.
    anchors = AnchorGenerator(tuple((s,) for s in body.strides), ((1.0,),) * body.num_levels)
    head = FocalFCOSHead(body.out_channels, num_classes, int(head_convs), focal_alpha, focal_gamma, float(box_loss_weight))
    model = LiteFCOS(
        body, num_classes, anchor_generator=anchors, head=head, center_sampling_radius=float(center_sampling_radius),
        score_thresh=float(score_thresh), nms_thresh=float(nms_thresh), detections_per_img=int(detections_per_img),
        topk_candidates=int(topk_candidates), **_transform_args(size),
    )
    model.box_vote_iou = _vote_iou(box_vote_iou)
    return model


@HEADS.register_module(name="retinanet")
def retinanet(
    num_classes: int = 1,
    image_size: Sequence[int] = (640, 640),
    pretrained: bool = True,
    fpn_channels: int = 96,
    extra_levels: bool = False,
    p2_level: bool = False,
    anchor_sizes: Sequence[float] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.4,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    backbone: str = DEFAULT_BACKBONE,
    box_vote_iou: float | None = None,
) -> RetinaNet:
    """Anchor-based RetinaNet on EfficientNet-Lite (``backbone``) + FPN (P3-P5) with small anchors, for ``image_size`` inputs."""
    num_classes, size = _check_common(num_classes, image_size)
    body = LiteFPN(fpn_channels, extra_levels, pretrained, backbone, p2_level)
    # Base anchor size per level twice its stride, half of torchvision's (32 at P3): lesions of
    # 10-100 px then have anchors close to their size; each level gets 3 octave scales (x1, x2^(1/3), x2^(2/3)).
    default_sizes = tuple(2 * stride for stride in body.strides)
    base_sizes = tuple(float(v) for v in (anchor_sizes or default_sizes))
    if len(base_sizes) != body.num_levels:
        raise ValueError(f"anchor_sizes needs one base size per pyramid level ({body.num_levels}), got {list(base_sizes)}")
    sizes = tuple(tuple(b * 2 ** (k / 3) for k in range(3)) for b in base_sizes)
    anchors = AnchorGenerator(sizes, (tuple(float(r) for r in aspect_ratios),) * len(sizes))
    num_anchors = anchors.num_anchors_per_location()[0]
    # GroupNorm in both branches (torchvision's "v2" RetinaNet): stable with CPU-sized batches.
    norm = partial(nn.GroupNorm, 32)
    head = RetinaNetHead(body.out_channels, num_anchors, num_classes, norm_layer=norm)
    head.classification_head = FocalRetinaNetClassificationHead(
        body.out_channels, num_anchors, num_classes, focal_alpha, focal_gamma, norm_layer=norm
    )
    model = LiteRetinaNet(
        body, num_classes, anchor_generator=anchors, head=head, fg_iou_thresh=float(fg_iou_thresh),
        bg_iou_thresh=float(bg_iou_thresh), score_thresh=float(score_thresh), nms_thresh=float(nms_thresh),
        detections_per_img=int(detections_per_img), topk_candidates=int(topk_candidates), **_transform_args(size),
    )
    model.box_vote_iou = _vote_iou(box_vote_iou)
    return model


class DetectorEnsemble(nn.Module):
    """Detectors of one architecture trained from different seeds; the Detector stage fuses their boxes.

    It holds the members only (``members.<k>.`` weights): each is trained on its own and predicts
    on its own, and the caller fuses their boxes (weighted box fusion in
    :meth:`~defectkit.stages.detect.Detector.detect`), as SAHI-style libraries fuse test-time passes.

    Example:
        >>> ensemble = DetectorEnsemble([fcos(1, (64, 64), pretrained=False) for _ in range(2)])
        >>> len(ensemble.members), sorted(ensemble.state_dict())[0]
        (2, 'members.0.backbone.body.blocks.0.0.bn1.bias')
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)


class DenseOutputs(nn.Module):
    """A detector's network without its post-processing: backbone, pyramid and head, one tensor out.

    This is the part of :func:`fcos` / :func:`retinanet` models worth exporting (all the
    convolutions); what follows it (decoding boxes at the anchors, score threshold, top-k, NMS) is
    data-dependent and stays in PyTorch, in :func:`detections_from_dense`. The output is
    ``(N, locations, classes + 4 [+ 1])``: the head's class logits, box regression and (FCOS) centerness,
    concatenated in :func:`head_output_widths` order. Inputs are the model's own: NCHW [-1, 1] at its
    ``image_size`` (the internal transform is the identity there, see :func:`_transform_args`).

    Example:
        >>> model = fcos(1, (64, 64), pretrained=False).eval()
        >>> DenseOutputs(model)(torch.zeros(2, 3, 64, 64)).shape  # 8x8 + 4x4 + 2x2 locations
        torch.Size([2, 84, 6])
    """

    def __init__(self, detector: FCOS | RetinaNet) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = list(self.detector.backbone(x).values())
        outputs = self.detector.head(features)
        return torch.cat([outputs[key] for key in head_output_widths(self.detector)], dim=2)


class EnsembleDenseOutputs(nn.Module):
    """Every member's :class:`DenseOutputs` in one network: ``(N, members, locations, channels)``.

    One exported file then runs the whole ensemble; :func:`detections_from_dense` decodes each
    member's slice ``[:, k]`` with that member.
    """

    def __init__(self, ensemble: DetectorEnsemble) -> None:
        super().__init__()
        self.members = nn.ModuleList(DenseOutputs(member) for member in ensemble.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members], dim=1)


def head_output_widths(detector: FCOS | RetinaNet) -> dict[str, int]:
    """The head's outputs in :class:`DenseOutputs` order, each with its channels per location."""
    widths = {"cls_logits": int(detector.head.classification_head.num_classes), "bbox_regression": 4}
    if isinstance(detector, FCOS):
        widths["bbox_ctrness"] = 1
    return widths


def detections_from_dense(
    detector: FCOS | RetinaNet, dense: torch.Tensor, image_size: Sequence[int]
) -> list[dict[str, torch.Tensor]]:
    """What ``detector(images)`` returns in eval mode, from :class:`DenseOutputs`' output for those images.

    Repeats torchvision's FCOS/RetinaNet ``forward`` after the head (anchors, per-level split,
    ``postprocess_detections``) for inputs of the model's ``image_size`` ``(height, width)``, at
    which the transform's resize back is the identity.

    Example:
        >>> model = fcos(1, (64, 96), pretrained=False).eval()
        >>> x = torch.zeros(1, 3, 64, 96)
        >>> found = detections_from_dense(model, DenseOutputs(model)(x), (64, 96))
        >>> torch.allclose(found[0]["scores"], model(list(x))[0]["scores"])
        True
    """
    size = (int(image_size[0]), int(image_size[1]))
    n = int(dense.shape[0])
    # Pyramid level k has ceil(size / stride) cells per side (stride-2 convolutions round up).
    shapes = [(-(-size[0] // s), -(-size[1] // s)) for s in detector.backbone.strides]
    features = [dense.new_zeros((n, 0, h, w)) for h, w in shapes]  # the anchor generator reads shapes only
    images = ImageList(dense.new_zeros((n, 0, *size)), [size] * n)
    anchors = detector.anchor_generator(images, features)
    per_location = int(dense.shape[1]) // sum(h * w for h, w in shapes)  # anchors per location (RetinaNet: 3 x ratios)
    counts = [h * w * per_location for h, w in shapes]
    widths = head_output_widths(detector)
    outputs = dict(zip(widths, dense.split(list(widths.values()), dim=2)))
    split_outputs = {key: list(value.split(counts, dim=1)) for key, value in outputs.items()}
    split_anchors = [list(a.split(counts)) for a in anchors]
    return detector.postprocess_detections(split_outputs, split_anchors, images.image_sizes)


@contextmanager
def input_size(detector: FCOS | RetinaNet, size: Sequence[int]) -> Iterator[None]:
    """Within the block, ``detector`` takes inputs of ``size`` ``(height, width)`` as they are.

    Its internal transform otherwise resizes every input to the size it was built for
    (:func:`_transform_args`); test-time input sizes (the Detector stage's ``tta_scales``) need it not to.

    Example:
        >>> model = fcos(1, (64, 64), pretrained=False).eval()
        >>> with input_size(model, (96, 128)):
        ...     model.transform.min_size, model.transform.max_size
        ((96,), 128)
        >>> model.transform.min_size, model.transform.max_size
        ((64,), 64)
    """
    transform = detector.transform
    saved = transform.min_size, transform.max_size
    transform.min_size, transform.max_size = (min(int(v) for v in size),), max(int(v) for v in size)
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


def build_detector(cfg: dict[str, Any], num_classes: int, pretrained: bool = True) -> nn.Module:
    """Build a registered detector from ``cfg`` (``type`` plus its keyword arguments) for ``num_classes``."""
    from defectkit.registry import build

    args = dict(cfg)
    args["num_classes"] = int(num_classes)
    args["pretrained"] = bool(pretrained)
    return build(HEADS, args)


__all__ = [
    "DETECTOR_TYPES", "STRIDES", "BoxVoting", "DenseOutputs", "DetectorEnsemble", "EnsembleDenseOutputs",
    "FocalFCOSHead", "FocalRetinaNetClassificationHead", "LiteFCOS", "LiteFPN", "LiteRetinaNet", "build_detector",
    "detections_from_dense", "fcos", "head_output_widths", "input_size", "retinanet", "vote_boxes",
]
