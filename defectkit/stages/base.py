"""The contract every pipeline stage keeps.

A stage works on batches of :class:`~defectkit.sample.Sample`. Trainable stages also ``fit`` on
training records and persist their state as safetensors plus a JSON manifest (never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from defectkit.errors import StateError
from defectkit.io.images import DEFAULT_MAX_SIDE
from defectkit.io.state import has_state, load_state, save_state, short_repr, state_paths
from defectkit.results import ImageInput, Result, to_samples
from defectkit.sample import Detections, Record, Sample


def _no_advance(n: int = 1) -> None:
    """A progress bar's ``advance`` that shows nothing (the default of :attr:`FitContext.progress`)."""


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
    progress: Callable[[str, int], Callable[[int], None]] = field(default=lambda description, total: _no_advance)
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

        Examples:
            >>> images = [s.image for s in context.decoded_samples(records, "gate: load train")]  # doctest: +SKIP
        """
        for chunk in self.decoded_chunks(records, description, chunk_size):
            yield from chunk


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, ConfigDicts dicts)."""
    return json.loads(json.dumps(value, default=str))


def _first_difference(have: Any, want: Any, where: str) -> str | None:
    """The first field where ``have`` (saved) and ``want`` (config) differ, described, or None."""
    if isinstance(have, dict) and isinstance(want, dict):
        for key in sorted(set(have) | set(want), key=str):
            # Keys come from the untrusted manifest: quote any that is not a plain name.
            field_path = f"{where}.{key}" if str(key).isidentifier() else f"{where}[{short_repr(key, 40)}]"
            if key not in want:
                return f"{field_path} (only in the saved state: {short_repr(have[key])})"
            if key not in have:
                return f"{field_path} (missing in the saved state; the config has {short_repr(want[key])})"
            found = _first_difference(have[key], want[key], field_path)
            if found is not None:
                return found
        return None
    if isinstance(have, list) and isinstance(want, list) and len(have) == len(want):
        for index, (a, b) in enumerate(zip(have, want)):
            found = _first_difference(a, b, f"{where}[{index}]")
            if found is not None:
                return found
        return None
    if have == want and type(have) is type(want):
        return None
    return f"{where} (saved {short_repr(have)}, config {short_repr(want)})"


class Stage:
    """A step of the pipeline that fills fields of a batch of samples.

    Subclasses implement :meth:`predict`. The pipeline only passes samples that are still active
    (decoded, and not finished early by a gate).

    A stage is also callable on its own, on image files or numpy arrays (see :meth:`__call__`);
    its name is the same whether a config or Python code builds it, so weights saved by one are
    found by the other.

    Examples:
        >>> import numpy as np, defectkit
        >>> policy = defectkit.build_stage(dict(type="MaskPolicy", rules=dict(defect=dict(threshold=0.5, min_area=4))))
        >>> policy.name
        'mask_policy'
        >>> from defectkit.sample import Record, Sample
        >>> prob = np.zeros((1, 16, 16), np.float32); prob[0, 4:10, 4:10] = 0.9
        >>> sample = Sample(Record("a.png"), image=np.zeros((16, 16, 3), np.uint8), prob_maps=prob, map_classes=["defect"])
        >>> result = policy([sample])[0]
        >>> [(i.class_name, i.area) for i in result.instances], int(result.masks["defect"].sum())
        ([('defect', 36.0)], 36)
    """

    trainable: bool = False

    enabled: bool = True
    """Whether the stage does its job. Every stage takes ``enabled=False`` in a config (e.g.
    ``--cfg-options pipeline.1.enabled=False``): the pipeline then passes samples through it
    untouched and neither fits nor loads it. A stage whose switch means something else takes
    ``enabled`` in its constructor and sets :attr:`handles_enabled` (a gate that still records
    why it is off, a tiling stage that runs its inner stage on whole images)."""

    handles_enabled: ClassVar[bool] = False
    """True when the stage acts on :attr:`enabled` itself, so the pipeline runs it either way."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__.lower()

    @property
    def skipped(self) -> bool:
        """Whether the pipeline leaves this stage out: switched off and not handling that itself."""
        return not self.enabled and not self.handles_enabled

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Process a batch in place and return it."""
        raise NotImplementedError

    def __call__(self, images: ImageInput | Sequence[ImageInput], max_side: int | None = DEFAULT_MAX_SIDE) -> list[Result]:
        """Run this stage alone on image files, HxWx3 uint8 arrays, samples or earlier results.

        Args:
            images: One input or a list of them (see :func:`defectkit.results.to_samples`).
            max_side: Files with a longer side are decoded at reduced size; None: full size.

        Returns:
            One :class:`~defectkit.results.Result` per input, in order; a file that cannot be
            decoded has ``error`` set. Samples and results passed in are updated in place.
        """
        samples = to_samples(images, max_side=max_side)
        active = [s for s in samples if s.active]
        if active and not self.skipped:
            self.predict(active)
        return [Result.from_sample(s) for s in samples]

    def describe(self) -> dict[str, Any]:
        """A short JSON summary for reports."""
        return {"type": type(self).__name__, "name": self.name}

    def report_notes(self) -> list[str]:
        """Lines for the report's summary about choices the stage made when fitted (e.g. a Tiling
        stage: sliced or whole images, and why); none by default."""
        return []

    def use_device(self, device: torch.device) -> None:
        """Run (and train) on ``device`` from now on; stages without a network ignore it."""


