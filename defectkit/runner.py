"""What the CLI commands do: build a config's data set and pipeline, fit, evaluate and predict.

One image's path through a run: :meth:`Runner.records` reads it from the data root, the split puts
it in ``test``, :meth:`Runner.stream` decodes it in a worker thread, :class:`~defectkit.pipeline.Pipeline`
runs every stage on its batch, and the writer thread draws its overlay and appends its line to
``predictions.jsonl`` (and its evaluation record) before the metrics and report are written.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from defectkit import __version__
from defectkit.config import Config
from defectkit.data.base import ImageDataset
from defectkit.data.grouping import area_ratio_cuts, make_damage_stratum
from defectkit.data.masks import ground_truth_masks
from defectkit.data.split import default_stratum, load_split, save_split, split_records
from defectkit.errors import ConfigError, DataError, OutputError
from defectkit.evaluation.records import make_eval_record
from defectkit.export import (
    CALIBRATION_IMAGES,
    EXPORT_DIR,
    INT8_MAX_DROP,
    SUFFIX,
    export_pipeline,
    exportable_stages,
    int8_files,
    load_network,
    quantize_pipeline,
    record_int8_check,
    use_runtime,
)
from defectkit.io.atomic import TEMP_GLOB, atomic_write_bytes, atomic_write_json, with_path
from defectkit.io.detection_report import detection_html
from defectkit.io.images import DEFAULT_MAX_SIDE, decode_record
from defectkit.io.lock import folder_lock
from defectkit.io.overlays import draw_overlay, encode_overlay, overlay_name
from defectkit.io.report import write_report
from defectkit.io.results import ResultLog
from defectkit.io.segmentation_report import segmentation_section_html
from defectkit.io.state import check_manifest, read_manifest
from defectkit.pipeline import Pipeline
from defectkit.registry import DATASETS, METRICS, build
from defectkit.runtime import keep_freed_memory, resolve_device
from defectkit.sample import Instance, Record, Sample
from defectkit.stages.base import FitContext
from defectkit.validation import ConfigValueError

console = Console(stderr=True)

RESULT_NAMES = ("predictions.jsonl", "eval_records.jsonl", "metrics.json", "timings.json", "report.html", "run_info.json", "overlays", "plots")
"""What a prediction or evaluation writes into its results folder (moved aside together on overwrite)."""

_STAMP_FIELDS = {
    "mode": "command (eval or predict)", "split": "split", "data_root": "data root", "pipeline": "config's pipeline or classes",
    "version": "defectkit version", "weights": "weights", "runtime": "predict.runtime", "precision": "predict.precision",
}


class Runner:
    """Everything one config needs for ``run``, ``train``, ``eval`` and ``predict``.

    Args:
        cfg: A loaded config (see :func:`defectkit.config.load_config`).
        config_path: The config file, whose stem names the default work dir.
        data_root: Images and annotations in the layout ``cfg.dataset`` reads; None uses the
            config's built-in data set.
        work_dir: Where weights, splits and results go.

    Example:
        >>> runner = Runner(load_config("configs/texture_defect.py"), "configs/texture_defect.py")  # doctest: +SKIP
        >>> metrics = runner.run()  # doctest: +SKIP
    """

    def __init__(self, cfg: Config, config_path: str | Path, data_root: str | None = None, work_dir: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = Path(config_path)
        self.work_dir = Path(work_dir or cfg.get("work_dir") or Path("work_dirs") / self.config_path.stem)
        # eval/predict default to the data root the work dir was trained on.
        trained_on = _read_json(self.work_dir / "data_root.json").get("data_root")
        self.data_root = data_root or cfg.get("data_root") or trained_on
        self.weights_dir = self.work_dir / "weights"
        self.classes: list[str] = list(cfg.get("classes", []))
        self.image_classes: list[str] = list(cfg.get("image_classes", ["normal", "defect"]))
        predict_cfg = dict(cfg.get("predict", {}))
        self.batch_size = int(predict_cfg.get("batch_size", 16))
        self.overlays = predict_cfg.get("overlays", "all")
        if self.overlays not in ("all", "defects", "none"):
            raise DataError(f"predict.overlays must be 'all', 'defects' or 'none', got {self.overlays!r}")
        self.decode_workers = int(predict_cfg.get("decode_workers", 2))
        # torch, or the exported networks in work_dir/exported run by onnxruntime / openvino (defectkit.export).
        self.predict_runtime = str(predict_cfg.get("runtime", "torch"))
        # fp32, or int8: the INT8 networks `defectkit export --int8` kept after its validation check.
        self.predict_precision = str(predict_cfg.get("precision", "fp32"))
        # Larger images are decoded at reduced size (memory stays bounded); 0/None decodes at full size.
        max_side = predict_cfg.get("max_side", DEFAULT_MAX_SIDE)
        self.max_side = int(max_side) if max_side else None
        runtime = dict(cfg.get("runtime", {}))
        self.seed = int(runtime.get("seed", 0))
        threads = runtime.get("num_threads") or os.cpu_count() or 1
        torch.set_num_threads(int(threads))
        if runtime.get("keep_freed_memory", True):
            keep_freed_memory()
        self._seed_everything()
        self.pipeline = Pipeline.from_config(cfg.pipeline, classes=self.classes, batch_size=self.batch_size, max_side=self.max_side)
        # Metrics are built after the predictions; build them once now so a bad option fails first.
        for index, metric_cfg in enumerate(cfg.get("metrics", [])):
            try:
                build(METRICS, dict(metric_cfg), classes=self.classes)
            except ConfigValueError as exc:
                raise exc.at(f"metrics.{index}") from exc
            except ConfigError as exc:
                raise ConfigError(f"metrics.{index}: {exc}") from exc
        # "auto": CUDA when a GPU is visible, else the CPU (defectkit.runtime).
        self.device = resolve_device(runtime.get("device", "auto"))
        for stage in self.pipeline.stages:
            stage.use_device(self.device)
        self._records: dict[str, list[Record]] = {}

    def _seed_everything(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    # ----------------------------------------------------------------------------------- data
    def dataset(self, data_root: str | None = None) -> ImageDataset:
        """Build the reader for ``data_root`` (or the built-in data set when there is none)."""
        return build_dataset(self.cfg, self.config_path, self.work_dir, data_root or self.data_root)

    def records(self, data_root: str | None = None) -> list[Record]:
        """Every labelled image of the data root, with ground truth (read once per runner)."""
        key = str(data_root or self.data_root)
        if key not in self._records:
            self._records[key] = self._read_records(data_root)
        return self._records[key]

    def _read_records(self, data_root: str | None) -> list[Record]:
        dataset = self.dataset(data_root)
        records = dataset.records()
        if not records:
            raise DataError(f"no images found in {dataset.data_root}; expected layout:\n{dataset.LAYOUT}")
        for problem in dataset.problems[:20]:
            console.print(f"[yellow]data:[/yellow] {problem}")
        return records

    def split(self, records: Sequence[Record]) -> dict[str, list[Record]]:
        """The run's train/val/test split: saved on first use, reused afterwards."""
        path = self.work_dir / "split.json"
        if path.exists():
            return load_split(path, records)
        split_cfg = dict(self.cfg.get("split", {}))
        parts = split_records(
            records,
            ratios=tuple(split_cfg.get("ratios", (0.7, 0.1, 0.2))),
            seed=int(split_cfg.get("seed", self.seed)),
            stratum=split_stratum(split_cfg, records),
        )
        save_split(path, parts)
        return parts

    # ------------------------------------------------------------------------------- commands
    def train(self) -> dict[str, Any]:
        """Fit every trainable stage that has no saved state; returns per-stage fit summaries.

        Raises:
            FolderLockedError: Another command is writing to the work dir.
        """
        with folder_lock(self.work_dir):
            return self._train()

    def _train(self) -> dict[str, Any]:
        self._check_saved_states()
        records = self.records()
        parts = self.split(records)
        root = str(Path(self.data_root).resolve()) if self.data_root else None
        atomic_write_json(self.work_dir / "data_root.json", {"data_root": root})
        # The resolved config beside the weights: defectkit.load(work_dir) rebuilds the same pipeline.
        atomic_write_bytes(self.work_dir / "config.py", self.cfg.pretty_text.encode())
        console.print(
            f"data: {len(records)} images -> train {len(parts['train'])}, val {len(parts['val'])}, test {len(parts['test'])}"
        )
        with self._progress() as progress, ThreadPoolExecutor(self.decode_workers) as pool:

            def make_context(load_samples: Callable[[Sequence[Record]], list[Sample]]) -> FitContext:
                return FitContext(
                    work_dir=self.work_dir,
                    load_samples=load_samples,
                    classes=self.classes,
                    image_classes=self.image_classes,
                    progress=_progress_factory(progress),
                    log=console.print,
                )

            summaries = self.pipeline.fit(parts["train"], parts["val"], self.weights_dir, make_context, pool, console.print)
        previous = _read_json(self.work_dir / "fit_summary.json")
        previous.update({k: v for k, v in summaries.items() if not v.get("loaded")})
        atomic_write_json(self.work_dir / "fit_summary.json", previous)
        return summaries

    def run(self, overwrite: bool = False) -> dict[str, float]:
        """Fit what is not fitted, evaluate on the test split, write predictions, overlays and the report.

        The work dir stays locked from training to the report, so no other command writes there meanwhile.
        """
        with folder_lock(self.work_dir):
            self.train()
            return self.evaluate(split="test", out_dir=self.work_dir, overwrite=overwrite)

    def evaluate(
        self, split: str = "test", out_dir: Path | None = None, data_root: str | None = None, overwrite: bool = False
    ) -> dict[str, float]:
        """Predict on a split of the data (``test`` or ``all``) and compute the config's metrics.

        ``overwrite`` moves results of another run in ``out_dir`` aside (see :meth:`stream`).
        """
        self.load_weights()
        records = self.records(data_root)
        if split == "all":
            chosen = records
        elif split in ("train", "val", "test"):
            chosen = self.split(records)[split]
        else:
            raise DataError(f"unknown split {split!r}; use test, val, train or all")
        if not chosen:
            raise DataError(f"the {split} split is empty")
        out_dir = Path(out_dir or self.work_dir)
        stamp = {"mode": "eval", "split": split, "data_root": str(Path(data_root or self.data_root or "builtin").resolve())}
        return self.stream(chosen, out_dir, stamp, evaluate=True, overwrite=overwrite)

    def predict(self, inputs: Sequence[str], out_dir: Path, overwrite: bool = False) -> dict[str, float]:
        """Predict on files and folders (recursively; every non-hidden file is an input).

        Raises:
            OutputError: ``out_dir`` is the work dir, or holds another run's results, and ``overwrite`` is False.
        """
        out_dir = Path(out_dir)
        if not overwrite and _same_folder(out_dir, self.work_dir):
            raise OutputError(
                f"{out_dir} is the work dir of the trained run (its evaluation results live there); choose another "
                "--out, or pass --overwrite to move its results aside"
            )
        self.load_weights()
        records = [Record(path=p) for p in collect_inputs(inputs)]
        if not records:
            raise DataError(f"no input files found in {', '.join(inputs)}")
        return self.stream(records, out_dir, {"mode": "predict"}, evaluate=False, overwrite=overwrite)

    def predict_files(self, paths: Sequence[str]) -> list[Sample]:
        """Decode and predict image files in memory, writing nothing (the review app's single photos).

        Decoding is the batch run's (same size policy); a file that cannot be decoded comes back
        with ``sample.error`` set.
        """
        self.load_weights()
        samples = [decode_record(Record(path=str(p)), max_side=self.max_side) for p in paths]
        return self.pipeline.predict(samples)

    def _check_saved_states(self) -> None:
        """Refuse saved weights written for another stage type, library version or other classes."""
        for stage in self.pipeline.trainable:
            if stage.has_saved_state(self.weights_dir):
                check_manifest(self.weights_dir, stage.name, type(stage).__name__, self.classes or None)

    def load_weights(self, with_runtime: bool = True) -> None:
        """Load every trainable stage not fitted yet from the work dir, checked against the config.

        With ``with_runtime`` the networks then run with ``predict.runtime`` (:meth:`use_predict_runtime`).

        Raises:
            DataError: A stage has no saved state (the message says how to train it).
            StateError: Saved state of another stage type, library version or other classes.
            ExportError: ``predict.runtime`` names an export that is missing, stale or altered.
        """
        self._check_saved_states()
        for stage in self.pipeline.trainable:
            if not stage.fitted and not stage.has_saved_state(self.weights_dir):
                raise DataError(
                    f"stage {stage.name!r} has no saved state in {self.weights_dir}; "
                    f"run `defectkit train {self.config_path} --work-dir {self.work_dir}` first"
                )
        self.pipeline.load(self.weights_dir, only_unfitted=True)
        if with_runtime:
            self.use_predict_runtime()

    @property
    def export_dir(self) -> Path:
        """Where ``defectkit export`` writes the networks and their manifest."""
        return self.work_dir / EXPORT_DIR

    def use_predict_runtime(self) -> None:
        """Run the stages' networks with ``predict.runtime`` (torch, or their exported files).

        Raises:
            ExportError: A missing, stale or altered export (the message says which command writes it).
        """
        used = use_runtime(
            self.pipeline.stages, self.weights_dir, self.export_dir, self.predict_runtime, torch.get_num_threads(),
            f"defectkit export {self.config_path} --work-dir {self.work_dir}", self.predict_precision,
        )
        if used:
            console.print(f"predict.runtime={self.predict_runtime}: {', '.join(used)} run from {self.export_dir}", soft_wrap=True, highlight=False)

    def export(
        self, fmt: str, n_images: int = 4, data_root: str | None = None, int8: bool = False,
        max_drop: float = INT8_MAX_DROP, calibration_images: int = CALIBRATION_IMAGES,
    ) -> dict[str, Any]:
        """Export every network stage in ``fmt`` to ``work_dir/exported`` and check parity on validation photos.

        The parity images are the first ``n_images`` of the validation split that decode (the training
        split when it has none), never the test split. With ``int8`` each stage also gets an INT8 network
        calibrated on the first ``calibration_images`` training photos, kept only where the config's
        primary metrics on the validation split drop by at most ``max_drop`` (:meth:`check_int8`).

        Raises:
            DataError: A stage has no saved state, or no photo decodes.
            ExportError: A stage's export differs from PyTorch beyond its tolerance (recorded in the manifest).
        """
        self.load_weights(with_runtime=False)
        parts = self.split(self.records(data_root))
        images = self._decoded(parts["val"] or parts["train"], max(2, n_images))
        if len(images) < 2:
            raise DataError("the parity check needs at least 2 validation photos that decode; found fewer")
        log = lambda line: console.print(line, highlight=False)  # noqa: E731
        with folder_lock(self.export_dir):
            section = export_pipeline(self.pipeline.stages, self.weights_dir, self.export_dir, fmt, images, log=log)
            if not int8:
                return section
            calibration = self._decoded(parts["train"], calibration_images)
            if not calibration:
                raise DataError("--int8 calibrates on training photos, and none of them decodes")
            quantize_pipeline(self.pipeline.stages, self.export_dir, fmt, calibration, images, log=log)
            return record_int8_check(self.export_dir, fmt, self.check_int8(fmt, parts["val"], max_drop))

    def _decoded(self, records: Sequence[Record], n: int) -> list[np.ndarray]:
        """The first ``n`` of ``records`` that decode, as HxWx3 uint8 images."""
        images: list[np.ndarray] = []
        for record in records:
            if len(images) >= n:
                break
            sample = decode_record(record, max_side=self.max_side)
            if sample.ok and sample.image is not None:
                images.append(sample.image)
        return images

    def check_int8(self, fmt: str, val: Sequence[Record], max_drop: float) -> dict[str, dict[str, Any]]:
        """Decide stage by stage, in pipeline order, whether its INT8 network is kept.

        The validation split is predicted with every exported network in fp32, then with each stage's
        INT8 network added to those kept before it; a stage stays INT8 when none of the config's primary
        metrics (:attr:`defectkit.evaluation.base.Metric.primary`) falls more than ``max_drop`` below the
        fp32 run. Nothing is kept without a validation split or a metric to judge by.

        Returns:
            ``{stage name: {"kept", "reason", "val_images", "max_drop", "metrics": {key: {"fp32", "int8"}}}}``.
        """
        files = int8_files(self.export_dir, fmt)
        primaries = sorted({key for cfg in self.cfg.get("metrics", []) if (key := build(METRICS, dict(cfg), classes=self.classes).primary)})
        reason = "no validation split to check it on" if not val else "the config has no metric to check it with" if not primaries else None
        if reason is not None:
            return {name: {"kept": False, "reason": reason, "max_drop": max_drop} for name in files}
        stages = {name: stage for name, stage in exportable_stages(self.pipeline.stages) if name in files}
        threads = torch.get_num_threads()
        fp32 = {name: load_network(self.export_dir / f"{name}{SUFFIX[fmt]}", fmt, threads) for name in stages}
        for name, stage in stages.items():
            stage.use_exported(fp32[name])
        try:
            baseline = self._val_metrics(val)
            checks: dict[str, dict[str, Any]] = {}
            # Keys the validation split cannot measure (e.g. image AUROC without normal photos) do not judge.
            measured = [key for key in primaries if baseline.get(key) is not None]
            if not measured:
                reason = f"the validation split measures none of {', '.join(primaries)}"
                return {name: {"kept": False, "reason": reason, "max_drop": max_drop} for name in files}
            for name, stage in stages.items():
                stage.use_exported(load_network(files[name], fmt, threads))
                metrics = self._val_metrics(val)
                compared = {key: {"fp32": baseline[key], "int8": metrics.get(key)} for key in measured}
                if any(v["int8"] is None for v in compared.values()):
                    kept, reason = False, "a metric measured in fp32 was missing with INT8"
                else:
                    worst = max(v["fp32"] - v["int8"] for v in compared.values())
                    kept = worst <= max_drop
                    reason = f"largest drop {worst:.4f} {'<=' if kept else '>'} {max_drop}"
                checks[name] = {"kept": kept, "reason": reason, "val_images": len(val), "max_drop": max_drop, "metrics": compared}
                console.print(f"{name}: INT8 {'kept' if kept else 'not kept'} on validation ({checks[name]['reason']}; "
                              + ", ".join(f"{k} {_figure(v['fp32'])} -> {_figure(v['int8'])}" for k, v in compared.items()) + ")",
                              highlight=False)
                if not kept:
                    stage.use_exported(fp32[name])
        finally:
            for stage in stages.values():
                stage.use_exported(None)
        return checks

    def _val_metrics(self, records: Sequence[Record]) -> dict[str, float]:
        """The config's metrics on ``records`` with the networks as they are set now (nothing kept on disk)."""
        overlays, self.overlays = self.overlays, "none"
        try:
            with tempfile.TemporaryDirectory(dir=self.work_dir, prefix=".int8-check-") as tmp:
                return self.stream(records, Path(tmp), {"mode": "int8-check"}, evaluate=True)
        finally:
            self.overlays = overlays

    # ----------------------------------------------------------------------------- streaming
    def stream(
        self, records: Sequence[Record], out_dir: Path, stamp: dict[str, Any], evaluate: bool, overwrite: bool = False
    ) -> dict[str, float]:
        """Run the pipeline over ``records`` in batches, resuming from what ``out_dir`` already holds.

        The folder is locked for the whole run. Results there from another run (another command,
        config, data root, split, library version or other weights: the stamp in ``run_info.json``)
        are refused, or with ``overwrite`` moved into ``out_dir/previous-<UTC time>/``; nothing is deleted.

        Raises:
            OutputError: ``out_dir`` holds another run's results and ``overwrite`` is False.
            FolderLockedError: Another command is writing to ``out_dir``.
        """
        with folder_lock(out_dir):
            return self._stream(records, out_dir, stamp, evaluate, overwrite)

    def _stream(self, records: Sequence[Record], out_dir: Path, stamp: dict[str, Any], evaluate: bool, overwrite: bool) -> dict[str, float]:
        predictions, eval_log, todo = self.open_results(records, out_dir, stamp, overwrite)
        start = time.perf_counter()
        with self._progress() as progress, ThreadPoolExecutor(self.decode_workers) as decoder, ThreadPoolExecutor(1) as writer:
            advance = _progress_factory(progress)("predict", len(todo))
            pending: Future | None = None
            decode = partial(decode_record, max_side=self.max_side)
            for samples in _prefetched_batches(todo, self.batch_size, decoder, decode):
                self.pipeline.predict(samples)
                if pending is not None:
                    pending.result()  # one batch in flight bounds memory and surfaces writer errors
                pending = writer.submit(self._write_batch, samples, out_dir, predictions, eval_log, evaluate)
                advance(len(samples))
            if pending is not None:
                pending.result()
        elapsed = time.perf_counter() - start
        return self.finish(records, out_dir, predictions, eval_log, evaluate, len(todo), elapsed)

    def open_results(
        self, records: Sequence[Record], out_dir: Path, stamp: dict[str, Any], overwrite: bool
    ) -> tuple[ResultLog, ResultLog, list[Record]]:
        """Open ``out_dir``'s result logs for this run (its lock must be held) and say what is left to do.

        Stale temporary files are removed, another run's results refused or moved aside (``overwrite``),
        damaged log lines repaired, and the run stamp written. Every engine starts here, so a killed
        run resumes the same way whichever engine wrote the lines.

        Returns:
            The predictions log, the evaluation-record log, and the records without a line yet.

        Raises:
            OutputError: ``out_dir`` holds another run's results and ``overwrite`` is False.
        """
        _remove_stale_temp_files(out_dir)  # safe: the lock says no other run is writing here
        stamp = {**stamp, "pipeline": self._pipeline_hash(), "version": __version__, "weights": self._weight_checksums()}
        if self.predict_runtime != "torch":  # (absent for torch: results written before the key existed stay this run's)
            stamp["runtime"] = self.predict_runtime
        if self.predict_precision != "fp32":
            stamp["precision"] = self.predict_precision
        info_path = out_dir / "run_info.json"
        previous = _read_json(info_path).get("stamp")
        if previous != stamp and _holds_results(out_dir):
            what = _stamp_difference(previous, stamp)
            if not overwrite:
                raise OutputError(
                    f"{out_dir} holds results of another run ({what}); pass --overwrite to move them into "
                    f"{out_dir}/previous-<time>/, or choose another output folder"
                )
            moved_to = _move_results_aside(out_dir)
            console.print(f"[yellow]{out_dir}: results of another run ({what}) moved to {moved_to}[/yellow]")
        predictions = ResultLog(out_dir / "predictions.jsonl")
        eval_log = ResultLog(out_dir / "eval_records.jsonl", key_field="key")
        for problem in predictions.problems + eval_log.problems:
            console.print(f"[yellow]repaired:[/yellow] {problem}")
        atomic_write_json(info_path, {"stamp": stamp, "config": str(self.config_path)})

        todo = [r for r in records if r.key not in predictions.done]
        if len(todo) < len(records):
            console.print(f"resuming: {len(records) - len(todo)} of {len(records)} images already done in {out_dir}")
        return predictions, eval_log, todo

    def _write_batch(self, samples: list[Sample], out_dir: Path, predictions: ResultLog, eval_log: ResultLog, evaluate: bool) -> None:
        lines, evals = [], []
        for sample in samples:
            line, overlay, eval_record = self.render_result(sample, evaluate)
            if overlay is not None:
                # An OSError here (folder full, read-only) ends the run: no later image could be written either.
                atomic_write_bytes(out_dir / "overlays" / overlay[0], overlay[1])
            lines.append(line)
            if eval_record is not None:
                evals.append(eval_record)
        # Evaluation records go first: a prediction line is the commit marker of its image.
        eval_log.append(evals)
        predictions.append(lines)

    def render_result(self, sample: Sample, evaluate: bool = False) -> tuple[dict[str, Any], tuple[str, bytes] | None, dict[str, Any] | None]:
        """One predicted sample's results, made but not written (any engine writes them the same way).

        The sample's pixels are released afterwards. A result that cannot be made becomes an error
        line naming the image, so one image never costs the rest of its batch their results.

        Returns:
            Its ``predictions.jsonl`` line, its overlay as ``(file name in overlays/, JPEG bytes)``
            or None, and its evaluation record when ``evaluate`` (else None).
        """
        overlay = None
        eval_record = None
        try:
            line = sample.to_prediction()
            if sample.ok and self._wants_overlay(sample):
                name = overlay_name(sample.record.path)
                overlay = (name, encode_overlay(draw_overlay(sample.image, sample), name))
                line["overlay"] = f"overlays/{name}"
            if evaluate:
                eval_record = make_eval_record(sample, self.classes)
        except Exception as exc:  # one image's result must not cost the rest of the batch theirs
            reason = f"{sample.record.key}: result could not be made ({type(exc).__name__}: {exc})"
            line = {"path": sample.record.key, "status": "error", "error": reason}
            overlay = None
            if evaluate:  # nothing was appended for it yet: its eval record is made last
                eval_record = {"key": sample.record.key, "error": reason}
        sample.image = sample.prob_maps = sample.masks = None  # free memory early
        return line, overlay, eval_record

    def _wants_overlay(self, sample: Sample) -> bool:
        if self.overlays == "none":
            return False
        if self.overlays == "defects":
            return bool(sample.instances) or (sample.gate_label not in (None, "normal"))
        return True

    def finish(
        self, records: Sequence[Record], out_dir: Path, predictions: ResultLog, eval_log: ResultLog, evaluate: bool, n_new: int, elapsed: float
    ) -> dict[str, float]:
        """Write ``metrics.json``, ``timings.json`` and the report from the logs, whichever engine filled them.

        Args:
            records: Every input of the run (those done before a restart included).
            n_new: Images predicted by this command; ``elapsed`` its seconds (for the rate).

        Returns:
            The metrics (``n_images``, ``n_errors``, and the config's metrics when ``evaluate``).
        """
        keys = {r.key for r in records}
        lines = [line for line in predictions.read() if line["path"] in keys]
        evals = {e["key"]: e for e in eval_log.read() if e["key"] in keys}
        n_errors = sum(1 for line in lines if line["status"] == "error")
        metrics: dict[str, float] = {"n_images": len(lines), "n_errors": n_errors}
        if evaluate:
            metrics.update(compute_metrics(self.cfg.get("metrics", []), self.classes, evals.values()))
        timings = {
            "stages": self.pipeline.timing_summary(),
            "images_this_session": n_new,
            "wall_seconds": round(elapsed, 2),
            "img_per_s": round(n_new / elapsed, 2) if elapsed > 0 and n_new else None,
        }
        finished_by_gate = sum(1 for line in lines if (line.get("gate") or {}).get("label") == "normal")
        if lines:
            timings["finished_by_gate"] = finished_by_gate
            timings["gate_saved_seconds"] = round(skipped_stage_seconds(timings["stages"]), 3)
        atomic_write_json(out_dir / "metrics.json", metrics)
        atomic_write_json(out_dir / "timings.json", timings)
        image_results = []
        for line in lines:
            ev = evals.get(line["path"], {})
            image_results.append(
                {
                    "path": line["path"],
                    "label": ev.get("label"),
                    "score": (line.get("gate") or {}).get("score"),
                    "pred": ev.get("pred"),
                    "overlay": line.get("overlay"),
                    "error": line.get("error"),
                }
            )
        notes = [f"config: {self.config_path}", f"work dir: {self.work_dir}"]
        if lines and finished_by_gate:
            saved = timings["gate_saved_seconds"]
            spent = sum(v["seconds"] for v in timings["stages"].values())
            share = 100.0 * saved / (saved + spent) if saved + spent > 0 else 0.0
            notes.append(
                f"the gate finished {finished_by_gate} of {len(lines)} images early: later stages skipped them, "
                f"saving about {saved:.1f} s of compute ({share:.0f}% of what every image through every stage would take)"
            )
        for stage in self.pipeline.stages:
            if not stage.enabled:
                notes.append(f"stage {stage.name!r} is switched off in the config (enabled=False): every image went on to the next stage")
            # Choices a stage made when it was fitted (e.g. Tiling: sliced or whole images, and why).
            notes.extend(str(note) for note in stage.report_notes())
        sections = []
        if evaluate and self.classes:
            by_key = {r.key: r for r in records}
            line_by_key = {line["path"]: line for line in lines}
            sections.append(segmentation_section_html(
                out_dir, list(evals.values()), self.classes,
                render=lambda key: self._truth_beside_prediction(by_key.get(key), line_by_key.get(key)),
            ))
            sections.append(detection_html(out_dir, out_dir / "plots", list(evals.values()), self.classes))
        write_report(
            out_dir,
            metrics,
            image_results,
            title=f"defectkit: {self.config_path.stem}",
            class_names=self.classes,
            stage_summaries=[s.describe() for s in self.pipeline.stages],
            timings={k: v["seconds"] for k, v in timings["stages"].items()},
            notes=notes + [str(self.cfg.get("description", ""))],
            sections=sections,
        )
        return metrics

    def _truth_beside_prediction(self, record: Record | None, line: dict[str, Any] | None) -> np.ndarray | None:
        """A photo with its ground-truth masks (left) and its predicted outlines (right), for the report."""
        if record is None or line is None or line.get("status") != "ok":
            return None
        sample = decode_record(record, max_side=self.max_side)
        if not sample.ok or sample.image is None:
            return None
        truth, _ = ground_truth_masks(record, sample.image.shape[:2], self.classes, scale=sample.scale)
        sx, sy = sample.original_factors()
        instances = [Instance(i["class"], i["score"], tuple(i["box"]), i["area"], i.get("polygon") or [],
                              bool(i.get("confident", True))).scaled(1 / sx, 1 / sy)
                     for i in line.get("instances", [])]
        left = draw_overlay(sample.image, SimpleNamespace(masks=truth, map_classes=self.classes, gate_label="ground truth"))
        right = draw_overlay(sample.image, SimpleNamespace(instances=instances, gate_label="prediction"))
        return np.concatenate([left, np.full((left.shape[0], 8, 3), 255, np.uint8), right], axis=1)

    def _weight_checksums(self) -> dict[str, str | None]:
        """Each trainable stage's tensor checksum: results made with other weights are another run's."""
        sums: dict[str, str | None] = {}
        for stage in self.pipeline.trainable:
            sums[stage.name] = read_manifest(self.weights_dir, stage.name).get("sha256") if stage.has_saved_state(self.weights_dir) else None
        return sums

    def _pipeline_hash(self) -> str:
        relevant = {"pipeline": self.cfg.get("pipeline"), "classes": self.classes, "image_classes": self.image_classes}
        return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @contextmanager
    def _progress(self) -> Iterator[Progress]:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        with progress:
            yield progress


