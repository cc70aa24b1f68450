"""An ordered list of stages run on batches, with early exit and per-stage timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from defectkit.io.images import decode_records
from defectkit.registry import STAGES, build
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext, Stage, TrainableStage


class Pipeline:
    """Stages in order. A stage sees only samples still active: decoded and not finished by a gate.

    Example:
        >>> pipeline = Pipeline.from_config([dict(type="AnomalyGate"), dict(type="MaskPolicy")])  # doctest: +SKIP
        >>> samples = pipeline.predict(decode_records(records))  # doctest: +SKIP
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        names = [stage.name for stage in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique, repeated: {duplicates}; give each a distinct name=")
        self.stages = list(stages)
        self.seconds: dict[str, float] = {s.name: 0.0 for s in self.stages}
        self.processed: dict[str, int] = {s.name: 0 for s in self.stages}

    @classmethod
    def from_config(cls, stage_cfgs: Sequence[dict[str, Any]]) -> Pipeline:
        """Build every stage from its config dict (``type`` looked up in STAGES)."""
        stages = []
        for index, cfg in enumerate(stage_cfgs):
            cfg = dict(cfg)
            cfg.setdefault("name", f"{str(cfg.get('type', 'stage')).lower()}{index}")
            stages.append(build(STAGES, cfg))
        return cls(stages)

    @property
    def trainable(self) -> list[TrainableStage]:
        return [s for s in self.stages if isinstance(s, TrainableStage)]

    def predict(self, samples: list[Sample], upto: int | None = None) -> list[Sample]:
        """Run the stages (all, or the first ``upto``) on a batch in place and return it."""
        for stage in self.stages[:upto]:
            active = [s for s in samples if s.active]
            if not active:
                continue
            start = time.perf_counter()
            stage.predict(active)
            elapsed = time.perf_counter() - start
            self.seconds[stage.name] += elapsed
            self.processed[stage.name] += len(active)
            for sample in active:
                sample.timings[stage.name] = elapsed / len(active)
        return samples

    def fit(
        self,
        train: Sequence[Record],
        val: Sequence[Record],
        weights_dir: Path,
        make_context: Callable[[Callable[[Sequence[Record]], list[Sample]]], FitContext],
        executor: Executor | None = None,
        log: Callable[[str], None] = print,
    ) -> dict[str, Any]:
        """Fit each trainable stage without saved state, in order, on what the stages before it produce.

        A stage with state in ``weights_dir`` is loaded instead, so an interrupted run resumes
        after the last stage it finished.

        Returns:
            ``{stage name: fit summary or {"loaded": True}}``.
        """
        summaries: dict[str, Any] = {}
        for index, stage in enumerate(self.stages):
            if not isinstance(stage, TrainableStage):
                continue
            if stage.has_saved_state(weights_dir):
                stage.load(weights_dir)
                log(f"{stage.name}: loaded saved state from {weights_dir}")
                summaries[stage.name] = {"loaded": True}
                continue

            def load_samples(records: Sequence[Record], _upto: int = index) -> list[Sample]:
                samples = decode_records(records, executor)
                # Earlier stages run without their early exit so a later stage sees every sample.
                for earlier in self.stages[:_upto]:
                    ok = [s for s in samples if s.ok]
                    if ok:
                        earlier.predict(ok)
                for sample in samples:
                    sample.finished = False
                return samples

            context = make_context(load_samples)
            stage.fit_classes = list(context.classes) or None
            start = time.perf_counter()
            summary = stage.fit(train, val, context) or {}
            summary["fit_seconds"] = round(time.perf_counter() - start, 2)
            stage.fitted = True
            stage.save(weights_dir)
            log(f"{stage.name}: fitted in {summary['fit_seconds']:.1f} s, saved to {weights_dir}")
            summaries[stage.name] = summary
        return summaries

    def load(self, weights_dir: Path) -> None:
        """Load every trainable stage's state; fails with the stage name if one is missing."""
        for stage in self.trainable:
            stage.load(weights_dir)

    def timing_summary(self) -> dict[str, dict[str, float]]:
        """Per stage: images processed, total seconds and images per second."""
        return {
            name: {
                "images": self.processed[name],
                "seconds": round(self.seconds[name], 3),
                # A stage that took no measurable time (e.g. a switched-off gate) has no rate.
                "img_per_s": round(self.processed[name] / self.seconds[name], 2) if self.seconds[name] >= 1e-3 else None,
            }
            for name in self.seconds
        }
