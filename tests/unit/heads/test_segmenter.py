"""Segmentation heads: shapes of both architectures, offline encoder weights, loss, trainability."""

from __future__ import annotations

import pytest
import torch

from defectkit.errors import ConfigError
from defectkit.heads.backbones import pretrained_state_dict
from defectkit.heads.segmenter import (
    SEGMENTATION_LOSSES,
    BestThresholdIoU,
    batch_dice_loss,
    batch_focal_tversky_loss,
    bce_dice_loss,
    focal_tversky_loss,
    segmentation_loss,
)
from defectkit.registry import HEADS, build


@pytest.mark.parametrize("arch", ["Unet", "DeepLabV3Plus"])
def test_segmenter_output_shape(arch: str) -> None:
    model = build(HEADS, dict(type=arch, num_classes=3, pretrained=False)).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)


def test_pretrained_loads_offline_encoder_weights() -> None:
    model = build(HEADS, dict(type="Unet", num_classes=1, pretrained=True))
    encoder = model.encoder.model.state_dict()
    weights = pretrained_state_dict()
    assert torch.equal(encoder["conv_stem.weight"], weights["conv_stem.weight"])
    assert torch.equal(encoder["blocks.3.0.conv_pw.weight"], weights["blocks.3.0.conv_pw.weight"])


def test_unknown_option_fails_with_valid_options() -> None:
    with pytest.raises(ConfigError, match="decoder_channels"):
        build(HEADS, dict(type="Unet", num_classes=1, pretrained=False, decoder_chanels=(8, 8, 8, 8, 8)))