def _figure(value: float | None) -> str:
    """A metric for a log line: four decimals, or "missing"."""
    return "missing" if value is None else f"{value:.4f}"


def build_dataset(cfg: Config, config_path: str | Path, work_dir: str | Path, data_root: str | None) -> ImageDataset:
    """The reader of ``data_root`` in the config's layout, or of the built-in data set in
    ``work_dir/builtin_data`` when ``data_root`` is None.

    Raises:
        ConfigError: The registered reader is not an :class:`~defectkit.data.base.ImageDataset`
            (the contract the runner and ``check-data`` rely on: ``records()``, ``LAYOUT``, ``problems``).
    """
    if data_root:
        if "dataset" not in cfg:
            raise DataError(f"{config_path} has no 'dataset' to read --data-root with")
        section, reader = "dataset", build(DATASETS, dict(cfg.dataset), data_root=str(data_root))
    else:
        if "builtin_dataset" not in cfg:
            raise DataError(f"{config_path} has no built-in data set; pass --data-root DIR")
        builtin_root = Path(work_dir) / "builtin_data"
        console.print(f"No --data-root given: using the built-in data set in {builtin_root}")
        section, reader = "builtin_dataset", build(DATASETS, dict(cfg.builtin_dataset), data_root=str(builtin_root))
    if not isinstance(reader, ImageDataset):
        raise ConfigError(f"{section}.type={type(reader).__name__}: a data set reader must subclass defectkit.data.base.ImageDataset")
    return reader


