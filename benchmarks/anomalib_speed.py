"""The texture anomaly gate against anomalib 2.7's PatchCore, same backbone, layers, image size and normal images.

Usage::

    python benchmarks/anomalib_speed.py [DATA_ROOT] [--rounds 3] [--threads 2] [--out anomalib_speed.json]

``DATA_ROOT`` is magnetic tile's folder (default ``../shared/data/magnetic_tile``). The records and
their train/val/test split are those ``defectkit train configs/texture_defect.py`` makes (the
config's reader and ``split``; the split is written to a temporary work dir). The test split is
never read: everything is fitted on the train part and scored on the val part.

Compared, on the same decoded val images (decoding excluded), one after the other, ``--rounds``
times in turn (the cores are shared, so each round measures every contender under similar load):

- ``anomalib_inferencer``: anomalib's ``Patchcore`` module run image by image as its
  ``TorchInferencer.predict`` runs it (uint8 HWC -> float CHW in [0, 1], batch of one, the
  module's pre-processor, torch model and post-processor), without the pickle round trip of
  ``to_torch`` + ``TorchInferencer`` (loading a pickled module needs ``TRUST_REMOTE_CODE=1``).
- ``anomalib_batched``: the same module on batches of ``--batch-size`` (each image through the
  pre-processor alone, since the tiles differ in size, then one batched model and post-processor call).
- ``defectkit_patchcore``: the gate's anomaly head alone (``PatchCore``, the config's layers, image
  size and coreset size) in PyTorch, as ``AnomalyGate`` runs it (resize, embedding, scoring).
- ``defectkit_patchcore_openvino``: the same with the embedding run from an OpenVINO export
  (``predict.runtime=openvino``; written and parity-checked here).
- ``defectkit_gate`` / ``defectkit_gate_openvino``: the whole ``AnomalyGate`` as the config builds it
  (anomaly head, supervised Lite0 features at 224 px, pixel head, stacked decision), fitted on the
  train part (its normals and labelled defects; val stays held out), in PyTorch and with the
  anomaly embedding from OpenVINO (the supervised features and the pixel head stay in PyTorch).

anomalib's model: ``Patchcore(backbone="tf_efficientnet_lite0", layers=[2, 3], pre_trained=False)``
with the offline EfficientNet-Lite0 ImageNet weights loaded into its timm feature extractor (the
same tensors defectkit loads), a pre-processor that resizes to the config's image size and scales to
[-1, 1] as those weights expect (anomalib's default ImageNet mean/std would feed them wrongly
scaled inputs), ``coreset_sampling_ratio`` chosen so that its memory bank has the config's
``coreset_size`` patches, fitted on the same normal train images by its own training step and
``fit()`` (k-center greedy coreset). Its post-processor's normalisation statistics are set from the
raw scores of those normal images (Engine.fit would set them on validation images); image AUROC
is computed from the raw ``pred_score`` before that normalisation (its clamping to [0, 1] could
only add ties).

Printed and written (``--out``): images/s per contender and round, the median over rounds, the
ratios to ``anomalib_batched`` (the faster anomalib way) and to ``anomalib_inferencer``, image
AUROC on val of every contender, fit seconds, and the load average before and after.
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
from defectkit.data.transforms import resize_image  # noqa: E402
from defectkit.export import OpenVinoNetwork, onnx_to_openvino, parity, write_onnx  # noqa: E402
from defectkit.heads.anomaly import EmbeddingExtractor  # noqa: E402
from defectkit.heads.backbones import BACKBONE_NAME, load_pretrained_weights, to_input_tensor  # noqa: E402
from defectkit.io.images import decode_record  # noqa: E402
from defectkit.registry import HEADS, STAGES, build  # noqa: E402
from defectkit.runner import Runner  # noqa: E402
from defectkit.sample import Sample  # noqa: E402
from defectkit.stages.base import FitContext  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "texture_defect.py"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (the cores are shared with other jobs)."""
    return [round(v, 2) for v in os.getloadavg()]


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Image AUROC (defect = positive)."""
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=np.float64))), 4)


def build_anomalib(image_size: tuple[int, int], layers: Sequence[int]) -> Any:
    """anomalib's Patchcore on EfficientNet-Lite0 with the offline weights and [-1, 1] inputs (nothing downloads)."""
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    pre = PreProcessor(transform=Compose([Resize(image_size, antialias=True), Normalize([0.5] * 3, [0.5] * 3)]))
    module = Patchcore(
        backbone=BACKBONE_NAME, layers=[int(i) for i in layers], pre_trained=False, num_neighbors=9,
        pre_processor=pre, evaluator=False, visualizer=False,
    )
    loaded = load_pretrained_weights(module.model.feature_extractor.feature_extractor)
    print(f"anomalib: {loaded} EfficientNet-Lite0 tensors loaded into its timm feature extractor")
    return module