def test_bce_dice_loss_values() -> None:
    target = torch.zeros(1, 2, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 20
    assert float(bce_dice_loss(perfect, target)) < 1e-3
    wrong = -perfect
    assert float(bce_dice_loss(wrong, target, dice_weight=0.0)) > 5
    assert float(bce_dice_loss(wrong, target, dice_weight=1.0)) > float(bce_dice_loss(wrong, target, dice_weight=0.0))


def test_loss_decreases_on_bright_square() -> None:
    torch.manual_seed(0)
    x = torch.full((4, 3, 64, 64), -0.5)
    y = torch.zeros(4, 1, 64, 64)
    for i, (r, c) in enumerate([(4, 4), (20, 30), (36, 10), (30, 40)]):
        x[i, :, r : r + 16, c : c + 16] = 1.0
        y[i, 0, r : r + 16, c : c + 16] = 1.0
    model = build(HEADS, dict(type="Unet", num_classes=1, pretrained=True, decoder_channels=(32, 16, 16, 8, 8)))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = bce_dice_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.8, losses


@pytest.mark.parametrize("name", SEGMENTATION_LOSSES)
def test_every_loss_is_lower_for_the_right_answer_than_for_the_wrong_one(name):
    target = torch.zeros(2, 3, 16, 16)
    target[:, 1, 4:8, 4:12] = 1
    loss = segmentation_loss(name, dice_weight=1.0)
    right = loss(target * 20 - 10, target)
    wrong = loss(10 - target * 20, target)
    assert float(right) < 0.05 < float(wrong)
    logits = torch.zeros(2, 3, 16, 16, requires_grad=True)
    loss(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_batch_dice_leaves_a_class_absent_from_an_image_to_bce_where_per_image_dice_punishes_it():
    # Class 0 is in image 0 and predicted there perfectly; image 1 shows a faint (p ~ 0.1) haze of class 0.
    target = torch.zeros(2, 1, 16, 16)
    target[0, 0, 4:12, 4:12] = 1
    logits = torch.where(target > 0, torch.tensor(10.0), torch.tensor(-10.0))
    logits[1, 0] = -2.2
    per_image = float(bce_dice_loss(logits, target, dice_weight=1.0) - bce_dice_loss(logits, target, dice_weight=0.0))
    per_batch = float(batch_dice_loss(logits, target))
    assert per_image > 0.4  # image 1's empty channel alone costs nearly a whole Dice term
    assert per_batch < 0.25  # the haze only dilutes class 0's batch-wide overlap
    # A batch with no defect of any class has no Dice term, and still a gradient path.
    empty = torch.zeros(2, 1, 8, 8, requires_grad=True)
    value = batch_dice_loss(empty, torch.zeros(2, 1, 8, 8))
    value.backward()
    assert float(value) == 0.0 and empty.grad is not None


def test_batch_focal_tversky_counts_a_class_over_the_batch_and_weighs_misses_above_false_alarms():
    target = torch.zeros(2, 1, 16, 16)
    target[0, 0, 4:12, 4:12] = 1
    logits = torch.where(target > 0, torch.tensor(10.0), torch.tensor(-10.0))
    logits[1, 0] = -2.2  # a faint haze of the class on the image without it
    assert float(focal_tversky_loss(logits, target)) > 0.3  # per image, the empty channel costs most of a term
    assert float(batch_focal_tversky_loss(logits, target)) < 0.2
    # beta = 0.7 > alpha = 0.3: missing half the defect costs more than painting as much beside it.
    missed, painted = logits.clone(), logits.clone()
    missed[0, 0, 4:8, 4:12] = -10.0
    painted[0, 0, 12:16, 4:12] = 10.0
    assert float(batch_focal_tversky_loss(missed, target)) > float(batch_focal_tversky_loss(painted, target))
    empty = torch.zeros(2, 1, 8, 8, requires_grad=True)
    value = batch_focal_tversky_loss(empty, torch.zeros(2, 1, 8, 8))
    value.backward()
    assert float(value) == 0.0 and empty.grad is not None


def brute_force_best_threshold_iou(probs: torch.Tensor, targets: torch.Tensor, bins: int) -> float:
    """The same score counted the slow way: every class, every threshold, every pixel."""
    scores = []
    for c in range(probs.shape[1]):
        truth = targets[:, c] > 0.5
        if not truth.any():
            continue
        best = 0.0
        for k in range(1, bins):
            # BestThresholdIoU bins p into floor(p * bins): p >= k / bins up to float rounding
            predicted = (probs[:, c] * bins).floor() >= k
            union = (predicted | truth).sum().item()
            best = max(best, (predicted & truth).sum().item() / union if union else 0.0)
        scores.append(best)
    return sum(scores) / len(scores)


def test_best_threshold_iou_counts_every_cut_over_the_whole_validation_set() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(6, 3, 16, 16, generator=generator) > 0.8).float()
    targets[:, 2] = 0  # a class without validation pixels does not count
    logits = 2.0 * targets - 1.0 + torch.randn(6, 3, 16, 16, generator=generator)
    score = BestThresholdIoU(bins=20)
    score.reset()
    for batch in range(0, 6, 4):  # two batches: counts add up over the pass
        score.update(logits[batch:batch + 4], targets[batch:batch + 4])
    expected = brute_force_best_threshold_iou(torch.sigmoid(logits), targets, 20)
    assert score.compute() == pytest.approx(expected, abs=1e-9)
    score.reset()
    assert score.compute() is None  # a new pass starts from nothing


def test_best_threshold_iou_sees_an_under_confident_map_that_a_cut_at_half_would_erase() -> None:
    targets = torch.zeros(1, 1, 8, 8)
    targets[0, 0, 2:5, 2:5] = 1
    logits = torch.where(targets > 0, -1.0, -4.0)  # the defect at p=0.27, the rest at p=0.02
    score = BestThresholdIoU()
    score.reset()
    score.update(logits, targets)
    assert ((torch.sigmoid(logits) > 0.5) & (targets > 0)).sum() == 0
    assert score.compute() == 1.0
    with pytest.raises(ValueError, match="bins"):
        BestThresholdIoU(bins=1)
