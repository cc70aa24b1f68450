"""Enhancement stages: brighten dark photos before the gate and the segmenter see them.

Car-damage photos are often taken at dusk, in car parks or under a car; dents and scratches in the
shadows then sit in the bottom few grey levels, where the later stages cannot see them. Every stage
here follows the same luminance rule: it changes an image only when its mean luma (Rec.601,
0..255, see :func:`mean_luma`) is below ``dark_threshold`` (``apply="dark"``), or always
(``apply="always"``), and records in ``sample.enhancement`` whether it did (``enhanced``) and the mean
luma before and after (``luma_before``, ``luma_after``).

* :class:`ZeroDce`: learned Zero-DCE / Zero-DCE++ curves (:class:`defectkit.heads.zero_dce.DceNet`),
  trained in about a minute on the training images themselves (no reference images).
* :class:`Clahe`: contrast-limited adaptive histogram equalisation of the L channel of LAB.
* :class:`Gamma`: a gamma lookup table, fixed or chosen per image to reach a target mean luma.

:func:`darken` makes day photos look like night photos, both to train :class:`ZeroDce` on dark
inputs and for the "darkened test images" evaluation.

Example:
    >>> from defectkit.registry import STAGES, build
    >>> stage = build(STAGES, dict(type="Gamma", gamma="auto", target_luma=110, dark_threshold=70))
    >>> samples = stage.predict(samples)  # doctest: +SKIP
    >>> samples[0].enhancement.enhanced, samples[0].enhancement.luma_after  # doctest: +SKIP
    (True, 109.8)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from defectkit.data.split import stable_order
from defectkit.data.transforms import resize_image
from defectkit.heads.zero_dce import (
    RECEPTIVE_RADIUS,
    CurveEstimator,
    DceNet,
    apply_curves,
    zero_dce_loss,
)
from defectkit.registry import STAGES
from defectkit.sample import Enhancement, Record, Sample
from defectkit.stages.base import Exportable, ExportSpec, FitContext, Stage, TrainableStage
from defectkit.tiling import Window, slice_windows
from defectkit.training import fit_head

__all__ = ["Clahe", "Gamma", "ZeroDce", "darken", "gamma_lut", "is_dark", "mean_luma"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""Rec.601 luma weights of R, G, B."""

APPLY_MODES = ("dark", "always")


# ------------------------------------------------------------------------------------ helpers
def mean_luma(image: np.ndarray) -> float:
    """Mean Rec.601 luma (``0.299 R + 0.587 G + 0.114 B``) of an RGB image, in 0..255 for uint8.

    Luma is linear in R, G, B, so its mean is the weighted sum of the channel means: no HxW luma
    image is ever built, which keeps this cheap on 12-megapixel photos.

    Example:
        >>> round(mean_luma(np.full((4, 4, 3), (255, 0, 0), np.uint8)), 3)
        76.245
    """
    if image.ndim == 2:
        return float(image.mean())
    means = cv2.mean(np.ascontiguousarray(image[..., :3]))[:3]
    return float(sum(w * m for w, m in zip(LUMA_WEIGHTS, means)))


def is_dark(image: np.ndarray, threshold: float = 70.0) -> bool:
    """Whether the mean luma of ``image`` is below ``threshold`` (0..255).

    Example:
        >>> is_dark(np.full((8, 8, 3), 40, np.uint8)), is_dark(np.full((8, 8, 3), 128, np.uint8))
        (True, False)
    """
    return mean_luma(image) < threshold


