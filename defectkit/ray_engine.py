"""``defectkit predict ... --engine ray``: the same trained pipeline, run by a pool of Ray actors.

The driver (the ``defectkit`` process) lists the inputs, skips those the results folder already has
a line for (:meth:`~defectkit.runner.Runner.open_results`, the local engine's resume logic), and
hands the rest to Ray Data: ``map_batches`` with :class:`PredictWorker`, an actor class that builds
the config's :class:`~defectkit.runner.Runner` and loads its checked weights once per worker. Each
worker decodes, predicts and renders its batch (result line and overlay JPEG,
:meth:`~defectkit.runner.Runner.render_result`); the driver alone writes, through the same writers
as the local engine (overlays renamed into place, then the lines appended and fsynced), under the
folder's lock. So the results folder looks exactly like the local engine's, and a run killed at any
point and restarted ends with exactly one line per input.

Inputs and the results folder may be local paths or fsspec URLs. ``file://`` URLs are local paths.
Other URLs: workers read their own inputs through fsspec (``memory://`` inputs, which live in the
driver's process, travel with the batch); results are written into a local staging folder, locked
like any results folder, and copied to the URL after every batch (new overlays first, then
``predictions.jsonl``, which is what a restart resumes from).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from defectkit.errors import ConfigError, DataError, DefectkitError, OutputError
from defectkit.io.atomic import atomic_write_bytes, atomic_write_json
from defectkit.io.lock import folder_lock
from defectkit.runner import RESULT_NAMES, Runner, collect_inputs
from defectkit.sample import Record

RAY_EXTRA = "pip install 'defectkit[ray]'"
# Where the staging folders of URL outputs live (one per URL, so two commands on one machine exclude each other).
STAGING_ROOT = Path(tempfile.gettempdir()) / "defectkit-staging"


def import_ray() -> Any:
    """The ``ray`` module with Ray Data.

    Raises:
        ConfigError: Ray (or Ray Data) is not installed; the message says how to install it.
    """
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is an extra of ray: ray[data])
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed ({exc}); {RAY_EXTRA}") from exc
    return ray


def is_url(location: str) -> bool:
    """Whether ``location`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return "://" in str(location)


def local_path(location: str) -> Path | None:
    """The local path of a plain path or ``file://`` URL; None for any other URL."""
    if not is_url(location):
        return Path(location)
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    if not _is_local(fs):
        return None
    if location.startswith("file://"):
        # A file URI is percent-encoded (what Path.as_uri writes); fsspec keeps it as written.
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        decoded = Path(url2pathname(urlsplit(location).path))
        if decoded.exists() or not Path(path).exists():
            return decoded
    return Path(path)


def list_inputs(inputs: Sequence[str]) -> list[str]:
    """Files under the given paths or URLs, as the keys their results are recorded under.

    Local paths and ``file://`` URLs expand exactly as the local engine expands paths (absolute,
    sorted, hidden files skipped), so both engines record an image under the same key. Other URLs
    are listed with fsspec and keep their URL form (``memory://in/a.png``).

    Raises:
        DataError: An input does not exist.
    """
    import fsspec

    found: dict[str, None] = {}
    for item in inputs:
        path = local_path(item)
        if path is not None:
            found.update(dict.fromkeys(collect_inputs([str(path)])))
            continue
        fs, root = fsspec.core.url_to_fs(item)
        if not fs.exists(root):
            raise DataError(f"input not found: {item}")
        if not fs.isdir(root):
            found[item] = None
            continue
        # Keys keep the URL as it was given (file systems differ in how they write it back).
        base = root.rstrip("/")
        for child in sorted(fs.find(root)):
            relative = child[len(base):].lstrip("/")
            if child.startswith(base + "/") and not any(part.startswith(".") for part in relative.split("/")):
                found[f"{item.rstrip('/')}/{relative}"] = None
    return list(found)


class PredictWorker:
    """A Ray actor that loads the trained pipeline once and predicts the batches it is given.

    Args:
        cfg: The loaded config (with ``--cfg-options`` applied).
        config_path: The config file's path (names the run in messages; not read).
        work_dir: The trained run's work dir: the weights must be readable here on every node.
        threads: Torch threads per worker (its CPU share).
    """

    def __init__(self, cfg: Any, config_path: str, work_dir: str, threads: int = 1) -> None:
        import torch

        from defectkit.plugins import load_plugins

        load_plugins()  # stages that plugins register must exist in the worker too
        self.runner = Runner(cfg, config_path, work_dir=work_dir)
        torch.set_num_threads(max(1, threads))  # the Runner takes every core; a worker owns only its share
        self.runner.load_weights()
        self.ready_at = time.time()  # wall clock (comparable across processes): when this worker could start predicting

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Decode, predict and render one batch.

        Args:
            batch: Columns ``index`` (position in the driver's list), ``key`` (the input's key as
                UTF-8 bytes, lone surrogates escaped) and ``data`` (the file's bytes when the driver
                sent them, else empty).

        Returns:
            Columns ``index``, ``line`` (the result line as JSON text), ``overlay_name`` and
            ``overlay`` (JPEG bytes, empty without one), and ``timings`` (JSON text on the first
            row only: this batch's per-stage seconds and images, when the worker became ready and
            when it finished the batch, in wall-clock seconds).
        """
        runner = self.runner
        before = dict(runner.pipeline.seconds), dict(runner.pipeline.processed)
        keys = [bytes(k).decode("utf-8", "surrogateescape") for k in batch["key"]]
        samples = [self._decode(key, bytes(data)) for key, data in zip(keys, batch["data"])]
        runner.pipeline.predict(samples)
        lines, names, overlays = [], [], []
        for sample in samples:
            line, overlay, _ = runner.render_result(sample)
            try:
                text = json.dumps(line)  # ASCII: lone surrogates of undecodable names survive as \udcXX
            except (TypeError, ValueError, RecursionError) as exc:
                text = json.dumps({"path": sample.record.key, "status": "error",
                                   "error": f"result could not be written ({type(exc).__name__}: {exc})"})
                overlay = None
            lines.append(text)
            names.append(overlay[0] if overlay else "")
            overlays.append(overlay[1] if overlay else b"")
        delta = {name: [runner.pipeline.seconds[name] - before[0][name], runner.pipeline.processed[name] - before[1][name]]
                 for name in runner.pipeline.seconds}
        clock = {"stages": delta, "ready": self.ready_at, "done": time.time()}
        timings = [json.dumps(clock)] + [""] * (len(samples) - 1)
        # Object arrays: numpy would cut trailing NUL bytes off fixed-width byte strings.
        return {"index": batch["index"], **{name: _objects(values) for name, values in
                                            (("line", lines), ("overlay_name", names), ("overlay", overlays), ("timings", timings))}}

    def _decode(self, key: str, data: bytes) -> Any:
        """The decoded sample of ``key``: a local file, a URL this worker reads, or bytes the driver sent."""
        from defectkit.io.images import decode_record
        from defectkit.sample import Sample

        path = local_path(key)
        if path is not None and not data:
            return decode_record(Record(path=key), max_side=self.runner.max_side)
        if not data:
            import fsspec

            try:
                with fsspec.open(key, "rb") as handle:
                    data = handle.read()
            except Exception as exc:  # a missing or unreadable remote file is that input's error line
                return Sample(record=Record(path=key), error=f"{key}: cannot read file ({type(exc).__name__}: {exc})")
        # The decoder reads files; a private temporary copy keeps its checks (size, bombs) the same.
        suffix = "".join(c for c in Path(key.rsplit("/", 1)[-1]).suffix if c.isalnum() or c == ".")[:10]
        handle, tmp = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            sample = decode_record(Record(path=tmp), max_side=self.runner.max_side)
        finally:
            Path(tmp).unlink(missing_ok=True)
        sample.record = Record(path=key)
        if sample.error:
            sample.error = sample.error.replace(tmp, key)
        return sample


def predict_on_ray(
    runner: Runner,
    inputs: Sequence[str],
    out: str,
    overwrite: bool = False,
    workers: int | None = None,
    address: str | None = None,
) -> dict[str, float]:
    """Predict on files, folders or URLs with a pool of Ray actors; results as the local engine writes them.

    Args:
        runner: The config's runner (its work dir holds the trained weights).
        inputs: Image files, folders, or fsspec URLs of either.
        out: The results folder: a path or an fsspec URL.
        overwrite: Move another run's results in a local ``out`` aside (as the local engine does).
        workers: Actors in the pool (default: the CPUs Ray has, at most the batches to run).
        address: An existing Ray cluster (``ray start --head`` prints it); None starts Ray on this
            machine with ``workers`` CPUs and stops it afterwards.

    Returns:
        The metrics (``n_images``, ``n_errors``), as :meth:`Runner.predict` returns them.

    Raises:
        ConfigError: Ray is not installed, or ``workers`` is below 1.
        DataError: No input files, or the weights are missing.
        OutputError: ``out`` is the work dir, holds another run's results, or is locked.
    """
    ray = import_ray()
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    local_out = local_path(out)
    if local_out is not None and not overwrite and local_out.resolve() == runner.work_dir.resolve():
        raise OutputError(
            f"{out} is the work dir of the trained run (its evaluation results live there); choose another --out"
        )
    runner.load_weights()  # missing or mismatched weights fail here, before any worker starts
    keys = list_inputs(inputs)
    if not keys:
        raise DataError(f"no input files found in {', '.join(inputs)}")
    records = [Record(path=k) for k in keys]
    with _results_folder(out, local_out, overwrite) as (folder, sync):
        predictions, eval_log, todo = runner.open_results(records, folder, {"mode": "predict"}, overwrite)
        sync.push_all()
        start = time.perf_counter()
        engine: dict[str, Any] = {"engine": "ray", "workers": 0}
        if todo:
            with _ray_session(ray, address, workers):
                engine = _run_batches(ray, runner, todo, folder, predictions, workers, sync, start)
        elapsed = time.perf_counter() - start
        metrics = runner.finish(records, folder, predictions, eval_log, False, len(todo), elapsed)
        # Starting Ray and loading the pipeline in every worker is a fixed cost: the rate once the
        # workers are ready is what more workers (or more images) buy.
        timings = json.loads((folder / "timings.json").read_text(encoding="utf-8"))
        atomic_write_json(folder / "timings.json", {**timings, **engine})
        sync.push_all()
    return metrics


def _run_batches(
    ray: Any, runner: Runner, todo: list[Record], folder: Path, predictions: Any, workers: int | None, sync: Any, start: float
) -> dict[str, Any]:
    """Stream ``todo`` through the actor pool, writing each batch's results as it comes back.

    Returns:
        What ``timings.json`` says about the engine: workers, seconds from ``start`` to the first
        batch's results, and images per second after it.
    """
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-run INFO lines would bury our progress bar
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # lines in input order, as the local engine writes them
    context.enable_progress_bars = False  # our own bar counts images
    batch_size = runner.batch_size
    n_batches = -(-len(todo) // batch_size)
    size = min(workers or max(1, int(ray.cluster_resources().get("CPU", 1))), n_batches)
    rows = [{"index": i, "key": r.key.encode("utf-8", "surrogateescape"), "data": _driver_bytes(r.key)} for i, r in enumerate(todo)]
    dataset = ray.data.from_items(rows, override_num_blocks=n_batches)
    results = dataset.map_batches(
        PredictWorker,
        fn_constructor_kwargs={"cfg": runner.cfg, "config_path": str(runner.config_path),
                               "work_dir": str(runner.work_dir.resolve()), "threads": 1},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=1,
    )
    first: float | None = None  # when the first batch was written
    written = 0
    ready, done = float("inf"), 0.0  # the first worker ready, the last batch done (wall clock)
    with runner._progress() as progress:
        task = progress.add_task(f"predict (ray, {size} worker{'s' if size > 1 else ''})", total=len(todo))
        try:
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                lines = []
                for index, text, name, data, timing in zip(batch["index"], batch["line"], batch["overlay_name"], batch["overlay"], batch["timings"]):
                    line = json.loads(str(text))
                    line["path"] = todo[int(index)].key  # the driver's key, whatever the worker's string became
                    if name:
                        # The overlay is in place before its line: a line is the commit marker of its image.
                        atomic_write_bytes(folder / "overlays" / str(name), bytes(data))
                        sync.push(f"overlays/{name}")
                    lines.append(line)
                    if timing:
                        clock = json.loads(str(timing))
                        for stage, (seconds, images) in clock["stages"].items():
                            runner.pipeline.seconds[stage] = runner.pipeline.seconds.get(stage, 0.0) + float(seconds)
                            runner.pipeline.processed[stage] = runner.pipeline.processed.get(stage, 0) + int(images)
                        ready, done = min(ready, clock["ready"]), max(done, clock["done"])
                predictions.append(lines)
                sync.push("predictions.jsonl")
                progress.advance(task, len(lines))
                written += len(lines)
                first = first or time.perf_counter()
        except ray.exceptions.RayError as exc:
            raise DefectkitError(f"ray: a worker failed: {_last_line(exc)}") from exc
    # Results are released in input order, so a worker that started late holds back what the others
    # finished: the pool's rate is measured on the workers' clocks, from the first one ready to the
    # last batch done (a late worker's start-up counts against it, so it errs low).
    busy = done - ready
    return {
        "engine": "ray",
        "workers": size,
        "seconds_to_first_result": round(first - start, 2) if first else None,
        "img_per_s_workers_ready": round(written / busy, 2) if busy > 0 else None,
    }


def _objects(values: list[Any]) -> Any:
    """``values`` as a 1-D numpy object array (each element kept exactly as it is)."""
    import numpy as np

    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _is_local(fs: Any) -> bool:
    """Whether an fsspec file system is this machine's disk."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _driver_bytes(key: str) -> bytes:
    """The file's bytes when only the driver can read it (``memory://`` lives in the driver's process), else b""."""
    if not key.startswith("memory://"):
        return b""
    import fsspec

    try:
        with fsspec.open(key, "rb") as handle:
            return handle.read()
    except OSError:
        return b""  # the worker reports the input as unreadable


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's text (a worker's traceback ends with its error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@contextmanager
def _ray_session(ray: Any, address: str | None, workers: int | None) -> Iterator[None]:
    """Connect to the cluster at ``address``, or start Ray on this machine (stopped afterwards)."""
    if ray.is_initialized():  # the caller's own Ray session (e.g. a notebook): use it as it is
        yield
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # Ray lowers its workers' priority by 15 by default; here they do all of the command's
            # work, so they run at the command's own priority, as the local engine's threads do.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=workers or os.cpu_count() or 1, **options)
    except ConnectionError as exc:
        raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster there ({_last_line(exc)})") from exc
    try:
        yield
    finally:
        ray.shutdown()


class _NoSync:
    """A local results folder: nothing to copy."""

    def push(self, name: str) -> None:
        """Nothing: the file is already where it belongs."""

    def push_all(self) -> None:
        """Nothing: the files are already where they belong."""


class _UrlSync:
    """Copies a staging folder's results to an fsspec URL, file by file as they are written."""

    def __init__(self, folder: Path, url: str) -> None:
        import fsspec

        self.folder = folder
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def pull(self) -> None:
        """Copy what the URL already holds of a run's results (not its overlays) into the staging folder."""
        for name in RESULT_NAMES:
            remote = f"{self.root}/{name}"
            if name not in ("overlays", "plots") and self.fs.isfile(remote):
                atomic_write_bytes(self.folder / name, self.fs.cat_file(remote))

    def push(self, name: str) -> None:
        """Copy one file (a path relative to the folder) to the URL."""
        remote = f"{self.root}/{name}"
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(remote, (self.folder / name).read_bytes())

    def push_all(self) -> None:
        """Copy every result file of the staging folder (overlays and plots included) to the URL."""
        for name in RESULT_NAMES:
            path = self.folder / name
            if path.is_file():
                self.push(name)
            elif path.is_dir():
                for child in sorted(path.rglob("*")):
                    if child.is_file() and not child.name.endswith(".tmp"):
                        self.push(child.relative_to(self.folder).as_posix())


@contextmanager
def _results_folder(out: str, local_out: Path | None, overwrite: bool) -> Iterator[tuple[Path, Any]]:
    """The folder results are written to, locked, and how it reaches ``out``."""
    if local_out is not None:
        with folder_lock(local_out):
            yield local_out, _NoSync()
        return
    if overwrite:
        raise ConfigError(f"--overwrite works on local results folders only; {out} is a URL: choose another --out")
    staging = STAGING_ROOT / hashlib.sha1(out.rstrip("/").encode("utf-8", "surrogatepass")).hexdigest()[:16]
    with folder_lock(staging):
        for name in RESULT_NAMES:  # the URL is the truth: start from what it holds
            target = staging / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        sync = _UrlSync(staging, out)
        try:
            sync.pull()
        except OSError as exc:
            raise OutputError(f"{out}: cannot read the results folder ({_last_line(exc)})") from exc
        yield staging, sync