def anomalib_input(image: np.ndarray) -> torch.Tensor:
    """What TorchInferencer.predict makes of an HxWx3 uint8 array: float CHW in [0, 1]."""
    from torchvision.transforms.v2.functional import to_dtype, to_image

    return to_dtype(to_image(image), torch.float32, scale=True)


def fit_anomalib(module: Any, images: Sequence[np.ndarray], coreset_size: int, batch_size: int, cache: Path | None) -> dict[str, Any]:
    """Anomalib's training step on the normal images, then its coreset ``fit()``; sets the post-processor's statistics.

    anomalib's k-center greedy takes minutes to tens of minutes on two shared cores, so the memory
    bank it selects is kept in ``cache`` (a plain tensor file, loaded with ``weights_only=True``)
    and reused by a later run with the same images and settings.
    """
    start = time.perf_counter()
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        module.model.memory_bank = saved["memory_bank"]
        n_patches = int(saved["patches"])
        cached = True
    else:
        module.model.train()
        n_patches = 0
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.cat([module.pre_processor(anomalib_input(im)[None]) for im in images[i : i + batch_size]])
                n_patches += int(module.model(x).shape[0])
        module.coreset_sampling_ratio = min(1.0, coreset_size / n_patches)
        module.fit()
        cached = False
        if cache is not None:
            torch.save({"memory_bank": module.model.memory_bank, "patches": torch.tensor(n_patches)}, cache)
    module.model.eval()
    fit_seconds = time.perf_counter() - start
    # Normalisation statistics of the post-processor from the normal images' raw outputs, so that
    # its forward gives numbers (Engine.fit would compute them on a validation set).
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.cat([module.pre_processor(anomalib_input(im)[None]) for im in images[i : i + batch_size]])
            out = module.model(x)
            scores.append(out.pred_score.flatten())
            maps.append(out.anomaly_map.flatten())
    s, m = torch.cat(scores), torch.cat(maps)
    post = module.post_processor
    post.image_min, post.image_max, post._image_threshold = s.min(), s.max(), s.max()
    post.pixel_min, post.pixel_max, post._pixel_threshold = m.min(), m.max(), m.max()
    return {"patches": n_patches, "memory_bank": int(module.model.memory_bank.shape[0]),
            "fit_seconds": None if cached else round(fit_seconds, 1), "memory_bank_from_cache": cached}


def run_anomalib_inferencer(module: Any, images: Sequence[np.ndarray]) -> list[float]:
    """TorchInferencer.predict's steps, image by image; returns the raw scores."""
    scores = []
    for image in images:
        x = anomalib_input(image)[None]
        raw = module.model(module.pre_processor(x))
        module.post_processor(raw)
        scores.append(float(raw.pred_score[0]))
    return scores


def run_anomalib_batched(module: Any, images: Sequence[np.ndarray], batch_size: int) -> list[float]:
    """The module's pre-processor per image (sizes differ), then model and post-processor per batch."""
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.cat([module.pre_processor(anomalib_input(im)[None]) for im in images[i : i + batch_size]])
            raw = module.model(x)
            module.post_processor(raw)
            scores.extend(float(v) for v in raw.pred_score.flatten())
    return scores


