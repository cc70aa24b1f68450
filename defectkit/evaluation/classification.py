"""Image-level metrics: AUROC, average precision, macro F1, accuracy, defect recall and precision."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from defectkit.evaluation.base import Metric
from defectkit.registry import METRICS


@METRICS.register_module()
class ImageClassification(Metric):
    """Image-level defect/normal metrics from the gate's score and decision.

    Keys: ``image_auroc``, ``image_ap``, ``image_f1_macro``, ``image_accuracy``,
    ``image_recall_defect``, ``image_precision_defect`` (those that the available data allows).
    """

    def compute(self) -> dict[str, float]:
        rows = [r for r in self.records if r.get("label") is not None and "error" not in r]
        labels = np.array([int(r["label"] != 0) for r in rows])
        out: dict[str, float] = {}
        scored = [(lab, r["score"]) for lab, r in zip(labels, rows) if r.get("score") is not None]
        if scored and len({lab for lab, _ in scored}) == 2:
            y, s = np.array([a for a, _ in scored]), np.array([b for _, b in scored])
            out["image_auroc"] = float(roc_auc_score(y, s))
            out["image_ap"] = float(average_precision_score(y, s))
        decided = [(lab, r["pred"]) for lab, r in zip(labels, rows) if r.get("pred") is not None]
        if decided:
            y, p = np.array([a for a, _ in decided]), np.array([b for _, b in decided])
            out["image_f1_macro"] = float(f1_score(y, p, average="macro", labels=[0, 1], zero_division=0))
            out["image_accuracy"] = float((y == p).mean())
            if y.sum():
                out["image_recall_defect"] = float((p[y == 1] == 1).mean())
            if p.sum():
                out["image_precision_defect"] = float((y[p == 1] == 1).mean())
        return out


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The decision threshold that maximises macro F1 on ``scores`` (predict defect when score >= t).

    Returns:
        ``(threshold, macro_f1)``; the threshold is the midpoint between the two scores it separates,
        so it generalises better than the score of a training image itself.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores)
    sorted_scores, sorted_labels = scores[order], labels[order]
    n_pos, n = int(labels.sum()), len(labels)
    best = (float(sorted_scores[0]) - 1.0, -1.0)
    # Predict positive for indices >= i; evaluate every cut in one pass.
    pos_below = np.concatenate([[0], np.cumsum(sorted_labels)])
    for i in range(n + 1):
        if 0 < i < n and sorted_scores[i] == sorted_scores[i - 1]:
            continue
        fn = pos_below[i]
        tp = n_pos - fn
        fp = (n - i) - tp
        tn = i - fn
        f1_pos = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        f1_neg = 2 * tn / (2 * tn + fn + fp) if tn + fn + fp else 1.0
        macro = (f1_pos + f1_neg) / 2
        if macro > best[1]:
            if i == 0:
                threshold = float(sorted_scores[0]) - 1e-6
            elif i == n:
                threshold = float(sorted_scores[-1]) + 1e-6
            else:
                threshold = float((sorted_scores[i - 1] + sorted_scores[i]) / 2)
            best = (threshold, macro)
    return best
