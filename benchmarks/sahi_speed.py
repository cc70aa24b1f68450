"""defectkit's batched sliced detection (the Tiling stage) against ``sahi.get_sliced_prediction``, same detector and slices.

Usage (sahi needs the non-headless opencv-python, so it lives in its own environment that sees the
main one's packages; never install it into the main environment)::

    python -m venv --system-site-packages /tmp/sahivenv && /tmp/sahivenv/bin/pip install sahi
    PYTHONPATH=$PWD /tmp/sahivenv/bin/python benchmarks/sahi_speed.py [ACNE04_ROOT] [--images 20]
        [--epochs 0] [--boxes-per-photo 12.1] [--min-score S] [--rounds 3] [--threads 2] [--out sahi_speed.json]

The detector is ``configs/skin_trouble.py``'s inner ``Detector`` (FCOS on EfficientNet-Lite0 + FPN,
512 px input, offline ImageNet backbone weights). By default its FPN and head are freshly
initialised (seeded), since speed does not depend on the weights; the score threshold is then set
so that a whole-photo pass keeps about ``--boxes-per-photo`` boxes (acne04's 12.1 per photo;
calibrated on 4 train photos), which gives the merge a realistic number of boxes. ``--epochs N``
instead trains it briefly (``--train-images`` photos of the config's train split; cached in
``--detector-dir``) and keeps the config's ``min_score``.

Both contenders call this one detector's ``detect``: defectkit's ``Tiling`` stage built from the
config's settings (320 px windows, overlap 0.2, the whole-image pass, GREEDYNMM on IOS 0.5, 8
windows per call, windows of every image in a batch of ``--batch-size`` photos pooled), and
``sahi.get_sliced_prediction`` on defectkit's SAHI adapter
(:class:`defectkit.integrations.sahi.DefectkitDetectionModel`) with the same slice size, overlap,
``perform_standard_pred=True``, postprocess and confidence threshold, once with SAHI's default
``batch_size=1`` and once with ``batch_size=8`` (its batched slice inference). The photos are the
first ``--images`` of the config's val split (decoded once, decoding excluded from the timing); the
test split is not read.

Printed and written (``--out``): photos/s per contender and round (``--rounds`` passes, in turn, so
shared cores load every contender alike), the medians, the ratios, whether the windows are the
same, and how far the merged boxes agree: box counts, images with equal counts, and the IoU of
each defectkit box with its best-matching SAHI box (one-to-one, by decreasing IoU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectkit.config import load_config  # noqa: E402
from defectkit.io.images import decode_record  # noqa: E402
from defectkit.registry import STAGES, build  # noqa: E402
from defectkit.runner import Runner  # noqa: E402
from defectkit.sample import Detections  # noqa: E402
from defectkit.stages.base import FitContext  # noqa: E402
from defectkit.tiling import slice_windows  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "skin_trouble.py"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (the cores are shared with other jobs)."""
    return [round(v, 2) for v in os.getloadavg()]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes ``a`` [N, 4] and ``b`` [M, 4]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def agreement(ours: Sequence[Detections], theirs: Sequence[np.ndarray]) -> dict[str, Any]:
    """How far two lists of per-image boxes agree: counts and one-to-one IoU matches (greedy by IoU)."""
    ious: list[float] = []
    equal_counts = 0
    for mine, other in zip(ours, theirs):
        a = np.asarray(mine.boxes, dtype=np.float64).reshape(-1, 4)
        b = np.asarray(other, dtype=np.float64).reshape(-1, 4)
        equal_counts += int(len(a) == len(b))
        matrix = box_iou(a, b)
        while matrix.size and matrix.max() > 0:
            i, j = np.unravel_index(int(matrix.argmax()), matrix.shape)
            ious.append(float(matrix[i, j]))
            matrix[i, :] = -1
            matrix[:, j] = -1
    matched = len(ious)
    total_ours = sum(len(d) for d in ours)
    total_theirs = sum(len(np.asarray(t).reshape(-1, 4)) for t in theirs)
    arr = np.asarray(ious) if ious else np.zeros(0)
    return {
        "boxes_defectkit": int(total_ours),
        "boxes_sahi": int(total_theirs),
        "images_with_equal_counts": int(equal_counts),
        "images": len(ours),
        "matched_pairs": int(matched),
        "pairs_iou_above_0.99": int((arr > 0.99).sum()),
        "pairs_iou_above_0.5": int((arr > 0.5).sum()),
        "mean_iou_of_pairs": round(float(arr.mean()), 4) if arr.size else None,
        "min_iou_of_pairs": round(float(arr.min()), 4) if arr.size else None,
    }


