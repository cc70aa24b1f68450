"""Exported networks: a tiny car pipeline trained on generated photos, exported, and its predictions compared.

Every network stage of the car config (Zero-DCE's curve estimator, the classifier gate, the segmenter)
is exported to ONNX (and OpenVINO when the package is installed) and run through ``predict.runtime``;
the anomaly gate's feature extractor is exported from a tiny texture pipeline.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from defectkit.cli import EXIT_FATAL, EXIT_OK, EXIT_USAGE, main
from defectkit.config import DictAction
from defectkit.errors import ExportError
from defectkit.export import (
    MANIFEST,
    export_pipeline,
    exportable_stages,
    int8_files,
    quantize_pipeline,
    record_int8_check,
    sha256_of,
    use_runtime,
)
from defectkit.io.images import decode_record
from defectkit.sample import Detections
from defectkit.stages.base import Exportable, ExportSpec, Stage
from defectkit.stages.detect import Detector
from defectkit.stages.segment import Segmenter
from defectkit.stages.tiling import Tiling

pytest.importorskip("onnxruntime", reason="the [export] extra (onnx, onnxruntime) is not installed")

REPO = Path(__file__).resolve().parents[2]
CAR = str(REPO / "configs" / "car_damage.py")
TEXTURE = str(REPO / "configs" / "texture_defect.py")
TINY_CAR = [
    "builtin_dataset.n_damaged=12",
    "builtin_dataset.n_normal=12",
    "builtin_dataset.image_size=(96,128)",
    "pipeline.0.epochs=1",
    "pipeline.0.max_images=6",
    "pipeline.0.train_size=(64,64)",
    "pipeline.1.enabled=True",
    "pipeline.1.image_size=(64,64)",
    "pipeline.1.epochs=1",
    "pipeline.1.target_recall=0.5",
    "pipeline.2.image_size=(64,96)",
    "pipeline.2.epochs=1",
    "runtime.num_threads=1",
    "split.ratios=(0.5,0.2,0.3)",
]
TINY_TEXTURE = [
    "builtin_dataset.n_normal=24",
    "builtin_dataset.n_defect=10",
    "pipeline.0.model.coreset_size=200",
    "pipeline.0.pixel.copy_paste.images=2",
    "runtime.num_threads=1",
]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed"))]


def _cli(*argv: str) -> int:
    threads = torch.get_num_threads()
    try:
        return main(list(argv))
    finally:
        torch.set_num_threads(threads)


def _train_and_export(root: Path, config: str, options: list[str]) -> Path:
    work_dir = root / "work"
    assert _cli("train", config, "--work-dir", str(work_dir), "--cfg-options", *options) == EXIT_OK
    assert _cli("export", config, "--work-dir", str(work_dir), "--format", "onnx", "--cfg-options", *options) == EXIT_OK
    if HAS_OPENVINO:
        assert _cli("export", config, "--work-dir", str(work_dir), "--format", "openvino", "--cfg-options", *options) == EXIT_OK
    return work_dir


@pytest.fixture(scope="module")
def car_dir(tmp_path_factory) -> Path:
    """A tiny car work dir, trained and exported (treat as read-only)."""
    return _train_and_export(tmp_path_factory.mktemp("car export"), CAR, TINY_CAR)


@pytest.fixture(scope="module")
def texture_dir(tmp_path_factory) -> Path:
    """A tiny texture work dir (anomaly gate), trained and exported (treat as read-only)."""
    return _train_and_export(tmp_path_factory.mktemp("texture export"), TEXTURE, TINY_TEXTURE)


def _runner(work_dir: Path, config: str, options: list[str], runtime: str = "torch"):
    from defectkit.config import load_config
    from defectkit.runner import Runner

    threads = torch.get_num_threads()
    try:
        runner = Runner(load_config(config, _options(options + [f"predict.runtime={runtime}"])), config, work_dir=str(work_dir))
        runner.load_weights()
    finally:
        torch.set_num_threads(threads)
    return runner


def _options(pairs: list[str]) -> dict:
    """``--cfg-options`` values parsed as the command line parses them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    return parser.parse_args(["--cfg-options", *pairs]).cfg_options


