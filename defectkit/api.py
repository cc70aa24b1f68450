"""The Python API: load a trained pipeline, build one stage, train a config.

Everything here is also exported from the package itself::

    import defectkit

    pipe = defectkit.load("work_dirs/texture_defect")        # config + checked weights
    results = pipe(["photo.jpg", numpy_image])                 # one Result per image
    results[0].gate_label, results[0].instances[0].polygon

    gamma = defectkit.build_stage(dict(type="Gamma", gamma=0.5))
    brighter = gamma([numpy_image])[0].image

    pipe = defectkit.train("configs/texture_defect.py", work_dir="work_dirs/texture")

The command line (``defectkit run``) and this API build stages the same way, with the same names,
so weights written by one are loaded by the other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from defectkit.config import Config, load_config
from defectkit.errors import ConfigError, StateError
from defectkit.io.images import DEFAULT_MAX_SIDE
from defectkit.pipeline import Pipeline
from defectkit.pipeline import build_stage as _build_stage
from defectkit.stages.base import Stage

SAVED_CONFIG = "config.py"
"""The resolved config a run writes into its work dir, read back by :func:`load`."""


def build_stage(cfg: Mapping[str, Any]) -> Stage:
    """Build one stage from a config dict, exactly as a config's ``pipeline`` entry is built.

    Args:
        cfg: ``dict(type=<registered stage>, **options)``; every stage also takes ``enabled``.

    Returns:
        The stage; call it on images (``stage(images)``) or pass it to :class:`~defectkit.pipeline.Pipeline`.

    Raises:
        ConfigError: Unknown type, unknown option or a value the option does not allow (one line
            naming the option, the value and what is allowed).

    Examples:
        >>> import defectkit
        >>> stage = defectkit.build_stage(dict(type="Clahe", apply="always"))
        >>> stage.name, type(stage).__name__
        ('clahe', 'Clahe')
        >>> defectkit.build_stage(dict(type="Clahe", clip_limit="high"))
        Traceback (most recent call last):
        ...
        defectkit.validation.ConfigValueError: clip_limit='high' (Clahe): expected a number
    """
    return _build_stage(dict(cfg))


def load(work_dir: str | Path, config: str | Path | None = None, cfg_options: Mapping[str, Any] | None = None) -> Pipeline:
    """A trained pipeline from its work dir: the config it was trained with and its checked weights.

    Args:
        work_dir: The work dir of a ``defectkit run``/``train`` (or of :func:`train`).
        config: The config file; None uses the copy the run saved in the work dir (``config.py``).
        cfg_options: Overrides as on the command line, e.g. ``{"pipeline.1.rules.defect.threshold": 0.6}``;
            ``{"predict.runtime": "onnxruntime"}`` runs the networks ``defectkit export`` wrote.

    Returns:
        A :class:`~defectkit.pipeline.Pipeline` whose trainable stages are loaded; call it on
        image files or numpy arrays to get one :class:`~defectkit.results.Result` per image.

    Raises:
        ConfigError: No config given or saved, or a bad config.
        StateError: A stage has no saved weights, or they were saved by another stage type,
            library version or for other classes.
        ExportError: ``predict.runtime`` names an export that is missing, stale or altered.

    Examples:
        >>> pipe = defectkit.load("work_dirs/texture_defect")  # doctest: +SKIP
        >>> result = pipe(["tile.png"])[0]  # doctest: +SKIP
        >>> result.gate_label, result.gate_score, [i.class_name for i in result.instances]  # doctest: +SKIP
        ('defect', 0.91, ['defect'])
    """
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise StateError(f"work dir not found: {work_dir}")
    config_path = _config_path(work_dir, config)
    cfg = load_config(config_path, dict(cfg_options or {}))
    pipeline = pipeline_from_config(cfg)
    pipeline.load(work_dir / "weights")
    predict_cfg = dict(cfg.get("predict", {}))
    runtime, precision = str(predict_cfg.get("runtime", "torch")), str(predict_cfg.get("precision", "fp32"))
    if runtime != "torch" or precision != "fp32":
        import torch

        from defectkit.export import EXPORT_DIR, use_runtime

        use_runtime(pipeline.stages, work_dir / "weights", work_dir / EXPORT_DIR, runtime, torch.get_num_threads(),
                    f"defectkit export {config_path} --work-dir {work_dir}", precision)
    return pipeline


def train(
    config: str | Path,
    data_root: str | Path | None = None,
    work_dir: str | Path | None = None,
    cfg_options: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Fit every trainable stage of a config that has no saved state in the work dir (``defectkit train``).

    Args:
        config: The config file.
        data_root: The data set in the config's ``dataset`` layout; None uses its built-in data set.
        work_dir: Where weights, split and config go (default ``work_dirs/<config name>``).
        cfg_options: Overrides as on the command line.

    Returns:
        The trained pipeline, ready to call on images (as :func:`load` would return it).

    Examples:
        >>> pipe = defectkit.train("configs/texture_defect.py", work_dir="work_dirs/texture")  # doctest: +SKIP
    """
    from defectkit.plugins import load_plugins
    from defectkit.runner import Runner

    load_plugins()
    cfg = load_config(config, dict(cfg_options or {}))
    runner = Runner(cfg, config, data_root=None if data_root is None else str(data_root), work_dir=None if work_dir is None else str(work_dir))
    runner.train()
    runner.load_weights()
    return runner.pipeline


def pipeline_from_config(cfg: Config) -> Pipeline:
    """The pipeline a loaded config describes, with its classes and prediction settings (untrained)."""
    predict = dict(cfg.get("predict", {}))
    max_side = predict.get("max_side", DEFAULT_MAX_SIDE)
    return Pipeline.from_config(
        cfg.pipeline,
        classes=list(cfg.get("classes", [])),
        batch_size=int(predict.get("batch_size", 16)),
        max_side=int(max_side) if max_side else None,
    )


def _config_path(work_dir: Path, config: str | Path | None) -> Path:
    if config is not None:
        return Path(config)
    saved = work_dir / SAVED_CONFIG
    if saved.is_file():
        return saved
    # Work dirs written before the config was saved beside the weights name it in run_info.json.
    try:
        named = json.loads((work_dir / "run_info.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        named = None
    if named and Path(named).is_file():
        return Path(named)
    raise ConfigError(f"{work_dir} has no saved {SAVED_CONFIG}; pass the config it was trained with: load({str(work_dir)!r}, config=...)")


__all__ = ["build_stage", "load", "pipeline_from_config", "train"]
