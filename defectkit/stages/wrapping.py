"""The base of stages that run another stage differently (on windows, on a crop) and own its state.

A wrapping stage builds its ``inner`` stage from a config dict (or takes a built object), hands
fitting to it, saves and loads the inner stage's tensors as its own (recording the inner type), and
reports ``fitted`` from it. An inner stage is trainable when it is a
:class:`~defectkit.stages.base.TrainableStage` (declared, never probed); any other inner object is
run as it is. Subclasses decide how predictions run and what their settings are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from defectkit.errors import ConfigError, StateError
from defectkit.registry import STAGES, build
from defectkit.sample import Record
from defectkit.stages.base import Detects, FitContext, Segments, Stage, TrainableStage

# Manifest header fields (see io.state.save_state) copied up from the inner stage's settings, so
# a saved wrapping stage records the classes, head and input size of the model it wraps.
_MANIFEST_KEYS = ("classes", "model", "head", "image_size", "input_size")


class WrappingStage(TrainableStage):
    """A stage around an ``inner`` stage: fitting, state and ``fitted`` are the inner stage's.

    Subclasses implement ``predict`` and :meth:`settings` (JSON, saved beside the inner state and
    returned by ``fit`` under :attr:`settings_key`); :meth:`prepare_inner_fit` may adjust the inner
    stage before it is fitted.
    """

    settings_key = "wrapper"

    def __init__(self, inner: dict[str, Any] | Any, name: str) -> None:
        super().__init__(name)
        self.inner = self._build_inner(inner)

    def _build_inner(self, inner: dict[str, Any] | Any) -> Any:
        kind = type(self).__name__
        if inner is None:
            raise ConfigError(f"{kind} needs inner=dict(type=...): the stage to wrap")
        if isinstance(inner, dict):
            if inner.get("type") in (kind, type(self)):
                raise ConfigError(f"{kind} cannot wrap another {kind} stage; configure one {kind} instead")
            return build(STAGES, inner)
        return inner

    def use_device(self, device: torch.device) -> None:
        """The inner stage runs on ``device``."""
        self.inner.use_device(device)

    @property
    def classes(self) -> list[str]:
        """The inner stage's classes: what it detects or segments (none for other stages)."""
        return list(self.inner.classes) if isinstance(self.inner, (Detects, Segments)) else []

    @property
    def _inner_trainable(self) -> bool:
        return isinstance(self.inner, TrainableStage)

    @property  # type: ignore[override]
    def fitted(self) -> bool:
        """Whether the inner stage is ready to predict (always, for an inner stage without training)."""
        inner = self.__dict__.get("inner")
        return True if inner is None or not self._inner_trainable else bool(inner.fitted)

    @fitted.setter
    def fitted(self, value: bool) -> None:
        # Stage.__init__ sets fitted before the inner stage exists; later writes go to the inner stage.
        inner = self.__dict__.get("inner")
        if inner is not None and self._inner_trainable:
            inner.fitted = bool(value)

    def settings(self) -> dict[str, Any]:
        """This stage's own settings as JSON."""
        return {}

    def prepare_inner_fit(self) -> None:
        """Called before the inner stage is fitted."""

    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Fit the inner stage; its summary plus this stage's settings under :attr:`settings_key`."""
        if not self._inner_trainable:
            context.log(f"{self.name}: inner {type(self.inner).__name__} has nothing to train")
            return {self.settings_key: self.settings()}
        self.prepare_inner_fit()
        self.inner.fit_classes = self.fit_classes
        summary = dict(self.inner.fit(train, val, context) or {})
        self.fitted = True
        return {**summary, self.settings_key: self.settings()}

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The inner stage's tensors; its settings under ``"inner"`` with its type under ``"inner_type"``."""
        tensors: dict[str, torch.Tensor] = {}
        inner_extra: dict[str, Any] = {}
        if self._inner_trainable:
            tensors, inner_extra = self.inner.state_tensors()
        extra: dict[str, Any] = {"inner_type": type(self.inner).__name__, "inner": inner_extra, self.settings_key: self.settings()}
        extra.update({key: inner_extra[key] for key in _MANIFEST_KEYS if key in inner_extra})
        return dict(tensors), extra

    def expected_model(self) -> dict[str, Any] | None:
        """The inner stage's model as the config builds it (its copy at the top of the saved state must match too)."""
        return self.inner.expected_model() if self._inner_trainable else None

    @property
    def model_fields_not_checked(self) -> tuple[str, ...]:  # type: ignore[override]
        """The inner stage's: the fields the config may change after training are its model's."""
        return tuple(self.inner.model_fields_not_checked) if self._inner_trainable else ()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Restore the inner stage; this stage's settings come from the config, not the saved state.

        Raises:
            StateError: The state was saved around another kind of inner stage.
        """
        saved_type = extra.get("inner_type")
        if saved_type != type(self.inner).__name__:
            raise StateError(
                f"{self.name}: saved state wraps a {saved_type!r} stage, but the config wraps "
                f"{type(self.inner).__name__!r}; retrain or fix the config's inner stage"
            )
        if self._inner_trainable:
            inner_extra = extra.get("inner", {})
            if not isinstance(inner_extra, dict):
                raise StateError(f"{self.name}: saved state's 'inner' is not an object")
            # What the inner stage rebuilds from is this nested copy: check it, not only the top-level one.
            self.inner.check_saved_model(inner_extra)
            self.inner.load_state_tensors(tensors, dict(inner_extra))
        self.fitted = True

    def describe(self) -> dict[str, Any]:
        """Type, name, settings and the inner stage's description."""
        inner = self.inner.describe() if isinstance(self.inner, Stage) else {"type": type(self.inner).__name__}
        return {**super().describe(), **self.settings(), "inner": inner}


__all__ = ["WrappingStage"]
