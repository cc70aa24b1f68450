"""Image-level gate: an anomaly detector fitted on normal images, thresholded with a few labelled defects.

The gate scores every image with a PatchCore (or PaDiM) head on frozen EfficientNet-Lite0 features,
optionally combined with a light supervised classifier on the same features, decides
``normal``/``defect`` at the threshold that maximised macro F1 on held-out calibration images, and
leaves a per-pixel anomaly map for the later stages (and for pixel metrics).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from defectkit.data.copy_paste import CopyPaste
from defectkit.data.masks import ground_truth_masks, has_annotations
from defectkit.data.split import stable_order
from defectkit.data.transforms import resize_image
from defectkit.errors import ConfigError
from defectkit.evaluation.thresholds import THRESHOLD_METRICS, best_threshold
from defectkit.heads.anomaly import EmbeddingExtractor, pooled_features
from defectkit.heads.backbones import frozen_feature_extractor, to_input_tensor
from defectkit.registry import HEADS, STAGES, build
from defectkit.sample import Record, Sample
from defectkit.stages.base import Exportable, ExportSpec, FitContext, TilesItself, TrainableStage
from defectkit.tiling import Window, image_windows, overlap_pair, slice_size_pair, stitch_maps, window_batches

_EPS = 1e-6
# Options of ``pixel`` that the gate uses itself; the rest configure the PixelClassifier head.
_PIXEL_STAGE_KEYS = {
    "folds", "min_defects", "negatives_per_image", "positives_per_image", "positive_fraction", "top_k", "copy_paste",
    "peak",
}
# Logit bins of the out-of-fold pixel histograms the mask threshold is chosen on.
_PIXEL_BINS = np.linspace(-12.0, 12.0, 241)


def _tile_options(tiles: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"slice_size": [h, w], "overlap": [a, b]}`` from a ``tiles`` option (None stays None)."""
    if tiles is None:
        return None
    if not isinstance(tiles, dict) or "slice_size" not in tiles or set(tiles) - {"slice_size", "overlap"}:
        raise ConfigError(f"AnomalyGate tiles must be dict(slice_size=(h, w), overlap=0.2) or None, got {tiles!r}")
    return {"slice_size": list(slice_size_pair(tiles["slice_size"])), "overlap": list(overlap_pair(tiles.get("overlap", 0.2)))}


