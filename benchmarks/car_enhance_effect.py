"""Effect of the enhance stage on segmentation of dark photos: the test split darkened, with and without it.

Usage::

    python benchmarks/car_enhance_effect.py configs/car_damage.py --work-dir work_dirs/car_unet \\
        --data-root ../shared/data/aihub_car_damage [--factor 0.35 --gamma 1.5] [--out effect.json]

Uses a trained work dir (``defectkit run`` first). Every test image is decoded once and scored
three ways with the config's pipeline: as photographed; darkened with
:func:`defectkit.stages.enhance.darken` (exposure ``factor``, shadow ``gamma``) through the whole
pipeline (the enhance stage's luminance rule decides which images it brightens); and darkened
with the enhance stage removed. Prints per-class IoU and mIoU (the SegmentationIoU metric the
runner uses) and how many darkened images the rule enhanced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectkit.config import load_config  # noqa: E402
from defectkit.evaluation.records import make_eval_record  # noqa: E402
from defectkit.evaluation.segmentation import SegmentationIoU  # noqa: E402
from defectkit.io.images import decode_record  # noqa: E402
from defectkit.pipeline import Pipeline  # noqa: E402
from defectkit.runner import Runner  # noqa: E402
from defectkit.sample import Sample  # noqa: E402
from defectkit.stages.enhance import darken  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--factor", type=float, default=0.35)
    parser.add_argument("--gamma", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="only the first N test images (a quick check)")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()

    runner = Runner(load_config(args.config), args.config, data_root=args.data_root, work_dir=args.work_dir)
    runner.load_weights()
    test = runner.split(runner.records())["test"][: args.limit]
    stages = runner.pipeline.stages
    enhancers = [s for s in stages if hasattr(s, "should_enhance")]  # ZeroDce, Clahe, Gamma
    variants = {
        "original": (Pipeline(stages), False),
        "darkened, with enhance": (Pipeline(stages), True),
        "darkened, no enhance": (Pipeline([s for s in stages if s not in enhancers]), True),
    }
    metrics = {name: SegmentationIoU(runner.classes) for name in variants}
    enhanced = 0
    for start in range(0, len(test), args.batch_size):
        decoded = [decode_record(r, max_side=runner.max_side) for r in test[start : start + args.batch_size]]
        decoded = [s for s in decoded if s.ok]
        for name, (pipeline, dark) in variants.items():
            batch = [
                Sample(record=s.record, image=darken(s.image, args.factor, args.gamma) if dark else s.image.copy(),
                       scale=s.scale, original_size=s.original_size)
                for s in decoded
            ]
            pipeline.predict(batch)
            if name == "darkened, with enhance":
                enhanced += sum(1 for s in batch if s.enhancement is not None and s.enhancement.enhanced)
            for sample in batch:
                metrics[name].update(make_eval_record(sample, runner.classes))
    table = {name: metric.compute() for name, metric in metrics.items()}
    table["darkened images enhanced"] = {"count": enhanced, "of": len(test)}
    print(json.dumps(table, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
