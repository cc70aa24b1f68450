"""The base of stages that own one torch network trained on the config's defect classes.

Such a stage (:class:`~defectkit.stages.detect.Detector`, :class:`~defectkit.stages.segment.Segmenter`,
:class:`~defectkit.stages.classifier_gate.ClassifierGate`) keeps its network in ``model``, built
from a head config for its classes (``context.classes``; the gate's are the image classes) and
trained by the shared Lightning loop on images resized to ``image_size``. The training options,
the device, the fit check and saving and loading the weights live here, once. Its state is the
network's weights under ``model.`` plus what rebuilds it (head config, classes, image size, fit
summary), so loading needs no ImageNet weights. Subclasses decide what the network learns from
and what its predictions fill in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from defectkit.data.split import stable_order
from defectkit.data.transforms import Resize
from defectkit.errors import ConfigError
from defectkit.heads.backbones import to_input_tensor
from defectkit.runtime import inference_mode, memory_format
from defectkit.sample import Record
from defectkit.stages.base import Exportable, FitContext, TrainableStage
from defectkit.training import fit_head, unmatched_prefixes

CPU_PREDICT_BATCH_SIZE = 2
"""Images per prediction batch on the CPU when a stage's ``predict_batch_size`` is not set.

Measured with ``benchmarks/predict_batch_size.py`` (docs/performance.md): on two CPU cores the
stages' networks predict fastest in small batches (the activations of a large batch fall out of
the cache), e.g. the car DeepLabV3+ at 288x384 ran 43 img/s in batches of 2 against 18 in batches
of 8. A GPU wants large batches instead, so there the training ``batch_size`` is used.
"""


class NetworkStage(TrainableStage):
    """A trainable stage owning one torch network, ``model``, for the config's defect classes.

    Subclasses set :attr:`model_types` and :attr:`reserved_model_keys`, implement
    :meth:`build_network`, ``fit`` (built from :meth:`take_classes`, :meth:`training_subset`,
    :meth:`fresh_network`, :meth:`train_network` and :meth:`finish_fit`) and ``predict`` (which
    starts with :meth:`active_samples` and feeds the network :meth:`input_batches`). Settings of
    their own that rebuilding the network needs go through :meth:`saved_settings` and
    :meth:`restore_settings`.

    Args:
        name: Stage name (file stem of its saved state).
        model: Head config: ``type`` (one of :attr:`model_types`) plus the head's options.
        image_size: ``(height, width)`` the network sees; multiples of 32.
        epochs: Training epochs.
        batch_size: Images per training step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_images: Train on at most this many annotated images (a deterministic subset).
        seed: Seeds the subset, shuffling, augmentation and initialisation.
        pretrained: Start the backbone from the offline ImageNet weights.
        chunk_size: Records decoded at once while loading.
        predict_batch_size: Images per prediction batch; None: :data:`CPU_PREDICT_BATCH_SIZE` on
            the CPU (whatever runtime runs the network there), ``batch_size`` on a GPU.
        freeze_pretrained_bn: Keep the running statistics of the pretrained part's batch-norm
            layers (:meth:`pretrained_prefix`) as ImageNet left them while training (batches of a
            few large images estimate them poorly); their scale and shift still learn.
        ema_decay: Train with an exponential moving average of the weights with this decay per
            step (:func:`~defectkit.training.fit_head`); the average is what validation scores and
            what the stage keeps. None: the trained weights themselves.
        max_minutes: Wall-clock budget of the training epochs (validation included, data loading
            not): after each epoch the epoch count is cut to what fits at the pace so far and the
            schedule ends with it (:func:`~defectkit.training.fit_head`), so a slower machine trains
            fewer epochs. None: exactly ``epochs``.
        frozen_layers: Parameter-name prefixes of the network (e.g. ``"encoder.model.blocks.0."``)
            whose layers keep their pretrained weights and batch-norm statistics for the whole fit:
            each training step then skips their backward pass (the early, high-resolution layers
            of an encoder cost the most per parameter). Empty: everything trains.
    """

    model_types: Sequence[str] = ()
    """The head ``type`` names the stage can build."""

    reserved_model_keys: Mapping[str, str] = {}
    """Head config keys the stage sets itself, each with where its value comes from (for the error)."""

    size_multiple: int = 32
    """``image_size`` must be a multiple of this (encoders that downsample 32x need 32; a classifier
    that pools globally takes any size)."""

    def __init__(
        self,
        name: str,
        model: dict[str, Any],
        image_size: Sequence[int],
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        max_images: int | None,
        seed: int,
        pretrained: bool,
        chunk_size: int,
        predict_batch_size: int | None = None,
        freeze_pretrained_bn: bool = False,
        ema_decay: float | None = None,
        max_minutes: float | None = None,
        frozen_layers: Sequence[str] = (),
    ) -> None:
        super().__init__(name)
        kind = type(self).__name__
        self.model_cfg = dict(model)
        if self.model_cfg.get("type") not in self.model_types:
            raise ConfigError(f"{kind} model type must be one of {list(self.model_types)}, got {self.model_cfg.get('type')!r}")
        for key, source in self.reserved_model_keys.items():
            if key in self.model_cfg:
                raise ConfigError(f"{kind} model config must not set {key!r} (it comes from {source})")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        step = self.size_multiple
        if any(v < step or v % step for v in self.image_size):
            raise ConfigError(f"{kind} image_size must be multiples of {step} (>= {step}), got {list(self.image_size)}")
        if epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {epochs}")
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.max_images = None if max_images is None else int(max_images)
        self.seed = int(seed)
        self.pretrained = bool(pretrained)
        self.chunk_size = max(1, int(chunk_size))
        # Its type is checked with every other option's (defectkit.validation); the range here.
        if predict_batch_size is not None and predict_batch_size < 1:
            raise ConfigError(f"{kind} predict_batch_size must be >= 1 or None, got {predict_batch_size!r}")
        self.predict_batch_size = None if predict_batch_size is None else int(predict_batch_size)
        self.freeze_pretrained_bn = bool(freeze_pretrained_bn)
        if self.freeze_pretrained_bn and self.pretrained_prefix() is None:
            raise ConfigError(f"{kind} freeze_pretrained_bn: the {self.model_cfg['type']!r} network has no pretrained "
                              f"part whose batch norms could be frozen")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"{kind} ema_decay must be in (0, 1) or None, got {ema_decay!r}")
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        if max_minutes is not None and not max_minutes > 0:
            raise ConfigError(f"{kind} max_minutes must be > 0 or None, got {max_minutes!r}")
        self.max_minutes = None if max_minutes is None else float(max_minutes)
        # Its type is checked with every other option's; an empty prefix would freeze the whole network.
        if any(not prefix for prefix in frozen_layers):
            raise ConfigError(f"{kind} frozen_layers: an empty prefix would freeze every layer, got {list(frozen_layers)!r}")
        self.frozen_layers = tuple(frozen_layers)
        self.classes: list[str] = []
        self.model: torch.nn.Module | None = None
        self.summary: dict[str, Any] = {}
        self._resize = Resize(self.image_size)
        self.device = torch.device("cpu")

    def use_device(self, device: torch.device) -> None:
        """Train and predict on ``device`` (the network moves there now, or when it is built or loaded)."""
        self.device = torch.device(device)
        if self.model is not None:
            self._place(self.model)

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the stage's device in the layout it runs fastest in there (the same after fit and load)."""
        # Through the default layout first: a trained network's weights then have exactly the strides
        # of the same weights loaded from a file, so a reloaded stage predicts bit for bit the same.
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        return model.to(self.device, memory_format=memory_format(self.device))  # type: ignore[call-overload]

    def build_network(self, pretrained: bool) -> torch.nn.Module:
        """A new network for ``model_cfg`` and the classes (ImageNet backbone weights if ``pretrained``)."""
        raise NotImplementedError

    def pretrained_prefix(self) -> str | None:
        """The parameter-name prefix of the part of the network that starts from ImageNet weights
        (e.g. ``"encoder."``), or None where there is no such part."""
        return None

    def saved_settings(self) -> dict[str, Any]:
        """This stage's own settings that :meth:`build_network` needs, saved beside the weights as JSON."""
        return {}

    def restore_settings(self, extra: dict[str, Any]) -> None:
        """Take back what :meth:`saved_settings` saved (before the network is rebuilt)."""

    # ------------------------------------------------------------------ fit
    def take_classes(self, context: FitContext, task: str) -> None:
        """The config's defect classes become the network's (``task``, e.g. "detect", names what they are for).

        Raises:
            ValueError: The config has no defect classes.
        """
        self.classes = [str(c) for c in context.classes]
        if not self.classes:
            raise ValueError(f"{self.name}: the config has no defect classes to {task}")

    def training_subset(self, records: Sequence[Record], annotated: Callable[[Record], bool]) -> list[Record]:
        """The ``annotated`` records in a seeded order that does not depend on the input order, at most ``max_images``."""
        subset = stable_order((r for r in records if annotated(r)), self.seed)
        return subset if self.max_images is None else subset[: self.max_images]

    def log_problems(self, context: FitContext, problems: Sequence[str]) -> None:
        """Log the first annotation problems (all of them are counted in the summary)."""
        for problem in problems[:10]:
            context.log(f"{self.name}: {problem}")

    def fresh_network(self) -> torch.nn.Module:
        """Build ``model`` to train, seeded so that the layers not taken from ImageNet start the same every run."""
        torch.manual_seed(self.seed)
        self.model = self.build_network(pretrained=self.pretrained)
        return self.model

    def train_network(
        self,
        context: FitContext,
        train: torch.utils.data.Dataset,
        val: torch.utils.data.Dataset | None,
        loss_fn: Callable[..., torch.Tensor] | None,
        network: torch.nn.Module | None = None,
        seed: int | None = None,
        description: str = "train",
        **options: Any,
    ) -> dict[str, Any]:
        """Train ``model`` with the shared loop and this stage's settings; returns the loop's summary.

        With validation data the weights of the best validation epoch are kept. ``network`` trains
        a part of ``model`` instead (e.g. one member of an ensemble), with its own ``seed`` (default:
        the stage's) and log ``description``. ``options`` are further
        :func:`~defectkit.training.fit_head` arguments (e.g. ``collate_fn``, ``sampler``, or
        ``max_minutes`` for a share of the stage's time budget).
        """
        assert self.model is not None, "fresh_network() first"
        prefix = self.pretrained_prefix()
        options.setdefault("max_minutes", self.max_minutes)
        trained = self.model if network is None else network
        for frozen in unmatched_prefixes(trained, self.frozen_layers):
            first = next((name for name, _ in trained.named_parameters()), "")
            raise ConfigError(f"{type(self).__name__} frozen_layers: no parameter of the {self.model_cfg['type']!r} "
                              f"network is named with the prefix {frozen!r} (names look like {first!r})")
        return fit_head(
            self.model if network is None else network, train, val, loss_fn,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            progress=context.progress, description=f"{self.name}: {description}", seed=self.seed if seed is None else int(seed),
            restore_best=val is not None, log=context.log, device=self.device,
            frozen_norms=(prefix,) if self.freeze_pretrained_bn and prefix is not None else (),
            frozen_layers=self.frozen_layers, ema_decay=self.ema_decay, **options,
        )

    def check_options(self, option: str, target: Callable[..., Any], options: dict[str, Any], **given: Any) -> None:
        """Fail now, not after loading the data, on ``options`` that ``target`` does not take or rejects.

        ``given`` are the arguments the stage itself passes (not options of the config).
        """
        valid = [name for name in inspect.signature(target).parameters if name != "self" and name not in given]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"{type(self).__name__} {option} got unknown option(s) {', '.join(map(repr, unknown))}; "
                              f"valid options: {', '.join(valid)}")
        target(**given, **options)  # raises ConfigError for values out of range

    def mark_fitted(self) -> None:
        """The trained network goes to the stage's device, in eval mode; the stage counts as fitted."""
        assert self.model is not None, "fresh_network() first"
        self._place(self.model).eval()
        self.fitted = True

    def finish_fit(
        self,
        context: FitContext,
        training: dict[str, Any],
        problems: Sequence[str],
        trained_on: str,
        val_count: int,
        **details: Any,
    ) -> dict[str, Any]:
        """Mark the stage fitted, log what it trained on and return its summary.

        Args:
            context: The fit context (for the log).
            training: The training loop's summary.
            problems: Annotation problems found while loading (their count goes in the summary).
            trained_on: What the network trained on, for the log (e.g. "120 images").
            val_count: Validation items, for the log.
            details: The stage's own summary entries, between the architecture, classes and image
                size and the problem count and training summary.
        """
        self.mark_fitted()
        self.summary = {
            "arch": self.model_cfg["type"],
            "classes": self.classes,
            "image_size": list(self.image_size),
            **details,
            "annotation_problems": len(problems),
            "training": training,
        }
        kept = ""
        if training["best_epoch"] is not None:  # fit_head's summary (an ensemble's is its first member's)
            score_name = training["val_score_name"]
            by = score_name if training["best_epoch_by"] == "val_score" else "val loss"
            score = "" if training["best_val_score"] is None else f", {score_name} {training['best_val_score']}"
            kept = f"; kept epoch {training['best_epoch'] + 1} (best {by}): val loss {training['best_val_loss']}{score}"
        context.log(
            f"{self.name}: trained {self.model_cfg['type']} on {trained_on} "
            f"(val {val_count}); train loss {training['train_loss']}{kept}"
        )
        return self.summary

    # ------------------------------------------------------------------ predict
    def network(self, action: str = "predict") -> torch.nn.Module:
        """The trained network.

        Args:
            action: What needs it, for the error: ``"<action> before fit or load"``.

        Raises:
            RuntimeError: The stage was neither fitted nor loaded.
        """
        self.require_ready(action)
        assert self.model is not None  # ready_to_predict: there is a network
        # A no-op when fitted or loaded here; a network set from outside is brought to the device and layout.
        return self.model.to(self.device, memory_format=memory_format(self.device))  # type: ignore[call-overload]

    def network_expected(self) -> bool:
        """Whether the fitted stage has a network (to save, load and predict with).

        True for every stage that always trains one; a gate that found nothing to learn has none.
        """
        return True

    def ready_to_predict(self) -> bool:
        """Whether there is a network to predict with (fitted or loaded), or the fitted stage needs none."""
        return self.model is not None if self.network_expected() else self.fitted

    def prediction_batch_size(self) -> int:
        """Images per prediction batch: ``predict_batch_size``, else :data:`CPU_PREDICT_BATCH_SIZE` on the CPU, ``batch_size`` on a GPU."""
        if self.predict_batch_size is not None:
            return self.predict_batch_size
        return CPU_PREDICT_BATCH_SIZE if self.device.type == "cpu" else self.batch_size

    def network_input(self, images: Sequence[np.ndarray], size: Sequence[int] | None = None) -> torch.Tensor:
        """The network input of HxWx3 uint8 ``images``: NCHW resized to ``size`` (default ``image_size``), on the stage's device."""
        resize = self._resize if size is None else Resize((int(size[0]), int(size[1])))
        x = to_input_tensor([resize(np.ascontiguousarray(im))[0] for im in images])
        return x.to(self.device).contiguous(memory_format=memory_format(self.device))

    def tta_scale_options(self, scales: Sequence[float]) -> tuple[float, ...]:
        """Test-time input scales relative to ``image_size`` (``tta_scales`` of the stages that have it), checked."""
        values = tuple(float(v) for v in scales)
        if not values or any(not 0.25 <= v <= 4.0 for v in values):
            raise ConfigError(f"{type(self).__name__} tta_scales must be scales in [0.25, 4], got {list(scales)}")
        return values

    def scaled_input_size(self, scale: float) -> tuple[int, int]:
        """``image_size`` times ``scale``, each side rounded to a multiple of :attr:`size_multiple` (1.5 x 288x384 -> 448x576)."""
        step = self.size_multiple
        height, width = (max(step, round(side * scale / step) * step) for side in self.image_size)
        return height, width

    def input_batches(
        self, images: Sequence[np.ndarray], size: Sequence[int] | None = None
    ) -> Iterator[tuple[Sequence[np.ndarray], torch.Tensor]]:
        """HxWx3 uint8 images :meth:`prediction_batch_size` at a time, each with its :meth:`network_input` at ``size``."""
        step = self.prediction_batch_size()
        for start in range(0, len(images), step):
            batch = images[start : start + step]
            yield batch, self.network_input(batch, size)

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` for prediction: no gradients, mixed precision on CUDA; outputs back on the CPU as fp32.

        An :class:`~defectkit.stages.base.Exportable` stage running an exported file
        (``predict.runtime``, :meth:`~defectkit.stages.base.Exportable.use_exported`) calls that instead.
        """
        if isinstance(self, Exportable) and self.exported is not None:
            return self.exported(x.cpu()).float()
        with inference_mode(self.device):
            out = model(x)
        return out.float().cpu()

    # ------------------------------------------------------------------ state
    def expected_model(self) -> dict[str, Any] | None:
        """The head config the stage's config asks for; a saved state must have been made with it."""
        return self.model_cfg

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The network's weights; head config, :meth:`saved_settings`, classes, image size and fit summary as JSON."""
        self.require_ready("nothing to save")
        tensors: dict[str, torch.Tensor] = {}
        if self.network_expected():
            model = self.network("nothing to save")
            tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        extra = {
            "arch": self.model_cfg["type"],
            "model": self.model_cfg,
            **self.saved_settings(),
            "classes": self.classes,
            "image_size": list(self.image_size),
            "summary": self.summary,
        }
        return tensors, extra

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Rebuild the network (no ImageNet weights needed) and restore its weights.

        The head config is the saved one, except :attr:`model_fields_not_checked`, which the
        config decides (e.g. a detector's post-processing thresholds).
        """
        unchecked = set(self.model_fields_not_checked)
        saved = dict(extra.get("model") or dict(type=extra["arch"]))
        self.model_cfg = {**{k: v for k, v in saved.items() if k not in unchecked},
                          **{k: v for k, v in self.model_cfg.items() if k in unchecked}}
        self.restore_settings(extra)
        self.classes = [str(c) for c in extra.get("classes", [])]
        if not self.classes:
            raise ValueError(f"{self.name}: saved state has no classes")
        self.image_size = tuple(int(v) for v in extra.get("image_size", self.image_size))  # type: ignore[assignment]
        self._resize = Resize(self.image_size)
        self.summary = dict(extra.get("summary", {}))
        self.model = None
        if self.network_expected():  # restore_settings decided (e.g. a gate that learned nothing has no network)
            model = self.build_network(pretrained=False)
            weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
            model.load_state_dict(weights, strict=True)
            self.model = self._place(model).eval()
        self.fitted = True

    def describe(self) -> dict[str, Any]:
        """Type, name, architecture, image size, classes and the fit summary (without the loss history)."""
        return self.network_description()

    def network_description(self, **settings: Any) -> dict[str, Any]:
        """:meth:`describe` with the stage's own ``settings`` after the classes."""
        info: dict[str, Any] = {**super().describe(), "arch": self.model_cfg.get("type"), "image_size": list(self.image_size),
                                "classes": self.classes, **settings}
        return {**info, **{k: v for k, v in self.summary.items() if k not in info and k != "training"}}


__all__ = ["NetworkStage"]
