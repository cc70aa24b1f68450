"""Typed results of the Python API, and turning what a user has (paths, arrays) into samples.

A :class:`Result` is what ``pipeline(images)`` and ``stage(images)`` return for each input: the
gate's decision, per-class masks and probability maps, and the instances found (class, score, box,
area, polygon). :func:`to_samples` turns file paths, numpy arrays, samples or earlier results into
the :class:`~defectkit.sample.Sample` objects stages work on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from defectkit.io.images import DEFAULT_MAX_SIDE, decode_record
from defectkit.sample import Instance, Record, Sample

ImageInput = Union[str, Path, np.ndarray, Sample, "Result"]
"""One input of the Python API: an image file, an HxWx3 (or HxW) uint8 array, a sample or a result."""


@dataclass
class Result:
    """What a pipeline (or one stage) found in one image.

    Attributes:
        path: The image file, or ``"<array N>"`` for the N-th numpy input.
        error: Why the input could not be processed (unreadable file...), else None.
        gate_label: The gate's image-level decision (e.g. ``"normal"``, ``"defect"``), None without a gate.
        gate_score: The gate's defect score (higher is more defective), None without a gate.
        instances: Defects found, with box, area and polygon in the coordinates of the original
            image (the file's full size, upright).
        masks: Per class, an HxW bool mask at the working size of :attr:`image`.
        prob_maps: Per class, an HxW float32 probability (or anomaly) map in [0, 1] at the working size.
        image: The image as the stages left it (an enhancement stage brightens it), HxWx3 uint8.
        original_size: ``(height, width)`` of the original image.
        sample: The underlying :class:`~defectkit.sample.Sample`; pass results to another stage to
            continue from them.

    Examples:
        >>> import numpy as np, defectkit
        >>> result = defectkit.build_stage(dict(type="Gamma", gamma=0.5))([np.full((8, 8, 3), 40, np.uint8)])[0]
        >>> result.ok, result.image.shape, int(result.image[0, 0, 0]) > 40
        (True, (8, 8, 3), True)
    """

    path: str
    error: str | None = None
    gate_label: str | None = None
    gate_score: float | None = None
    instances: list[Instance] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    prob_maps: dict[str, np.ndarray] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)
    original_size: tuple[int, int] | None = None
    sample: Sample | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the input was processed (no :attr:`error`)."""
        return self.error is None

    @classmethod
    def from_sample(cls, sample: Sample) -> Result:
        """The result a processed sample holds; instances are mapped to original coordinates."""
        sx, sy = sample.original_factors()
        classes = list(sample.map_classes)
        masks = {} if sample.masks is None else {c: np.asarray(m, bool) for c, m in zip(classes, sample.masks)}
        maps = {} if sample.prob_maps is None else {c: np.asarray(m) for c, m in zip(classes, sample.prob_maps)}
        size = sample.original_size
        if size is None and sample.image is not None:
            size = (int(sample.image.shape[0]), int(sample.image.shape[1]))
        return cls(
            path=sample.record.path,
            error=sample.error,
            gate_label=sample.gate_label,
            gate_score=None if sample.gate_score is None else float(sample.gate_score),
            instances=[inst.scaled(sx, sy) for inst in sample.instances],
            masks=masks,
            prob_maps=maps,
            image=sample.image,
            original_size=size,
            sample=sample,
        )

    def to_dict(self) -> dict[str, Any]:
        """The result as one ``predictions.jsonl`` line (JSON-able)."""
        if self.sample is not None:
            return self.sample.to_prediction()
        line: dict[str, Any] = {"path": self.path, "status": "ok" if self.ok else "error"}
        if self.error is not None:
            line["error"] = self.error
            return line
        line["gate"] = {"label": self.gate_label, "score": self.gate_score}
        line["instances"] = [inst.to_dict() for inst in self.instances]
        return line


def to_samples(
    inputs: ImageInput | Sequence[ImageInput], max_side: int | None = DEFAULT_MAX_SIDE, first_index: int = 0
) -> list[Sample]:
    """Samples for the stages from files, arrays, samples or earlier results.

    Args:
        inputs: One input or a list of them (a 4-D array is a batch of images).
        max_side: Files with a longer side are decoded at reduced size (see
            :func:`defectkit.io.images.read_image`); None decodes at full size.
        first_index: Position of the first input in a longer list (numbers ``"<array N>"`` and errors).

    Returns:
        One sample per input, in order. A file that cannot be decoded gives a sample with
        ``error`` set instead of raising, as in a batch run.

    Raises:
        TypeError: An input of another type, or an array that is not an image.

    Examples:
        >>> import numpy as np
        >>> [s.image.shape for s in to_samples([np.zeros((4, 6), np.uint8)])]
        [(4, 6, 3)]
    """
    items: Iterable[Any]
    if isinstance(inputs, (str, Path, Sample, Result)):
        items = [inputs]
    elif isinstance(inputs, np.ndarray):
        items = list(inputs) if inputs.ndim == 4 else [inputs]
    else:
        items = inputs
    samples = []
    for index, item in enumerate(items, start=first_index):
        if isinstance(item, Result):
            if item.sample is None:
                raise TypeError(f"input {index}: a Result without its sample cannot be processed further")
            samples.append(item.sample)
        elif isinstance(item, Sample):
            samples.append(item)
        elif isinstance(item, (str, Path)):
            samples.append(decode_record(Record(path=str(item)), max_side=max_side))
        elif isinstance(item, np.ndarray):
            samples.append(Sample(Record(path=f"<array {index}>"), image=_as_rgb(item, index)))
        else:
            raise TypeError(f"input {index}: expected an image path, a numpy array, a Sample or a Result, got {type(item).__name__}")
    return samples


def _as_rgb(array: np.ndarray, index: int) -> np.ndarray:
    """An HxWx3 uint8 RGB copy of an HxW, HxWx1, HxWx3 or HxWx4 uint8 array."""
    if array.dtype != np.uint8:
        raise TypeError(f"input {index}: expected a uint8 image array, got dtype {array.dtype} (scale to 0-255 and cast first)")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise TypeError(f"input {index}: expected an HxW, HxWx3 or HxWx4 image array, got shape {tuple(array.shape)}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


__all__ = ["ImageInput", "Result", "to_samples"]
