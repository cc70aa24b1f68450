"""Loading config files: inheritance, overrides and key validation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from defectkit.config import TOP_LEVEL_KEYS, load_config
from defectkit.errors import ConfigError

BASE = """
pipeline = [dict(type="MaskPolicy", rules=dict(default=dict(threshold=0.5)))]
split = dict(ratios=(0.6, 0.2, 0.2), seed=0)
classes = ["scratch"]
description = "base"
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_child_config_inherits_and_overrides_base(tmp_path):
    _write(tmp_path / "base.py", BASE)
    child = _write(tmp_path / "child.py", '_base_ = ["./base.py"]\nsplit = dict(seed=5)\ndescription = "child"\n')
    cfg = load_config(child)
    assert cfg.pipeline[0]["type"] == "MaskPolicy"
    assert cfg.classes == ["scratch"]
    assert cfg.description == "child"
    # Dicts merge key by key: the child's seed, the base's ratios.
    assert cfg.split.seed == 5
    assert tuple(cfg.split.ratios) == (0.6, 0.2, 0.2)


def test_cfg_options_override_nested_values(tmp_path):
    path = _write(tmp_path / "cfg.py", BASE)
    cfg = load_config(path, {"split.seed": 3, "pipeline.0.rules.default.threshold": 0.7})
    assert cfg.split.seed == 3
    assert cfg.pipeline[0].rules.default.threshold == 0.7
    assert tuple(cfg.split.ratios) == (0.6, 0.2, 0.2)


def test_unknown_top_level_key_lists_valid_keys_and_suggests_close_one(tmp_path):
    path = _write(tmp_path / "cfg.py", BASE + "pipline = []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'pipline'" in message
    assert "did you mean 'pipeline'?" in message
    for key in TOP_LEVEL_KEYS:
        assert key in message


def test_unknown_override_root_is_rejected_with_suggestion(tmp_path):
    path = _write(tmp_path / "cfg.py", BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, {"splitt.seed": 3})
    message = str(info.value)
    assert "'splitt'" in message
    assert "did you mean 'split'?" in message
    assert "--cfg-options" in message


def test_missing_config_file_error_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "absent.py"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_config_with_syntax_error_raises_config_error_naming_the_file(tmp_path):
    path = _write(tmp_path / "broken.py", "pipeline = [dict(type='MaskPolicy'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_config_with_empty_pipeline_is_rejected(tmp_path):
    path = _write(tmp_path / "cfg.py", "pipeline = []\n")
    with pytest.raises(ConfigError, match="pipeline"):
        load_config(path)


NAMED_BASE = """
pipeline = [
    dict(type="Segmenter", name="segmenter", image_size=(64, 64), epochs=5, model=dict(type="Unet")),
    dict(type="MaskPolicy", name="mask_policy", rules=dict(scratch=dict(crf=True), dent=dict(threshold=0.6))),
]
"""


def test_stage_overrides_change_one_inherited_stage_by_name(tmp_path):
    _write(tmp_path / "base.py", NAMED_BASE)
    child = _write(
        tmp_path / "child.py",
        '_base_ = ["./base.py"]\n'
        'stage_overrides = dict(segmenter=dict(epochs=30, model=dict(decoder_channels=(8, 8, 8, 8, 8))),\n'
        '                       mask_policy=dict(rules=dict(_delete_=True, damage=dict(threshold=0.4))))\n',
    )
    cfg = load_config(child)
    assert cfg.pipeline[0]["epochs"] == 30 and cfg.pipeline[0]["image_size"] == (64, 64)
    assert cfg.pipeline[0]["model"] == {"type": "Unet", "decoder_channels": (8, 8, 8, 8, 8)}
    assert cfg.pipeline[1]["rules"] == {"damage": {"threshold": 0.4}}


def test_cfg_options_win_over_stage_overrides(tmp_path):
    _write(tmp_path / "base.py", NAMED_BASE)
    child = _write(tmp_path / "child.py", '_base_ = ["./base.py"]\nstage_overrides = dict(segmenter=dict(epochs=30))\n')
    assert load_config(child, {"pipeline.0.epochs": 2}).pipeline[0]["epochs"] == 2


def test_stage_override_of_an_unknown_stage_lists_the_stage_names(tmp_path):
    _write(tmp_path / "base.py", NAMED_BASE)
    child = _write(tmp_path / "child.py", '_base_ = ["./base.py"]\nstage_overrides = dict(segmentor=dict(epochs=3))\n')
    with pytest.raises(ConfigError, match=r"'segmentor'.*\['mask_policy', 'segmenter'\]"):
        load_config(child)


def test_reference_configs_load(tmp_path):
    for name in ("texture_defect.py", "car_damage.py", "car_damage_coco.py"):
        cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
        assert cfg.pipeline


def test_the_openmmlab_configs_swap_only_the_head_and_build_without_the_extra(monkeypatch):
    from defectkit.api import pipeline_from_config

    for package in ("mmdet", "mmseg"):
        monkeypatch.setitem(sys.modules, package, None)  # as if the extra were not installed

    configs = Path(__file__).resolve().parents[2] / "configs"
    for name, base, path in (("skin_trouble_tood.py", "skin_trouble.py", (0, "inner")), ("car_damage_mmseg.py", "car_damage.py", (2,))):
        derived, original = load_config(configs / name), load_config(configs / base)
        stage, original_stage = derived.pipeline[path[0]], original.pipeline[path[0]]
        for key in path[1:]:
            stage, original_stage = stage[key], original_stage[key]
        assert stage["model"]["type"] in ("mmdet", "mmseg")
        # The head, its loss options, (TOOD: IOU-aware scores run lower) the score cut chosen on
        # validation, (mmdet: torchvision heads only) the test-time input sizes, and (mmseg, as
        # measured) the encoder's frozen batch-norm statistics.
        swapped = ("model", "focal", "min_score", "tta_scales", "freeze_pretrained_bn")
        assert {k: v for k, v in stage.items() if k not in swapped} == {k: v for k, v in original_stage.items() if k not in swapped}
        # Building the stages imports nothing of OpenMMLab: the head is built when training starts.
        assert len(pipeline_from_config(derived).stages) == len(original.pipeline)
