"""An ordered list of stages run on batches, with early exit and per-stage timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from defectkit.errors import ConfigError
from defectkit.io.images import DEFAULT_MAX_SIDE, decode_records
from defectkit.registry import STAGES, build
from defectkit.results import ImageInput, Result, to_samples
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext, Stage, TrainableStage
from defectkit.validation import ConfigValueError


class Pipeline:
    """Stages in order. A stage sees only samples still active: decoded and not finished by a gate.

    Args:
        stages: The stages, each with a distinct name.
        classes: The config's defect classes (checked against saved state on :meth:`load`).
        batch_size: Images per batch when the pipeline is called on a list of images.
        max_side: Files with a longer side are decoded at reduced size when called; None: full size.

    A pipeline is callable on image files or numpy arrays (:meth:`__call__`); a trained one comes
    from :func:`defectkit.load`.

    Examples:
        >>> import numpy as np
        >>> pipe = Pipeline.from_config([dict(type="Gamma", gamma=0.5), dict(type="Clahe", apply="always")])
        >>> [stage.name for stage in pipe.stages]
        ['gamma', 'clahe']
        >>> results = pipe([np.full((32, 32, 3), 30, np.uint8)])
        >>> results[0].ok, bool(results[0].image.mean() > 30)
        (True, True)
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        classes: Sequence[str] | None = None,
        batch_size: int = 16,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ) -> None:
        names = [stage.name for stage in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"stage names must be unique, repeated: {duplicates}; give each a distinct name=")
        self.stages = list(stages)
        self.classes: list[str] = [str(c) for c in classes or []]
        self.batch_size = max(1, int(batch_size))
        self.max_side = max_side
        self.seconds: dict[str, float] = {s.name: 0.0 for s in self.stages}
        self.processed: dict[str, int] = {s.name: 0 for s in self.stages}

    @classmethod
    def from_config(cls, stage_cfgs: Sequence[dict[str, Any]], **options: Any) -> Pipeline:
        """Build every stage from its config dict (``type`` looked up in STAGES).

        A stage without a ``name`` gets its type's default name (the one it has when built on
        its own, e.g. ``zero_dce``), with its position appended when that name is already taken.

        Args:
            stage_cfgs: The config's ``pipeline`` list.
            **options: :class:`Pipeline` arguments (``classes``, ``batch_size``, ``max_side``).

        Raises:
            ConfigError: A stage that cannot be built; the message starts with its key
                (``pipeline.<index>``).
        """
        stages: list[Stage] = []
        for index, cfg in enumerate(stage_cfgs):
            cfg = dict(cfg)
            try:
                stage = build_stage(cfg)
            except ConfigValueError as exc:
                raise exc.at(f"pipeline.{index}") from exc
            except ConfigError as exc:
                raise ConfigError(f"pipeline.{index}: {exc}") from exc
            if "name" not in cfg and stage.name in {s.name for s in stages}:
                stage.name = f"{stage.name}{index}"
            stages.append(stage)
        return cls(stages, **options)

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(f'{type(s).__name__}({s.name!r})' for s in self.stages)}])"

    @property
    def trainable(self) -> list[TrainableStage]:
        """The stages with learned state that are not switched off (:attr:`Stage.skipped`)."""
        return [s for s in self.stages if isinstance(s, TrainableStage) and not s.skipped]

    def predict(self, samples: list[Sample], upto: int | None = None) -> list[Sample]:
        """Run the stages (all, or the first ``upto``) on a batch in place and return it."""
        for stage in self.stages[:upto]:
            if stage.skipped:
                continue
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
            if not isinstance(stage, TrainableStage) or stage.skipped:
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
                    if earlier.skipped:
                        continue
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

    def load(self, weights_dir: str | Path, only_unfitted: bool = False) -> None:
        """Load every trainable stage's state, checked against its type and :attr:`classes`.

        Args:
            weights_dir: The ``weights/`` folder of a work dir.
            only_unfitted: Leave stages that are already fitted or loaded as they are.

        Raises:
            StateError: A stage without saved state, or state saved by another stage type, library
                version or for other classes (the message names the stage and the file).
        """
        for stage in self.trainable:
            if not (only_unfitted and stage.fitted):
                stage.load(weights_dir, self.classes or None)

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> list[Result]:
        """Run every stage on image files, HxWx3 uint8 arrays, samples or earlier results.

        Files are decoded :attr:`batch_size` at a time, so a long list never holds every image
        in memory at once (the results keep their images and maps).

        Returns:
            One :class:`~defectkit.results.Result` per input, in order; a file that cannot be
            decoded has ``error`` set instead of raising.
        """
        items: list[Any]
        if isinstance(images, np.ndarray):
            items = list(images) if images.ndim == 4 else [images]
        elif isinstance(images, (str, Path, Sample, Result)):
            items = [images]
        else:
            items = list(images)
        results: list[Result] = []
        for start in range(0, len(items), self.batch_size):
            samples = to_samples(items[start : start + self.batch_size], max_side=self.max_side, first_index=start)
            self.predict(samples)
            results.extend(Result.from_sample(s) for s in samples)
        return results

    def timing_summary(self) -> dict[str, dict[str, Any]]:
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


def build_stage(cfg: dict[str, Any]) -> Stage:
    """Build one stage from its config dict; ``enabled`` is accepted by every stage.

    A stage whose constructor takes ``enabled`` gets it; any other has :attr:`Stage.enabled` set,
    so the pipeline (and calling the stage) passes samples through it when it is False.

    Raises:
        ConfigError: Unknown type or option, or a value that is not allowed.
    """
    cfg = dict(cfg)
    enabled = cfg.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigValueError("enabled", enabled, "expected True or False", str(cfg.get("type")))
    if not _takes_enabled(cfg.get("type")):
        cfg.pop("enabled", None)
    stage = build(STAGES, cfg)
    stage.enabled = enabled
    return stage


def _takes_enabled(type_name: Any) -> bool:
    """Whether the registered stage ``type_name`` takes ``enabled`` in its constructor."""
    import inspect

    from defectkit.registry import registered_names

    if isinstance(type_name, str) and type_name in registered_names(STAGES):
        obj_cls = STAGES.get(type_name)
    elif isinstance(type_name, type):
        obj_cls = type_name
    else:
        return True  # let build() report the unknown type
    return "enabled" in inspect.signature(obj_cls.__init__).parameters
