"""Does the car mask policy's choice rule generalise? Calibrate on half of the validation photos, score the other half.

Usage::

    python benchmarks/car_policy_rule_check.py WORK_DIR --data-root ../shared/data/aihub_car_damage [--repeats 3]

``WORK_DIR`` is a trained car work dir (``defectkit run configs/car_damage.py ...``). The stages
before the policy run once on the validation photos of its split; then, ``repeats`` times, the
photos are halved at random and each half calibrates a :class:`CalibratedMaskPolicy` variant that
is scored (data-set IoU per class) on the other half. Only validation photos are read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectkit.config import load_config  # noqa: E402
from defectkit.data.masks import ground_truth_masks  # noqa: E402
from defectkit.io.images import decode_record  # noqa: E402
from defectkit.registry import STAGES, build  # noqa: E402
from defectkit.runner import Runner  # noqa: E402
from defectkit.sample import Sample  # noqa: E402
from defectkit.stages.base import FitContext  # noqa: E402
from defectkit.stages.mask_policy import apply_rule  # noqa: E402

VARIANTS = {
    "largest area within 0.005 IoU (shipped)": {},
    "best IoU (area_tolerance=0)": dict(area_tolerance=0.0),
    "rule's own min_area only": dict(min_area_grid=()),
    "areas up to 1024": dict(min_area_grid=(0, 64, 256, 1024)),
}


def data_set_iou(policy, samples: list[Sample]) -> dict[str, float]:
    inter: dict[str, int] = {}
    union: dict[str, int] = {}
    for s in samples:
        truth, _ = ground_truth_masks(s.record, s.prob_maps.shape[-2:], s.map_classes, scale=s.scale)
        for channel, name in enumerate(s.map_classes):
            mask = apply_rule(s.prob_maps[channel], policy.rule_for(name))
            inter[name] = inter.get(name, 0) + int(np.logical_and(mask, truth[channel]).sum())
            union[name] = union.get(name, 0) + int(np.logical_or(mask, truth[channel]).sum())
    return {k: inter[k] / max(union[k], 1) for k in inter}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    config = Path(args.work_dir) / "config.py"
    cfg = load_config(config)
    runner = Runner(cfg, config, data_root=args.data_root, work_dir=args.work_dir)
    val = runner.split(runner.records())["val"]
    runner.load_weights()
    pipeline = runner.pipeline
    samples: list[Sample] = []
    for start in range(0, len(val), 8):
        batch = [decode_record(r, max_side=runner.max_side) for r in val[start : start + 8]]
        pipeline.predict(batch, upto=len(pipeline.stages) - 1)
        samples += [s for s in batch if s.prob_maps is not None]
    policy_cfg = dict(cfg.pipeline[-1])
    rng = np.random.default_rng(0)
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        order = rng.permutation(len(samples))
        halves = [[samples[i] for i in order[: len(order) // 2]], [samples[i] for i in order[len(order) // 2 :]]]
        for fit_half, score_half in ((halves[0], halves[1]), (halves[1], halves[0])):
            for name, options in VARIANTS.items():
                policy = build(STAGES, {**policy_cfg, **options})
                context = FitContext(work_dir=Path(args.work_dir), load_samples=lambda _records, s=fit_half: s, log=lambda *_: None)
                policy.fit([], [s.record for s in fit_half], context)
                scores[name].append(data_set_iou(policy, score_half))
    table = {}
    for name, rows in scores.items():
        per_class = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
        table[name] = {**per_class, "miou": round(float(np.mean(list(per_class.values()))), 4)}
        print(f"{name}: {table[name]}")
    print(json.dumps({"val_photos": len(samples), "repeats": args.repeats, "variants": table}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