def sahi_boxes(result: Any) -> np.ndarray:
    """The xyxy boxes of a SAHI PredictionResult."""
    boxes = [p.bbox.to_xyxy() for p in result.object_prediction_list]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def build_detector(cfg: Any, parts: dict[str, list[Any]], args: argparse.Namespace) -> Any:
    """The config's inner Detector: ImageNet backbone with a freshly initialised head (``--epochs 0``), or
    briefly trained on acne04's train split and cached in ``--detector-dir``."""
    inner_cfg = dict(cfg.pipeline[0]["inner"])
    # One pass per window (no test-time input sizes): the same work SAHI is given, as docs/performance.md measured.
    inner_cfg.update(epochs=max(1, args.epochs), max_images=args.train_images, name="detector", tta_scales=(1.0,))
    detector = build(STAGES, inner_cfg)
    detector.classes = [str(c) for c in cfg.classes]
    if args.epochs == 0:
        detector.fresh_network()  # seeded: the same head every run
        detector.mark_fitted()
        print("detector: ImageNet backbone, freshly initialised FPN and head (speed does not depend on the weights)")
        return detector
    directory = Path(args.detector_dir)
    if detector.has_saved_state(directory):
        detector.load(directory, classes=list(cfg.classes))
        print(f"detector: loaded from {directory}")
        return detector
    start = time.perf_counter()
    context = FitContext(work_dir=directory, load_samples=lambda records: [decode_record(r) for r in records],
                         classes=list(cfg.classes), image_classes=list(cfg.image_classes), log=print)
    detector.fit(parts["train"], parts["val"][:0], context)
    detector.fitted = True
    detector.fit_classes = list(cfg.classes)
    directory.mkdir(parents=True, exist_ok=True)
    detector.save(directory)
    print(f"detector: trained {args.epochs} epochs on {args.train_images} photos in {time.perf_counter() - start:.0f} s, saved to {directory}")
    return detector


def set_score_threshold(detector: Any, images: Sequence[np.ndarray], boxes_per_photo: float) -> float:
    """Set the detector's score threshold so that a whole-photo pass keeps about ``boxes_per_photo`` boxes.

    An untrained head scores every location alike and low (FCOS's classifier starts at a prior of
    0.01), below the config's 0.25, so nothing would be left to merge; acne04 has 12.1 lesion boxes
    per photo (3,425 in 283), so
    the threshold is set where the whole-photo pass keeps about that many (the median over
    ``images`` of each photo's ``boxes_per_photo``-th best score), and the merge has a realistic load.
    """
    members = detector.members(detector.network("detect"))  # an ensemble's members, or the one network
    for member in members:
        member.score_thresh = 0.0
    detector.min_score = 0.0
    kth = []
    for found in detector.detect(list(images)):
        scores = np.sort(np.asarray(found.scores))[::-1]
        if len(scores):
            kth.append(float(scores[min(len(scores), int(round(boxes_per_photo))) - 1]))
    threshold = float(np.median(kth)) if kth else 0.0
    for member in members:
        member.score_thresh = threshold
    detector.min_score = threshold
    return threshold


