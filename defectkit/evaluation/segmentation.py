"""Pixel-level metrics: per-class IoU and mIoU over the data set, and pixel AUROC."""

from __future__ import annotations

import numpy as np

from defectkit.evaluation.base import Metric
from defectkit.evaluation.records import dense_hist
from defectkit.registry import METRICS


@METRICS.register_module()
class SegmentationIoU(Metric):
    """Data-set IoU per class (total intersection over total union) and their mean, ``miou``.

    Keys: ``iou.<class>`` for every class with ground truth or predictions, and ``miou``.
    """

    primary = "miou"

    def compute(self) -> dict[str, float]:
        inter: dict[str, int] = {}
        union: dict[str, int] = {}
        for record in self.records:
            for class_name, stats in (record.get("pixel") or {}).items():
                inter[class_name] = inter.get(class_name, 0) + stats["intersection"]
                union[class_name] = union.get(class_name, 0) + stats["union"]
        out = {f"iou.{c}": inter[c] / union[c] for c in sorted(union) if union[c] > 0}
        if out:
            out["miou"] = float(np.mean(list(out.values())))
        return out


@METRICS.register_module()
class PixelAUROC(Metric):
    """Pixel AUROC pooled over all pixels of all evaluated images, per class and averaged.

    Keys: ``pixel_auroc`` (mean over classes) and ``pixel_auroc.<class>`` when there are several.
    """

    primary = "pixel_auroc"

    def compute(self) -> dict[str, float]:
        pos: dict[str, np.ndarray] = {}
        neg: dict[str, np.ndarray] = {}
        for record in self.records:
            for class_name, stats in (record.get("pixel") or {}).items():
                if "pos_hist" not in stats:
                    continue
                pos[class_name] = pos.get(class_name, 0) + dense_hist(stats["pos_hist"])
                neg[class_name] = neg.get(class_name, 0) + dense_hist(stats["neg_hist"])
        values = {c: auroc_from_histograms(pos[c], neg[c]) for c in pos}
        values = {c: v for c, v in values.items() if v is not None}
        if not values:
            return {}
        out = {"pixel_auroc": float(np.mean(list(values.values())))}
        if len(values) > 1:
            out.update({f"pixel_auroc.{c}": v for c, v in values.items()})
        return out


def auroc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """AUROC of scores given as counts per ascending bin for positives and negatives (ties count half)."""
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    neg_below = np.cumsum(neg) - neg
    wins = float((pos * neg_below).sum()) + 0.5 * float((pos * neg).sum())
    return wins / (n_pos * n_neg)