def _val_images(runner, n: int = 4) -> list[np.ndarray]:
    """Photos the networks did not train on (validation split first), as decoded for prediction."""
    parts = runner.split(runner.records())
    return [decode_record(r).image for r in (parts["val"] + parts["test"])[:n]]


def _copy_work_dir(work_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "work"
    shutil.copytree(work_dir, copy, ignore=shutil.ignore_patterns(".defectkit.lock"))
    # The split names the built-in photos by absolute path: point it at the copy's own.
    split = copy / "split.json"
    split.write_text(split.read_text().replace(json.dumps(str(work_dir))[1:-1], json.dumps(str(copy))[1:-1]))
    return copy


# ------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), pytest.param("openvino", ".xml", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed"))])
def test_export_writes_every_network_stage_with_checksums_and_a_passed_parity_check(car_dir: Path, fmt: str, suffix: str):
    manifest = json.loads((car_dir / "exported" / "manifest.json").read_text())
    stages = manifest["formats"][fmt]["stages"]
    assert set(stages) == {"enhance", "gate", "segmenter"}
    for name, entry in stages.items():
        path = car_dir / "exported" / f"{name}{suffix}"
        assert entry["file"] == path.name and entry["sha256"] == sha256_of(path)
        assert entry["opset"] == 17 and entry["parity"]["passed"] is True and entry["parity"]["images"] >= 2
        assert entry["parity"]["max_abs_diff"] <= entry["tolerance"]
        assert len(entry["input_shape"]) == 4
    assert stages["segmenter"]["parity"]["agreement"] >= 0.999 and stages["gate"]["parity"]["agreement"] == 1.0
    assert stages["enhance"]["dynamic_axes"] == {"0": "batch", "2": "height", "3": "width"}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_car_stage_predicts_the_same_through_the_exported_network(car_dir: Path, runtime: str):
    torch_runner = _runner(car_dir, CAR, TINY_CAR)
    exported_runner = _runner(car_dir, CAR, TINY_CAR, runtime)
    stages = {s.name: s for s in torch_runner.pipeline.stages}
    exported = {s.name: s for s in exported_runner.pipeline.stages}
    assert all(exported[name].exported is not None for name in ("enhance", "gate", "segmenter"))
    assert all(stages[name].exported is None for name in ("enhance", "gate", "segmenter"))
    images = _val_images(torch_runner)
    # Zero-DCE on whole photos (tiles of the curve estimator, dynamic sizes): at most one grey level apart.
    dark = [(im // 4).astype(np.uint8) for im in images]
    for a, b in zip(stages["enhance"].enhance_images(dark), exported["enhance"].enhance_images(dark)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # Gate: class probabilities within the stated tolerance, same decisions.
    p_torch, p_exported = stages["gate"]._probabilities(images), exported["gate"]._probabilities(images)
    assert np.abs(p_torch - p_exported).max() <= 1e-3
    assert (p_torch.argmax(1) == p_exported.argmax(1)).all()
    # Segmenter: probability maps at image resolution within tolerance; masks at 0.5 agree.
    for a, b in zip(stages["segmenter"].probability_maps(images), exported["segmenter"].probability_maps(images)):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-3
        assert ((a >= 0.5) == (b >= 0.5)).mean() >= 0.999


def test_eval_through_onnxruntime_gives_the_metrics_of_torch(car_dir: Path, tmp_path: Path):
    metrics = {}
    for runtime in ("torch", "onnxruntime"):
        out = tmp_path / runtime
        assert _cli("eval", CAR, "--work-dir", str(car_dir), "--out", str(out), "--cfg-options", *TINY_CAR,
                    f"predict.runtime={runtime}", "predict.overlays=none") == EXIT_OK
        metrics[runtime] = json.loads((out / "metrics.json").read_text())
        assert json.loads((out / "run_info.json").read_text())["stamp"].get("runtime") == (None if runtime == "torch" else runtime)
    numeric = [k for k, v in metrics["torch"].items() if isinstance(v, float) and k != "seconds" and not k.endswith("per_s")]
    assert numeric
    for key in numeric:
        assert metrics["onnxruntime"][key] == pytest.approx(metrics["torch"][key], abs=1e-3), key


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_anomaly_gate_scores_the_same_through_the_exported_feature_extractor(texture_dir: Path, runtime: str):
    manifest = json.loads((texture_dir / "exported" / "manifest.json").read_text())
    (entry,) = manifest["formats"]["onnx"]["stages"].values()  # the texture config's one network stage
    assert entry["stage_type"] == "AnomalyGate"
    assert entry["parity"]["passed"] and entry["parity"]["max_rel_diff"] <= entry["tolerance"]
    torch_runner = _runner(texture_dir, TEXTURE, TINY_TEXTURE)
    exported_runner = _runner(texture_dir, TEXTURE, TINY_TEXTURE, runtime)
    gate, exported = torch_runner.pipeline.stages[0], exported_runner.pipeline.stages[0]
    assert exported.exported is not None and gate.exported is None
    images = _val_images(torch_runner, 6)
    g_torch, s_torch, m_torch = gate.score_images(images)
    g_exp, s_exp, m_exp = exported.score_images(images)
    np.testing.assert_allclose(s_exp, s_torch, rtol=1e-3)
    assert np.abs(g_exp - g_torch).max() <= 1e-3
    assert ((g_exp >= 0.5) == (g_torch >= 0.5)).all()
    assert max(float(np.abs(a - b).max()) for a, b in zip(m_torch, m_exp)) <= 1e-2


def test_the_python_api_loads_a_pipeline_running_the_exported_networks(car_dir: Path):
    import defectkit

    pipeline = defectkit.load(car_dir, cfg_options={"predict.runtime": "onnxruntime"})
    assert [name for name, stage in exportable_stages(pipeline.stages) if stage.exported is not None] == ["enhance", "gate", "segmenter"]
    images = sorted((car_dir / "builtin_data" / "images").glob("*.jpg"))[:2]
    exported = pipeline(images)
    reference = defectkit.load(car_dir)(images)
    assert [r.gate_label for r in exported] == [r.gate_label for r in reference]


# ------------------------------------------------------------------------------------ int8
@pytest.mark.parametrize("fmt, runtime", [("onnx", "onnxruntime"), pytest.param("openvino", "openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed"))])
def test_an_int8_export_is_calibrated_checked_on_validation_and_run_where_kept(car_dir: Path, tmp_path: Path, fmt: str, runtime: str):
    work_dir = _copy_work_dir(car_dir, tmp_path)
    # Any drop accepted: every stage whose metric could be measured is kept (the decision itself: next test).
    assert _cli("export", CAR, "--work-dir", str(work_dir), "--format", fmt, "--int8",
                "--calibration-images", "3", "--max-drop", "0.99", "--cfg-options", *TINY_CAR) == EXIT_OK
    stages = json.loads((work_dir / "exported" / "manifest.json").read_text())["formats"][fmt]["stages"]
    for name in ("enhance", "gate", "segmenter"):
        int8 = stages[name]["int8"]
        path = work_dir / "exported" / int8["file"]
        assert int8["file"] == f"{name}.int8{'.onnx' if fmt == 'onnx' else '.xml'}" and int8["sha256"] == sha256_of(path)
        assert int8["calibration_images"] >= 3 and int8["difference"]["images"] >= 2
        check = int8["check"]
        assert check["kept"] is True and check["max_drop"] == 0.99 and check["val_images"] > 0
        # The car config's metrics' primary keys that the tiny validation split measures (no normal photo: no AUROC).
        assert set(check["metrics"]) == {"miou"}
        assert all(v["fp32"] is not None and v["int8"] is not None for v in check["metrics"].values())
    runner = _runner(work_dir, CAR, TINY_CAR + ["predict.precision=int8"], runtime)
    assert all(stage.exported is not None for _, stage in exportable_stages(runner.pipeline.stages))
    out = tmp_path / "eval"
    assert _cli("eval", CAR, "--work-dir", str(work_dir), "--out", str(out), "--cfg-options", *TINY_CAR,
                f"predict.runtime={runtime}", "predict.precision=int8", "predict.overlays=none") == EXIT_OK
    assert json.loads((out / "run_info.json").read_text())["stamp"]["precision"] == "int8"
    assert "miou" in json.loads((out / "metrics.json").read_text())


def test_a_stage_stays_int8_only_while_the_primary_metrics_hold(car_dir: Path, tmp_path: Path, monkeypatch):
    work_dir = _copy_work_dir(car_dir, tmp_path)
    runner = _runner(work_dir, CAR, TINY_CAR)
    parts = runner.split(runner.records())
    images = [decode_record(r).image for r in parts["train"][:3]]
    quantize_pipeline(runner.pipeline.stages, work_dir / "exported", "onnx", images, images, log=lambda line: None)
    # Validation runs in order: fp32, then + enhance (int8), + gate, + segmenter. The gate's INT8 costs
    # 0.05 mIoU, the others nothing.
    scores = iter([{"miou": 0.50, "image_auroc": 0.9}, {"miou": 0.50, "image_auroc": 0.9}, {"miou": 0.45, "image_auroc": 0.9},
                   {"miou": 0.495, "image_auroc": 0.91}])
    networks_seen = []

    def fake_metrics(records):
        assert list(records) == parts["val"]
        networks_seen.append({name: type(stage.exported).__name__ for name, stage in exportable_stages(runner.pipeline.stages)})
        return next(scores)

    monkeypatch.setattr(runner, "_val_metrics", fake_metrics)
    checks = runner.check_int8("onnx", parts["val"], max_drop=0.01)
    assert {name: check["kept"] for name, check in checks.items()} == {"enhance": True, "gate": False, "segmenter": True}
    assert checks["gate"]["metrics"]["miou"] == {"fp32": 0.50, "int8": 0.45} and "0.0500 > 0.01" in checks["gate"]["reason"]
    # Every run used exported networks; the rejected gate went back to fp32 before the segmenter was tried.
    assert all(kind == "OnnxRuntimeNetwork" for seen in networks_seen for kind in seen.values())
    assert all(stage.exported is None for _, stage in exportable_stages(runner.pipeline.stages))  # PyTorch again afterwards
    record_int8_check(work_dir / "exported", "onnx", checks)
    used = use_runtime(runner.pipeline.stages, work_dir / "weights", work_dir / "exported", "onnxruntime", 1, "defectkit export c.py", "int8")
    assert used == ["enhance (int8)", "gate", "segmenter (int8)"]
    # Nothing to judge by: nothing is kept.
    assert {check["reason"] for check in runner.check_int8("onnx", [], max_drop=0.01).values()} == {"no validation split to check it on"}
    scores = iter([{"n_images": 2}])  # a validation split without ground truth measures no primary metric
    checks = runner.check_int8("onnx", parts["val"], max_drop=0.01)
    assert not any(check["kept"] for check in checks.values())
    assert all(check["reason"].startswith("the validation split measures none of") for check in checks.values())


def test_a_network_the_quantizer_cannot_handle_stays_fp32_and_the_others_are_quantized(car_dir: Path, tmp_path: Path, monkeypatch):
    import defectkit.export as export

    work_dir = _copy_work_dir(car_dir, tmp_path)
    runner = _runner(work_dir, CAR, TINY_CAR)
    images = [decode_record(r).image for r in runner.split(runner.records())["train"][:2]]
    quantize = export.quantize_onnx

    def failing_for_the_gate(path: Path, out: Path, calibration: torch.Tensor, batch_size: int = 4) -> None:
        if path.name.startswith("gate"):
            raise RuntimeError("unsupported operator")
        quantize(path, out, calibration, batch_size)

    monkeypatch.setattr(export, "quantize_onnx", failing_for_the_gate)
    added = quantize_pipeline(runner.pipeline.stages, work_dir / "exported", "onnx", images, images, log=lambda line: None)
    assert added["gate"] == {"file": None, "check": {"kept": False, "reason": "quantization failed (RuntimeError: unsupported operator)"}}
    assert set(int8_files(work_dir / "exported", "onnx")) == {"enhance", "segmenter"}  # the ones still to check


def test_int8_without_a_validated_int8_export_or_with_torch_is_refused(car_dir: Path, tmp_path: Path, capsys):
    inputs = sorted((car_dir / "builtin_data" / "images").glob("*.jpg"))[:1]
    rc = _cli("predict", CAR, "--work-dir", str(car_dir), "--input", str(inputs[0]), "--out", str(tmp_path / "a"),
              "--cfg-options", *TINY_CAR, "predict.runtime=onnxruntime", "predict.precision=int8")
    err = capsys.readouterr().err
    assert rc == EXIT_FATAL and "no validated INT8 onnx export" in err and "--int8" in err and "Traceback" not in err
    rc = _cli("predict", CAR, "--work-dir", str(car_dir), "--input", str(inputs[0]), "--out", str(tmp_path / "b"),
              "--cfg-options", *TINY_CAR, "predict.precision=int8")
    assert rc == EXIT_FATAL and "predict.runtime=onnxruntime or openvino" in capsys.readouterr().err


def test_int8_export_options_out_of_range_are_usage_errors(car_dir: Path, capsys):
    rc = _cli("export", CAR, "--work-dir", str(car_dir), "--int8", "--max-drop", "-0.1", "--cfg-options", *TINY_CAR)
    assert rc == EXIT_USAGE and "--max-drop" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ refusals
def _predict(work_dir: Path, tmp_path: Path, runtime: str, capsys) -> tuple[int, str]:
    inputs = sorted((work_dir / "builtin_data" / "images").glob("*.jpg"))[:2]
    assert inputs
    rc = _cli("predict", CAR, "--work-dir", str(work_dir), "--input", *map(str, inputs), "--out", str(tmp_path / "out"),
              "--cfg-options", *TINY_CAR, f"predict.runtime={runtime}")
    return rc, capsys.readouterr().err


def test_a_missing_export_is_one_line_naming_the_export_command(car_dir: Path, tmp_path: Path, capsys):
    work_dir = _copy_work_dir(car_dir, tmp_path)
    shutil.rmtree(work_dir / "exported")
    rc, err = _predict(work_dir, tmp_path, "onnxruntime", capsys)
    assert rc == EXIT_FATAL
    line = err.strip()
    assert "\n" not in line and "defectkit export" in line and "--format onnx" in line and "Traceback" not in err


def test_an_altered_exported_file_is_refused(car_dir: Path, tmp_path: Path, capsys):
    work_dir = _copy_work_dir(car_dir, tmp_path)
    path = work_dir / "exported" / "segmenter.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    rc, err = _predict(work_dir, tmp_path, "onnxruntime", capsys)
    assert rc == EXIT_FATAL and "does not match the sha256" in err and "segmenter.onnx" in err


def test_an_export_of_other_weights_is_refused(car_dir: Path, tmp_path: Path, capsys):
    work_dir = _copy_work_dir(car_dir, tmp_path)
    manifest_path = work_dir / "exported" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["formats"]["onnx"]["stages"]["gate"]["weights_sha256"] = "0" * 64  # as after retraining the gate
    manifest_path.write_text(json.dumps(manifest))
    rc, err = _predict(work_dir, tmp_path, "onnxruntime", capsys)
    assert rc == EXIT_FATAL and "'gate'" in err and "other weights" in err


def test_an_unknown_runtime_is_a_config_error(car_dir: Path, tmp_path: Path, capsys):
    rc, err = _predict(car_dir, tmp_path, "tensorrt", capsys)
    assert rc == EXIT_USAGE and "predict.runtime" in err


# ------------------------------------------------------------------------------------ parity failures
class _SignFlip(torch.nn.Module):
    """Branches on the data: tracing bakes in the branch of the trace inputs, so other inputs disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > 0:
            return x * 2
        return -x


class _TraceTrap(Stage, Exportable):
    def export_module(self, images):
        inputs = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        inputs[2:] *= -1  # traced on the first two (positive), checked on all
        return ExportSpec(module=_SignFlip(), inputs=inputs, tolerance=1e-4)


def test_an_export_that_differs_from_pytorch_fails_is_recorded_and_is_refused_at_runtime(tmp_path: Path):
    images = [np.full((8, 8, 3), 100 + i, np.uint8) for i in range(4)]
    stage = _TraceTrap("trap")
    with pytest.raises(ExportError, match="trap.*max abs diff"):
        export_pipeline([stage], tmp_path / "weights", tmp_path / "exported", "onnx", images, log=lambda line: None)
    entry = json.loads((tmp_path / "exported" / "manifest.json").read_text())["formats"]["onnx"]["stages"]["trap"]
    assert entry["parity"]["passed"] is False and entry["parity"]["max_abs_diff"] > 100
    with pytest.raises(ExportError, match="failed its parity check"):
        use_runtime([stage], tmp_path / "weights", tmp_path / "exported", "onnxruntime", 1, "defectkit export c.py --work-dir w")
    assert stage.exported is None


def test_a_wrapped_network_stage_is_exported_under_the_wrappers_name():
    segmenter = Segmenter(model=dict(type="Unet"), image_size=(64, 64), pretrained=False)
    tiling = Tiling(inner=segmenter, slice_size=64, name="tiled_segmenter")
    assert [(name, stage) for name, stage in exportable_stages([tiling])] == [("tiled_segmenter", segmenter)]
    segmenter.enabled = False  # a switched-off stage neither loads nor runs: nothing to export
    assert list(exportable_stages([segmenter])) == []


def _untrained_detector(kind: str, ensemble: int = 1) -> Detector:
    torch.manual_seed(0)
    detector = Detector(model=dict(type=kind, score_thresh=0.05), image_size=(64, 96), pretrained=False, name="detector",
                        ensemble=ensemble)
    detector.classes = ["lesion", "scar"]
    for member in detector.members(detector.fresh_network()):
        # Spread the class scores (a new head starts every location near its 0.01 prior), so that boxes
        # clear the threshold in a clear order instead of as near-ties.
        logits = member.head.classification_head.cls_logits
        torch.nn.init.normal_(logits.weight, std=0.05)
        torch.nn.init.constant_(logits.bias, -2.0)
    detector.mark_fitted()
    return detector


@pytest.mark.parametrize("kind, ensemble", [("fcos", 1), ("retinanet", 1), ("fcos", 2)])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_detector_finds_the_same_boxes_through_its_exported_network(kind: str, ensemble: int, runtime: str, tmp_path: Path):
    detector = _untrained_detector(kind, ensemble)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120, 150 + 10 * i, 3), dtype=np.uint8) for i in range(4)]
    fmt = "onnx" if runtime == "onnxruntime" else "openvino"
    section = export_pipeline([detector], tmp_path / "weights", tmp_path / "exported", fmt, images, log=lambda line: None)
    assert section["stages"]["detector"]["parity"]["passed"]
    expected = detector.detect(images)
    assert use_runtime([detector], tmp_path / "weights", tmp_path / "exported", runtime, 1, "defectkit export c.py") == ["detector"]
    found = detector.detect(images)
    assert sum(len(d.boxes) for d in expected) > 10  # a low head threshold: random weights still give boxes
    _assert_same_detections(expected, found)

    # Test-time input sizes run the same exported file at other heights and widths.
    detector.tta_scales = (1.0, 1.5)
    use_runtime([detector], tmp_path / "weights", tmp_path / "exported", "torch", 1, "defectkit export c.py")
    expected = detector.detect(images)
    use_runtime([detector], tmp_path / "weights", tmp_path / "exported", runtime, 1, "defectkit export c.py")
    # (Fused boxes of near-equal scores may swap places: compared in box order.)
    _assert_same_detections(expected, detector.detect(images), any_order=True)


def _assert_same_detections(expected: list[Detections], found: list[Detections], any_order: bool = False) -> None:
    for a, b in zip(expected, found, strict=True):
        assert len(a.boxes) == len(b.boxes)
        if any_order:
            a, b = (Detections(d.boxes[order], d.scores[order], d.labels[order])
                    for d, order in ((d, np.lexsort(np.round(d.boxes, 1).T)) for d in (a, b)))
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
        np.testing.assert_array_equal(b.labels, a.labels)


def test_an_export_of_one_input_size_is_refused_for_a_detector_with_test_time_sizes(tmp_path: Path):
    detector = _untrained_detector("fcos")
    images = [np.full((64, 96, 3), 128, np.uint8)] * 2
    export_pipeline([detector], tmp_path / "weights", tmp_path / "exported", "onnx", images, log=lambda line: None)
    manifest_path = tmp_path / "exported" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["formats"]["onnx"]["stages"]["detector"]["dynamic_axes"] = {"0": "batch"}  # as exports before tta_scales
    manifest_path.write_text(json.dumps(manifest))
    assert use_runtime([detector], tmp_path / "weights", tmp_path / "exported", "onnxruntime", 1, "x") == ["detector"]
    detector.tta_scales = (1.0, 1.5)
    with pytest.raises(ExportError, match="takes one input size.*tta_scales"):
        use_runtime([detector], tmp_path / "weights", tmp_path / "exported", "onnxruntime", 1, "x")
