"""defectkit: pluggable visual-defect inspection pipelines.

The Python API (imported on first use, so ``import defectkit`` stays light):

- :func:`load` a trained pipeline from a work dir, then call it on image files or numpy arrays;
- :func:`train` a config (``defectkit train``) and get the trained pipeline;
- :func:`build_stage` one stage from a config dict and call it on images;
- :class:`Pipeline`, :class:`Result`, :class:`Instance` and the errors users catch.

Example:
    >>> import numpy as np, defectkit
    >>> pipe = defectkit.Pipeline([defectkit.build_stage(dict(type="Gamma", gamma=0.5))])
    >>> result = pipe([np.full((16, 16, 3), 40, np.uint8)])[0]
    >>> type(result).__name__, result.ok
    ('Result', True)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "defectkit.api",
    "train": "defectkit.api",
    "build_stage": "defectkit.api",
    "load_config": "defectkit.config",
    "Pipeline": "defectkit.pipeline",
    "Result": "defectkit.results",
    "Instance": "defectkit.sample",
    "Stage": "defectkit.stages.base",
    "TrainableStage": "defectkit.stages.base",
    "DefectkitError": "defectkit.errors",
    "ConfigError": "defectkit.errors",
    "DataError": "defectkit.errors",
    "StateError": "defectkit.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from defectkit.api import build_stage, load, train
    from defectkit.config import load_config
    from defectkit.errors import ConfigError, DataError, DefectkitError, StateError
    from defectkit.pipeline import Pipeline
    from defectkit.results import Result
    from defectkit.sample import Instance
    from defectkit.stages.base import Stage, TrainableStage


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        # trusted-ok: _EXPORTS is this module's fixed table of defectkit submodules; no input chooses the module.
        value = getattr(importlib.import_module(_EXPORTS[name]), name)  # trusted-ok: fixed table above
        globals()[name] = value
        return value
    raise AttributeError(f"module 'defectkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