def compute_metrics(metric_cfgs: Iterable[dict[str, Any]], classes: list[str], eval_records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The config's ``metrics`` over evaluation records (:mod:`defectkit.evaluation.records`), flat keys."""
    records = list(eval_records)
    values: dict[str, float] = {}
    for metric_cfg in metric_cfgs:
        metric = build(METRICS, dict(metric_cfg), classes=classes)
        for record in records:
            metric.update(record)
        values.update(metric.compute())
    return values


def skipped_stage_seconds(stage_timings: dict[str, dict[str, Any]]) -> float:
    """Seconds the stages would have spent on the images a gate finished early.

    Each stage that saw fewer images than the busiest one is charged its own mean time per image
    for the images it did not see.
    """
    most = max((v["images"] for v in stage_timings.values()), default=0)
    saved = 0.0
    for timing in stage_timings.values():
        if 0 < timing["images"] < most:
            saved += (most - timing["images"]) * timing["seconds"] / timing["images"]
    return saved


def split_stratum(split_cfg: dict[str, Any], records: Sequence[Record]) -> Callable[[Record], str]:
    """The stratum function ``split.stratum`` names: ``"label"`` (category, else image label) or
    ``"damage"`` (category x damaged-area bin; ``split.area_cuts`` fixes the bins, default terciles).
    """
    kind = split_cfg.get("stratum", "label")
    if kind == "label":
        return default_stratum
    if kind == "damage":
        cuts = split_cfg.get("area_cuts") or area_ratio_cuts(records)
        return make_damage_stratum(cuts)
    raise ConfigError(f"split.stratum must be 'label' or 'damage', got {kind!r}")


def _progress_factory(progress: Progress) -> Callable[[str, int], Callable[[int], None]]:
    def make(description: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(description, total=total)
        return lambda n=1: progress.advance(task, n)

    return make


def _prefetched_batches(
    records: Sequence[Record],
    batch_size: int,
    pool: ThreadPoolExecutor,
    decode: Callable[[Record], Sample] = decode_record,
) -> Iterator[list[Sample]]:
    """Decode batch i+1 in the pool while the caller works on batch i."""
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    futures = [pool.submit(decode, r) for r in batches[0]] if batches else []
    for index in range(len(batches)):
        samples = [f.result() for f in futures]
        if index + 1 < len(batches):
            futures = [pool.submit(decode, r) for r in batches[index + 1]]
        yield samples


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Delete temporary files of atomic writes a killed run left behind (never renamed into place).

    Called with the folder's lock held: no other run writes here, so every such file is garbage.
    Only the names :func:`~defectkit.io.atomic.atomic_write_bytes` gives its temporary files are
    touched, and only beside files a run writes.
    """
    for folder in (out_dir, out_dir / "overlays", out_dir / "plots", out_dir / "plots" / "thumbs"):
        if folder.is_dir():
            for tmp in folder.glob(TEMP_GLOB):
                with with_path(tmp):
                    tmp.unlink(missing_ok=True)


def _holds_results(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds results a run wrote (a line, metrics or a report)."""
    for name in ("predictions.jsonl", "eval_records.jsonl"):
        path = out_dir / name
        if path.is_file() and path.stat().st_size > 0:
            return True
    return any((out_dir / name).exists() for name in ("metrics.json", "report.html"))


def _stamp_difference(previous: Any, stamp: dict[str, Any]) -> str:
    """Which parts of the run stamp differ, in words."""
    if not isinstance(previous, dict):
        return "no record of the run that made them" if previous is None else "unreadable run_info.json"
    differs = [label for key, label in _STAMP_FIELDS.items() if previous.get(key) != stamp.get(key)]
    if "weights" in differs and isinstance(previous.get("weights"), dict):
        changed = sorted(k for k in set(previous["weights"]) | set(stamp["weights"]) if previous["weights"].get(k) != stamp["weights"].get(k))
        differs[differs.index("weights")] = f"weights of stage(s) {', '.join(map(repr, changed))}"
    return "other " + ", ".join(differs) if differs else "another run"


def _move_results_aside(out_dir: Path) -> Path:
    """Move every result file of ``out_dir`` into a new ``previous-<UTC time>/`` folder inside it; return that folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = out_dir / f"previous-{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = out_dir / f"previous-{stamp}-{suffix}"
    with with_path(target):
        target.mkdir()
    for name in RESULT_NAMES:
        source = out_dir / name
        if source.exists():
            with with_path(source):
                os.replace(source, target / name)  # same file system: a rename, nothing copied or deleted
    return target


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def collect_inputs(inputs: Sequence[str]) -> list[str]:
    """Expand files and folders into a sorted, de-duplicated list of files (hidden files skipped).

    Every non-hidden file in a folder is an input, so a stray text file is reported as an error
    instead of being silently ignored; images are recognised by content, not by suffix.
    """
    found: dict[str, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(path).parts):
                    found[str(child.resolve())] = None
        elif path.exists():
            found[str(path.resolve())] = None
        else:
            raise DataError(f"input not found: {path}")
    return list(found)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, damaged or not UTF-8: as if absent
        return {}
    return value if isinstance(value, dict) else {}

