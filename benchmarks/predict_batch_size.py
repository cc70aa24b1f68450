"""Prediction speed of each network stage against its prediction batch size (img/s on this machine).

Builds the reference configs' network stages with random weights (speed does not depend on them)
and times their own prediction calls on random 800x600 photos, once per ``predict_batch_size``:

* the car segmenter: DeepLabV3+ (EfficientNet-Lite0, decoder 256, four classes) at 288x384,
  without test-time flip (``Segmenter.probability_maps``);
* a U-Net (decoder 128-8) at 512x512 (the issue's 512 px figure);
* the classifier gate: EfficientNet-Lite0 at 224x224 (``ClassifierGate`` probabilities);
* the skin detector: FCOS on the Lite0 FPN at 512x512 (``Detector.detect``).

Each figure is images per second over ``--images`` photos after one warm-up call, on the CPU with
``--threads`` intra-op threads. Run it on idle cores: another job on the same cores measures
contention, not the batch size. The stages' CPU default (``CPU_PREDICT_BATCH_SIZE``) was chosen
from this table (docs/performance.md).

Usage:
    python benchmarks/predict_batch_size.py [--threads 2] [--images 32] [--sizes 1 2 4 8 16] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from defectkit.stages.classifier_gate import ClassifierGate
from defectkit.stages.detect import Detector
from defectkit.stages.network import NetworkStage
from defectkit.stages.segment import Segmenter

CAR_CLASSES = ["scratch", "dent", "spacing", "breakage"]


def untrained(stage: NetworkStage, classes: Sequence[str]) -> NetworkStage:
    """``stage`` with a randomly initialised network for ``classes``, ready to predict on the CPU."""
    stage.classes = list(classes)
    stage.pretrained = False
    stage.fresh_network()
    stage.mark_fitted()
    return stage


def stages() -> dict[str, tuple[NetworkStage, Callable[[NetworkStage, list[np.ndarray]], object]]]:
    """Each benchmarked stage with the call that predicts a list of photos."""
    gate = untrained(ClassifierGate(image_size=(224, 224)), ["normal", "damaged"])
    return {
        "car segmenter, DeepLabV3+ 288x384": (
            untrained(Segmenter(model=dict(type="DeepLabV3Plus", decoder_channels=256), image_size=(288, 384)), CAR_CLASSES),
            lambda s, ims: s.probability_maps(ims),  # type: ignore[attr-defined]
        ),
        "U-Net 512x512": (
            untrained(Segmenter(model=dict(type="Unet", decoder_channels=(128, 64, 32, 16, 8)), image_size=(512, 512)), CAR_CLASSES),
            lambda s, ims: s.probability_maps(ims),  # type: ignore[attr-defined]
        ),
        "classifier gate, Lite0 224x224": (gate, lambda s, ims: s._probabilities(ims)),  # type: ignore[attr-defined]
        "skin detector, FCOS 512x512": (
            untrained(Detector(model=dict(type="fcos"), image_size=(512, 512)), ["acne"]),
            lambda s, ims: s.detect(ims),  # type: ignore[attr-defined]
        ),
    }


def images_per_second(stage: NetworkStage, run: Callable[[NetworkStage, list[np.ndarray]], object], photos: list[np.ndarray],
                      repeats: int = 1) -> float:
    """Photos per second of ``run(stage, photos)``: the median of ``repeats`` timed calls after one warm-up call."""
    run(stage, photos[: max(stage.prediction_batch_size(), 2)])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(stage, photos)
        rates.append(len(photos) / (time.perf_counter() - start))
    return round(statistics.median(rates), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--images", type=int, default=32, help="photos per timed call")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="prediction batch sizes")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (600, 800, 3), dtype=np.uint8) for _ in range(args.images)]
    results: dict[str, dict[str, float]] = {}
    for name, (stage, run) in stages().items():
        results[name] = {}
        for size in args.sizes:
            stage.predict_batch_size = size
            results[name][str(size)] = round(images_per_second(stage, run, photos), 1)
            print(f"{name}: batches of {size}: {results[name][str(size)]} img/s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "images": args.images, "img_per_s": results}, f, indent=2)


if __name__ == "__main__":
    main()