class Detects:
    """Ability of a stage that finds boxes in whole images (a detector, or a tiling stage around one).

    A :class:`~defectkit.stages.tiling.Tiling` stage runs such a stage on windows, and a
    :class:`~defectkit.stages.roi_crop.RoiCrop` uses one as its localizer. Declared by subclassing;
    test doubles and plugin stages subclass it too.

    Attributes:
        classes: What the detections' ``labels`` index.
        min_score: Boxes scoring below this are not reported by the stage's own ``predict``.
    """

    classes: list[str]
    min_score: float = 0.0

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One :class:`~defectkit.sample.Detections` per HxWx3 uint8 image, in that image's coordinates."""
        raise NotImplementedError


class Segments:
    """Ability of a stage that computes per-class probability maps of whole images (a segmenter).

    Attributes:
        classes: The class of each map channel.
    """

    classes: list[str]

    def probability_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One CxHxW float32 map in [0, 1] per HxWx3 uint8 image, at the image's resolution."""
        raise NotImplementedError


class TilesItself:
    """Ability of a stage that scores the windows of an image itself (an anomaly gate whose threshold
    is calibrated on window scores); a Tiling stage hands it its slicing before ``fit``."""

    def configure_tiling(self, slice_size: Sequence[int] | None, overlap: Sequence[float] = (0.2, 0.2)) -> None:
        """Use windows of ``(height, width)`` ``slice_size`` (None: whole images) overlapping by ``overlap``."""
        raise NotImplementedError


class TrainsOnSlices:
    """Ability of a stage that trains on the windows prediction will use; a Tiling stage calls
    :meth:`configure_slicing` before ``fit``."""

    def configure_slicing(self, slice_size: Sequence[int], overlap: Sequence[float]) -> None:
        """Train on windows of ``(height, width)`` ``slice_size`` overlapping by ``overlap`` ratios."""
        raise NotImplementedError


