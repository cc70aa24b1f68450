"""The metric contract: accumulate per-image evaluation records, then compute flat named values."""

from __future__ import annotations

from typing import Any, ClassVar


class Metric:
    """Accumulates evaluation records (see :mod:`defectkit.evaluation.records`) and computes values.

    Subclasses implement :meth:`update` and :meth:`compute`; keys are flat (``image_auroc``,
    ``iou.scratch``) so ``metrics.json`` stays one level deep.

    Attributes:
        primary: The key that stands for the metric where one figure must decide (e.g. whether an
            INT8 export keeps accuracy: ``defectkit export --int8``); higher is better.
    """

    primary: ClassVar[str | None] = None

    def __init__(self, classes: list[str] | None = None) -> None:
        self.classes = list(classes or [])
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def update(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def compute(self) -> dict[str, float]:
        raise NotImplementedError
