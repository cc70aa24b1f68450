"""Offline ImageNet backbones: Lite0/1/2 weights map onto timm and classify ImageNet photos correctly."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.errors import ConfigError
from defectkit.heads.backbones import (
    BACKBONES,
    create_classifier,
    create_feature_extractor,
    fold_batch_norms,
    frozen_feature_extractor,
    pretrained_state_dict,
    timm_name,
    to_input_tensor,
)
from defectkit.heads.detector import build_detector
from defectkit.registry import HEADS, build


def _installed(backbone: str) -> bool:
    return importlib.util.find_spec(BACKBONES[backbone][0]) is not None


WITH_WEIGHTS = [pytest.param(b, marks=pytest.mark.skipif(not _installed(b), reason=f"{BACKBONES[b][0]} is not installed (the [lite] extra)"))
                for b in BACKBONES]


@pytest.mark.parametrize("backbone", WITH_WEIGHTS)
def test_mapped_weights_name_imagenet_photos_as_the_original_model_does(backbone: str) -> None:
    from skimage import data

    model = create_classifier(1000, pretrained=True, backbone=backbone).eval()
    # The classifier head is left out of create_classifier's weights; load the whole mapped state here.
    model.load_state_dict(pretrained_state_dict(backbone))
    side = {"lite0": 224, "lite1": 240, "lite2": 260}[backbone]
    photos = [np.asarray(Image.fromarray(p).resize((side, side))) for p in (data.chelsea(), data.coffee())]
    with torch.no_grad():
        classes = model(to_input_tensor(photos)).argmax(1).tolist()
    assert classes == [285, 967]  # Egyptian cat, espresso


@pytest.mark.parametrize("backbone", WITH_WEIGHTS)
def test_detector_and_segmenter_bodies_start_from_the_chosen_backbones_weights(backbone: str) -> None:
    weights = pretrained_state_dict(backbone)
    detector = build_detector(dict(type="fcos", image_size=(64, 64), fpn_channels=32, backbone=backbone), 1)
    segmenter = build(HEADS, dict(type="DeepLabV3Plus", num_classes=2, backbone=backbone))
    for body in (detector.backbone.body.state_dict(), segmenter.encoder.model.state_dict()):
        assert torch.equal(body["conv_stem.weight"], weights["conv_stem.weight"])
        assert torch.equal(body["blocks.4.0.conv_pw.weight"], weights["blocks.4.0.conv_pw.weight"])


def test_an_unknown_backbone_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="lite0.*lite1.*lite2"):
        timm_name("resnet50")
    with pytest.raises(ConfigError, match="backbone"):
        build_detector(dict(type="fcos", image_size=(64, 64), backbone="lite9"), 1, pretrained=False)


def test_a_dilated_feature_extractor_keeps_the_imagenet_weights_at_output_stride_16() -> None:
    strided = create_feature_extractor(out_indices=(1, 4), pretrained=True)
    dilated = create_feature_extractor(out_indices=(1, 4), pretrained=True, output_stride=16)
    shapes = [tuple(f.shape[2:]) for f in dilated(torch.zeros(1, 3, 64, 96))]
    assert shapes == [(16, 24), (4, 6)]  # strides 4 and 16 (32 without dilation)
    for key, value in strided.state_dict().items():
        assert torch.equal(value, dilated.state_dict()[key]), key


def test_folding_batch_norms_keeps_the_features_and_removes_every_batch_norm() -> None:
    torch.manual_seed(0)
    net = create_feature_extractor(out_indices=(1, 2, 3), pretrained=False).eval()
    for module in net.modules():  # statistics far from the identity, so a wrong fold shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    x = torch.rand(2, 3, 70, 96) * 2 - 1
    with torch.no_grad():
        expected = net(x)
        folded = fold_batch_norms(copy.deepcopy(net))
        got = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-4 * float(e.abs().max()))


def test_the_frozen_extractor_gives_the_imagenet_features_in_channels_last_without_gradients() -> None:
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = create_feature_extractor(out_indices=(2, 3))(x)
        frozen = frozen_feature_extractor(out_indices=(2, 3))
        got = frozen(x.contiguous(memory_format=torch.channels_last))
    assert not any(p.requires_grad for p in frozen.parameters())
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-4 * float(e.abs().max()))
