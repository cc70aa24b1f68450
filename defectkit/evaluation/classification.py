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

    primary = "image_auroc"

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

