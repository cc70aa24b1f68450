"""Prediction speed of the OpenMMLab heads against the default heads they stand beside (img/s on this machine).

Needs the [openmmlab] extra (``bash scripts/install-openmmlab.sh``). Builds each stage with random
weights (speed does not depend on them) and times its own prediction call on random 800x600 photos,
in the stages' CPU default batches of 2, on the CPU with ``--threads`` intra-op threads:

* skin detector at 640x640 (the skin configs' input): FCOS (``configs/skin_trouble.py``) against
  mmdet's TOOD and ATSS on the same Lite0 FPN (presets ``tood_lite`` and ``atss_lite``), via
  ``Detector.detect``;
* car segmenter at 288x384 (the car configs' input): smp's DeepLabV3+ (decoder 256,
  ``configs/car_damage.py``) against mmseg's (preset ``deeplabv3plus_lite``,
  ``configs/car_damage_mmseg.py``), one pass without test-time augmentation, via
  ``Segmenter.probability_maps``.

Each figure is the median of ``--repeats`` timed calls over ``--images`` photos after one warm-up
call. Run it on idle cores.

Usage:
    python benchmarks/openmmlab_heads_speed.py [--threads 2] [--images 16] [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import torch
from predict_batch_size import CAR_CLASSES, images_per_second, untrained

from defectkit.stages.detect import Detector
from defectkit.stages.network import NetworkStage
from defectkit.stages.segment import Segmenter


def stages() -> dict[str, tuple[NetworkStage, Callable[[NetworkStage, list[np.ndarray]], object]]]:
    """Each benchmarked stage with the call that predicts a list of photos."""
    def detector(model: dict) -> NetworkStage:
        return untrained(Detector(model=model, image_size=(640, 640)), ["lesion"])

    def segmenter(model: dict) -> NetworkStage:
        return untrained(Segmenter(model=model, image_size=(288, 384)), CAR_CLASSES)

    def detect(stage: NetworkStage, images: list[np.ndarray]) -> object:
        return stage.detect(images)  # type: ignore[attr-defined]

    def segment(stage: NetworkStage, images: list[np.ndarray]) -> object:
        return stage.probability_maps(images)  # type: ignore[attr-defined]

    return {
        "skin detector 640x640, FCOS (default)": (detector(dict(type="fcos")), detect),
        "skin detector 640x640, mmdet TOOD-Lite0": (detector(dict(type="mmdet", config="tood_lite")), detect),
        "skin detector 640x640, mmdet ATSS-Lite0": (detector(dict(type="mmdet", config="atss_lite")), detect),
        "car segmenter 288x384, smp DeepLabV3+ (default)": (segmenter(dict(type="DeepLabV3Plus", decoder_channels=256)), segment),
        "car segmenter 288x384, mmseg DeepLabV3+": (segmenter(dict(type="mmseg", config="deeplabv3plus_lite")), segment),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--images", type=int, default=16, help="photos per timed call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per head (the median is reported)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (600, 800, 3), dtype=np.uint8) for _ in range(args.images)]
    results: dict[str, float] = {}
    for name, (stage, run) in stages().items():
        results[name] = images_per_second(stage, run, photos, args.repeats)
        print(f"{name}: {results[name]} img/s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "images": args.images, "img_per_s": results}, f, indent=2)


if __name__ == "__main__":
    main()