@dataclass
class ExportSpec:
    """What :func:`defectkit.export.export_pipeline` needs to write one stage's network to a file.

    Attributes:
        module: The network as the stage runs it (eval mode, CPU, fp32): one NCHW float input, one output.
        inputs: The network inputs the stage builds for a few images, exactly as its prediction does
            (the first two trace the export; all of them are compared in the parity check).
        dynamic_axes: Input axes whose size varies between calls (``{0: "batch"}``; tiles add height and width).
        output_axes: Output axes whose size varies between calls; None: the same as ``dynamic_axes``
            (a detector's output has its locations on axis 1, not height and width).
        activation: What the stage applies to the output before using it (e.g. ``torch.sigmoid``); the
            parity check compares activated outputs. None: the raw output.
        tolerance: Largest absolute difference of activated outputs allowed between PyTorch and the
            export (relative to the largest absolute PyTorch value when ``relative``).
        relative: Compare differences relative to the output's scale (embeddings have no fixed range).
        decision: Turns activated outputs into the decisions the stage makes (mask pixels, labels);
            the parity check reports how many agree. None: no discrete decision.
        min_agreement: Share of decisions that must agree for the parity check to pass.
    """

    module: torch.nn.Module
    inputs: torch.Tensor
    dynamic_axes: dict[int, str] = field(default_factory=lambda: {0: "batch"})
    output_axes: dict[int, str] | None = None
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None
    tolerance: float = 1e-3
    relative: bool = False
    decision: Callable[[torch.Tensor], torch.Tensor] | None = None
    min_agreement: float = 0.999


