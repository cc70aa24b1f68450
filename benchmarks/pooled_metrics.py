"""A config's metrics over the evaluation records of several runs pooled, e.g. the held-out folds of
``defectkit cv`` evaluated again with another setting.

``defectkit cv`` pools its folds' own evaluations into ``cv/cv.json``; a post-processing setting that
needs no retraining (a detector's ``tta_scales``, a score cut) is compared on the same held-out folds
by evaluating each fold's work dir again with ``--cfg-options`` and pooling those records here, so
every development image counts once and the test split is never read.

Usage:
    defectkit cv configs/skin_trouble.py --data-root D --work-dir W --folds 3
    for k in 0 1 2; do
        defectkit eval configs/skin_trouble.py --data-root D --work-dir W/cv/fold$k --split test \\
            --out W/cv/fold$k/eval_tta --cfg-options "pipeline.0.inner.tta_scales=(1.0,0.9)"
    done
    python benchmarks/pooled_metrics.py configs/skin_trouble.py W/cv/fold*/eval_records.jsonl
    python benchmarks/pooled_metrics.py configs/skin_trouble.py W/cv/fold*/eval_tta/eval_records.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from defectkit.config import load_config
from defectkit.io.results import ResultLog
from defectkit.runner import compute_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("records", type=Path, nargs="+", help="eval_records.jsonl files (one per run or fold)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    pooled, keys = [], set()
    for path in args.records:
        records = ResultLog(path, key_field="key").read()
        clash = keys.intersection(r["key"] for r in records)
        if clash:
            raise SystemExit(f"{path}: {len(clash)} image(s) already counted in another file (e.g. {sorted(clash)[0]})")
        keys.update(r["key"] for r in records)
        pooled.extend(records)
    metrics = compute_metrics(cfg.get("metrics", []), list(cfg.get("classes", [])), pooled)
    print(json.dumps({"n_images": len(pooled), "files": len(args.records), **metrics}, indent=2, default=str))


if __name__ == "__main__":
    main()