def gamma_lut(gamma: float, factor: float = 1.0) -> np.ndarray:
    """The uint8 table of ``255 * factor * (i / 255) ** gamma`` (gamma < 1 brightens, > 1 darkens).

    Example:
        >>> int(gamma_lut(0.5)[64]), int(gamma_lut(2.0)[128])
        (128, 64)
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(np.rint(255.0 * factor * levels**gamma), 0, 255).astype(np.uint8)


def darken(image: np.ndarray, factor: float = 0.35, gamma: float = 1.5) -> np.ndarray:
    """Make a photo look as if taken in poor light: ``255 * factor * (x / 255) ** gamma`` per channel.

    The gamma crushes the shadows more than the highlights, the factor lowers the exposure, as a
    camera does at night. Used to train :class:`ZeroDce` on dark inputs and to build darkened
    copies of test images to evaluate the enhancement stages.

    Args:
        image: HxWx3 (or HxW) uint8.
        factor: Exposure scale in (0, 1].
        gamma: Shadow-crushing exponent (>= 1 darkens further).

    Returns:
        A new uint8 array of the same shape.

    Example:
        >>> night = darken(np.full((8, 8, 3), 128, np.uint8), 0.35, 1.5)  # mimics a night photo
        >>> int(night[0, 0, 0])
        32
    """
    return cv2.LUT(np.ascontiguousarray(image), gamma_lut(gamma, factor))


class _LuminanceRule:
    """The shared "only dark images" rule and bookkeeping of the enhancement stages.

    Subclasses call :meth:`_init_rule` and implement :meth:`enhance_images`; :meth:`predict` picks
    the images the rule selects, enhances them in one call (so learned stages can batch) and
    records ``enhanced``, ``luma_before`` and ``luma_after`` in ``sample.enhancement``.
    """

    name: str

    def _init_rule(self, dark_threshold: float, apply: str) -> None:
        if apply not in APPLY_MODES:
            raise ValueError(f"apply must be one of {APPLY_MODES}, got {apply!r}")
        self.dark_threshold = float(dark_threshold)
        self.apply = apply

    def should_enhance(self, luma: float) -> bool:
        """Whether an image of mean luma ``luma`` is enhanced."""
        return self.apply == "always" or luma < self.dark_threshold

    def enhance_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Enhanced copies of HxWx3 uint8 RGB images (the rule has already selected them)."""
        raise NotImplementedError

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Enhance ``sample.image`` of the samples the rule selects; record what was done in ``sample.enhancement``."""
        todo: list[tuple[Sample, float, np.ndarray]] = []
        for sample in samples:
            if not sample.ok or sample.image is None:
                continue
            luma = mean_luma(sample.image)
            if self.should_enhance(luma):
                todo.append((sample, luma, sample.image))
            else:
                sample.enhancement = Enhancement(False, round(luma, 3), round(luma, 3))
        if todo:
            outputs = self.enhance_images([image for _, _, image in todo])
            for (sample, luma, _), image in zip(todo, outputs):
                sample.image = image
                sample.enhancement = Enhancement(True, round(luma, 3), round(mean_luma(image), 3), self.name)
        return samples

    def _rule_summary(self) -> dict[str, Any]:
        return {"apply": self.apply, "dark_threshold": self.dark_threshold}


# -------------------------------------------------------------------------------- non-learned
@STAGES.register_module()
class Clahe(_LuminanceRule, Stage):
    """Contrast-limited adaptive histogram equalisation of the lightness (L of CIELAB) of dark images.

    Equalising L alone brightens and adds local contrast without shifting hues.

    Args:
        clip_limit: OpenCV's clip limit (higher: more contrast, more noise).
        tile_grid: ``(columns, rows)`` of the equalisation tiles.
        dark_threshold: Enhance only images whose mean luma (0..255) is below this.
        apply: ``"dark"`` (the threshold rule) or ``"always"``.
        name: Stage name.

    Example:
        >>> stage = Clahe(clip_limit=2.0, tile_grid=(8, 8))
        >>> sample = Sample(Record("night.jpg"), image=darken(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))))
        >>> out = stage.predict([sample])[0]
        >>> out.enhancement.enhanced, out.enhancement.luma_after > out.enhancement.luma_before
        (True, True)
    """

    def __init__(
        self,
        clip_limit: float = 2.0,
        tile_grid: Sequence[int] = (8, 8),
        dark_threshold: float = 70.0,
        apply: str = "dark",
        name: str | None = None,
    ) -> None:
        Stage.__init__(self, name or "clahe")
        self._init_rule(dark_threshold, apply)
        self.clip_limit = float(clip_limit)
        self.tile_grid = (int(tile_grid[0]), int(tile_grid[1]))

    def enhance_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        # A CLAHE object per call: OpenCV algorithms are not safe to share between threads.
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=self.tile_grid)
        out = []
        for image in images:
            lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)
            lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
            out.append(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))
        return out

    def describe(self) -> dict[str, Any]:
        return {**Stage.describe(self), **self._rule_summary(), "clip_limit": self.clip_limit, "tile_grid": list(self.tile_grid)}


@STAGES.register_module()
class Gamma(_LuminanceRule, Stage):
    """Gamma correction ``255 * (x / 255) ** gamma`` of dark images, through a lookup table.

    Args:
        gamma: A fixed exponent (< 1 brightens), or ``"auto"``: per image, the exponent whose result
            has mean luma ``target_luma`` (found exactly from the channel histograms by bisection).
        target_luma: The mean luma (0..255) ``"auto"`` aims for.
        gamma_range: Bounds of the ``"auto"`` exponent (keeps near-black images from blowing up noise).
        dark_threshold: Enhance only images whose mean luma (0..255) is below this.
        apply: ``"dark"`` (the threshold rule) or ``"always"``.
        name: Stage name.

    Example:
        >>> sample = Sample(Record("night.jpg"), image=np.full((16, 16, 3), 30, np.uint8))
        >>> out = Gamma(gamma="auto", target_luma=110).predict([sample])[0]
        >>> abs(out.enhancement.luma_after - 110) < 2
        True
    """

    def __init__(
        self,
        gamma: float | str = "auto",
        target_luma: float = 110.0,
        gamma_range: Sequence[float] = (0.25, 4.0),
        dark_threshold: float = 70.0,
        apply: str = "dark",
        name: str | None = None,
    ) -> None:
        Stage.__init__(self, name or "gamma")
        self._init_rule(dark_threshold, apply)
        if gamma != "auto" and not (isinstance(gamma, (int, float)) and gamma > 0):
            raise ValueError(f"gamma must be a positive number or 'auto', got {gamma!r}")
        self.gamma = gamma if gamma == "auto" else float(gamma)
        self.target_luma = float(target_luma)
        self.gamma_range = (float(gamma_range[0]), float(gamma_range[1]))

    def gamma_for(self, image: np.ndarray) -> float:
        """The exponent applied to ``image``: the fixed one, or the ``"auto"`` choice."""
        if self.gamma != "auto":
            return float(self.gamma)
        image = np.ascontiguousarray(image)
        hists = [cv2.calcHist([image], [c], None, [256], [0, 256])[:, 0].astype(np.float64) for c in range(3)]
        total = max(float(hists[0].sum()), 1.0)

        def luma_after(g: float) -> float:
            # The LUT acts on each channel, and luma is linear in the channels: the mean luma of
            # the result is exact from the three histograms, without touching the pixels again.
            lut = gamma_lut(g).astype(np.float64)
            return sum(w * float(h @ lut) for w, h in zip(LUMA_WEIGHTS, hists)) / total

        lo, hi = math.log(self.gamma_range[0]), math.log(self.gamma_range[1])
        for _ in range(40):  # mean luma falls as gamma grows: bisect on log(gamma)
            mid = 0.5 * (lo + hi)
            if luma_after(math.exp(mid)) > self.target_luma:
                lo = mid
            else:
                hi = mid
        return math.exp(0.5 * (lo + hi))

    def enhance_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [cv2.LUT(np.ascontiguousarray(image), gamma_lut(self.gamma_for(image))) for image in images]

    def describe(self) -> dict[str, Any]:
        return {**Stage.describe(self), **self._rule_summary(), "gamma": self.gamma, "target_luma": self.target_luma}


# -------------------------------------------------------------------------------------- learned
@STAGES.register_module()
class ZeroDce(_LuminanceRule, TrainableStage, Exportable):
    """Zero-DCE low-light enhancement of dark images, trained on the data set's own photos.

    Fitting needs no reference (well-lit) images: random crops of up to ``max_images`` training
    images, resized to ``train_size``, are seen ``epochs`` times; each time a share
    ``darken_probability`` of them is darkened with a random exposure factor and gamma
    (:func:`darken`), so the net sees the mix of exposures of the original training set, and the
    four no-reference losses (:func:`defectkit.heads.zero_dce.zero_dce_loss`) teach it to bring
    every patch towards a well-exposed level without losing local contrast or colour balance.
    The defaults (3 epochs of 200 crops of 128 px) take about a minute on two CPU cores.

    Prediction enhances the images the luminance rule selects, at full resolution: images of the
    same size are batched, and large ones are processed in tiles of ``tile_size`` pixels with
    enough context that the result equals that of one pass over the whole image. With
    ``scale_factor`` > 1 (Zero-DCE++) the curves are estimated on the downscaled image and
    upsampled in bands, about ``scale_factor ** 2`` times cheaper.

    Args:
        scale_factor: Estimate curves at ``1 / scale_factor`` resolution (1: Zero-DCE; 4-12:
            Zero-DCE++ for large photos). An inference choice: it is not taken from saved state.
        depthwise: Depthwise-separable convolutions (Zero-DCE++).
        n_filters: Hidden feature maps of DCE-Net.
        n_iterations: Curve iterations.
        train_size: ``(height, width)`` of the training crops.
        epochs: Passes over the crops.
        batch_size: Crops per optimisation step; also images per batch at prediction.
        lr: Adam learning rate (constant, as in the released code).
        weight_decay: Adam (L2) weight decay (as in the released code).
        max_images: Use at most this many training images (a reproducible subset); None for all.
        crops_per_image: Random crops taken from each training image.
        darken_probability: Share of crops darkened anew at each epoch.
        loss_weights: Overrides of :data:`defectkit.heads.zero_dce.ZERO_DCE_LOSS_WEIGHTS`.
        dark_threshold: Enhance only images whose mean luma (0..255) is below this.
        apply: ``"dark"`` (the threshold rule) or ``"always"``.
        tile_size: Side (pixels) of the tiles and bands large images are processed in.
        seed: Seeds the subset, the crops, the darkening and the initial weights.
        name: Stage name (file stem of its saved state).

    Example:
        >>> stage = build(STAGES, dict(type="ZeroDce", scale_factor=4, epochs=3, dark_threshold=70))  # doctest: +SKIP
        >>> stage.fit(train_records, val_records, context)  # doctest: +SKIP
        >>> stage.predict(samples)[0].enhancement.enhanced  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        scale_factor: float = 1,
        depthwise: bool = False,
        n_filters: int = 32,
        n_iterations: int = 8,
        train_size: Sequence[int] = (128, 128),
        epochs: int = 3,
        batch_size: int = 8,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        max_images: int | None = 200,
        crops_per_image: int = 1,
        darken_probability: float = 0.5,
        loss_weights: Mapping[str, float] | None = None,
        dark_threshold: float = 70.0,
        apply: str = "dark",
        tile_size: int = 512,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        TrainableStage.__init__(self, name or "zero_dce")
        self._init_rule(dark_threshold, apply)
        self.scale_factor = float(scale_factor)
        self.train_size = (int(train_size[0]), int(train_size[1]))
        self.epochs = int(epochs)
        self.batch_size = max(1, int(batch_size))
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.max_images = None if max_images is None else int(max_images)
        self.crops_per_image = max(1, int(crops_per_image))
        self.darken_probability = float(darken_probability)
        self.loss_weights = dict(loss_weights or {})
        self.tile_size = max(2 * RECEPTIVE_RADIUS + 1, int(tile_size))
        self.seed = int(seed)
        self.model = self._new_model(dict(n_filters=n_filters, n_iterations=n_iterations, depthwise=depthwise))
        self.summary: dict[str, Any] = {}
        self.device = torch.device("cpu")

    def use_device(self, device: torch.device) -> None:
        """Train the curve estimator on ``device`` (enhancement itself runs on the CPU; see :meth:`fit`)."""
        self.device = torch.device(device)

    def _new_model(self, cfg: Mapping[str, Any]) -> DceNet:
        """A freshly (and reproducibly) initialised DCE-Net in eval mode, channels-last.

        Channels-last makes oneDNN's CPU convolutions 2-4x faster than NCHW.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = DceNet(
                n_filters=int(cfg.get("n_filters", 32)),
                n_iterations=int(cfg.get("n_iterations", 8)),
                scale_factor=self.scale_factor,
                depthwise=bool(cfg.get("depthwise", False)),
            )
        return model.to(memory_format=torch.channels_last).eval()

    # ------------------------------------------------------------------ fit
    def _random_crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random crop (half to all of the short side, the aspect of ``train_size``) resized to ``train_size``."""
        th, tw = self.train_size
        h, w = image.shape[:2]
        side = rng.uniform(0.5, 1.0) * min(h / th, w / tw)  # crop = side * train_size
        ch, cw = max(1, min(h, round(side * th))), max(1, min(w, round(side * tw)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return resize_image(np.ascontiguousarray(image[y : y + ch, x : x + cw, :3]), (th, tw))

    def _collect_crops(self, records: Sequence[Record], context: FitContext, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Decode ``records`` in chunks and keep only their crops (bounded memory); returns (crops, images used)."""
        crops: list[np.ndarray] = []
        used = 0
        for chunk in context.decoded_chunks(records, f"{self.name}: crops", chunk_size=32):
            for sample in chunk:
                if sample.image is not None and sample.image.ndim == 3:
                    crops.extend(self._random_crop(sample.image, rng) for _ in range(self.crops_per_image))
                    used += 1
        if not crops:
            return np.zeros((0, *self.train_size, 3), np.uint8), 0
        return np.stack(crops), used

    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Train DCE-Net on crops of the training images (``val`` is not needed: the losses need no labels).

        Training goes through the shared Lightning loop (:func:`defectkit.training.fit_head`) with the
        released recipe: Adam with L2 weight decay at a constant learning rate, gradient norm clipped
        at 0.1, on ``self.device``.

        Returns:
            A JSON-able summary: images, crops, steps, the last epoch's mean losses, the mean luma of
            darkened training crops before/after enhancement, and timings.
        """
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        records = stable_order(train, self.seed)
        if self.max_images is not None:
            records = records[: self.max_images]
        crops, used = self._collect_crops(records, context, rng)
        if len(crops) == 0:
            raise ValueError("ZeroDce.fit needs at least one decodable training image")
        t_crops = time.perf_counter() - start

        self.model = self._new_model(self.model.config())
        objective = _ZeroDceObjective(self.loss_weights)
        training = fit_head(
            self.model, _DarkenedCrops(crops, self.darken_probability, rng), None, objective,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            # The released code: Adam (L2 decay) at a constant rate, and gradients clipped at 0.1
            # because the smoothness term's gradients spike early on.
            optimizer="adam", schedule="constant", gradient_clip_val=0.1,
            progress=context.progress, description=f"{self.name}: train Zero-DCE", seed=self.seed,
            log=context.log, device=self.device,
        )
        n_batches = math.ceil(len(crops) / self.batch_size)
        last = objective.mean_of_last(n_batches)
        context.log(f"{self.name}: last epoch " + " ".join(f"{k} {v:.4f}" for k, v in last.items()))
        # Enhancement itself stays on the CPU: the curves come from a 4x downscaled photo (a few
        # thousand weights), so moving full-size photos to a GPU and back would cost more than it saves.
        # fit_head leaves the net on the CPU; channels-last keeps oneDNN's fast convolutions.
        self.model = self.model.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.fitted = True
        t_train = time.perf_counter() - start - t_crops

        # What it learned, on the same darkening as the "darkened test images" evaluation.
        probe = [darken(c, 0.35, 1.5) for c in crops[: min(len(crops), 16)]]
        after = self.enhance_images(probe)
        self.summary = {
            "images": used,
            "skipped": len(records) - used,
            "crops": int(len(crops)),
            "train_size": list(self.train_size),
            "epochs": self.epochs,
            "steps": int(training["steps"]),
            "losses": last,
            "darkened_crop_luma_before": round(float(np.mean([mean_luma(p) for p in probe])), 2),
            "darkened_crop_luma_after": round(float(np.mean([mean_luma(a) for a in after])), 2),
            "crop_seconds": round(t_crops, 2),
            "train_seconds": round(t_train, 2),
            "fit_seconds": round(time.perf_counter() - start, 2),
        }
        return self.summary

    # ------------------------------------------------------------------ predict
    def _tiles(self, height: int, width: int) -> list[Window]:
        """Non-overlapping windows of at most ``tile_size`` x ``tile_size`` covering the image (the shared slicing)."""
        return slice_windows(height, width, self.tile_size, self.tile_size, 0.0, 0.0, keep_size=False)

    def _curves_in_box(self, x: torch.Tensor, box: Window) -> torch.Tensor:
        """Curves of ``x`` inside the ``(x1, y1, x2, y2)`` window ``box``, computed on it plus the receptive-field margin.

        With the margin, the convolutions see the same pixels as in one pass over the whole image
        (zero padding only happens at the image's real border), so tiles join seamlessly.
        """
        x0, y0, x1, y1 = box
        h, w = x.shape[-2:]
        r = RECEPTIVE_RADIUS + 1
        ya, yb, xa, xb = max(0, y0 - r), min(h, y1 + r), max(0, x0 - r), min(w, x1 + r)
        tile = x[..., ya:yb, xa:xb].contiguous(memory_format=torch.channels_last)
        # predict.runtime: the exported curve estimator (defectkit.export) when one is in use.
        curves = (self.exported or self.model.estimate_curves)(tile)
        return curves[..., y0 - ya : y1 - ya, x0 - xa : x1 - xa]

    def _enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Enhance an ``[N, 3, H, W]`` batch in [0, 1], tile by tile (equal to ``self.model(x)[0]``)."""
        height, width = x.shape[-2:]
        low = self.model.downscale(x)
        if low.shape[-2:] == x.shape[-2:]:
            out = torch.empty_like(x)
            # Zero-DCE: curves and enhancement tile by tile; the 24 full-size curve maps never exist at once.
            for box in self._tiles(height, width):
                x0, y0, x1, y1 = box
                out[..., y0:y1, x0:x1] = apply_curves(x[..., y0:y1, x0:x1], self._curves_in_box(x, box))
            return out
        # Zero-DCE++: curves at low resolution (small), then upsampled and applied band by band.
        lh, lw = low.shape[-2:]
        curves = torch.empty((x.shape[0], 3 * self.model.n_iterations, lh, lw), dtype=x.dtype)
        for box in self._tiles(lh, lw):
            x0, y0, x1, y1 = box
            curves[..., y0:y1, x0:x1] = self._curves_in_box(low, box)
        # The per-pixel work in the plain (NCHW) layout: the upsampled curves come out in it, and
        # mixing layouts made the elementwise curve steps 2.5x slower.
        plain = x.contiguous()
        out = torch.empty_like(plain)
        band = max(1, _BAND_BYTES // (curves.element_size() * curves.shape[0] * curves.shape[1] * max(width, 1)))
        # Full-width bands of ``band`` rows: the shared slicing with the width as the slice width.
        for _, y0, _, y1 in slice_windows(height, width, band, width, 0.0, 0.0, keep_size=False):
            full = _upsample_band(curves, _bilinear_indices(height, lh, y0, y1), width)
            _apply_curves_in_place(out[..., y0:y1, :].copy_(plain[..., y0:y1, :]), full)
        return out

    def enhance_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Enhanced uint8 copies of HxWx3 uint8 RGB images (same-size images are batched)."""
        self.require_ready()
        results: list[np.ndarray | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for shape, indices in by_shape.items():
            # Batch as many images as fit in one tile's worth of pixels (at least one).
            per_batch = max(1, min(self.batch_size, self.tile_size**2 // max(shape[0] * shape[1], 1)))
            for b in range(0, len(indices), per_batch):
                chunk = indices[b : b + per_batch]
                x = torch.from_numpy(np.stack([images[i][..., :3] for i in chunk])).permute(0, 3, 1, 2).float().div_(255.0)
                with torch.no_grad():
                    y = self._enhance_tensor(x.contiguous(memory_format=torch.channels_last))
                arr = y.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
                for i, image in zip(chunk, arr):
                    results[i] = image
        return [r for r in results if r is not None]

    def export_module(self, images: Sequence[np.ndarray]) -> ExportSpec:
        """The curve estimator with inputs cut from ``images`` as prediction cuts them (downscaled, at most a tile
        plus its margin; cropped to a common size so they batch); height and width vary between calls."""
        self.require_ready("export")
        margin = self.tile_size + 2 * (RECEPTIVE_RADIUS + 1)
        lows = []
        for image in images:
            x = torch.from_numpy(np.array(image[..., :3], dtype=np.float32)).permute(2, 0, 1)[None].div_(255.0)
            lows.append(self.model.downscale(x)[..., :margin, :margin])
        height, width = min(low.shape[-2] for low in lows), min(low.shape[-1] for low in lows)
        inputs = torch.cat([low[..., :height, :width] for low in lows])
        return ExportSpec(
            module=CurveEstimator(self.model).eval(), inputs=inputs, dynamic_axes={0: "batch", 2: "height", 3: "width"},
            tolerance=1e-4,
        )

    # ------------------------------------------------------------------ state
    model_fields_not_checked = ("scale_factor",)  # loading takes it from the config (see load_state_tensors)

    def expected_model(self) -> dict[str, Any] | None:
        """DCE-Net's architecture as the config builds it; a saved state must have been made with it."""
        return dict(self.model.config())

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """DCE-Net's weights, plus its architecture and the fit summary."""
        tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in self.model.state_dict().items()}
        extra = {
            "head": "DceNet",
            "model": self.model.config(),
            "input_size": list(self.train_size),
            "summary": self.summary,
        }
        return tensors, extra

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Rebuild DCE-Net with the saved architecture (and this config's ``scale_factor``) and load its weights."""
        self.model = self._new_model(extra.get("model", self.model.config()))
        weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(weights, strict=True)
        self.model.eval()
        self.summary = dict(extra.get("summary", {}))
        self.fitted = True

    def describe(self) -> dict[str, Any]:
        return {**Stage.describe(self), **self._rule_summary(), "model": self.model.config(), **self.summary}


# ------------------------------------------------------------------------- Zero-DCE training data
class _DarkenedCrops(torch.utils.data.Dataset):
    """Training crops as ``(x, x)`` pairs of 3xHxW float tensors in [0, 1], augmented anew at every access.

    Each access flips a crop at random and darkens a share ``darken_probability`` of them with a
    random exposure factor and gamma (:func:`darken`), so every epoch sees a new mix of exposures.
    The no-reference losses compare the net's output with its own input, so the target is the input.
    Draws come from ``rng`` in access order: reproducible with the loop's seeded, single-process loading.
    """

    def __init__(self, crops: np.ndarray, darken_probability: float, rng: np.random.Generator) -> None:
        self.crops, self.darken_probability, self.rng = crops, float(darken_probability), rng

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.crops[index]
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1]
        if self.rng.random() < self.darken_probability:
            crop = darken(crop, factor=self.rng.uniform(0.2, 0.8), gamma=self.rng.uniform(1.0, 2.0))
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0)
        return x, x


class _ZeroDceObjective:
    """The training loss for :func:`~defectkit.training.fit_head`: ``(DCE-Net outputs, input) -> zero_dce_loss``.

    It also keeps every step's total and unweighted terms, so the fit summary can report the last
    epoch's mean of each (the loop itself records only the total).
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = dict(weights)
        self.steps: list[dict[str, float]] = []

    def __call__(self, outputs: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        enhanced, curves = outputs
        total, parts = zero_dce_loss(x, enhanced, curves, self.weights)
        self.steps.append({"total": float(total.detach()), **parts})
        return total

    def mean_of_last(self, n: int) -> dict[str, float]:
        """Per-step means of the last ``n`` steps (one epoch), rounded for the summary."""
        recent = self.steps[-n:]
        return {k: round(sum(step[k] for step in recent) / len(recent), 5) for k in recent[0]} if recent else {}


# ---------------------------------------------------------------------- banded bilinear upsampling
_BAND_BYTES = 1 << 24
"""Bytes of upsampled curve maps per band of Zero-DCE++ prediction. Measured on 2 idle cores, 800x600
photos: 16 MiB bands 35-39 ms per photo, 8 MiB 41-52, 32 MiB 38-46, 2 MiB 65-70 (each elementwise
step on a small band is too short to share between threads); one thread: 52-54 ms at any size."""


def _apply_curves_in_place(x: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
    """:func:`~defectkit.heads.zero_dce.apply_curves` overwriting ``x`` (and one scratch buffer) instead of
    allocating three temporaries per curve step; equal up to float rounding."""
    step = torch.empty_like(x)
    for a in torch.split(curves, 3, dim=1):
        torch.mul(x, 1 - x, out=step)
        x.addcmul_(step, a)
    return x


def _bilinear_indices(out_size: int, in_size: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of output positions ``start..stop`` of a bilinear resize.

    Same convention as ``F.interpolate(mode="bilinear", align_corners=False)``: pixel centres are
    aligned, and source positions before the first pixel are clamped to it.
    """
    scale = in_size / out_size
    src = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    return i0, i1, (src - i0).float()


def _upsample_band(low: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor], width: int) -> torch.Tensor:
    """Rows ``rows`` of ``low`` [N, C, h, w] bilinearly resized to ``width`` columns."""
    r0, r1, wy = rows
    wy = wy.view(-1, 1)
    mixed = low[..., r0, :] * (1 - wy) + low[..., r1, :] * wy
    # The wide horizontal pass through interpolate's kernel (same convention, rows kept): 6x faster
    # than gathering columns by index, which cost the car stream most of its enhancement time.
    return F.interpolate(mixed, size=(mixed.shape[-2], width), mode="bilinear", align_corners=False)