def run_head(head: Any, images: Sequence[np.ndarray], size: tuple[int, int], batch_size: int,
             network: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """The gate's anomaly head as AnomalyGate runs it: resize, [-1, 1] tensor, embedding, score and map."""
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = to_input_tensor([resize_image(im, size) for im in images[i : i + batch_size]])
            emb = network(x) if network is not None else head.extract(x)
            s, _ = head.score_embedding(emb, x.shape[-2:])
            scores.extend(float(v) for v in s)
    return scores


def run_gate(gate: Any, images: Sequence[np.ndarray], batch_size: int) -> list[float]:
    """The whole gate's ``score_images`` per batch (what its ``predict`` calls); returns the gate scores."""
    scores: list[float] = []
    for i in range(0, len(images), batch_size):
        g, _, _ = gate.score_images(list(images[i : i + batch_size]))
        scores.extend(float(v) for v in g)
    return scores


def openvino_embedding(head: Any, example: torch.Tensor, folder: Path, threads: int) -> tuple[OpenVinoNetwork, dict[str, Any]]:
    """The head's embedding exported to OpenVINO (defectkit.export's writer), with its parity on ``example``."""
    module = EmbeddingExtractor(head).eval()
    onnx_path, xml_path = folder / "embedding.onnx", folder / "embedding.xml"
    write_onnx(module, example[:2], {0: "batch"}, onnx_path)
    onnx_to_openvino(onnx_path, xml_path)
    network = OpenVinoNetwork(xml_path, threads)
    from defectkit.stages.base import ExportSpec

    with torch.no_grad():
        expected = module(example)
    check = parity(ExportSpec(module=module, inputs=example, tolerance=1e-4, relative=True), expected, network(example))
    return network, check


def main() -> None:
    """Fit every contender, time them in turn on the val images and print/write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root", nargs="?", default=os.environ.get("DEFECTKIT_DATA_MT", "../shared/data/magnetic_tile"))
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the val images per contender")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenVINO threads")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (the config's predict.batch_size)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "anomalib_speed_cache",
                        help="where anomalib's fitted memory bank is kept between runs (see fit_anomalib)")
    parser.add_argument("--no-gate", action="store_true", help="leave out the whole gate (its fit takes the longest)")
    parser.add_argument("--smoke", action="store_true", help="a quick check of the script: 40 normal images, coreset 500, 32 val images")
    args = parser.parse_args()
    if not Path(args.data_root).is_dir():
        sys.exit(f"{args.data_root}: not a folder; pass magnetic tile's folder (MT_*/Imgs/*.jpg)")
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"load_average_start": load_average(), "threads": args.threads, "batch_size": args.batch_size,
                              "smoke": args.smoke}

    work = Path(tempfile.mkdtemp(prefix="anomalib_speed_"))
    cfg = load_config(CONFIG)
    runner = Runner(cfg, CONFIG, data_root=args.data_root, work_dir=str(work))
    torch.set_num_threads(args.threads)  # the runner sets every core; keep the requested count
    parts = runner.split(runner.records())
    train, val = parts["train"], parts["val"]
    decoded: dict[str, Sample] = {}
    for record in (*train, *val):
        decoded[record.path] = decode_record(record)
    train = [r for r in train if decoded[r.path].ok]
    val = [r for r in val if decoded[r.path].ok]
    if args.smoke:
        train = [r for r in train if r.label == 0][:40] + [r for r in train if r.label != 0][:20]
        val = val[:32]
    normal_images = [decoded[r.path].image for r in train if r.label == 0]
    val_images = [decoded[r.path].image for r in val]
    val_labels = [0 if r.label == 0 else 1 for r in val]
    result["images"] = {"train": len(train), "train_normal": len(normal_images), "val": len(val), "val_defect": sum(val_labels)}
    print(f"split: train {len(train)} ({len(normal_images)} normal), val {len(val)} ({sum(val_labels)} defect); test not read")

    gate_cfg = dict(cfg.pipeline[0])
    model_cfg = dict(gate_cfg["model"])
    size = tuple(int(v) for v in gate_cfg["image_size"])
    layers = tuple(int(v) for v in model_cfg["layers"])
    if args.smoke:
        model_cfg["coreset_size"] = 500
        gate_cfg["model"] = model_cfg
    coreset = int(model_cfg["coreset_size"])
    result["setting"] = {"backbone": BACKBONE_NAME, "layers": list(layers), "image_size": list(size), "coreset_size": coreset}

    # anomalib
    module = build_anomalib(size, layers)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    key = f"bank_{len(normal_images)}n_{coreset}_{'x'.join(map(str, size))}_l{''.join(map(str, layers))}.pt"
    result["anomalib_fit"] = fit_anomalib(module, normal_images, coreset, args.batch_size, args.cache_dir / key)
    print(f"anomalib fit: {result['anomalib_fit']}")

    # defectkit's anomaly head alone, on the same normal images
    start = time.perf_counter()
    head = build(HEADS, model_cfg).eval()
    with torch.no_grad():
        for i in range(0, len(normal_images), args.batch_size):
            head.collect(head.extract(to_input_tensor([resize_image(im, size) for im in normal_images[i : i + args.batch_size]])))
    summary = head.build()
    result["defectkit_patchcore_fit"] = {**summary, "fit_seconds": round(time.perf_counter() - start, 1)}
    print(f"defectkit PatchCore fit: {result['defectkit_patchcore_fit']}")

    # the head's embedding through OpenVINO (parity on the first val images); anomalib and the head are
    # run once on a few images now, so a problem shows before the gate's long fit
    example = to_input_tensor([resize_image(im, size) for im in val_images[:4]])
    head_net, head_parity = openvino_embedding(head, example, work, args.threads)
    run_anomalib_inferencer(module, val_images[:2])
    run_anomalib_batched(module, val_images[:4], args.batch_size)
    run_head(head, val_images[:4], size, args.batch_size, head_net)
    result["openvino_parity"] = {"patchcore": head_parity}
    print(f"OpenVINO parity of the head's embedding: {head_parity}")

    gate_contenders: dict[str, Callable[[Sequence[np.ndarray]], list[float]]] = {}
    if not args.no_gate:
        # the whole gate as the config builds it, fitted on the train part only
        # (kept in the cache dir like anomalib's bank: a later run with the same split loads it)
        start = time.perf_counter()
        gate = build(STAGES, gate_cfg)
        gate_dir = args.cache_dir / f"gate_{len(train)}train{'_smoke' if args.smoke else ''}"
        if gate.has_saved_state(gate_dir):
            gate.load(gate_dir, classes=list(cfg.classes))
            result["defectkit_gate_fit"] = {"fit_seconds": None, "from_cache": True}
        else:
            context = FitContext(work_dir=work, load_samples=lambda records: [decoded[r.path] for r in records],
                                 classes=list(cfg.classes), image_classes=list(cfg.image_classes), log=lambda message: None)
            gate.fit(train, [], context)
            gate.fitted = True
            gate.fit_classes = list(cfg.classes)
            gate.save(gate_dir)
            result["defectkit_gate_fit"] = {"fit_seconds": round(time.perf_counter() - start, 1), "from_cache": False}
        print(f"defectkit gate fit: {result['defectkit_gate_fit']}")

        (work / "gate").mkdir()
        gate_net, gate_parity = openvino_embedding(gate.model, example, work / "gate", args.threads)
        result["openvino_parity"]["gate"] = gate_parity
        print(f"OpenVINO parity of the gate's embedding: {gate_parity}")

        def gate_openvino(images: Sequence[np.ndarray]) -> list[float]:
            gate.use_exported(gate_net)
            try:
                return run_gate(gate, images, args.batch_size)
            finally:
                gate.use_exported(None)

        gate_contenders = {"defectkit_gate": lambda ims: run_gate(gate, ims, args.batch_size), "defectkit_gate_openvino": gate_openvino}

    contenders: dict[str, Callable[[Sequence[np.ndarray]], list[float]]] = {
        "anomalib_inferencer": lambda ims: run_anomalib_inferencer(module, ims),
        "anomalib_batched": lambda ims: run_anomalib_batched(module, ims, args.batch_size),
        "defectkit_patchcore": lambda ims: run_head(head, ims, size, args.batch_size),
        "defectkit_patchcore_openvino": lambda ims: run_head(head, ims, size, args.batch_size, head_net),
        **gate_contenders,
    }
    # One untimed warm-up pass each (first-call allocations, OpenVINO's first inference).
    for run in contenders.values():
        run(val_images[: args.batch_size])
    speeds: dict[str, list[float]] = {name: [] for name in contenders}
    aurocs: dict[str, float] = {}
    for round_index in range(args.rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            scores = run(val_images)
            speeds[name].append(round(len(val_images) / (time.perf_counter() - start), 1))
            aurocs[name] = auroc(val_labels, scores)  # deterministic: the same in every round
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {v[-1]}" for n, v in speeds.items()) + f" img/s; load {load_average()}")
    medians = {name: statistics.median(v) for name, v in speeds.items()}
    result["img_per_s"] = speeds
    result["img_per_s_median"] = medians
    result["image_auroc_val"] = aurocs
    result["ratio_to_anomalib_batched"] = {n: round(v / medians["anomalib_batched"], 2) for n, v in medians.items()}
    result["ratio_to_anomalib_inferencer"] = {n: round(v / medians["anomalib_inferencer"], 2) for n, v in medians.items()}
    result["load_average_end"] = load_average()

    print(f"\n{'contender':32s} {'img/s (median)':>15s} {'x batched':>10s} {'x inferencer':>13s} {'AUROC val':>10s}")
    for name in contenders:
        print(f"{name:32s} {medians[name]:15.1f} {result['ratio_to_anomalib_batched'][name]:10.2f} "
              f"{result['ratio_to_anomalib_inferencer'][name]:13.2f} {aurocs[name]:10.4f}")
    print(f"load average: start {result['load_average_start']}, end {result['load_average_end']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
