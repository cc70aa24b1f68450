"""Exported networks: ``defectkit export`` (ONNX, OpenVINO) with a parity check, and ``predict.runtime``.

Every stage that declares :class:`~defectkit.stages.base.Exportable` (the segmenter, the classifier
gate, the anomaly gate's feature extractor, Zero-DCE's curve estimator; a wrapping stage's inner
stage under the wrapper's name) hands over its network and the inputs it builds for a few images.
:func:`export_pipeline` writes ``<work dir>/exported/<stage name>.onnx`` (or ``.xml`` + ``.bin``
for OpenVINO), runs PyTorch and the exported file on those inputs and records the largest
difference of what the stage uses (probabilities, curves, embeddings) and how many of its
decisions (mask pixels, labels) agree in ``exported/manifest.json``; a stage outside its stated
tolerance fails the export. With ``predict.runtime=onnxruntime`` or ``openvino``,
:func:`use_runtime` loads each file (checked against the manifest's sha256, its parity result and
the weights it was exported from) and the stage calls it instead of its PyTorch network; everything
before and after the network (resizing, tiling, scoring, thresholds) stays the same code.

Example:
    >>> from defectkit.export import RUNTIMES
    >>> RUNTIMES
    ('torch', 'onnxruntime', 'openvino')
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectkit import __version__
from defectkit.errors import ExportError
from defectkit.io.atomic import atomic_write_json
from defectkit.io.state import has_state, read_manifest
from defectkit.stages.base import Exportable, ExportSpec, Stage
from defectkit.stages.wrapping import WrappingStage

FORMATS = ("onnx", "openvino")
"""What ``defectkit export --format`` writes."""

RUNTIMES = ("torch", "onnxruntime", "openvino")
"""What ``predict.runtime`` accepts; each runtime but torch runs the files of one format."""

RUNTIME_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}
"""The export format each runtime reads."""

SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
"""The file each format writes per stage (OpenVINO's weights go beside it in ``.bin``)."""

INT8_STEM = ".int8"
"""Added to a stage's name for its INT8 file (``segmenter.int8.onnx``)."""

OPSET = 17
"""ONNX opset the networks are exported with (TorchScript exporter; every operator used exists there)."""

EXPORT_DIR = "exported"
"""Folder of the work dir that holds the exported networks and their manifest."""

MANIFEST = "manifest.json"

PRECISIONS = ("fp32", "int8")
"""What ``predict.precision`` accepts: ``int8`` runs the INT8 files ``defectkit export --int8`` kept."""

INT8_MAX_DROP = 0.01
"""Default largest drop of any primary validation metric (absolute) for which a stage's INT8 network is kept."""

CALIBRATION_IMAGES = 32
"""Default number of training photos the INT8 activation ranges are calibrated on."""


def exportable_stages(stages: Sequence[Stage]) -> Iterator[tuple[str, Exportable]]:
    """``(name, stage)`` of every exportable network stage that runs, a wrapped one under its wrapper's name.

    A wrapping stage (tiling, crop) saves its inner stage's state under its own name, so the export is named
    the same way; switched-off stages are left out (they neither load nor run).
    """
    for stage in stages:
        if stage.skipped:
            continue
        target: Any = stage
        while isinstance(target, WrappingStage):
            target = target.inner
        if isinstance(target, Exportable):
            yield stage.name, target


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- runtimes
class OnnxRuntimeNetwork:
    """An ONNX file run by ONNX Runtime on the CPU, called like the network it was exported from.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (the runner's ``runtime.num_threads``).
    """

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ExportError("predict.runtime=onnxruntime needs the package 'onnxruntime' (pip install 'defectkit[export]')") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        # Decoding and writing threads share the cores: waiting workers sleep instead of spinning,
        # as torch's OpenMP threads do under OMP_WAIT_POLICY=PASSIVE (defectkit.cli).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The first output for an NCHW float batch (on the CPU, fp32)."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class OpenVinoNetwork:
    """An OpenVINO IR (``.xml`` + ``.bin``) compiled for the CPU in fp32, called like the network it was exported from.

    Args:
        path: The ``.xml`` file.
        threads: Inference threads (the runner's ``runtime.num_threads``).
    """

    def __init__(self, path: Path, threads: int) -> None:
        ov = _import_openvino("predict.runtime=openvino")
        core = ov.Core()
        # fp32 stated explicitly: on CPUs with bf16 units OpenVINO would otherwise lower the precision.
        config = {"INFERENCE_NUM_THREADS": max(1, int(threads)), "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The first output for an NCHW float batch (on the CPU, fp32)."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        self.request.infer({0: array})
        return torch.from_numpy(np.array(self.request.get_output_tensor(0).data, copy=True))


def _import_openvino(what: str) -> Any:
    """The ``openvino`` module, or an :class:`ExportError` saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ExportError(f"{what} needs the package 'openvino' (pip install 'defectkit[export]')") from exc
    return openvino


def load_network(path: Path, fmt: str, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file ``path`` of format ``fmt`` as a callable network."""
    return OnnxRuntimeNetwork(path, threads) if fmt == "onnx" else OpenVinoNetwork(path, threads)


# ------------------------------------------------------------------------------------------- export
def write_onnx(
    module: torch.nn.Module, example: torch.Tensor, dynamic_axes: dict[int, str], path: Path,
    output_axes: dict[int, str] | None = None,
) -> None:
    """Export ``module`` (CPU, fp32, eval) traced on ``example`` to ``path``: one input ``input``, one output ``output``,
    the input's ``dynamic_axes`` and the output's ``output_axes`` (None: the same) free (opset :data:`OPSET`,
    TorchScript exporter)."""
    axes = {int(k): str(v) for k, v in dynamic_axes.items()}
    out_axes = axes if output_axes is None else {int(k): str(v) for k, v in output_axes.items()}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter on purpose: the torch.export-based one needs onnxscript, which the
        # [export] extra does not install; its deprecation notices say nothing a user can act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*(legacy TorchScript-based ONNX export|feature will be removed).*")
        torch.onnx.export(
            module, (example,), str(path), input_names=["input"], output_names=["output"],
            dynamic_axes={"input": axes, "output": out_axes}, opset_version=OPSET, dynamo=False,
        )


def onnx_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """Convert an ONNX file to OpenVINO IR (``xml_path`` and the ``.bin`` beside it), weights kept in fp32.

    Raises:
        ExportError: The ``openvino`` package is not installed.
    """
    ov = _import_openvino("--format openvino")
    # fp32 weights: the default fp16 compression would move outputs beyond the parity tolerance.
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def _write_files(
    spec: ExportSpec, module: torch.nn.Module, inputs: torch.Tensor, fmt: str, export_dir: Path, name: str,
    calibration: torch.Tensor | None = None,
) -> list[Path]:
    """Write the stage's network in ``fmt`` into ``export_dir`` (temporary files renamed into place); the files written.

    With ``calibration`` inputs the network is written INT8 (:func:`quantize_onnx`) as ``<name>.int8.*``.
    """
    with tempfile.TemporaryDirectory(dir=export_dir, prefix=".tmp-") as tmp:
        onnx_path = Path(tmp) / f"{name}.onnx"
        # Traced on two inputs (one would let the tracer fold the batch size into reshapes).
        write_onnx(module, inputs[:2], spec.dynamic_axes, onnx_path, spec.output_axes)
        stem = name
        if calibration is not None:
            stem = f"{name}{INT8_STEM}"
            quantize_onnx(onnx_path, onnx_path.with_name(f"{stem}.onnx"), calibration)
            onnx_path = onnx_path.with_name(f"{stem}.onnx")
        if fmt == "onnx":
            written = [onnx_path]
        else:
            xml_path = Path(tmp) / f"{stem}.xml"
            onnx_to_openvino(onnx_path, xml_path)
            written = [xml_path, xml_path.with_suffix(".bin")]
        final = []
        for path in written:
            target = export_dir / path.name
            os.replace(path, target)
            final.append(target)
    return final


def _cpu_copy(spec: ExportSpec) -> tuple[torch.nn.Module, torch.Tensor]:
    """A CPU fp32 eval copy of the spec's network and its inputs (the stage's own may be on CUDA, channels-last)."""
    module = copy.deepcopy(spec.module).to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    return module, spec.inputs.detach().to("cpu", torch.float32).contiguous()


def parity(spec: ExportSpec, expected: torch.Tensor, actual: torch.Tensor) -> dict[str, Any]:
    """Compare PyTorch's output with the export's: largest (relative) difference after the stage's activation,
    agreement of its decisions, and whether both are within the spec's bounds."""
    if tuple(expected.shape) != tuple(actual.shape):
        return {"passed": False, "problem": f"output shape {list(actual.shape)} differs from PyTorch's {list(expected.shape)}"}
    a, b = expected.double(), actual.double()
    if spec.activation is not None:
        a, b = spec.activation(a), spec.activation(b)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(a.abs().max()) if spec.relative and a.numel() else 1.0
    measured = diff / max(scale, 1e-12)
    result: dict[str, Any] = {"max_abs_diff": float(f"{diff:.3g}")}
    if spec.relative:
        result["max_rel_diff"] = float(f"{measured:.3g}")
    result["passed"] = bool(measured <= spec.tolerance)
    if spec.decision is not None:
        agreement = float((spec.decision(a) == spec.decision(b)).double().mean())
        result["agreement"] = round(agreement, 6)
        result["passed"] = result["passed"] and agreement >= spec.min_agreement
    return result


def export_pipeline(
    stages: Sequence[Stage],
    weights_dir: Path,
    export_dir: Path,
    fmt: str,
    images: Sequence[np.ndarray],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export every exportable stage's network, check its parity on ``images`` and write the manifest.

    Args:
        stages: The pipeline's stages, fitted or loaded.
        weights_dir: Where their weights are (the checksum of each is recorded, so a later retraining
            makes the export stale instead of silently mixing old networks with new thresholds).
        export_dir: Where the files and ``manifest.json`` go.
        fmt: ``"onnx"`` or ``"openvino"``.
        images: HxWx3 uint8 images for the parity check (at least two).
        log: Where one line per stage goes.

    Returns:
        This format's manifest section: ``{"opset", "stages": {name: entry}}``.

    Raises:
        ExportError: An unknown format, a missing package, or a stage whose export is outside its
            tolerance (the manifest is written first, with the failed result).
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if len(images) < 2:
        raise ExportError(f"the parity check needs at least 2 images, got {len(images)}")
    export_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    failures: list[str] = []
    threads = torch.get_num_threads()
    for name, stage in exportable_stages(stages):
        spec = stage.export_module(images)
        entry: dict[str, Any] = {"stage_type": type(stage).__name__, "weights_sha256": _weights_sha256(weights_dir, name)}
        if spec is None:
            entries[name] = {**entry, "file": None, "reason": "the stage has no network to run (see its fit summary)"}
            log(f"{name}: no network to export")
            continue
        # The stage's own network stays where it is (maybe CUDA, channels-last); a CPU fp32 copy is exported.
        module, inputs = _cpu_copy(spec)
        files = _write_files(spec, module, inputs, fmt, export_dir, name)
        with torch.inference_mode():
            expected = module(inputs)
        actual = load_network(files[0], fmt, threads)(inputs)
        check = parity(spec, expected, actual)
        entries[name] = {
            **entry,
            "file": files[0].name,
            "sha256": sha256_of(files[0]),
            **({"weights_file": files[1].name, "weights_file_sha256": sha256_of(files[1])} if len(files) > 1 else {}),
            "input_shape": list(inputs.shape),
            "dynamic_axes": {str(k): v for k, v in spec.dynamic_axes.items()},
            "opset": OPSET,
            "tolerance": spec.tolerance,
            **({"min_agreement": spec.min_agreement} if spec.decision is not None else {}),
            "parity": {"images": int(inputs.shape[0]), **check},
        }
        verdict = "ok" if check["passed"] else "FAILED"
        log(f"{name}: {files[0].name} parity {verdict} ({', '.join(f'{k} {v}' for k, v in check.items() if k != 'passed')})")
        if not check["passed"]:
            failures.append(f"{name} ({check.get('problem') or _describe_failure(check, spec)})")
    section = {"opset": OPSET, "stages": entries}
    manifest = _read_manifest(export_dir)
    manifest["defectkit_version"] = __version__
    manifest.setdefault("formats", {})[fmt] = section
    atomic_write_json(export_dir / MANIFEST, manifest)
    if failures:
        raise ExportError(
            f"exported network differs from PyTorch beyond its tolerance: {'; '.join(failures)}; "
            f"recorded in {export_dir / MANIFEST} (predict.runtime refuses it)"
        )
    return section


def _describe_failure(check: dict[str, Any], spec: ExportSpec) -> str:
    what = f"max relative diff {check['max_rel_diff']}" if spec.relative else f"max abs diff {check['max_abs_diff']}"
    text = f"{what} > tolerance {spec.tolerance}"
    if "agreement" in check:
        text += f", agreement {check['agreement']} (needs {spec.min_agreement})"
    return text


def _weights_sha256(weights_dir: Path, name: str) -> str | None:
    """The checksum of a stage's saved tensors (from its state manifest), or None when it has none."""
    return read_manifest(weights_dir, name).get("sha256") if has_state(weights_dir, name) else None


def _read_manifest(export_dir: Path) -> dict[str, Any]:
    """The export manifest, ``{}`` when there is none.

    Raises:
        ExportError: It exists but is not a JSON object.
    """
    path = export_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not readable as JSON ({exc}); run `defectkit export` again") from exc
    if not isinstance(manifest, dict):
        raise ExportError(f"{path}: expected a JSON object; run `defectkit export` again")
    return manifest


# ------------------------------------------------------------------------------------------- int8
def quantize_onnx(onnx_path: Path, out_path: Path, calibration: torch.Tensor, batch_size: int = 4) -> None:
    """Write a static INT8 copy of an fp32 ONNX file, calibrated on ``calibration`` (NCHW float inputs).

    ONNX Runtime's quantizer in QDQ form, on the convolutions (but the first and the last) and matrix
    products: their input activations uint8 with min/max ranges observed on the calibration inputs,
    weights int8 per output channel. OpenVINO reads the same QDQ graph and runs
    it in INT8 too, so one quantization serves both runtimes.

    Raises:
        ExportError: ``onnxruntime`` is not installed.
    """
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ExportError("--int8 needs the package 'onnxruntime' (pip install 'defectkit[export]')") from exc
    batches = [calibration[i : i + batch_size].detach().to("cpu", torch.float32).contiguous().numpy()
               for i in range(0, len(calibration), batch_size)]

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.left = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.left, None)
            return None if batch is None else {"input": batch}

    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".tmp-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Folding and shape inference first, as ONNX Runtime recommends; its symbolic shape inference
        # does not follow the dynamic height and width of these networks, so ONNX's own is used.
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        import onnx

        convolutions = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
        quantize_static(
            str(prepared), str(out_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            # The convolutions (and matrix products) hold nearly all the compute. Quantizing the ops
            # between them as well broke the dynamic input size: the DeepLabV3+ decoder's resize and
            # concatenation failed at any size but the calibration one.
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            # The first convolution (raw pixels in) and the last (the logits out) stay fp32: on the car
            # segmenter this cut the mean probability error 3x (0.018 -> 0.006) at almost no cost.
            nodes_to_exclude=[convolutions[0], convolutions[-1]] if len(convolutions) > 2 else [],
        )


def quantize_pipeline(
    stages: Sequence[Stage],
    export_dir: Path,
    fmt: str,
    calibration_images: Sequence[np.ndarray],
    parity_images: Sequence[np.ndarray],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write an INT8 network (``<stage>.int8.onnx`` or ``.int8.xml``) for every stage of the ``fmt`` export.

    Run after :func:`export_pipeline` for the same format. Each stage's inputs for
    ``calibration_images`` (training photos) set the activation ranges; its difference from PyTorch on
    ``parity_images`` is recorded, not judged: INT8 moves outputs far beyond the fp32 tolerances, so
    whether it is kept is decided on the validation metric (:func:`record_int8_check`).

    Returns:
        ``{stage name: int8 entry}`` as added to the manifest (``check`` still None).

    Raises:
        ExportError: There is no ``fmt`` export to quantize, or a package is missing.
    """
    manifest = _read_manifest(export_dir)
    section = manifest.get("formats", {}).get(fmt)
    if not isinstance(section, dict):
        raise ExportError(f"--int8: no {fmt} export in {export_dir} to quantize")
    added: dict[str, Any] = {}
    for name, stage in exportable_stages(stages):
        entry = section["stages"].get(name)
        if not isinstance(entry, dict) or entry.get("file") is None:
            continue
        calibration = stage.export_module(calibration_images)
        spec = stage.export_module(parity_images)
        if calibration is None or spec is None:
            continue
        module, inputs = _cpu_copy(spec)
        try:
            files = _write_files(spec, module, inputs, fmt, export_dir, name, calibration=calibration.inputs)
        except ExportError:
            raise  # a missing package: nothing else can be quantized either
        except Exception as exc:  # one network the quantizer cannot handle must not cost the others theirs
            reason = f"quantization failed ({type(exc).__name__}: {exc})"
            added[name] = {"file": None, "check": {"kept": False, "reason": reason}}
            log(f"{name}: INT8 {reason}; it stays fp32")
            entry["int8"] = added[name]
            continue
        with torch.inference_mode():
            expected = module(inputs)
        difference = {k: v for k, v in parity(spec, expected, load_network(files[0], fmt, torch.get_num_threads())(inputs)).items() if k != "passed"}
        added[name] = {
            "file": files[0].name,
            "sha256": sha256_of(files[0]),
            **({"weights_file": files[1].name, "weights_file_sha256": sha256_of(files[1])} if len(files) > 1 else {}),
            "calibration_images": int(calibration.inputs.shape[0]),
            "quantization": "static QDQ (onnxruntime.quantization) of Conv (not the first and last)/MatMul/Gemm: uint8 activations "
                            "(min/max on the calibration inputs), int8 weights per output channel",
            "difference": {"images": int(inputs.shape[0]), **difference},
            "check": None,
        }
        log(f"{name}: {files[0].name} ({', '.join(f'{k} {v}' for k, v in difference.items())} against PyTorch)")
        entry["int8"] = added[name]
    atomic_write_json(export_dir / MANIFEST, manifest)
    return added


def record_int8_check(export_dir: Path, fmt: str, checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Store each stage's validation verdict (``{"kept": bool, ...}``) with its INT8 entry in the manifest.

    Returns:
        The format's manifest section, as written.
    """
    manifest = _read_manifest(export_dir)
    section = manifest.get("formats", {}).get(fmt, {})
    stages = section.get("stages", {})
    for name, check in checks.items():
        if isinstance(stages.get(name), dict) and isinstance(stages[name].get("int8"), dict):
            stages[name]["int8"]["check"] = check
    atomic_write_json(export_dir / MANIFEST, manifest)
    return section


def int8_files(export_dir: Path, fmt: str) -> dict[str, Path]:
    """``{stage name: INT8 file}`` of the ``fmt`` export whose check is still to be made."""
    section = _read_manifest(export_dir).get("formats", {}).get(fmt, {})
    return {name: export_dir / entry["int8"]["file"] for name, entry in section.get("stages", {}).items()
            if isinstance(entry, dict) and isinstance(entry.get("int8"), dict) and entry["int8"].get("file")}


# ------------------------------------------------------------------------------------------- runtime
def use_runtime(
    stages: Sequence[Stage], weights_dir: Path, export_dir: Path, runtime: str, threads: int, export_command: str,
    precision: str = "fp32",
) -> list[str]:
    """Make every exportable stage run its network with ``runtime`` (``"torch"``: their own PyTorch networks).

    Each file is the one named after its stage in ``export_dir`` (never a path from the manifest), and is
    used only when its sha256, its parity result and the weights it was exported from match the manifest
    and the current weights. With ``precision="int8"`` a stage runs its INT8 file where the export's
    validation check kept it (``defectkit export --int8``), and its fp32 file elsewhere.

    Args:
        stages: The pipeline's stages, loaded.
        weights_dir: The weights the stages were loaded from.
        export_dir: The work dir's ``exported/`` folder.
        runtime: One of :data:`RUNTIMES`.
        threads: Threads per network.
        export_command: The ``defectkit export ...`` command line to suggest when an export is missing or stale.
        precision: One of :data:`PRECISIONS`.

    Returns:
        The names of the stages now running an exported file (``"segmenter (int8)"`` for INT8 ones).

    Raises:
        ExportError: An unknown runtime; a missing, stale, failed or altered export (one line saying what
            to run); a missing package.
    """
    if runtime not in RUNTIMES:
        raise ExportError(f"predict.runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ExportError(f"predict.precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and runtime == "torch":
        raise ExportError("predict.precision=int8 runs exported INT8 networks: set predict.runtime=onnxruntime or openvino")
    chosen = list(exportable_stages(stages))
    if runtime == "torch":
        for _, stage in chosen:
            stage.use_exported(None)
        return []
    fmt = RUNTIME_FORMAT[runtime]
    rerun = f"run `{export_command} --format {fmt}`"
    section = _read_manifest(export_dir).get("formats", {}).get(fmt)
    if not isinstance(section, dict) or not isinstance(section.get("stages"), dict):
        raise ExportError(f"predict.runtime={runtime} needs the {fmt} export in {export_dir}, which has none; {rerun} first")
    used = []
    for name, stage in chosen:
        entry = section["stages"].get(name)
        if not isinstance(entry, dict):
            raise ExportError(f"predict.runtime={runtime}: stage {name!r} has no {fmt} export in {export_dir}; {rerun} first")
        if entry.get("weights_sha256") != _weights_sha256(weights_dir, name):
            raise ExportError(f"predict.runtime={runtime}: the {fmt} export of stage {name!r} was made from other weights; {rerun} again")
        if entry.get("file") is None:
            stage.use_exported(None)  # the stage has no network (e.g. a gate that passes everything)
            continue
        if not (isinstance(entry.get("parity"), dict) and entry["parity"].get("passed") is True):
            raise ExportError(f"predict.runtime={runtime}: the {fmt} export of stage {name!r} failed its parity check; see {export_dir / MANIFEST}")
        if stage.runs_other_input_sizes and not {"height", "width"} <= set(dict(entry.get("dynamic_axes") or {}).values()):
            raise ExportError(f"predict.runtime={runtime}: the {fmt} export of stage {name!r} takes one input size, but the stage "
                              f"predicts at several (tta_scales); {rerun} again")
        stem, label = name, name
        if precision == "int8":
            int8 = entry.get("int8")
            if not (isinstance(int8, dict) and isinstance(int8.get("check"), dict)):
                raise ExportError(f"predict.precision=int8: stage {name!r} has no validated INT8 {fmt} export in {export_dir}; "
                                  f"run `{export_command} --format {fmt} --int8` first")
            if int8["check"].get("kept") is True:
                entry, stem, label = int8, f"{name}{INT8_STEM}", f"{name} (int8)"
        path = export_dir / f"{stem}{SUFFIX[fmt]}"
        checks = [(path, entry.get("sha256"))]
        if fmt == "openvino":
            checks.append((path.with_suffix(".bin"), entry.get("weights_file_sha256")))
        for file, expected in checks:
            if not file.is_file():
                raise ExportError(f"predict.runtime={runtime}: {file} is missing; {rerun} again")
            if sha256_of(file) != expected:
                raise ExportError(f"predict.runtime={runtime}: {file} does not match the sha256 in {export_dir / MANIFEST}; {rerun} again")
        stage.use_exported(load_network(path, fmt, threads))
        used.append(label)
    return used


__all__ = [
    "CALIBRATION_IMAGES", "EXPORT_DIR", "FORMATS", "INT8_MAX_DROP", "OPSET", "PRECISIONS", "RUNTIMES", "OnnxRuntimeNetwork",
    "OpenVinoNetwork", "export_pipeline", "exportable_stages", "int8_files", "load_network", "onnx_to_openvino", "parity",
    "quantize_onnx", "quantize_pipeline", "record_int8_check", "sha256_of", "use_runtime", "write_onnx",
]
