"""The contract every pipeline stage keeps.

A stage works on batches of :class:`~defectkit.sample.Sample`. Trainable stages also ``fit`` on
training records and persist their state as safetensors plus a JSON manifest (never pickle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from defectkit.io.state import has_state, load_state, save_state
from defectkit.sample import Record, Sample


@dataclass
class FitContext:
    """What a trainable stage gets besides its data.

    Attributes:
        work_dir: The run's work dir (weights go to ``work_dir/weights``).
        load_samples: Decodes records into samples and runs every stage before this one on them,
            so a stage trains on what it will see at prediction time.
        classes: The data set's defect classes (e.g. ``["scratch", "dent"]``).
        image_classes: The data set's image-level labels (e.g. ``["normal", "defect"]``).
        progress: Creates a progress bar: ``progress(description, total) -> advance(n)``.
        log: Where stages report what they did (one line per message).
    """

    work_dir: Path
    load_samples: Callable[[Sequence[Record]], list[Sample]]
    classes: list[str] = field(default_factory=list)
    image_classes: list[str] = field(default_factory=lambda: ["normal", "defect"])
    progress: Callable[[str, int], Callable[[int], None]] = lambda description, total: (lambda n=1: None)
    log: Callable[[str], None] = print

    def decoded_chunks(self, records: Sequence[Record], description: str, chunk_size: int = 32) -> Iterator[list[Sample]]:
        """The records that decode, as lists of samples through :attr:`load_samples`, ``chunk_size`` records at a time.

        Decoding in chunks bounds memory: a caller that keeps only what it needs of each sample (a
        resized image, crops) never holds a whole data set of full-size photos. Progress advances
        per chunk under ``description``; samples that failed to decode are left out.
        """
        advance = self.progress(description, len(records))
        for start in range(0, len(records), chunk_size):
            chunk = list(records[start : start + chunk_size])
            decoded = [s for s in self.load_samples(chunk) if s.ok and s.image is not None]
            if decoded:
                yield decoded
            advance(len(chunk))

    def decoded_samples(self, records: Sequence[Record], description: str, chunk_size: int = 32) -> Iterator[Sample]:
        """:meth:`decoded_chunks`, one sample at a time.

        Example:
            >>> images = [s.image for s in context.decoded_samples(records, "gate: load train")]  # doctest: +SKIP
        """
        for chunk in self.decoded_chunks(records, description, chunk_size):
            yield from chunk


class Stage:
    """A step of the pipeline that fills fields of a batch of samples.

    Subclasses implement :meth:`predict`. The pipeline only passes samples that are still active
    (decoded, and not finished early by a gate).
    """

    trainable: bool = False

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__.lower()

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Process a batch in place and return it."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """A short JSON summary for reports."""
        return {"type": type(self).__name__, "name": self.name}

    def use_device(self, device: torch.device) -> None:
        """Run (and train) on ``device`` from now on; stages without a network ignore it."""


class TrainableStage(Stage):
    """A stage with learned state.

    Subclasses implement :meth:`fit`, :meth:`state_tensors` and :meth:`load_state_tensors`; saving and
    verified loading are shared.
    """

    trainable = True

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.fitted = False
        # The config's defect classes at fit time, recorded in the manifest so weights are never
        # loaded for a config with other classes.
        self.fit_classes: list[str] | None = None

    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Learn from ``train`` (and tune on ``val``); return a summary of what was fitted."""
        raise NotImplementedError

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors to save and a JSON-able dict of settings needed to rebuild them."""
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Restore from what :meth:`state_tensors` returned."""
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        tensors, extra = self.state_tensors()
        return save_state(directory, self.name, type(self).__name__, tensors, extra, classes=self.fit_classes)

    def load(self, directory: str | Path) -> None:
        tensors, extra = load_state(directory, self.name, type(self).__name__)
        self.load_state_tensors(tensors, extra)
        self.fitted = True

    def has_saved_state(self, directory: str | Path) -> bool:
        return has_state(directory, self.name)

    def ready_to_predict(self) -> bool:
        """Whether :meth:`predict` can run: the stage was fitted or loaded."""
        return bool(self.fitted)

    def active_samples(self, samples: Sequence[Sample]) -> list[Sample]:
        """The samples :meth:`predict` works on: active ones (not failed, not finished by a gate) with an image.

        Raises:
            RuntimeError: The stage cannot predict yet (:meth:`ready_to_predict`).
        """
        if not self.ready_to_predict():
            raise RuntimeError(f"{self.name}: predict before fit or load")
        return [s for s in samples if s.active and s.image is not None]
