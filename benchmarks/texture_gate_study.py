"""Texture-defect gate study on magnetic_tile: PaDiM vs PatchCore variants, with and without the supervised part.

Usage::

    python benchmarks/texture_gate_study.py [DATA_ROOT] [--quick] [--out results.json]

``DATA_ROOT`` (or env ``DEFECTKIT_DATA``, default ``../shared/data``) must contain ``magnetic_tile/``
(or be it). The split is ``split_records(records, (0.7, 0.1, 0.2), seed=0)``; every variant is fitted
on train+val (normal images for the anomaly model, labelled defects for calibration) in two regimes
(all labelled defects, 30 labelled defects) and evaluated on test: fit seconds, predict images/s
(decoding excluded), image AUROC of ``gate_score``, image macro F1 of ``gate_label`` and pixel AUROC
of ``prob_maps`` against the binarised masks (>127), over all test images.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectkit.data.split import split_records  # noqa: E402
from defectkit.io.images import load_image, load_mask  # noqa: E402
from defectkit.registry import STAGES, build  # noqa: E402
from defectkit.sample import Record, Sample  # noqa: E402
from defectkit.stages.base import FitContext  # noqa: E402

PC = dict(type="PatchCore", layers=(2, 3))
VARIANTS: dict[str, dict] = {
    "padim_l123_128": dict(model=dict(type="Padim", layers=(1, 2, 3), n_features=100), image_size=(128, 128)),
    "patchcore_256_k10000_max": dict(model=dict(PC, coreset_size=10000, score="max"), image_size=(256, 256)),
    "patchcore_128_k5000_mean": dict(model=dict(PC, coreset_size=5000, score="mean"), image_size=(128, 128)),
    "patchcore_96_k1000_mean": dict(model=dict(PC, coreset_size=1000, score="mean"), image_size=(96, 96)),
    "patchcore_96_k5000_mean": dict(model=dict(PC, coreset_size=5000, score="mean"), image_size=(96, 96)),
    "patchcore_96_k5000_mean+sup": dict(
        model=dict(PC, coreset_size=5000, score="mean"), image_size=(96, 96), supervised=dict(C=0.1)
    ),
    "patchcore_96_k20000_mean": dict(model=dict(PC, coreset_size=20000, score="mean"), image_size=(96, 96)),
    "patchcore_96_k20000_mean+sup_l4_224": dict(
        model=dict(PC, coreset_size=20000, score="mean"),
        image_size=(96, 96),
        supervised=dict(C=0.1, layers=(4,), image_size=(224, 224)),
    ),
    "patchcore_96_k5000_mean+sup_l4_224": dict(
        model=dict(PC, coreset_size=5000, score="mean"),
        image_size=(96, 96),
        supervised=dict(C=0.1, layers=(4,), image_size=(224, 224)),
    ),
}
QUICK = ("patchcore_96_k20000_mean", "patchcore_96_k20000_mean+sup_l4_224")


def magnetic_tile_records(root: Path) -> list[Record]:
    """Records of ``MT_<class>/Imgs/*.jpg``: label 0 for MT_Free, else 1; mask = same-name .png."""
    records = []
    for folder in sorted(glob.glob(str(root / "MT_*"))):
        category = os.path.basename(folder)[3:]
        for path in sorted(glob.glob(os.path.join(folder, "Imgs", "*.jpg"))):
            records.append(
                Record(path=path, label=0 if category == "Free" else 1, category=category, mask_path=path[:-4] + ".png")
            )
    return records


class ImageCache:
    """Decodes each image once and hands out fresh Samples (the study fits many variants)."""

    def __init__(self) -> None:
        self.images: dict[str, np.ndarray] = {}

    def load_samples(self, records) -> list[Sample]:
        """Samples with decoded images (errors recorded, not raised)."""
        out = []
        for record in records:
            try:
                if record.path not in self.images:
                    self.images[record.path] = load_image(record.path)
                out.append(Sample(record=record, image=self.images[record.path]))
            except Exception as exc:  # noqa: BLE001 - a study keeps going
                out.append(Sample(record=record, error=str(exc)))
        return out


def evaluate(gate, test: list[Record], cache: ImageCache, masks: dict[str, np.ndarray]) -> dict:
    """Predict the test records and compute image/pixel metrics."""
    samples = [s for s in cache.load_samples(test) if s.ok]
    start = time.perf_counter()
    for i in range(0, len(samples), gate.batch_size):
        gate.predict(samples[i : i + gate.batch_size])
    seconds = time.perf_counter() - start
    y = np.array([s.record.label for s in samples])
    scores = np.array([s.gate_score for s in samples])
    pred = np.array([s.gate_label == "defect" for s in samples]).astype(int)
    pix_scores = np.concatenate([s.prob_maps[0].ravel() for s in samples])
    pix_true = np.concatenate([masks[s.record.path].ravel() for s in samples])
    return {
        "predict_img_per_s": round(len(samples) / seconds, 1),
        "image_auroc": round(float(roc_auc_score(y, scores)), 4),
        "image_f1_macro": round(float(f1_score(y, pred, average="macro")), 4),
        "pixel_auroc": round(float(roc_auc_score(pix_true, pix_scores)), 4),
        "test_images": len(samples),
    }


def main() -> None:
    """Run the study and print a table (and write JSON with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root", nargs="?", default=os.environ.get("DEFECTKIT_DATA", "../shared/data"))
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--variants", nargs="*", help="names of variants to run (default: all)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(args.data_root)
    if not list(root.glob("MT_*")):
        root = root / "magnetic_tile"
    records = magnetic_tile_records(root)
    if not records:
        sys.exit(f"no magnetic_tile images under {args.data_root}")
    parts = split_records(records, (0.7, 0.1, 0.2), seed=0)
    print({k: len(v) for k, v in parts.items()}, flush=True)
    cache = ImageCache()
    masks = {}
    for record in parts["test"]:
        image = cache.load_samples([record])[0].image
        masks[record.path] = load_mask(record.mask_path, shape=image.shape[:2])
    names = args.variants or (list(QUICK) if args.quick else list(VARIANTS))
    context = FitContext(work_dir=Path("."), load_samples=cache.load_samples, log=lambda m: None)
    results = []
    header = f"{'variant':30s} {'defects':>7s} {'fit_s':>6s} {'coreset':>7s} {'img/s':>6s} {'AUROC':>6s} {'F1mac':>6s} {'pxAUROC':>7s} {'calF1':>6s}"
    print(header, flush=True)
    for name in names:
        for limit in (None, 30):
            gate = build(STAGES, dict(type="AnomalyGate", max_labelled_defects=limit, **VARIANTS[name]))
            summary = gate.fit(parts["train"], parts["val"], context)
            row = {"variant": name, "max_labelled_defects": limit, **summary, **evaluate(gate, parts["test"], cache, masks)}
            results.append(row)
            print(
                f"{name:30s} {row['labelled_defects']:7d} {row['fit_seconds']:6.1f} {str(row.get('coreset_size', '-')):>7s} "
                f"{row['predict_img_per_s']:6.1f} {row['image_auroc']:6.4f} {row['image_f1_macro']:6.4f} "
                f"{row['pixel_auroc']:7.4f} {row['calibration_macro_f1']:6.4f}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
