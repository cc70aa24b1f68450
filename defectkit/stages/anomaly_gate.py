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

from defectkit.data.split import stable_order_key
from defectkit.data.transforms import resize_image
from defectkit.errors import ConfigError
from defectkit.evaluation.thresholds import THRESHOLD_METRICS, best_threshold
from defectkit.heads.anomaly import pooled_features
from defectkit.heads.backbones import create_feature_extractor, to_input_tensor
from defectkit.registry import HEADS, STAGES, build
from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext, TilesItself, TrainableStage
from defectkit.tiling import Window, overlap_pair, slice_size_pair, slice_windows, stitch_maps

_EPS = 1e-6


def _tile_options(tiles: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"slice_size": [h, w], "overlap": [a, b]}`` from a ``tiles`` option (None stays None)."""
    if tiles is None:
        return None
    if not isinstance(tiles, dict) or "slice_size" not in tiles or set(tiles) - {"slice_size", "overlap"}:
        raise ConfigError(f"AnomalyGate tiles must be dict(slice_size=(h, w), overlap=0.2) or None, got {tiles!r}")
    return {"slice_size": list(slice_size_pair(tiles["slice_size"])), "overlap": list(overlap_pair(tiles.get("overlap", 0.2)))}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@STAGES.register_module()
class AnomalyGate(TrainableStage, TilesItself):
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
    so a pixel above 0.5 alone would make the image defective under the anomaly model.

    Args:
        model: Head config, e.g. ``dict(type="PatchCore", layers=(2, 3), coreset_size=10000)``.
        image_size: ``(height, width)`` every image is resized to (aspect ratio not kept).
        batch_size: Images per forward pass.
        chunk_size: Records decoded at once during ``fit`` (bounds memory).
        max_labelled_defects: Use at most this many labelled defect images (None = all).
        supervised: ``dict(C=0.1, folds=5, min_defects=10)`` to enable the supervised component, or None.
            By default it uses the gate's own embedding (global average + max pooled); with
            ``layers=(4,), image_size=(224, 224)`` it pools those EfficientNet-Lite0 stages of a
            separate pass at that size instead (deeper, more semantic, slower).
        threshold_metric: ``"f1_macro"``, ``"f1_defect"`` or ``"balanced_accuracy"``.
        calibration_fraction: Share of the normal training images kept out of the anomaly model to
            calibrate (the normal validation images are always used to calibrate).
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
        map_sharpness: float = 4.0,
        no_defect_quantile: float = 0.99,
        match_class_ratio: bool = True,
        tiles: dict[str, Any] | None = None,
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
        self.map_sharpness = float(map_sharpness)
        self.no_defect_quantile = float(no_defect_quantile)
        self.match_class_ratio = bool(match_class_ratio)
        self.tiles = _tile_options(tiles)
        self._defect_weight = 1.0
        self.seed = int(seed)
        self.model = build(HEADS, self.model_cfg)
        self.model.eval()
        self._sup_extractor: torch.nn.Module | None = None
        self.anomaly_threshold = 0.0  # in log anomaly-score units
        self.decision: dict[str, np.ndarray] | None = None  # supervised + stacker parameters
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    def _supervised_features(self, images: Sequence[np.ndarray], emb: torch.Tensor) -> np.ndarray:
        """Pooled features for the supervised part: of the gate's embedding, or of its own backbone stages."""
        cfg = self.supervised_cfg or {}
        if not cfg.get("layers"):
            return pooled_features(emb).double().numpy()
        if self._sup_extractor is None:
            self._sup_extractor = create_feature_extractor(out_indices=tuple(cfg["layers"]))
        x = self._to_tensor(images, tuple(cfg.get("image_size", self.image_size)))
        with torch.no_grad():
            feats = self._sup_extractor(x)
        return torch.cat([pooled_features(f) for f in feats], 1).double().numpy()

    def _to_tensor(self, images: Sequence[np.ndarray], size: Sequence[int] | None = None) -> torch.Tensor:
        """Resize HxWx3 uint8 images to ``size`` (default ``image_size``) and stack them as NCHW in [-1, 1]."""
        h, w = size or self.image_size
        return to_input_tensor([resize_image(image, (h, w)) for image in images])

    def _select_defects(self, defects: list[Record]) -> list[Record]:
        """A deterministic, category-stratified subset of at most ``max_labelled_defects`` defects."""
        ordered = sorted(defects, key=lambda r: stable_order_key(self.seed, r.path))
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
        return sorted(chosen, key=lambda r: stable_order_key(self.seed, r.path))

    def configure_tiling(self, slice_size: Sequence[int] | None, overlap: Sequence[float] = (0.2, 0.2)) -> None:
        """Score windows of ``slice_size`` (``(height, width)``, overlap ratios) from now on; None: whole images.

        Called by a Tiling stage around the gate before ``fit``: the threshold is then calibrated on
        window scores, so it must not change after fitting (a loaded gate keeps its saved tiling).
        """
        self.tiles = None if slice_size is None else _tile_options(dict(slice_size=slice_size, overlap=overlap))

    def _windows(self, image: np.ndarray) -> list[Window]:
        height, width = image.shape[:2]
        if self.tiles is None:
            return [(0, 0, width, height)]
        return slice_windows(height, width, *self.tiles["slice_size"], *self.tiles["overlap"])

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
        jobs = [(i, window) for i, image_windows in enumerate(windows) for window in image_windows]
        scores = np.full(len(images), -np.inf)
        pooled: list[np.ndarray | None] = [None] * len(images)
        view_maps: list[list[np.ndarray]] = [[] for _ in images]
        for b in range(0, len(jobs), self.batch_size):
            batch = jobs[b : b + self.batch_size]
            views = [np.ascontiguousarray(images[i][y1:y2, x1:x2]) for i, (x1, y1, x2, y2) in batch]
            x = self._to_tensor(views)
            with torch.no_grad():
                emb = self.model.extract(x)
                if collect:
                    self.model.collect(emb)
                else:
                    view_scores, amaps = self.model.score_embedding(emb, x.shape[-2:])
            features = self._supervised_features(views, emb) if want_pooled else None
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
        for image, image_windows, image_maps in zip(images, windows, view_maps):
            if image_maps:
                height, width = image.shape[:2]
                maps.append(image_maps[0][0] if len(image_maps) == 1 else stitch_maps(image_maps, image_windows, height, width)[0])
        pooled_arr = np.stack(pooled) if want_pooled and images else None
        return (np.zeros(0) if collect else scores), pooled_arr, maps

    def _embed_records(
        self, records: Sequence[Record], context: FitContext, description: str, collect: bool, want_pooled: bool
    ) -> tuple[list[Record], np.ndarray, np.ndarray | None]:
        """Decode ``records`` in chunks; collect them into the model or score them.

        Returns:
            The records that decoded, their anomaly scores (empty when collecting) and, if asked,
            their pooled features.
        """
        kept: list[Record] = []
        scores: list[np.ndarray] = []
        pooled: list[np.ndarray] = []
        for chunk in context.decoded_chunks(records, description, self.chunk_size):
            chunk_scores, chunk_pooled, _ = self._embed_images([s.image for s in chunk], collect, want_pooled, False)
            scores.append(chunk_scores)
            if chunk_pooled is not None:
                pooled.append(chunk_pooled)
            kept.extend(s.record for s in chunk)
        score_arr = np.concatenate(scores) if scores else np.zeros(0)
        pooled_arr = np.concatenate(pooled) if pooled else None
        return kept, score_arr, pooled_arr

    # ------------------------------------------------------------------ fit
    def fit(self, train: Sequence[Record], val: Sequence[Record], context: FitContext) -> dict[str, Any]:
        """Build the anomaly model from normal training images and calibrate the decision.

        Returns:
            A JSON-able summary: image counts, thresholds, coreset size, timings, calibration macro F1.
        """
        start = time.perf_counter()
        normals = sorted((r for r in train if r.label == 0), key=lambda r: stable_order_key(self.seed, r.path))
        n_cal = int(round(self.calibration_fraction * len(normals)))
        val_normals = [r for r in val if r.label == 0]
        if n_cal == 0 and not val_normals and normals:
            n_cal = max(1, len(normals) // 5)
        bank_records, cal_normals = normals[n_cal:], normals[:n_cal] + val_normals
        if not bank_records:
            raise ValueError("AnomalyGate.fit needs normal (label 0) training images")
        all_defects = [r for r in (*train, *val) if r.label is not None and r.label != 0]
        defects = self._select_defects(all_defects)
        sup = self.supervised_cfg
        use_sup = sup is not None and len(defects) >= int(sup.get("min_defects", 10))

        self.model = build(HEADS, self.model_cfg).eval()
        bank_kept, _, bank_pooled = self._embed_records(bank_records, context, "gate: normal features", True, use_sup)
        model_summary = self.model.build()
        t_bank = time.perf_counter() - start

        cal_records = cal_normals + defects
        cal_kept, cal_scores, cal_pooled = self._embed_records(cal_records, context, "gate: calibration", False, use_sup)
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
        if use_sup and has_both:
            combined_f1 = self._fit_supervised(bank_pooled, cal_pooled, log_scores, labels)

        self.fitted = True
        self.summary = {
            "model": self.model_cfg.get("type"),
            "bank_images": len(bank_kept),
            "calibration_normals": int((labels == 0).sum()),
            "labelled_defects": int((labels == 1).sum()),
            "defects_available": len(all_defects),
            "calibration_defect_weight": round(float(self._defect_weight), 4),
            "skipped": len(bank_records) + len(cal_records) - len(bank_kept) - len(cal_kept),
            "anomaly_threshold": float(np.exp(self.anomaly_threshold)),
            "calibration_macro_f1_anomaly": None if anomaly_f1 is None else round(anomaly_f1, 4),
            "supervised": self.decision is not None,
            "calibration_macro_f1": round(combined_f1 if combined_f1 is not None else (anomaly_f1 or 0.0), 4),
            "bank_seconds": round(t_bank, 2),
            "fit_seconds": round(time.perf_counter() - start, 2),
            **{k: v for k, v in model_summary.items()},
        }
        return self.summary

    def _fit_supervised(self, bank_x: np.ndarray, cal_x: np.ndarray, log_scores: np.ndarray, labels: np.ndarray) -> float:
        """Fit the supervised logistic regression and the stacker; returns calibration ``threshold_metric``."""
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

        bank_y = np.zeros(len(bank_x), dtype=int)
        oof = np.zeros(len(labels))
        splitter = StratifiedKFold(n_splits=max(2, folds), shuffle=True, random_state=self.seed)
        for tr, te in splitter.split(cal_x, labels):
            params = train_lr(np.concatenate([bank_x, cal_x[tr]]), np.concatenate([bank_y, labels[tr]]))
            oof[te] = logit(params, cal_x[te])
        final = train_lr(np.concatenate([bank_x, cal_x]), np.concatenate([bank_y, labels]))

        normal = log_scores[labels == 0]
        a_mean, a_scale = float(normal.mean()), float(normal.std() + 1e-6)
        stack_x = np.stack([(log_scores - a_mean) / a_scale, oof], 1)
        stacker = LogisticRegression(C=float(cfg.get("stack_C", 1.0)), class_weight="balanced", max_iter=1000)
        stacker.fit(stack_x, labels)
        z = stack_x @ stacker.coef_[0] + stacker.intercept_[0]
        threshold, value = best_threshold(z, labels, self.threshold_metric, self._defect_weight)
        self.decision = {
            "sup_mean": final[0],
            "sup_scale": final[1],
            "sup_coef": final[2],
            "sup_bias": np.array([final[3]]),
            "stack_coef": stacker.coef_[0].astype(np.float64),
            "stack_bias": np.array([float(stacker.intercept_[0]) - threshold]),
            "anomaly_norm": np.array([a_mean, a_scale]),
        }
        return value

    # ------------------------------------------------------------------ predict
    def _gate_logit(self, log_scores: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        """Decision logits (defect when > 0) from log anomaly scores and, if supervised, pooled features."""
        d = self.decision
        if d is None:
            return self.map_sharpness * (log_scores - self.anomaly_threshold)
        sup = ((pooled - d["sup_mean"]) / d["sup_scale"]) @ d["sup_coef"] + d["sup_bias"][0]
        a = (log_scores - d["anomaly_norm"][0]) / d["anomaly_norm"][1]
        return d["stack_coef"][0] * a + d["stack_coef"][1] * sup + d["stack_bias"][0]

    def score_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Gate scores, raw anomaly scores and [0, 1] anomaly maps (image resolution) of HxWx3 uint8 images."""
        if not images:
            return np.zeros(0), np.zeros(0), []
        scores, pooled, log_maps = self._embed_images(images, False, self.decision is not None, True)
        gate = _sigmoid(self._gate_logit(np.log(scores + _EPS), pooled))
        maps = [
            _sigmoid(self.map_sharpness * (log_map.astype(np.float64) - self.anomaly_threshold)).astype(np.float32)[None]
            for log_map in log_maps
        ]
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
        extra = {
            "model": self.model_cfg,
            "image_size": list(self.image_size),
            "map_sharpness": self.map_sharpness,
            "supervised": self.decision is not None,
            "supervised_cfg": self.supervised_cfg,
            "tiles": self.tiles,
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
        self.summary = dict(extra.get("summary", {}))
        self.fitted = True

    def describe(self) -> dict[str, Any]:
        """Type, name, head config and the fit summary."""
        return {**super().describe(), "model": self.model_cfg, "image_size": list(self.image_size), "tiles": self.tiles,
                **self.summary}
