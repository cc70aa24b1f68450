"""Car pipeline throughput on CPU: gate, U-Net and the whole run on a stream where 10% of photos are damaged.

Usage::

    python benchmarks/car_pipeline_speed.py [--work-root /tmp/car_speed] [--stream 300] [--out speed.json]
        [--runtime torch|onnxruntime|openvino] [--int8] [--predict-options KEY=VALUE ...]

Three measurements, all with ``torch.set_num_threads`` = every core:

1. Gate forward: the classifier gate's EfficientNet-Lite0 at 224 px, batches of 32, images/s
   (decoding excluded).
2. Segmenter forward: the car config's U-Net at 512x512 (and at the config's input size), batches
   of 8, images/s; with onnxruntime installed (``[export]`` extra) also the ONNX export's images/s.
3. End to end: the car config (gate switched on) is trained with small settings on generated
   800x600 car photos, then ``defectkit predict`` runs on a separate generated stream of
   ``--stream`` photos, 10% damaged: decoding, enhancement of the dark ones, the gate, U-Net and
   mask policy for the photos the gate passes on, overlays of the damaged ones and the JSONL
   writer. Reported: images/s of the whole run, per-stage rates, how many photos the gate
   finished early, and the ratio to the production system's 0.7 images/s on a CPU server.
   With ``--runtime onnxruntime|openvino`` the trained networks are exported (``defectkit
   export``) and the run uses ``predict.runtime``; ``--int8`` exports INT8 networks too and runs
   those that the export's validation check keeps (``predict.precision=int8``; the check runs on the
   generated photos' validation split, with the default largest drop).

Speed does not depend on what the weights learned, but the end-to-end figure depends on how many
photos the gate lets through, so it is measured with a trained gate, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectkit.data.synthetic_car import SyntheticCarDamage  # noqa: E402
from defectkit.heads.backbones import create_classifier  # noqa: E402
from defectkit.heads.segmenter import build_segmenter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "car_damage.py"
PRODUCTION_IMG_PER_S = 0.7
PHOTO_SIZE = (600, 800)


def images_per_second(model: torch.nn.Module, size: tuple[int, int], batch: int, repeats: int = 5) -> float:
    x = torch.randn(batch, 3, *size)
    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up: allocations and kernel selection
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return batch * repeats / (time.perf_counter() - start)


def onnx_images_per_second(model: torch.nn.Module, size: tuple[int, int], batch: int, path: Path, repeats: int = 5) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = torch.randn(batch, 3, *size)
    torch.onnx.export(model.eval(), x, str(path), input_names=["image"], output_names=["logits"], dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    session.run(None, feed)
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feed)
    return batch * repeats / (time.perf_counter() - start)


def defectkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "defectkit.cli", *args], check=True, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-root", default="/tmp/defectkit_car_speed")
    parser.add_argument("--stream", type=int, default=300, help="photos in the measured stream (10%% damaged)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--tta", action="store_true",
                        help="keep the config's flip and scale test-time augmentation (6.7 times the segmenter's "
                             "time); off by default: the throughput setting")
    parser.add_argument(
        "--runtime", default="torch", choices=["torch", "onnxruntime", "openvino"],
        help="predict.runtime of the end-to-end run; not torch: `defectkit export` first (the [export] extra)",
    )
    parser.add_argument("--int8", action="store_true", help="with --runtime onnxruntime|openvino: the networks INT8 where the export's check keeps them")
    parser.add_argument("--predict-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more --cfg-options for the measured predict run, e.g. runtime.keep_freed_memory=False")
    args = parser.parse_args()
    if args.int8 and args.runtime == "torch":
        parser.error("--int8 needs --runtime onnxruntime or openvino")
    torch.set_num_threads(os.cpu_count() or 1)
    root = Path(args.work_root)
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}

    gate = create_classifier(2, pretrained=False)
    results["gate_224_img_per_s"] = round(images_per_second(gate, (224, 224), 32), 1)
    from defectkit.config import load_config

    segmenter_cfg = dict(load_config(CONFIG).pipeline[2]["model"])
    input_size = tuple(load_config(CONFIG).pipeline[2]["image_size"])
    unet = build_segmenter(segmenter_cfg, 4, pretrained=False)
    results["unet_512_img_per_s"] = round(images_per_second(unet, (512, 512), 8), 1)
    results[f"unet_{input_size[0]}x{input_size[1]}_img_per_s"] = round(images_per_second(unet, input_size, 8), 1)
    onnx_rate = onnx_images_per_second(unet, (512, 512), 8, root / "unet.onnx")
    results["unet_512_onnxruntime_img_per_s"] = None if onnx_rate is None else round(onnx_rate, 1)
    print(json.dumps(results, indent=2), flush=True)

    work_dir = root / "work"
    defectkit(
        "train", str(CONFIG), "--work-dir", str(work_dir), "--cfg-options",
        f"builtin_dataset.image_size={PHOTO_SIZE}", "builtin_dataset.n_damaged=60", "builtin_dataset.n_normal=60",
        "pipeline.1.enabled=True", "pipeline.1.epochs=4", "pipeline.2.epochs=2",
    )
    n_damaged = max(1, args.stream // 10)
    stream = SyntheticCarDamage(root / "stream", n_damaged=n_damaged, n_normal=args.stream - n_damaged,
                                image_size=PHOTO_SIZE, seed=1)
    stream.records()
    out = root / "predictions"
    if out.exists():
        for path in sorted(out.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    options = ["pipeline.1.enabled=True"]
    if not args.tta:
        options += ["pipeline.2.tta_flip=False", "pipeline.2.tta_scales=(1.0,)"]
    if args.runtime != "torch":
        fmt = "onnx" if args.runtime == "onnxruntime" else "openvino"
        int8 = ["--int8"] if args.int8 else []
        defectkit("export", str(CONFIG), "--work-dir", str(work_dir), "--format", fmt, *int8, "--cfg-options", *options)
        options.append(f"predict.runtime={args.runtime}")
        if args.int8:
            options.append("predict.precision=int8")
    start = time.perf_counter()
    defectkit(
        "predict", str(CONFIG), "--work-dir", str(work_dir), "--input", str(root / "stream" / "images"), "--out", str(out),
        "--cfg-options", *options, *args.predict_options,
    )
    wall = time.perf_counter() - start
    timings = json.loads((out / "timings.json").read_text())
    results.update(
        runtime=args.runtime,
        int8=args.int8,
        tta=args.tta,
        stream_images=args.stream,
        stream_damaged=n_damaged,
        end_to_end_img_per_s=timings["img_per_s"],
        end_to_end_img_per_s_incl_startup=round(args.stream / wall, 2),
        finished_by_gate=timings.get("finished_by_gate"),
        gate_saved_seconds=timings.get("gate_saved_seconds"),
        stages={name: stage["img_per_s"] for name, stage in timings["stages"].items()},
        ratio_to_production=round(float(timings["img_per_s"]) / PRODUCTION_IMG_PER_S, 1),
    )
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