def _pixel_options(pixel: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``pixel`` option with the gate's defaults filled in (None stays None)."""
    if pixel is None:
        return None
    if not isinstance(pixel, dict):
        raise ConfigError(f"AnomalyGate pixel must be a dict of PixelClassifier and fold options or None, got {pixel!r}")
    out = dict(folds=5, min_defects=5, negatives_per_image=200, positives_per_image=400, positive_fraction=0.3, top_k=1,
               copy_paste=None, peak=False)
    out.update(pixel)
    paste = out["copy_paste"]
    if paste is not None:
        if not isinstance(paste, dict) or int(paste.get("images", 0)) < 1:
            raise ConfigError(f"AnomalyGate pixel.copy_paste must be None or dict(images=N >= 1, ...CopyPaste options), got {paste!r}")
        options = {k: v for k, v in paste.items() if k not in ("images", "max_defects")}
        CopyPaste(**options)  # a bad option fails now, with CopyPaste's own message
    if int(out["folds"]) < 2:
        raise ConfigError(f"AnomalyGate pixel.folds must be >= 2, got {out['folds']}")
    return out


def _build_pixel_head(pixel_cfg: dict[str, Any]) -> torch.nn.Module:
    """The PixelClassifier configured by the head's keys of a ``pixel`` option (eval mode)."""
    head_cfg = {k: v for k, v in pixel_cfg.items() if k not in _PIXEL_STAGE_KEYS}
    return build(HEADS, {"type": "PixelClassifier", **head_cfg}).eval()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _upsample(grid: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A coarse map resized to ``(height, width)`` (bilinear)."""
    return cv2.resize(grid.astype(np.float32), (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)


def _decision_rates(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC, false-alarm rate (normals called defect) and miss rate (defects called normal) at the cut ``logit > 0``."""
    from sklearn.metrics import roc_auc_score

    called = logits > 0
    normal, defect = labels == 0, labels == 1
    return {
        "calibration_auroc": round(float(roc_auc_score(labels, logits)), 4) if normal.any() and defect.any() else 0.0,
        "calibration_false_alarm_rate": round(float(called[normal].mean()), 4) if normal.any() else 0.0,
        "calibration_miss_rate": round(float((~called[defect]).mean()), 4) if defect.any() else 0.0,
    }


@STAGES.register_module()
class AnomalyGate(TrainableStage, TilesItself, Exportable):
    """Decide normal/defect per image with an anomaly model fitted on normal images (plus a few defects).

    Fitting: the normal training images, minus a ``calibration_fraction`` held out, build the
    anomaly model (PatchCore's memory bank, PaDiM's Gaussians). The held-out normals, the normal
    validation images and the labelled defects of train and val (at most ``max_labelled_defects``,
    a deterministic category-stratified subset) are scored, and the decision threshold is the one
    that maximises ``threshold_metric`` on them. With ``supervised`` set and enough defects, a
    class-balanced logistic regression on pooled features of the same embedding is trained too;
    its out-of-fold logits and the log anomaly score are combined by a two-input logistic
    regression fitted on the calibration images, and the threshold is chosen on that combination.

    Prediction: ``gate_score`` is a probability-like score whose decision threshold is exactly
    0.5; ``gate_label`` is ``"defect"`` or ``"normal"`` and normal images are ``finished``.
    ``prob_maps`` holds the anomaly map at the image's resolution mapped to [0, 1] by
    ``sigmoid(map_sharpness * (log(map) - log(t)))``, where ``t`` is the anomaly-score threshold,
    so a pixel above 0.5 alone would make the image defective under the anomaly model. With a
    fitted ``pixel`` head, ``prob_maps`` is its map instead: ``sigmoid(logit - pixel_threshold)``,
    0.5 at the cross-validated mask cut.

    Args:
        model: Head config, e.g. ``dict(type="PatchCore", layers=(2, 3), coreset_size=10000)``.
        image_size: ``(height, width)`` every image is resized to (aspect ratio not kept).
        batch_size: Images per forward pass.
        chunk_size: Records decoded at once during ``fit`` (bounds memory).
        max_labelled_defects: Use at most this many labelled defect images (None = all).
        supervised: ``dict(C=0.1, folds=5, min_defects=10)`` to enable the supervised component, or None.
            By default it uses the gate's own embedding (global average + max pooled); with
            ``layers=(4,), image_size=(224, 224)`` it pools those EfficientNet-Lite0 stages of a
            separate pass at that size instead (deeper, more semantic, slower). ``flip_augment=True``
            also trains it on the horizontal and vertical mirror images of every training image
            (two more feature passes per image while fitting; prediction is unchanged).
        threshold_metric: ``"f1_macro"``, ``"f1_defect"`` or ``"balanced_accuracy"``.
        calibration_fraction: Share of the normal training images kept out of the anomaly model to
            calibrate (the normal validation images are always used to calibrate). Not used with
            ``calibration_folds``.
        calibration_folds: Cross-fit the normal images instead (e.g. 4): the stored model is built
            from every normal training image, and every normal image of train and val is a
            calibration image, scored by a model built without its fold (one model per fold). The
            decision and the pixel head then learn from all normal images rather than a held-out
            fifth. None: hold out ``calibration_fraction``.
        cross_fit_max_defects: Cross-fit only while at most this many defect images are labelled
            (None: always). Measured on magnetic tile (docs/results.md): with 30 defects the
            extra normals raise image AUROC and macro F1; with 212 the held-out fifth does better.
        map_sharpness: Slope of the map and score mapping in log-score units.
        no_defect_quantile: Threshold quantile of calibration-normal scores when no defect is labelled.
        match_class_ratio: Weight the calibration images so that defects and normals count in the
            proportion of the labelled train+val records (the calibration set itself is defect-heavy,
            and macro F1's best threshold depends on the class proportion).
        tiles: ``dict(slice_size=(h, w), overlap=0.2)`` to score overlapping windows of each image,
            each resized to ``image_size``, instead of the whole image (small defects on large
            images): the memory bank holds the windows of normal images, an image's score is its
            highest window score (so the threshold is calibrated on exactly what prediction
            computes), and the window maps are blended without seams. A
            :class:`~defectkit.stages.tiling.Tiling` stage around the gate sets it from its own
            slicing. None: whole images.
        pixel: Options of a supervised pixel component (``dict(long_side=256, hidden=0, folds=5)``;
            see :class:`~defectkit.heads.pixel.PixelClassifier`) or None. Trained on the calibration
            images (their labelled defect masks, normal images as negatives) with the image's
            log anomaly map as an extra input, it replaces ``prob_maps`` by its own finer map and
            the mean of its ``top_k`` highest cell logits joins the stacked image decision. Out-of-fold predictions
            (``folds`` folds over the calibration images) choose the mask threshold (best data-set
            IoU) and train the stacker, so no labelled defect is used twice. ``copy_paste=dict(images=N,
            ...)`` adds N images per fit (and per fold) whose defects, cut along their masks from
            the training fold's defect images, are pasted onto its normal images
            (:class:`~defectkit.data.copy_paste.CopyPaste` options after ``images``); with
            ``max_defects=M`` only while the fold holds at most M labelled defects.
        seed: Seeds every subset choice.
        name: Stage name (file stem of its saved state).

    Example:
        >>> gate = build(STAGES, dict(type="AnomalyGate", model=dict(type="PatchCore", coreset_size=10000),
        ...                           image_size=(256, 256), max_labelled_defects=30))  # doctest: +SKIP
        >>> summary = gate.fit(train_records, val_records, context)  # doctest: +SKIP
        >>> gate.predict(samples)[0].gate_label                       # doctest: +SKIP
        'normal'
    """

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        image_size: Sequence[int] = (96, 96),
        batch_size: int = 16,
        chunk_size: int = 64,
        max_labelled_defects: int | None = None,
        supervised: dict[str, Any] | None = None,
        threshold_metric: str = "f1_macro",
        calibration_fraction: float = 0.2,
        calibration_folds: int | None = None,
        cross_fit_max_defects: int | None = None,
        map_sharpness: float = 4.0,
        no_defect_quantile: float = 0.99,
        match_class_ratio: bool = True,
        tiles: dict[str, Any] | None = None,
        pixel: dict[str, Any] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name or "anomaly_gate")
        if threshold_metric not in THRESHOLD_METRICS:
            raise ValueError(f"threshold_metric must be one of {THRESHOLD_METRICS}, got {threshold_metric!r}")
        if not 0.0 <= calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must be in [0, 1), got {calibration_fraction}")
        self.model_cfg = dict(model or dict(type="PatchCore", layers=(2, 3), coreset_size=5000, score="mean"))
        self.model_cfg.setdefault("type", "PatchCore")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = int(batch_size)
        self.chunk_size = int(chunk_size)
        self.max_labelled_defects = None if max_labelled_defects is None else int(max_labelled_defects)
        self.supervised_cfg = None if supervised is None else dict(supervised)
        self.threshold_metric = threshold_metric
        self.calibration_fraction = float(calibration_fraction)
        if calibration_folds is not None and int(calibration_folds) < 2:
            raise ValueError(f"calibration_folds must be at least 2 (or None), got {calibration_folds}")
        self.calibration_folds = None if calibration_folds is None else int(calibration_folds)
        self.cross_fit_max_defects = None if cross_fit_max_defects is None else int(cross_fit_max_defects)
        self.map_sharpness = float(map_sharpness)
        self.no_defect_quantile = float(no_defect_quantile)
        self.match_class_ratio = bool(match_class_ratio)
        self.tiles = _tile_options(tiles)
        self.pixel_cfg = _pixel_options(pixel)
        if self.pixel_cfg is not None and self.tiles is not None:
            raise ConfigError("AnomalyGate: pixel and tiles cannot be combined (the pixel head sees whole images)")
        self.pixel_head: torch.nn.Module | None = None
        self.pixel_threshold = 0.0  # in pixel-logit units: the mask is where the logit is above it
        self._defect_weight = 1.0
        self.seed = int(seed)
        self.model = build(HEADS, self.model_cfg)
        self.model.eval()
        self._sup_extractor: torch.nn.Module | None = None
        self._fit_flips = False  # True only while fit collects mirrored pooled features (supervised.flip_augment)
        self.anomaly_threshold = 0.0  # in log anomaly-score units
        self.decision: dict[str, np.ndarray] | None = None  # supervised + stacker parameters
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    def _supervised_features(self, images: Sequence[np.ndarray], x: torch.Tensor, emb: torch.Tensor) -> np.ndarray:
        """Pooled features for the supervised part: of the gate's embedding ``emb`` of ``x`` (the images as
        the gate's input), or of its own backbone stages.

        ``[N, D]``; while a fit with ``supervised.flip_augment`` collects them, ``[N, 3, D]``: each
        image, then its horizontal and its vertical mirror image (extra training rows, never scored).
        """
        cfg = self.supervised_cfg or {}
        if not cfg.get("layers"):
            embeddings = [emb]
            if self._fit_flips:  # pooling is blind to a mirrored map, so the mirror images are embedded anew
                with torch.no_grad():
                    embeddings += [self.model.extract(x.flip(-1)), self.model.extract(x.flip(-2))]
            views = [pooled_features(e) for e in embeddings]
        else:
            if self._sup_extractor is None:
                self._sup_extractor = frozen_feature_extractor(out_indices=tuple(cfg["layers"]))
            sup_x = self._to_tensor(images, tuple(cfg.get("image_size", self.image_size))).contiguous(memory_format=torch.channels_last)
            views = []
            with torch.no_grad():
                for view in (sup_x, sup_x.flip(-1), sup_x.flip(-2))[: 3 if self._fit_flips else 1]:
                    views.append(torch.cat([pooled_features(f) for f in self._sup_extractor(view)], 1))
        pooled = torch.stack(views, 1) if self._fit_flips else views[0]
        return pooled.double().numpy()

    def _to_tensor(self, images: Sequence[np.ndarray], size: Sequence[int] | None = None) -> torch.Tensor:
        """Resize HxWx3 uint8 images to ``size`` (default ``image_size``) and stack them as NCHW in [-1, 1]."""
        h, w = size or self.image_size
        return to_input_tensor([resize_image(image, (h, w)) for image in images])

    def export_module(self, images: Sequence[np.ndarray]) -> ExportSpec:
        """The backbone embedding (:class:`~defectkit.heads.anomaly.EmbeddingExtractor`) with inputs for the first
        view of each of ``images``; compared relative to the embedding's largest value."""
        self.require_ready("export")
        views = [np.ascontiguousarray(image[y1:y2, x1:x2]) for image in images for x1, y1, x2, y2 in self._windows(image)[:1]]
        return ExportSpec(module=EmbeddingExtractor(self.model).eval(), inputs=self._to_tensor(views), tolerance=1e-4, relative=True)

    def _select_defects(self, defects: list[Record]) -> list[Record]:
        """A deterministic, category-stratified subset of at most ``max_labelled_defects`` defects."""
        ordered = stable_order(defects, self.seed)
        limit = self.max_labelled_defects
        if limit is None or len(ordered) <= limit:
            return ordered
        by_cat: dict[str, list[Record]] = {}
        for record in ordered:
            by_cat.setdefault(str(record.category), []).append(record)
        cats = sorted(by_cat)
        exact = np.array([limit * len(by_cat[c]) / len(ordered) for c in cats])
        quota = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - quota), kind="mergesort")[: limit - int(quota.sum())]:
            quota[i] += 1
        chosen = [r for c, q in zip(cats, quota) for r in by_cat[c][:q]]
        return stable_order(chosen, self.seed)

    def configure_tiling(self, slice_size: Sequence[int] | None, overlap: Sequence[float] = (0.2, 0.2)) -> None:
        """Score windows of ``slice_size`` (``(height, width)``, overlap ratios) from now on; None: whole images.

        Called by a Tiling stage around the gate before ``fit``: the threshold is then calibrated on
        window scores, so it must not change after fitting (a loaded gate keeps its saved tiling).
        """
        self.tiles = None if slice_size is None else _tile_options(dict(slice_size=slice_size, overlap=overlap))

    def _windows(self, image: np.ndarray) -> list[Window]:
        if self.tiles is None:
            return image_windows(*image.shape[:2], None)
        return image_windows(*image.shape[:2], self.tiles["slice_size"], self.tiles["overlap"])

    def _embed_images(
        self, images: Sequence[np.ndarray], collect: bool, want_pooled: bool, want_maps: bool
    ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """Run the head over every view (the image, or its windows) of HxWx3 uint8 images.

        With ``collect`` the views' embeddings go into the model (nothing is scored). Otherwise
        each image gets the highest score of its views, the element-wise maximum of their pooled
        features (if ``want_pooled``) and, if ``want_maps``, its log anomaly map at the image's
        resolution, window maps blended.

        Returns:
            Scores (empty when collecting), pooled features or None, and log maps (or ``[]``).
        """
        windows = [self._windows(image) for image in images]
        scores = np.full(len(images), -np.inf)
        pooled: list[np.ndarray | None] = [None] * len(images)
        view_maps: list[list[np.ndarray]] = [[] for _ in images]
        for crops in window_batches(images, windows, self.batch_size):
            batch = [(i, window) for i, window, _ in crops]
            views = [crop for _, _, crop in crops]
            x = self._to_tensor(views)
            with torch.no_grad():
                # predict.runtime: the exported feature extractor (defectkit.export) when one is in use.
                emb = self.exported(x) if self.exported is not None and not collect else self.model.extract(x)
                if collect:
                    self.model.collect(emb)
                else:
                    view_scores, amaps = self.model.score_embedding(emb, x.shape[-2:])
            features = self._supervised_features(views, x, emb) if want_pooled else None
            for k, (i, (x1, y1, x2, y2)) in enumerate(batch):
                if features is not None:
                    pooled[i] = features[k] if pooled[i] is None else np.maximum(pooled[i], features[k])
                if collect:
                    continue
                scores[i] = max(scores[i], float(view_scores[k]))
                if want_maps:
                    log_map = torch.log(amaps[k].clamp_min(0) + _EPS).numpy()
                    view_maps[i].append(cv2.resize(log_map, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)[None])
        maps = []
        for image, windows_of_image, image_maps in zip(images, windows, view_maps):
            if image_maps:
                height, width = image.shape[:2]
                maps.append(stitch_maps(image_maps, windows_of_image, height, width)[0])
        pooled_arr = np.stack(pooled) if want_pooled and images else None
        return (np.zeros(0) if collect else scores), pooled_arr, maps

    def _embed_records(
        self,
        records: Sequence[Record],
        context: FitContext,
        description: str,
        collect: bool,
        want_pooled: bool,
        want_pixel: bool = False,
    ) -> tuple[list[Record], np.ndarray, np.ndarray | None, list[dict[str, Any]]]:
        """Decode ``records`` in chunks; collect them into the model or score them.

        Returns:
            The records that decoded, their anomaly scores (empty when collecting), if asked their
            pooled features, and with ``want_pixel`` the pixel head's inputs of each
            (:meth:`_pixel_item`; otherwise ``[]``).
        """
        kept: list[Record] = []
        scores: list[np.ndarray] = []
        pooled: list[np.ndarray] = []
        items: list[dict[str, Any]] = []
        for chunk in context.decoded_chunks(records, description, self.chunk_size):
            images = [s.image for s in chunk]
            chunk_scores, chunk_pooled, log_maps = self._embed_images(images, collect, want_pooled, want_pixel)
            scores.append(chunk_scores)
            if chunk_pooled is not None:
                pooled.append(chunk_pooled)
            kept.extend(s.record for s in chunk)
            if want_pixel:
                classes = list(context.classes) or ["defect"]
                items.extend(self._pixel_item(s, inputs, classes) for s, inputs in zip(chunk, self._pixel_inputs(images, log_maps)))
        score_arr = np.concatenate(scores) if scores else np.zeros(0)
        pooled_arr = np.concatenate(pooled) if pooled else None
        return kept, score_arr, pooled_arr, items

    def _pixel_inputs(self, images: Sequence[np.ndarray], log_maps: Sequence[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The pixel head's ``[C, h, w]`` features of each image and its log anomaly map on the same grid."""
        assert self.pixel_head is not None
        inputs = []
        for feats, log_map in zip(self.pixel_head.features(images), log_maps):
            h, w = feats.shape[-2:]
            prior = cv2.resize(log_map.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
            inputs.append((feats, torch.from_numpy(prior)))
        return inputs

    def _pixel_score(self, grid: np.ndarray) -> float:
        """An image's pixel-head score: the mean of its ``top_k`` highest cell logits (1: the highest)."""
        k = min(int((self.pixel_cfg or {}).get("top_k", 1)), grid.size)
        return float(np.partition(grid.ravel(), grid.size - k)[grid.size - k :].mean())

    def _pixel_item(self, sample: Sample, inputs: tuple[torch.Tensor, torch.Tensor], classes: list[str]) -> dict[str, Any]:
        """What the pixel head trains and is cross-validated on for one calibration image (:meth:`_make_pixel_item`).

        Normal images, and defects without a mask, have no defect pixel.
        """
        record = sample.record
        if record.label not in (None, 0) and has_annotations(record):
            mask = ground_truth_masks(record, sample.image.shape[:2], classes, scale=sample.scale)[0].any(0)
        else:
            mask = np.zeros(sample.image.shape[:2], dtype=bool)
        has_mask = record.label in (None, 0) or has_annotations(record)
        return self._make_pixel_item(sample.image, inputs, mask, has_mask, 0 if record.label in (None, 0) else 1)

    def _make_pixel_item(
        self, image: np.ndarray, inputs: tuple[torch.Tensor, torch.Tensor], mask: np.ndarray, has_mask: bool, label: int
    ) -> dict[str, Any]:
        """Features and prior on the head's grid, targets there and the full-resolution mask of one image.

        Targets: 1 where at least ``positive_fraction`` of the cell is defect, 0 where none of it
        is, -1 (ignored) on the edge cells in between. The image is kept for copy-paste.
        """
        cfg = self.pixel_cfg or {}
        feats, prior = inputs
        h, w = feats.shape[-2:]
        share = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        target = np.where(share >= float(cfg["positive_fraction"]), 1, np.where(share <= 0, 0, -1)).astype(np.int8)
        keep_image = cfg.get("copy_paste") is not None
        return {"features": feats, "prior": prior, "target": torch.from_numpy(target), "mask": mask,
                "has_mask": has_mask, "label": label, "image": image if keep_image else None}

    def _pasted_items(self, items: Sequence[dict[str, Any]], rng: np.random.Generator) -> list[dict[str, Any]]:
        """Extra training images: defects of ``items`` (their masks' regions) pasted onto their normal images.

        Each pasted image is scored by the anomaly model like a real one, so the prior the head
        learns to use is the one it will see.
        """
        cfg = dict((self.pixel_cfg or {}).get("copy_paste") or {})
        count = int(cfg.pop("images", 0))
        max_defects = cfg.pop("max_defects", None)
        if max_defects is not None and sum(item["label"] == 1 for item in items) > int(max_defects):
            return []  # enough real defects: pasting measured no gain there, only fit time
        sources = [item for item in items if item["label"] == 1 and item["mask"].any() and item["image"] is not None]
        targets = [item for item in items if item["label"] == 0 and item["image"] is not None]
        if not count or not sources or not targets:
            return []
        paste = CopyPaste(**{"p": 1.0, "max_pastes": 2, "seed": self.seed, **cfg})
        for index, item in enumerate(sources):
            n, _, stats, _ = cv2.connectedComponentsWithStats(item["mask"].astype(np.uint8), connectivity=8)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:n]]
            paste.add_source(item["image"], boxes, [0] * len(boxes), mask=item["mask"].astype(np.uint8), source_id=index)
        pasted: list[tuple[np.ndarray, np.ndarray]] = []
        for j in rng.choice(len(targets), count, replace=count > len(targets)):
            base = targets[int(j)]["image"]
            image, _, _, mask = paste(base, np.zeros((0, 4)), np.zeros(0, np.int64), masks=np.zeros(base.shape[:2], np.uint8), rng=rng)
            if mask is None or not mask.any():
                continue  # no patch fitted on this tile
            pasted.append((image, mask))
        # Scored in the gate's batches, not one by one: maps equal to float rounding, a fraction of the calls.
        images = [image for image, _ in pasted]
        _, _, log_maps = self._embed_images(images, False, False, True)
        return [self._make_pixel_item(image, inputs, mask > 0, True, 1)
                for (image, mask), inputs in zip(pasted, self._pixel_inputs(images, log_maps))]

    # ------------------------------------------------------------------ fit
    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Build the anomaly model from normal training images and calibrate the decision.

        Returns:
            A JSON-able summary: image counts, thresholds, coreset size, timings, calibration macro F1.
        """
        self._fit_flips = bool((self.supervised_cfg or {}).get("flip_augment", False))
        try:
            return self._fit(train, val, context)
        finally:
            self._fit_flips = False  # prediction scores the images alone

    def _fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """:meth:`fit`'s work."""
        start = time.perf_counter()
        normals = stable_order((r for r in train if r.label == 0), self.seed)
        val_normals = [r for r in val if r.label == 0]
        all_defects = [r for r in (*train, *val) if r.label is not None and r.label != 0]
        defects = self._select_defects(all_defects)
        cross_fit = (
            self.calibration_folds is not None
            and len(normals) >= self.calibration_folds
            and (self.cross_fit_max_defects is None or len(defects) <= self.cross_fit_max_defects)
        )
        if cross_fit:
            bank_records, cal_normals = normals, normals + val_normals
        else:
            n_cal = int(round(self.calibration_fraction * len(normals)))
            if n_cal == 0 and not val_normals and normals:
                n_cal = max(1, len(normals) // 5)
            bank_records, cal_normals = normals[n_cal:], normals[:n_cal] + val_normals
        if not bank_records:
            raise ValueError("AnomalyGate.fit needs normal (label 0) training images")
        sup = self.supervised_cfg
        use_sup = sup is not None and len(defects) >= int(sup.get("min_defects", 10))
        pix = self.pixel_cfg
        use_pixel = pix is not None and len(defects) >= int(pix["min_defects"])

        self.model = build(HEADS, self.model_cfg).eval()
        self.pixel_head = _build_pixel_head(pix) if use_pixel else None
        # Cross-fitted normals are all calibration images, so the bank's pooled features would count them twice.
        bank_kept, _, bank_pooled, _ = self._embed_records(
            bank_records, context, "gate: normal features", True, use_sup and not cross_fit
        )
        model_summary = self.model.build()
        t_bank = time.perf_counter() - start

        if cross_fit:
            cal_kept, cal_scores, cal_pooled, pixel_items = self._cross_fitted_normals(
                normals, val_normals, context, use_sup, use_pixel
            )
            kept, scores, pooled, items = self._embed_records(defects, context, "gate: calibration defects", False, use_sup, use_pixel)
            cal_kept, cal_scores, pixel_items = cal_kept + kept, np.concatenate([cal_scores, scores]), pixel_items + items
            if use_sup:
                assert cal_pooled is not None and pooled is not None
                cal_pooled = np.concatenate([cal_pooled, pooled])
                bank_pooled = cal_pooled[:0]
        else:
            cal_kept, cal_scores, cal_pooled, pixel_items = self._embed_records(
                cal_normals + defects, context, "gate: calibration", False, use_sup, use_pixel
            )
        cal_records = cal_normals + defects
        labels = np.array([0 if r.label == 0 else 1 for r in cal_kept])
        log_scores = np.log(cal_scores + _EPS)

        has_both = labels.size and 0 < labels.sum() < labels.size
        self._defect_weight = 1.0
        n_normal_all = sum(1 for r in (*train, *val) if r.label == 0)
        if has_both and self.match_class_ratio:
            # Defects per normal among all labelled records, over the same ratio in the calibration set.
            self._defect_weight = (len(all_defects) / max(n_normal_all, 1)) / (labels.sum() / (labels == 0).sum())
        if has_both:
            self.anomaly_threshold, anomaly_f1 = best_threshold(
                log_scores, labels, self.threshold_metric, self._defect_weight
            )
        else:
            normal_scores = log_scores[labels == 0] if labels.size else log_scores
            self.anomaly_threshold = float(np.quantile(normal_scores, self.no_defect_quantile)) if normal_scores.size else 0.0
            anomaly_f1 = None
        self.decision = None
        combined_f1 = None
        pixel_summary: dict[str, Any] = {}
        columns: dict[str, np.ndarray] = {}
        if use_sup and has_both:
            columns["sup"] = self._fit_supervised(bank_pooled, cal_pooled, labels)
        if use_pixel and has_both and any(bool((item["target"] == 1).any()) for item in pixel_items):
            pixel_columns, pixel_summary = self._fit_pixel(pixel_items, labels)
            columns.update(pixel_columns)
        else:
            self.pixel_head = None
        if columns and has_both:
            combined_f1 = self._fit_stacker(log_scores, columns, labels)
        z = self._calibration_logits(log_scores, columns)
        rates = _decision_rates(z, labels) if has_both else {}

        self.fitted = True
        self.summary = {
            "model": self.model_cfg.get("type"),
            "bank_images": len(bank_kept),
            "calibration_normals": int((labels == 0).sum()),
            "calibration_folds": self.calibration_folds if cross_fit else None,
            "labelled_defects": int((labels == 1).sum()),
            "defects_available": len(all_defects),
            "calibration_defect_weight": round(float(self._defect_weight), 4),
            "skipped": len(bank_records) + len(cal_records) - len(bank_kept) - len(cal_kept),
            "anomaly_threshold": float(np.exp(self.anomaly_threshold)),
            "calibration_macro_f1_anomaly": None if anomaly_f1 is None else round(anomaly_f1, 4),
            "supervised": "sup" in columns,
            "stacked_inputs": ["anomaly", *columns] if self.decision is not None else ["anomaly"],
            "calibration_macro_f1": round(combined_f1 if combined_f1 is not None else (anomaly_f1 or 0.0), 4),
            **rates,
            **pixel_summary,
            "thresholds_explained": self._explain_thresholds(columns, rates, pixel_summary),
            "bank_seconds": round(t_bank, 2),
            "fit_seconds": round(time.perf_counter() - start, 2),
            **{k: v for k, v in model_summary.items()},
        }
        return self.summary

    def _cross_fitted_normals(
        self, normals: list[Record], val_normals: list[Record], context: FitContext, use_sup: bool, use_pixel: bool
    ) -> tuple[list[Record], np.ndarray, np.ndarray | None, list[dict[str, Any]]]:
        """Score every normal image with an anomaly model built from the normal training images of the other folds.

        Fold ``k`` holds every ``calibration_folds``-th image of the training normals (in the seeded
        order) and of the validation normals; validation normals are never in a model. ``self.model``
        (built from all training normals) is put back afterwards.

        Returns:
            As :meth:`_embed_records`, for the normal images fold by fold.
        """
        folds = int(self.calibration_folds or 2)
        final_model = self.model
        kept: list[Record] = []
        scores: list[np.ndarray] = []
        pooled: list[np.ndarray] = []
        items: list[dict[str, Any]] = []
        try:
            for k in range(folds):
                bank = [r for i, r in enumerate(normals) if i % folds != k]
                held_out = normals[k::folds] + val_normals[k::folds]
                self.model = build(HEADS, self.model_cfg).eval()
                self._embed_records(bank, context, f"gate: normal features, fold {k + 1}/{folds}", True, False)
                self.model.build()
                fold_kept, fold_scores, fold_pooled, fold_items = self._embed_records(
                    held_out, context, f"gate: calibration normals, fold {k + 1}/{folds}", False, use_sup, use_pixel
                )
                kept += fold_kept
                scores.append(fold_scores)
                if fold_pooled is not None:
                    pooled.append(fold_pooled)
                items += fold_items
        finally:
            self.model = final_model
        return kept, np.concatenate(scores), np.concatenate(pooled) if pooled else None, items

    def _explain_thresholds(self, columns: dict[str, np.ndarray], rates: dict[str, float], pixel: dict[str, Any]) -> list[str]:
        """The stored cuts in words, for the report: what is thresholded, how the cut was chosen, what to expect."""
        names = {"sup": "pooled-feature classifier", "pixel": "pixel head's top logit", "peak": "anomaly map peak"}
        stacked = self.decision is not None
        inputs = " + ".join(["log anomaly score", *(names.get(k, k) for k in columns)]) if stacked else "log anomaly score"
        how = ", stacked by a logistic regression" if stacked else ""
        lines = [
            f"image: defect when the gate score ({inputs}{how}) exceeds 0.5; the cut maximises "
            f"{self.threshold_metric} on the {'out-of-fold ' if columns else ''}calibration images "
            f"weighted to the labelled class ratio ({self._defect_weight:.2f} per defect)."
        ]
        if rates:
            lines.append(
                f"expected on calibration images: {100 * rates['calibration_false_alarm_rate']:.1f}% of normal tiles flagged "
                f"(false alarms), {100 * rates['calibration_miss_rate']:.1f}% of defect tiles passed (misses)."
            )
        if pixel:
            lines.append(
                f"mask: pixel-head logit above {pixel['pixel_threshold_logit']} (prob_maps 0.5), the cut with the best "
                f"out-of-fold data-set IoU ({pixel['pixel_cv_iou']}) over {pixel['pixel_cv_folds']} folds of the calibration images."
            )
        else:
            lines.append("mask: anomaly map above the image-level anomaly threshold (prob_maps 0.5); not fitted to masks.")
        return lines

    def _fit_supervised(self, bank_x: np.ndarray, cal_x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Fit the supervised logistic regression on pooled features; returns its out-of-fold calibration logits.

        ``bank_x`` and ``cal_x`` are ``[N, D]``, or ``[N, V, D]`` with the mirrored views of each image
        after it (``supervised.flip_augment``): those join the training rows of the folds that hold
        their image, with its label, and the logits are always those of the images themselves.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        cfg = self.supervised_cfg or {}
        c_value = float(cfg.get("C", 0.1))
        folds = int(min(cfg.get("folds", 5), labels.sum(), (labels == 0).sum()))

        def train_lr(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
            """Standardise and fit a class-balanced logistic regression; returns (mean, scale, coef, bias)."""
            mean, scale = x.mean(0), x.std(0) + 1e-6
            lr = LogisticRegression(C=c_value, class_weight="balanced", max_iter=5000)
            lr.fit((x - mean) / scale, y)
            return mean, scale, lr.coef_[0], float(lr.intercept_[0])

        def logit(params: tuple[np.ndarray, np.ndarray, np.ndarray, float], x: np.ndarray) -> np.ndarray:
            """Decision function of a fitted standardised logistic regression."""
            mean, scale, coef, bias = params
            return ((x - mean) / scale) @ coef + bias

        def rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Training rows of images ``x`` (every view) labelled ``y``."""
            if x.ndim == 2:
                return x, y
            return x.reshape(-1, x.shape[-1]), np.repeat(y, x.shape[1])

        bank_rows, bank_y = rows(bank_x, np.zeros(len(bank_x), dtype=int))
        images = cal_x if cal_x.ndim == 2 else cal_x[:, 0]
        oof = np.zeros(len(labels))
        splitter = StratifiedKFold(n_splits=max(2, folds), shuffle=True, random_state=self.seed)
        for tr, te in splitter.split(images, labels):
            fold_rows, fold_y = rows(cal_x[tr], labels[tr])
            params = train_lr(np.concatenate([bank_rows, fold_rows]), np.concatenate([bank_y, fold_y]))
            oof[te] = logit(params, images[te])
        all_rows, all_y = rows(cal_x, labels)
        final = train_lr(np.concatenate([bank_rows, all_rows]), np.concatenate([bank_y, all_y]))
        self._sup_params = {"sup_mean": final[0], "sup_scale": final[1], "sup_coef": final[2], "sup_bias": np.array([final[3]])}
        return oof

    def _pixel_rows(self, items: Sequence[dict[str, Any]], rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """Training rows of the pixel head: every image's defect cells (capped) and a sample of its normal cells."""
        cfg = self.pixel_cfg or {}
        feats, priors, targets = [], [], []
        for item in items:
            if not item["has_mask"]:
                continue  # a defect without a mask: where it is is unknown
            c = item["features"].shape[0]
            flat_f = item["features"].reshape(c, -1).T
            flat_p = item["prior"].reshape(-1)
            flat_t = item["target"].reshape(-1)
            for value, cap in ((1, int(cfg["positives_per_image"])), (0, int(cfg["negatives_per_image"]))):
                idx = np.flatnonzero(flat_t.numpy() == value)
                if len(idx) > cap:
                    idx = rng.choice(idx, cap, replace=False)
                idx_t = torch.from_numpy(idx)
                feats.append(flat_f[idx_t])
                priors.append(flat_p[idx_t])
                targets.append(torch.full((len(idx),), value, dtype=torch.int8))
        return torch.cat(feats), torch.cat(priors), torch.cat(targets)

    def _fit_pixel(self, items: list[dict[str, Any]], labels: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Cross-validate and fit the pixel head on the calibration images.

        Each fold's head predicts the held-out images: their highest logit is the stacker's
        out-of-fold ``pixel`` input, and histograms of their full-resolution logits over defect
        and normal pixels choose the mask threshold with the best data-set IoU. The final head
        is then trained on every calibration image.

        Returns:
            The stacker's inputs (``pixel``: out-of-fold image scores; with ``peak``, ``peak``: the
            highest log anomaly on the head's grid, which small defects raise while barely moving
            the map's mean) and a summary (threshold, out-of-fold IoU and pixel AUROC).
        """
        from sklearn.model_selection import StratifiedKFold

        from defectkit.evaluation.segmentation import auroc_from_histograms

        assert self.pixel_head is not None
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        folds = int(min(self.pixel_cfg["folds"], labels.sum(), (labels == 0).sum()))  # type: ignore[index]
        oof = np.zeros(len(items))
        pos_hist = np.zeros(len(_PIXEL_BINS) + 1)
        neg_hist = np.zeros(len(_PIXEL_BINS) + 1)
        splitter = StratifiedKFold(n_splits=max(2, folds), shuffle=True, random_state=self.seed)
        pasted = 0
        for tr, te in splitter.split(np.zeros(len(labels)), labels):
            # Pasted defects come from the training folds only, so the held-out images stay unseen.
            fold_items = [items[i] for i in tr]
            extra = self._pasted_items(fold_items, rng)
            pasted += len(extra)
            self.pixel_head.fit_rows(*self._pixel_rows(fold_items + extra, rng), seed=self.seed)
            for i in te:
                item = items[i]
                grid = self.pixel_head.logits(item["features"], item["prior"]).numpy()
                oof[i] = self._pixel_score(grid)
                if item["has_mask"]:
                    full = _upsample(grid, item["mask"].shape)
                    bins = np.digitize(full, _PIXEL_BINS)
                    pos_hist += np.bincount(bins[item["mask"]], minlength=len(pos_hist))
                    neg_hist += np.bincount(bins[~item["mask"]], minlength=len(neg_hist))
        extra = self._pasted_items(items, rng)
        head_summary = self.pixel_head.fit_rows(*self._pixel_rows(items + extra, rng), seed=self.seed)
        pasted += len(extra)
        # Predicting "defect" above bin edge k keeps the pixels of bins k+1.. (np.digitize: bins[i-1] <= x < bins[i]).
        tp = pos_hist[::-1].cumsum()[::-1][1:]
        fp = neg_hist[::-1].cumsum()[::-1][1:]
        iou = tp / np.maximum(pos_hist.sum() + fp, 1)
        best = int(np.argmax(iou))
        self.pixel_threshold = float(_PIXEL_BINS[best])
        auroc = auroc_from_histograms(pos_hist, neg_hist)
        columns = {"pixel": oof}
        if self.pixel_cfg.get("peak"):  # type: ignore[union-attr]
            columns["peak"] = np.array([float(item["prior"].max()) for item in items])
        return columns, {
            "pixel_threshold_logit": round(self.pixel_threshold, 3),
            "pixel_cv_iou": round(float(iou[best]), 4),
            "pixel_cv_auroc": None if auroc is None else round(float(auroc), 4),
            "pixel_cv_folds": max(2, folds),
            "pixel_rows": head_summary["rows"],
            "pixel_pasted_images": pasted,
            "pixel_seconds": round(time.perf_counter() - start, 2),
        }

    def _fit_stacker(self, log_scores: np.ndarray, columns: dict[str, np.ndarray], labels: np.ndarray) -> float:
        """The logistic regression over the anomaly score and the out-of-fold ``columns``; returns its calibration metric."""
        from sklearn.linear_model import LogisticRegression

        cfg = self.supervised_cfg or {}
        normal = log_scores[labels == 0]
        a_mean, a_scale = float(normal.mean()), float(normal.std() + 1e-6)
        stack_x = np.stack([(log_scores - a_mean) / a_scale, *columns.values()], 1)
        stacker = LogisticRegression(C=float(cfg.get("stack_C", 1.0)), class_weight="balanced", max_iter=1000)
        stacker.fit(stack_x, labels)
        z = stack_x @ stacker.coef_[0] + stacker.intercept_[0]
        threshold, value = best_threshold(z, labels, self.threshold_metric, self._defect_weight)
        self.decision = {
            **(self._sup_params if "sup" in columns else {}),
            "stack_coef": stacker.coef_[0].astype(np.float64),
            "stack_bias": np.array([float(stacker.intercept_[0]) - threshold]),
            "anomaly_norm": np.array([a_mean, a_scale]),
        }
        return value

    def _calibration_logits(self, log_scores: np.ndarray, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Decision logits of the calibration images (out-of-fold inputs) under the fitted decision."""
        d = self.decision
        if d is None:
            return self.map_sharpness * (log_scores - self.anomaly_threshold)
        a = (log_scores - d["anomaly_norm"][0]) / d["anomaly_norm"][1]
        return np.stack([a, *columns.values()], 1) @ d["stack_coef"] + d["stack_bias"][0]

    # ------------------------------------------------------------------ predict
    def _gate_logit(
        self, log_scores: np.ndarray, pooled: np.ndarray | None, pixel_scores: np.ndarray | None, peaks: np.ndarray | None = None
    ) -> np.ndarray:
        """Decision logits (defect when > 0) from log anomaly scores and, if stacked, the supervised inputs."""
        d = self.decision
        if d is None:
            return self.map_sharpness * (log_scores - self.anomaly_threshold)
        columns = [(log_scores - d["anomaly_norm"][0]) / d["anomaly_norm"][1]]
        if "sup_coef" in d:
            columns.append(((pooled - d["sup_mean"]) / d["sup_scale"]) @ d["sup_coef"] + d["sup_bias"][0])
        if self.pixel_head is not None:
            columns.append(pixel_scores)
            if (self.pixel_cfg or {}).get("peak"):
                columns.append(peaks)
        return np.stack(columns, 1) @ d["stack_coef"] + d["stack_bias"][0]

    def score_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Gate scores, raw anomaly scores and [0, 1] defect maps (image resolution) of HxWx3 uint8 images.

        The maps are the pixel head's (0.5 at its cross-validated mask threshold) when it is
        fitted, otherwise the anomaly map (0.5 at the image-level anomaly threshold).
        """
        if not images:
            return np.zeros(0), np.zeros(0), []
        want_pooled = self.decision is not None and "sup_coef" in self.decision
        scores, pooled, log_maps = self._embed_images(images, False, want_pooled, True)
        pixel_scores = peaks = None
        if self.pixel_head is not None:
            maps, pixel_scores, peaks = [], np.zeros(len(images)), np.zeros(len(images))
            for k, (image, (feats, prior)) in enumerate(zip(images, self._pixel_inputs(images, log_maps))):
                grid = self.pixel_head.logits(feats, prior).numpy()
                pixel_scores[k] = self._pixel_score(grid)
                peaks[k] = float(prior.max())
                full = _upsample(grid, image.shape[:2]).astype(np.float64) - self.pixel_threshold
                maps.append(_sigmoid(full).astype(np.float32)[None])
        else:
            maps = [
                _sigmoid(self.map_sharpness * (log_map.astype(np.float64) - self.anomaly_threshold)).astype(np.float32)[None]
                for log_map in log_maps
            ]
        gate = _sigmoid(self._gate_logit(np.log(scores + _EPS), pooled, pixel_scores, peaks))
        return gate, scores, maps

    def predict(self, samples: list[Sample]) -> list[Sample]:
        """Set ``gate_score``, ``gate_label``, ``finished`` (normal images) and ``prob_maps`` on each sample."""
        self.require_ready()
        active = [s for s in samples if s.ok and s.image is not None]
        if not active:
            return samples
        gate, raw, maps = self.score_images([s.image for s in active])
        for sample, g, r, m in zip(active, gate, raw, maps):
            sample.gate_score = float(g)
            is_defect = g > 0.5
            sample.gate_label = "defect" if is_defect else "normal"
            sample.finished = sample.finished or not is_defect
            sample.prob_maps = m
            sample.map_classes = ["defect"]
            sample.anomaly_score = float(r)
        return samples

    # ------------------------------------------------------------------ state
    # The coreset size only caps the memory bank while fitting; a loaded bank keeps its saved size, so
    # a stage reused without the training config (from_weights) may leave it at the default.
    model_fields_not_checked = ("coreset_size",)

    def expected_model(self) -> dict[str, Any] | None:
        """The head config the stage's config asks for; a saved state must have been made with it."""
        return self.model_cfg

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Fitted buffers of the head, thresholds and supervised weights, plus the config as JSON."""
        tensors = {
            f"model.{k}": v.detach().clone()
            for k, v in self.model.state_dict().items()
            if not k.startswith(("embedder.", "blur."))
        }
        tensors["anomaly_threshold"] = torch.tensor([self.anomaly_threshold], dtype=torch.float64)
        for key, value in (self.decision or {}).items():
            tensors[f"decision.{key}"] = torch.from_numpy(np.asarray(value, dtype=np.float64).copy())
        if self.pixel_head is not None:
            for k, v in self.pixel_head.state_dict().items():
                if not k.startswith("embedder."):
                    tensors[f"pixel.{k}"] = v.detach().clone().contiguous()
        extra = {
            "model": self.model_cfg,
            "image_size": list(self.image_size),
            "map_sharpness": self.map_sharpness,
            "supervised": self.decision is not None,
            "supervised_cfg": self.supervised_cfg,
            "tiles": self.tiles,
            "pixel_cfg": self.pixel_cfg if self.pixel_head is not None else None,
            "pixel_threshold": self.pixel_threshold,
            "summary": self.summary,
        }
        return tensors, extra

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Rebuild the head from the saved config and restore its buffers and the decision."""
        self.model_cfg = dict(extra.get("model", self.model_cfg))
        self.image_size = tuple(int(v) for v in extra.get("image_size", self.image_size))
        self.map_sharpness = float(extra.get("map_sharpness", self.map_sharpness))
        self.supervised_cfg = extra.get("supervised_cfg", self.supervised_cfg)
        self.tiles = _tile_options(extra.get("tiles"))  # the threshold was calibrated on this tiling
        self._sup_extractor = None
        self.model = build(HEADS, self.model_cfg).eval()
        buffers = dict(self.model.named_buffers())
        for key, value in tensors.items():
            if key.startswith("model."):
                name = key[len("model.") :]
                if name not in buffers:
                    raise KeyError(f"saved tensor {key} is not a buffer of {self.model_cfg.get('type')}")
                module_path, _, attr = name.rpartition(".")
                module = self.model.get_submodule(module_path) if module_path else self.model
                setattr(module, attr, value.to(buffers[name].dtype).clone())
        self.anomaly_threshold = float(tensors["anomaly_threshold"][0])
        decision = {k[len("decision.") :]: v.double().numpy() for k, v in tensors.items() if k.startswith("decision.")}
        self.decision = decision if extra.get("supervised") else None
        self.pixel_cfg = _pixel_options(extra.get("pixel_cfg"))
        self.pixel_head = None
        if self.pixel_cfg is not None:
            # The frozen backbone's ImageNet weights come from the installed package, as for the anomaly head.
            self.pixel_head = _build_pixel_head(self.pixel_cfg)
            weights = {k[len("pixel.") :]: v for k, v in tensors.items() if k.startswith("pixel.")}
            missing = set(self.pixel_head.state_dict()) - set(weights) - {k for k in self.pixel_head.state_dict() if k.startswith("embedder.")}
            if missing:
                raise KeyError(f"saved gate state lacks pixel head tensors {sorted(missing)}")
            self.pixel_head.load_state_dict(weights, strict=False)
        self.pixel_threshold = float(extra.get("pixel_threshold", 0.0))
        self.summary = dict(extra.get("summary", {}))
        self.fitted = True

    def describe(self) -> dict[str, Any]:
        """Type, name, head config and the fit summary."""
        return {**super().describe(), "model": self.model_cfg, "image_size": list(self.image_size), "tiles": self.tiles,
                "pixel": self.pixel_cfg if self.pixel_head is not None else None, **self.summary}
