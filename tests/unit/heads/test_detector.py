"""Detection heads: offline construction, eval boxes, train losses, kept input size, focal options."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.fcos import FCOSHead

from defectkit.errors import ConfigError
from defectkit.heads.backbones import pretrained_state_dict
from defectkit.heads.detector import build_detector, vote_boxes
from defectkit.registry import HEADS, build

SIZE = 64  # loss tests: small and quick; the eval test uses 128 px
SMALL = dict(image_size=(SIZE, SIZE), fpn_channels=32, head_convs=2)


def images(n: int = 2, size: int = SIZE) -> list[torch.Tensor]:
    """Dark [-1, 1] images with a bright 16 px square in the first: the "lesion" of :func:`targets`."""
    batch = torch.full((n, 3, size, size), -0.6)
    batch[0, :, 10:26, 20:36] = 1.0
    return list(batch)


def targets(n: int = 2) -> list[dict[str, torch.Tensor]]:
    """The first image's lesion box; the others are lesion-free."""
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    return [{"boxes": torch.tensor([[20.0, 10.0, 36.0, 26.0]]), "labels": torch.tensor([0])}] + [empty] * (n - 1)


def model(kind: str, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    small = {k: v for k, v in SMALL.items() if kind == "fcos" or k != "head_convs"}
    return build_detector(dict(type=kind, **{**small, **options}), num_classes=1, pretrained=False)


def test_pretrained_backbone_comes_from_the_offline_lite0_weights() -> None:
    detector = build(HEADS, dict(type="fcos", num_classes=1, pretrained=True, **SMALL))
    body = detector.backbone.body.state_dict()
    weights = pretrained_state_dict()
    assert torch.equal(body["conv_stem.weight"], weights["conv_stem.weight"])
    assert torch.equal(body["blocks.4.0.conv_pw.weight"], weights["blocks.4.0.conv_pw.weight"])


@pytest.mark.parametrize("kind", ["fcos", "retinanet"])
def test_eval_forward_returns_boxes_inside_each_image(kind: str) -> None:
    detector = model(kind, score_thresh=0.0, image_size=(128, 128)).eval()
    with torch.no_grad():
        found = detector(images(2, size=128))
    assert len(found) == 2
    for result in found:
        assert result["boxes"].shape[1] == 4 and len(result["boxes"]) == len(result["scores"]) == len(result["labels"]) > 0
        assert float(result["boxes"].min()) >= 0 and float(result["boxes"].max()) <= 128
        assert set(result["labels"].tolist()) == {0}


@pytest.mark.parametrize("kind, terms", [("fcos", {"classification", "bbox_regression", "bbox_ctrness"}),
                                         ("retinanet", {"classification", "bbox_regression"})])
def test_train_forward_returns_finite_losses_that_backpropagate(kind: str, terms: set[str]) -> None:
    detector = model(kind).train()
    losses = detector(images(), targets())
    assert set(losses) == terms
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert detector.head.classification_head.cls_logits.weight.grad is not None


def test_inputs_keep_their_size_and_scaling() -> None:
    detector = model("fcos", image_size=(96, 160)).eval()
    batch = torch.rand(1, 3, 96, 160) * 2 - 1
    image_list, _ = detector.transform(list(batch))
    assert image_list.image_sizes == [(96, 160)]
    assert torch.allclose(image_list.tensors, batch, atol=1e-6)  # no resize, identity normalisation


def test_default_focal_loss_matches_torchvision_and_options_change_it() -> None:
    x, y = images(), targets()
    ours = model("fcos").train()
    stock_head = FCOSHead(32, 1, 1, num_convs=2)
    stock_head.load_state_dict(ours.head.state_dict())
    stock = model("fcos").train()
    stock.head = stock_head
    default, reference = ours(x, y), stock(x, y)
    for key in reference:
        assert torch.allclose(default[key], reference[key]), key
    changed = model("fcos", focal_alpha=0.75, focal_gamma=0.5).train()(x, y)
    assert not torch.allclose(changed["classification"], default["classification"])
    assert torch.allclose(changed["bbox_regression"], default["bbox_regression"])


def test_retinanet_focal_options_change_only_the_classification_loss() -> None:
    x, y = images(), targets()
    default = model("retinanet").train()(x, y)
    changed = model("retinanet", focal_alpha=0.9, focal_gamma=0.0).train()(x, y)
    assert not torch.allclose(changed["classification"], default["classification"])
    assert torch.allclose(changed["bbox_regression"], default["bbox_regression"])


def test_fcos_box_loss_weight_scales_only_the_box_loss() -> None:
    x, y = images(), targets()
    default = model("fcos").train()(x, y)
    doubled = model("fcos", box_loss_weight=2.0).train()(x, y)
    assert torch.allclose(doubled["bbox_regression"], 2 * default["bbox_regression"])
    for key in ("classification", "bbox_ctrness"):
        assert torch.allclose(doubled[key], default[key]), key
    with pytest.raises(ValueError, match="box_loss_weight"):
        model("fcos", box_loss_weight=0.0)


def test_box_voting_moves_each_kept_box_to_the_score_weighted_mean_of_its_overlapping_candidates() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 0.0, 13.0, 10.0], [1.0, 0.0, 11.0, 10.0], [40.0, 40.0, 50.0, 50.0]])
    scores = torch.tensor([0.9, 0.3, 0.6, 0.8])
    labels = torch.tensor([0, 0, 1, 0])  # the third box is another class: it neither joins nor is suppressed
    plain = vote_boxes(boxes, scores, labels, nms_thresh=0.5, limit=10)
    voted = vote_boxes(boxes, scores, labels, nms_thresh=0.5, limit=10, vote_iou=0.5)
    assert plain["scores"].tolist() == voted["scores"].tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert torch.equal(plain["boxes"], boxes[[0, 3, 2]])
    assert torch.allclose(voted["boxes"][0], torch.tensor([0.75, 0.0, 10.75, 10.0]))  # (0.9 * 0 + 0.3 * 3) / 1.2
    assert torch.equal(voted["boxes"][1:], boxes[[3, 2]])  # alone in their group: unchanged
    assert len(vote_boxes(boxes, scores, labels, nms_thresh=0.5, limit=2, vote_iou=0.5)["boxes"]) == 2


