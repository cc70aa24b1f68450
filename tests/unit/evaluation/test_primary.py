"""Every metric names the one key that stands for it (``Metric.primary``), and computes it."""

from __future__ import annotations

import numpy as np
import pytest

from defectkit.evaluation.records import make_eval_record
from defectkit.registry import METRICS, build, registered_names
from defectkit.sample import Record, Sample


def _records() -> list[dict]:
    """Two images carrying what every metric reads: a gate score and decision, pixel statistics, boxes."""
    records = []
    for i, label in enumerate((1, 0)):
        truth = np.zeros((8, 8), bool)
        truth[2:5, 2:5] = label == 1
        polygons = {"defect": [[[[2, 2], [5, 2], [5, 5], [2, 5]]]]} if label else {}
        sample = Sample(Record(f"{i}.png", label=label, polygons=polygons), image=np.zeros((8, 8, 3), np.uint8),
                        prob_maps=truth[None].astype(np.float32), map_classes=["defect"])
        record = make_eval_record(sample, ["defect"])
        record.update(score=0.9 if label else 0.1, pred=label)
        record["boxes"] = {"gt": [["defect", 2, 2, 5, 5]] if label else [], "pred": [["defect", 0.8, 2, 2, 5, 5]] if label else []}
        records.append(record)
    return records


@pytest.mark.parametrize("name", [n for n in registered_names(METRICS) if "." not in n])  # the core metrics
def test_each_metric_declares_a_primary_key_that_it_computes(name: str):
    metric = build(METRICS, dict(type=name), classes=["defect"])
    assert metric.primary is not None
    for record in _records():
        metric.update(record)
    assert metric.primary in metric.compute()
