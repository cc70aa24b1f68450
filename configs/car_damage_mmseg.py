# Car body damage with an OpenMMLab segmentor: mmseg's DeepLabV3+ (depthwise-separable ASPP head) on
# the same offline EfficientNet-Lite0 encoder, trained by defectkit's loop with the config's loss
# (batch Dice + BCE, one sigmoid map per class), everything else as configs/car_damage.py.
# Needs the [openmmlab] extra: bash scripts/install-openmmlab.sh
# Any mmseg config file works the same way: pipeline.2.model.config=path/to/config.py
_base_ = ["car_damage.py"]

description = "car body damage: Zero-DCE (dark only) + damage gate + mmseg DeepLabV3+ (EfficientNet-Lite0) + mask policy"

stage_overrides = dict(
    # defectkit.heads.openmmlab.PRESETS: "deeplabv3plus_lite"
    # The encoder's batch-norm statistics stay ImageNet's, as in the measured runs (docs/results.md).
    segmenter=dict(model=dict(_delete_=True, type="mmseg", config="deeplabv3plus_lite"), freeze_pretrained_bn=True),
)