@pytest.mark.parametrize("kind", ["fcos", "retinanet"])
def test_box_voting_keeps_the_plain_post_processing_scores_and_count(kind: str) -> None:
    plain = model(kind, score_thresh=0.0, image_size=(128, 128), detections_per_img=20).eval()
    voting = model(kind, score_thresh=0.0, image_size=(128, 128), detections_per_img=20, box_vote_iou=0.6).eval()
    voting.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a, b = plain(images(1, size=128))[0], voting(images(1, size=128))[0]
    assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["labels"], b["labels"]) and len(b["boxes"]) == 20
    assert not torch.equal(a["boxes"], b["boxes"])
    assert voting.nms_thresh == plain.nms_thresh and voting.detections_per_img == 20  # restored after the call


def test_extra_levels_add_p6_p7() -> None:
    detector = model("retinanet", extra_levels=True)
    assert len(detector.backbone(torch.zeros(1, 3, SIZE, SIZE))) == 5
    assert len(detector.anchor_generator.sizes) == 5


@pytest.mark.parametrize("kind", ["fcos", "retinanet"])
def test_p2_level_adds_a_stride_4_level_below_p3_that_trains(kind: str) -> None:
    detector = model(kind, p2_level=True)
    levels = detector.backbone(torch.zeros(1, 3, SIZE, SIZE))
    assert [v.shape[-1] for v in levels.values()] == [SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 32]
    assert detector.backbone.strides == (4, 8, 16, 32) and len(detector.anchor_generator.sizes) == 4
    losses = detector.train()(images(), targets())
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_options_fail_with_what_is_valid() -> None:
    with pytest.raises(ConfigError, match="fpn_channels"):
        build(HEADS, dict(type="fcos", num_classes=1, pretrained=False, fpn_chanels=64))
    with pytest.raises(ConfigError, match="head_convs"):
        build(HEADS, dict(type="retinanet", num_classes=1, pretrained=False, head_convs=2))  # FCOS only
    with pytest.raises(ValueError, match="multiples of 32"):
        model("fcos", image_size=(100, 100))
    with pytest.raises(ValueError, match="multiple of 32"):
        model("fcos", fpn_channels=48)
    with pytest.raises(ValueError, match="one base size per pyramid level"):
        model("retinanet", anchor_sizes=(8, 16))
    with pytest.raises(ValueError, match="box_vote_iou"):
        model("fcos", box_vote_iou=1.5)