class Exportable:
    """Ability of a stage whose network can be exported (ONNX, OpenVINO) and run from the exported file.

    ``defectkit export`` writes the network :meth:`export_module` returns; with
    ``predict.runtime=onnxruntime|openvino`` the runner hands the stage the loaded file through
    :meth:`use_exported`, and the stage calls :attr:`exported` wherever it would call the network.
    Declared by subclassing, like the other abilities.

    Attributes:
        exported: The exported network as a callable (NCHW float tensor in, tensor out, on the CPU),
            or None: the stage runs its PyTorch network.
    """

    exported: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def runs_other_input_sizes(self) -> bool:
        """Whether prediction feeds the network inputs of another height or width than its export's examples
        (test-time sizes): an export whose height and width are fixed is then refused as stale."""
        return False

    def export_module(self, images: Sequence[np.ndarray]) -> ExportSpec | None:
        """The network to export with its inputs for HxWx3 uint8 ``images``; None when the stage has no network to run
        (e.g. a gate that fit found nothing to learn for).

        Raises:
            RuntimeError: The stage was neither fitted nor loaded.
        """
        raise NotImplementedError

    def use_exported(self, network: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Run the network through ``network`` (an exported file's runtime) from now on; None: PyTorch again."""
        self.exported = network


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

    def expected_model(self) -> dict[str, Any] | None:
        """The model description the config builds, which a saved state's ``extra["model"]`` must match.

        None: the stage saves no model description. Stages whose ``load_state_tensors`` rebuilds a
        network from ``extra["model"]`` return what their config asks for, so a manifest can never
        choose what gets built (see :meth:`check_saved_model`).
        """
        return None

    model_fields_not_checked: tuple[str, ...] = ()
    """Keys of the model description that the config may change after training (taken from the config on load)."""

    def check_saved_model(self, extra: dict[str, Any]) -> None:
        """Refuse a saved model description that differs from the config's, naming the first field that differs.

        Raises:
            StateError: ``extra["model"]`` is missing or differs from :meth:`expected_model`.
        """
        expected = self.expected_model()
        if expected is None:
            return
        saved = extra.get("model") if isinstance(extra, dict) else None
        if not isinstance(saved, dict):
            raise StateError(f"stage {self.name!r}: the saved state has no model description (extra.model); refusing to load")
        ignored = set(self.model_fields_not_checked)
        want = _plain({k: v for k, v in dict(expected).items() if k not in ignored})
        have = {k: v for k, v in saved.items() if k not in ignored}
        difference = _first_difference(have, want, "extra.model")
        if difference is not None:
            raise StateError(
                f"stage {self.name!r}: the saved model differs from the config's at {difference}; refusing to load "
                "(retrain, or restore the config the weights were trained with)"
            )

    def load(self, directory: str | Path, classes: Sequence[str] | None = None) -> None:
        """Load verified state from ``directory`` (see :func:`~defectkit.io.state.load_state`).

        Args:
            directory: The ``weights/`` folder.
            classes: The config's defect classes; state fitted for other classes is refused.

        Raises:
            StateError: Missing or tampered files, state saved by another stage type, library
                version or for other classes, a saved model that differs from the config's, or a
                manifest value the stage cannot use; the message names the manifest.
        """
        tensors, extra = load_state(directory, self.name, type(self).__name__, classes)
        manifest_path = state_paths(directory, self.name)[1]
        try:
            self.check_saved_model(extra)
            self.load_state_tensors(tensors, extra)
        except StateError as exc:
            raise StateError(f"{manifest_path}: {exc}") from exc
        except Exception as exc:  # the manifest is untrusted input: any value the stage cannot use is bad state
            raise StateError(
                f"{manifest_path}: saved state does not fit stage {self.name!r} ({type(exc).__name__}: {short_repr(exc)}); "
                "retrain or restore the weights"
            ) from exc
        self.fitted = True

    @classmethod
    def from_weights(cls, directory: str | Path, name: str | None = None, classes: Sequence[str] | None = None, **options: Any) -> TrainableStage:
        """Build this stage with ``options`` and load its saved state, ready to predict.

        Args:
            directory: A ``weights/`` folder or a work dir that has one.
            name: The stage's name in that folder; None: this stage type's default name, or the
                only state of this type in the folder.
            classes: Refuse state fitted for other defect classes.
            **options: Constructor options that matter at prediction time (thresholds, ``apply``...).

        Raises:
            StateError: No (or more than one) saved state of this type, or state that fails its checks.

        Examples:
            >>> enhance = ZeroDce.from_weights("work_dirs/car_damage")  # doctest: +SKIP
            >>> brighter = enhance(["dark_photo.jpg"])[0].image  # doctest: +SKIP
        """
        from defectkit.validation import construct

        directory = Path(directory)
        if (directory / "weights").is_dir():
            directory = directory / "weights"
        stage = construct("stage", cls, {**options, **({"name": name} if name else {})})
        if name is None and not stage.has_saved_state(directory):
            stage.name = _only_state_of_type(directory, cls.__name__)
        stage.load(directory, classes)
        return stage

    def has_saved_state(self, directory: str | Path) -> bool:
        return has_state(directory, self.name)

    def ready_to_predict(self) -> bool:
        """Whether :meth:`predict` can run: the stage was fitted or loaded."""
        return bool(self.fitted)

    def require_ready(self, action: str = "predict") -> None:
        """The one check that a stage was fitted or loaded before it is used.

        Raises:
            RuntimeError: ``"<name>: <action> before fit or load"`` when :meth:`ready_to_predict` is False.
        """
        if not self.ready_to_predict():
            raise RuntimeError(f"{self.name}: {action} before fit or load")

    def active_samples(self, samples: Sequence[Sample]) -> list[Sample]:
        """The samples :meth:`predict` works on: active ones (not failed, not finished by a gate) with an image.

        Raises:
            RuntimeError: The stage cannot predict yet (:meth:`ready_to_predict`).
        """
        self.require_ready()
        return [s for s in samples if s.active and s.image is not None]


def _only_state_of_type(directory: Path, stage_type: str) -> str:
    """The name of the one stage of ``stage_type`` saved in ``directory``."""
    import json

    names = []
    for manifest in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            if json.loads(manifest.read_text(encoding="utf-8")).get("stage_type") == stage_type:
                names.append(manifest.stem)
        except (OSError, ValueError, AttributeError):
            continue
    if len(names) != 1:
        found = f"several ({', '.join(names)}); pass name=" if names else "none"
        raise StateError(f"{directory}: expected one saved {stage_type} stage, found {found}")
    return names[0]
