"""Loading Python config files (mmengine ``Config``: ``_base_`` inheritance, ``--cfg-options``) and
checking their top-level keys so a typo fails with the list of valid keys."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from mmengine.config import Config, DictAction

from defectkit.errors import ConfigError

__all__ = ["Config", "DictAction", "load_config", "check_sections", "SECTION_OPTIONS", "TOP_LEVEL_KEYS"]

TOP_LEVEL_KEYS: dict[str, str] = {
    "dataset": "reader for --data-root: dict(type=<DATASETS name>, ...)",
    "builtin_dataset": "data set built at run time when no --data-root is given",
    "unlabelled_dataset": "optional reader of extra images to predict after evaluation",
    "image_classes": "image-level labels, e.g. ['normal', 'defect']",
    "classes": "defect classes of masks and instances, e.g. ['scratch', 'dent']",
    "split": "dict(ratios=(train, val, test), seed=...) for the stratified split",
    "pipeline": "list of stage dicts, run in order",
    "metrics": "list of metric dicts",
    "predict": "dict(batch_size=..., overlays='all'|'defects'|'none', decode_workers=..., runtime='torch'|'onnxruntime'|'openvino', precision='fp32'|'int8')",
    "runtime": "dict(seed=..., num_threads=..., device='auto'|'cpu'|'cuda', keep_freed_memory=True|False)",
    "work_dir": "where weights and results go (default work_dirs/<config name>)",
    "data_root": "default data root (overridden by --data-root)",
    "description": "one line shown in reports",
    "stage_overrides": "{stage name: dict(option=value)}: change stages of an inherited pipeline by name",
}


SECTION_OPTIONS: dict[str, dict[str, Any]] = {
    "predict": {
        "batch_size": int,
        "overlays": Literal["all", "defects", "none"],
        "decode_workers": int,
        "max_side": int | None,
        "runtime": Literal["torch", "onnxruntime", "openvino"],
        "precision": Literal["fp32", "int8"],
    },
    "runtime": {"seed": int, "num_threads": int | None, "device": str, "keep_freed_memory": bool},
    "split": {
        "ratios": Sequence[float],
        "seed": int,
        "stratum": Literal["label", "damage"],
        "area_cuts": Sequence[float] | None,
    },
}
"""The options of the top-level sections that are plain dicts, with the type each allows."""

LIST_KEYS: dict[str, Any] = {"classes": Sequence[str], "image_classes": Sequence[str], "pipeline": Sequence[dict], "metrics": Sequence[dict]}
"""Top-level keys that hold lists, with what their items must be."""


def load_config(path: str | Path, cfg_options: dict[str, Any] | None = None) -> Config:
    """Read a config file, apply ``key=value`` overrides and validate its top-level keys.

    Args:
        path: A Python config file; it may inherit from others with ``_base_``.
        cfg_options: Overrides such as ``{"pipeline.0.batch_size": 8}`` (mmengine ``merge_from_dict``).

    Raises:
        ConfigError: Missing file, syntax error or an unknown top-level key.

    Example:
        >>> cfg = load_config("configs/texture_defect.py", {"split.seed": 1})  # doctest: +SKIP
        >>> cfg.pipeline[0].type
        'AnomalyGate'
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # mmengine wraps syntax and import errors in several types
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    _apply_stage_overrides(cfg, path)
    if cfg_options:
        unknown_roots = sorted({key.split(".")[0] for key in cfg_options} - set(TOP_LEVEL_KEYS))
        if unknown_roots:
            raise ConfigError(_unknown_keys_message(f"--cfg-options for {path}", unknown_roots))
        cfg.merge_from_dict(cfg_options)
    unknown = sorted(k for k in cfg.keys() if k not in TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(_unknown_keys_message(str(path), unknown))
    if not cfg.get("pipeline"):
        raise ConfigError(f"{path}: 'pipeline' is empty; list the stages to run")
    check_sections(cfg)
    return cfg


def check_sections(cfg: Config) -> None:
    """Check the top-level lists and the ``predict``/``runtime``/``split`` sections' options and values.

    Raises:
        ConfigValueError: A value of the wrong type, naming its key (``predict.batch_size``).
        ConfigError: An unknown option of a section, with the valid ones.
    """
    from defectkit.validation import ConfigValueError, describe, matches

    for key, hint in LIST_KEYS.items():
        if key in cfg and not matches(_plain(cfg[key]), hint):
            raise ConfigValueError(key, cfg[key], f"expected {describe(hint)}")
    for section, options in SECTION_OPTIONS.items():
        values = cfg.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigValueError(section, values, "expected a dict(" + ", ".join(f"{k}=..." for k in options) + ")")
        unknown = sorted(set(values) - set(options))
        if unknown:
            raise ConfigError(f"{section}: unknown option(s) {', '.join(map(repr, unknown))}; valid options: {', '.join(options)}")
        for key, value in values.items():
            if not matches(_plain(value), options[key]):
                raise ConfigValueError(f"{section}.{key}", value, f"expected {describe(options[key])}")


def _plain(value: Any) -> Any:
    """mmengine ConfigDicts and lists as plain dicts and lists (what the checks expect)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _apply_stage_overrides(cfg: Config, path: Path) -> None:
    """Merge ``stage_overrides`` into the stages they name.

    ``_base_`` inheritance merges dicts but replaces lists whole, so a derived config could not
    otherwise change one stage of the pipeline it inherits without copying all of it.
    """
    overrides = cfg.get("stage_overrides") or {}
    stages = {str(stage.get("name")): stage for stage in cfg.get("pipeline") or [] if isinstance(stage, dict)}
    for name, options in overrides.items():
        if name not in stages:
            raise ConfigError(f"{path}: stage_overrides names stage {name!r}, but the pipeline's stages are {sorted(stages)}")
        if not isinstance(options, dict):
            raise ConfigError(f"{path}: stage_overrides[{name!r}] must be a dict of options, got {options!r}")
        _merge(stages[name], options)


def _merge(target: dict[str, Any], options: dict[str, Any]) -> None:
    for key, value in options.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and not value.get("_delete_"):
            _merge(target[key], value)
        else:
            target[key] = {k: v for k, v in value.items() if k != "_delete_"} if isinstance(value, dict) else value


def _unknown_keys_message(where: str, unknown: list[str]) -> str:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(TOP_LEVEL_KEYS), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    valid = "\n".join(f"  {k}: {v}" for k, v in TOP_LEVEL_KEYS.items())
    return f"{where}: unknown config key(s) {', '.join(hints)}. Valid keys:\n{valid}"