def main() -> None:
    """Train (or load) the detector, time both sliced inferences in turn and compare their boxes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root", nargs="?", default=os.environ.get("DEFECTKIT_DATA_ACNE", "../shared/data/acne04"))
    parser.add_argument("--images", type=int, default=20, help="val photos timed")
    parser.add_argument("--epochs", type=int, default=0, help="brief training of the detector (0: untrained head)")
    parser.add_argument("--boxes-per-photo", type=float, default=12.1,
                        help="untrained head: score threshold keeping about this many boxes per whole photo (acne04's mean)")
    parser.add_argument("--train-images", type=int, default=64, help="train photos of that brief training")
    parser.add_argument("--detector-dir", default="/tmp/sahi_speed_detector", help="where the trained detector is cached")
    parser.add_argument("--min-score", type=float,
                        help="score threshold of both (default: the config's min_score for a trained detector, see --boxes-per-photo otherwise)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="photos per Tiling call (the runner's predict.batch_size)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if not Path(args.data_root).is_dir():
        sys.exit(f"{args.data_root}: not a folder; pass acne04's folder (valid/*.jpg + *.xml)")
    try:
        from sahi.predict import get_sliced_prediction
        from sahi.slicing import get_slice_bboxes

        from defectkit.integrations.sahi import DefectkitDetectionModel
    except ImportError as exc:
        sys.exit(f"sahi is not importable ({exc}); run with /tmp/sahivenv/bin/python (usage in the docstring)")

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"load_average_start": load_average(), "threads": args.threads}
    cfg = load_config(CONFIG)
    runner = Runner(cfg, CONFIG, data_root=args.data_root, work_dir=tempfile.mkdtemp(prefix="sahi_speed_"))
    torch.set_num_threads(args.threads)  # the runner sets every core; keep the requested count
    parts = runner.split(runner.records())
    detector = build_detector(cfg, parts, args)
    records = parts["val"][: args.images]
    samples = [decode_record(r) for r in records]
    images = [s.image for s in samples if s.ok]
    if args.min_score is not None:
        detector.min_score = float(args.min_score)
        # torchvision's own cut inside the model must not be above it
        for member in detector.members(detector.network("detect")):
            member.score_thresh = min(float(member.score_thresh), float(args.min_score))
    elif args.epochs == 0:
        # calibrated on train photos, so the timed val photos play no part in it
        calibration = [s.image for s in (decode_record(r) for r in parts["train"][:4]) if s.ok]
        set_score_threshold(detector, calibration, args.boxes_per_photo)
    min_score = float(detector.min_score)
    print(f"score threshold {min_score:.4f}")

    tiling_cfg = {k: v for k, v in dict(cfg.pipeline[0]).items() if k not in ("inner", "type", "choose_on_val")}
    tiling = build(STAGES, {"type": "Tiling", **tiling_cfg, "inner": detector, "choose_on_val": False})
    merge = tiling.merge
    slice_h, slice_w = tiling.slice_size
    overlap_h, overlap_w = tiling.overlap
    result["detector"] = "untrained head" if args.epochs == 0 else f"trained {args.epochs} epochs on {args.train_images} photos"
    result["setting"] = {"slice_size": [slice_h, slice_w], "overlap": [overlap_h, overlap_w], "full_image": tiling.full_image,
                         "merge": merge, "min_score": min_score, "window_batch": tiling.batch_size,
                         "detector_image_size": list(detector.image_size)}

    result["images"] = len(images)
    result["image_sizes"] = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    same_windows = all(
        [tuple(w) for w in get_slice_bboxes(im.shape[0], im.shape[1], slice_h, slice_w, True, overlap_h, overlap_w)]
        == slice_windows(im.shape[0], im.shape[1], slice_h, slice_w, overlap_h, overlap_w)
        for im in images
    )
    result["same_windows"] = same_windows
    print(f"{len(images)} val photos {result['image_sizes']}, windows identical to SAHI's: {same_windows}")

    model = DefectkitDetectionModel(detector, confidence_threshold=min_score)

    def run_sahi(batch_size: int) -> Callable[[], list[np.ndarray]]:
        def run() -> list[np.ndarray]:
            return [sahi_boxes(get_sliced_prediction(
                image, model, slice_height=slice_h, slice_width=slice_w, overlap_height_ratio=overlap_h,
                overlap_width_ratio=overlap_w, perform_standard_pred=tiling.full_image, postprocess_type=merge["method"],
                postprocess_match_metric=merge["match_metric"], postprocess_match_threshold=merge["threshold"],
                postprocess_class_agnostic=merge["class_agnostic"], verbose=0, batch_size=batch_size,
                force_postprocess_type=True,
            )) for image in images]
        return run

    def run_tiling() -> list[Detections]:
        out: list[Detections] = []
        for start in range(0, len(images), args.batch_size):
            out.extend(tiling.detect(images[start : start + args.batch_size]))
        return out

    contenders: dict[str, Callable[[], list[Any]]] = {
        "sahi_batch1": run_sahi(1),
        "sahi_batch8": run_sahi(8),
        "defectkit_tiling": run_tiling,
    }
    with torch.inference_mode():
        detector.detect(images[:2])  # warm-up
    speeds: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, list[Any]] = {}
    for round_index in range(args.rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            outputs[name] = run()
            speeds[name].append(round(len(images) / (time.perf_counter() - start), 3))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {v[-1]}" for n, v in speeds.items()) + f" photos/s; load {load_average()}")
    medians = {name: statistics.median(v) for name, v in speeds.items()}
    result["photos_per_s"] = speeds
    result["photos_per_s_median"] = medians
    result["ratio_tiling_to_sahi_batch1"] = round(medians["defectkit_tiling"] / medians["sahi_batch1"], 2)
    result["ratio_tiling_to_sahi_batch8"] = round(medians["defectkit_tiling"] / medians["sahi_batch8"], 2)
    result["agreement_with_sahi_batch1"] = agreement(outputs["defectkit_tiling"], outputs["sahi_batch1"])
    result["agreement_with_sahi_batch8"] = agreement(outputs["defectkit_tiling"], outputs["sahi_batch8"])
    result["load_average_end"] = load_average()
    for name in contenders:
        print(f"{name:20s} {medians[name]:8.3f} photos/s (median of {args.rounds})")
    print(f"defectkit Tiling / SAHI batch 1: {result['ratio_tiling_to_sahi_batch1']}x, / SAHI batch 8: {result['ratio_tiling_to_sahi_batch8']}x")
    print(f"boxes, defectkit vs SAHI (batch 1): {result['agreement_with_sahi_batch1']}")
    print(f"boxes, defectkit vs SAHI (batch 8): {result['agreement_with_sahi_batch8']}")
    print(f"load average: start {result['load_average_start']}, end {result['load_average_end']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
