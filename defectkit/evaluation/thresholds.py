"""Choosing a decision threshold on scores: the one that maximises an image-level metric."""

from __future__ import annotations

import numpy as np

THRESHOLD_METRICS = ("f1_macro", "f1_defect", "balanced_accuracy")


def threshold_metric_curve(
    scores: np.ndarray, labels: np.ndarray, metric: str = "f1_macro", defect_weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Every useful threshold on ``scores`` (predict defect when ``score > threshold``) and the metric at each.

    Args:
        scores: Higher = more defective.
        labels: 1 for defect, 0 for normal.
        metric: ``"f1_macro"`` (mean F1 of both classes), ``"f1_defect"`` or ``"balanced_accuracy"``.
        defect_weight: Weight of each defect relative to a normal image (to evaluate as if the classes
            came in another proportion than in ``labels``).

    Returns:
        ``(thresholds, values)``, thresholds ascending (midpoints between distinct scores, plus one
        below the lowest and one above the highest).
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"threshold_metric must be one of {THRESHOLD_METRICS}, got {metric!r}")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.nonzero(np.diff(s) > 0)[0]  # cut after index i: s[:i+1] predicted normal
    spread = max(1e-6, float(s[-1] - s[0]) * 1e-3) if s.size else 1.0
    thresholds = np.concatenate([[s[0] - spread], (s[distinct] + s[distinct + 1]) / 2, [s[-1] + spread]])
    n_below = np.concatenate([[0], distinct + 1, [s.size]])
    cum_def = np.concatenate([[0], np.cumsum(y)])
    fn = cum_def[n_below] * float(defect_weight)
    tn = (n_below - cum_def[n_below]).astype(np.float64)
    pos, neg = float(y.sum()) * float(defect_weight), float((~y).sum())
    tp, fp = pos - fn, neg - tn

    def f1(t: np.ndarray, f_pos: np.ndarray, f_neg: np.ndarray) -> np.ndarray:
        """F1 from true positives, false positives and false negatives of one class."""
        denom = 2 * t + f_pos + f_neg
        return np.where(denom > 0, 2 * t / np.maximum(denom, 1e-12), 0.0)

    if metric == "f1_defect":
        values = f1(tp, fp, fn)
    elif metric == "f1_macro":
        values = 0.5 * (f1(tp, fp, fn) + f1(tn, fn, fp))
    else:
        values = 0.5 * (tp / max(pos, 1e-12) + tn / max(neg, 1e-12))
    return thresholds, values


def best_threshold(
    scores: np.ndarray, labels: np.ndarray, metric: str = "f1_macro", defect_weight: float = 1.0
) -> tuple[float, float]:
    """Threshold maximising ``metric`` (the middle one of a run of equally good thresholds) and its value."""
    thresholds, values = threshold_metric_curve(scores, labels, metric, defect_weight)
    best = np.flatnonzero(values >= values.max() - 1e-12)
    pick = best[len(best) // 2]
    return float(thresholds[pick]), float(values[pick])
