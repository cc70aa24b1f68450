"""Loading config files: inheritance, overrides and key validation."""

from __future__ import annotations

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
