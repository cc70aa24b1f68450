"""Network speed on the CPU: PyTorch against the exported files ONNX Runtime and OpenVINO run.

Usage::

    nice -n 10 python benchmarks/export_speed.py [--threads 2] [--repeats 5] [--out export_speed.json]

Two networks, each written the way ``defectkit export`` writes it (:func:`defectkit.export.write_onnx`,
:func:`defectkit.export.onnx_to_openvino`) and run through the same classes ``predict.runtime`` uses
(:class:`~defectkit.export.OnnxRuntimeNetwork`, :class:`~defectkit.export.OpenVinoNetwork`):

1. the U-Net on EfficientNet-Lite0 (4 classes) at 512x512, batches of 8;
2. the classifier gate's EfficientNet-Lite0 at 224x224, batches of 32.

PyTorch runs them as the stages do on the CPU (fp32, channels-last, ``torch.inference_mode``); every
runtime gets ``--threads`` intra-op threads. Each figure is images per second over ``--repeats``
timed batches after one warm-up batch; the largest absolute difference of the outputs from
PyTorch's is printed beside it. Weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectkit.export import OnnxRuntimeNetwork, OpenVinoNetwork, onnx_to_openvino, write_onnx  # noqa: E402
from defectkit.heads.backbones import create_classifier  # noqa: E402
from defectkit.heads.segmenter import build_segmenter  # noqa: E402


def rate(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Images per second of ``run`` on batch ``x`` (after one warm-up call) and its output."""
    out = run(x)
    start = time.perf_counter()
    for _ in range(repeats):
        run(x)
    return x.shape[0] * repeats / (time.perf_counter() - start), out


def measure(name: str, model: torch.nn.Module, x: torch.Tensor, threads: int, repeats: int, folder: Path) -> dict[str, object]:
    """Images per second of ``model`` in PyTorch, ONNX Runtime and (when installed) OpenVINO."""
    model = model.eval()
    onnx_path = folder / f"{name}.onnx"
    write_onnx(model, x[:2], {0: "batch"}, onnx_path)
    torch_model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def torch_run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch_model(batch.contiguous(memory_format=torch.channels_last))

    results: dict[str, object] = {"input": list(x.shape)}
    torch_rate, reference = rate(torch_run, x, repeats)
    results["torch_img_per_s"] = round(torch_rate, 2)
    runtimes: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
        "onnxruntime": lambda: OnnxRuntimeNetwork(onnx_path, threads),
    }
    try:
        import openvino  # noqa: F401

        def openvino_network() -> Callable[[torch.Tensor], torch.Tensor]:
            xml_path = folder / f"{name}.xml"
            onnx_to_openvino(onnx_path, xml_path)
            return OpenVinoNetwork(xml_path, threads)

        runtimes["openvino"] = openvino_network
    except ImportError:
        results["openvino"] = "not installed"
    for runtime, make in runtimes.items():
        runtime_rate, out = rate(make(), x, repeats)
        results[f"{runtime}_img_per_s"] = round(runtime_rate, 2)
        results[f"{runtime}_speedup"] = round(runtime_rate / torch_rate, 2)
        results[f"{runtime}_max_abs_diff"] = float(f"{float((out.float() - reference.float()).abs().max()):.3g}")
    print(json.dumps({name: results}), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads of every runtime (default: every core)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per figure")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict[str, object] = {
        "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        unet = build_segmenter(dict(type="Unet"), 4, pretrained=False)
        results["unet_lite0_512_batch8"] = measure("unet", unet, torch.randn(8, 3, 512, 512), args.threads, args.repeats, folder)
        gate = create_classifier(2, pretrained=False)
        results["gate_lite0_224_batch32"] = measure("gate", gate, torch.randn(32, 3, 224, 224), args.threads, args.repeats, folder)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
