"""A predict run killed with SIGKILL at random moments and restarted ends with exactly one result per
input, every line valid JSON, every overlay it names present and decodable, and a report.

Starting ``python -m defectkit.cli`` costs ~10 s on a 2-core machine (importing torch and the anomaly
heads), which would make 20 kill-and-restart trials take minutes. So one uninterrupted run goes
through the real command line (and measures it), and the 20 trials fork the same command from a
"zygote" process that has already imported defectkit: each trial is a separate process running
``defectkit.cli.main(["predict", ...])`` from scratch (config, model build, weights, decoding,
writing), killed with SIGKILL by its pid, then a fresh process runs the command to completion.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.cli import EXIT_SOME_INPUTS_FAILED

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "texture_defect.py")
N_GOOD, N_BAD, TRIALS = 44, 4, 20
TORN_AT = (1, 4, 8, 12)  # appends (batches of 4) during which a run is killed half written
# The work dir's gate was fitted with coreset_size=500 (tests/integration/conftest.py); loading checks the model config.
PREDICT_OPTIONS = ["--cfg-options", "predict.batch_size=4", "runtime.num_threads=1", "pipeline.0.model.coreset_size=500"]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")

ZYGOTE = textwrap.dedent(
    """
    import json, os, sys
    from defectkit.cli import main
    # Import what a run needs up front; no torch computation happens here (fork safety).
    import defectkit.runner, defectkit.stages.anomaly_gate, defectkit.stages.mask_policy  # noqa: F401
    import defectkit.evaluation.classification, defectkit.evaluation.segmentation  # noqa: F401
    import defectkit.io.overlays, defectkit.io.report, defectkit.plugins  # noqa: F401

    def tear_write_number(k, marker):
        # Make the k-th append to a result log stop half way through its last line, say so in ``marker``, stall.
        import time
        import defectkit.io.results as results

        count = [0]

        class Tearing:
            def __init__(self, handle):
                self.handle = handle
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return self.handle.__exit__(*exc)
            def write(self, text):
                count[0] += 1
                if count[0] != k:
                    return self.handle.write(text)
                last = text.rstrip("\\n").rfind("\\n") + 1  # start of the batch's last line
                self.handle.write(text[: last + (len(text) - last) // 2])  # all but half of the last line
                self.handle.flush()
                open(marker, "w").close()
                time.sleep(60)  # killed here
            def __getattr__(self, name):
                return getattr(self.handle, name)

        def tearing_open(*args, **kwargs):
            handle = open(*args, **kwargs)
            return Tearing(handle) if "a" in (args[1] if len(args) > 1 else kwargs.get("mode", "r")) else handle

        results.open = tearing_open  # the module's appends only; its own name lookup finds this first

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    null = os.open(os.devnull, os.O_RDWR)
                    for fd in (0, 1, 2):
                        os.dup2(null, fd)
                    if request.get("tear"):
                        tear_write_number(*request["tear"])
                    code = main(request["argv"])
                finally:
                    os._exit(code)
            reply = {"pid": pid}
        else:
            _, status = os.waitpid(request["pid"], 0)
            reply = {"status": os.waitstatus_to_exitcode(status)}
        sys.stdout.write(json.dumps(reply) + "\\n")
        sys.stdout.flush()
    """
)


class Zygote:
    """A Python process with defectkit imported that forks one ``defectkit`` command per request."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
        )

    def _ask(self, request: dict, timeout: float = 300.0) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        # One reply line per request, so nothing is left in the pipe's buffer between calls.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            if "pid" in request:
                os.kill(request["pid"], signal.SIGKILL)
            self.proc.kill()
            pytest.fail(f"no answer to {request} within {timeout} s: a run hung")
        line = self.proc.stdout.readline()
        assert line, "zygote process died"
        return json.loads(line)

    def start(self, argv: list[str], tear: tuple[int, str] | None = None) -> int:
        """Fork a run of ``argv``; with ``tear=(k, marker)`` its k-th result append stalls half written."""
        return self._ask({"op": "run", "argv": argv, "tear": tear})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["status"]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


@pytest.fixture
def trained_work_dir(tiny_texture_work_dir: Path) -> Path:
    return tiny_texture_work_dir


def make_inputs(folder: Path) -> set[str]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        image = rng.integers(40, 220, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"photo {i:02d} ü.png")
    for i in range(N_BAD):
        (folder / f"broken {i}.jpg").write_bytes(b"" if i % 2 else b"not a jpeg at all")
    return {str(p.resolve()) for p in folder.iterdir()}


def check_complete(out: Path, inputs: set[str]) -> None:
    """Exactly one valid line per input, overlays present and decodable, metrics and report written."""
    raw = (out / "predictions.jsonl").read_text(encoding="utf-8")
    assert raw.endswith("\n")
    lines = [json.loads(line) for line in raw.splitlines()]  # every line parses
    paths = [line["path"] for line in lines]
    assert len(paths) == len(set(paths)) == len(inputs), f"{len(paths)} lines, {len(set(paths))} distinct, {len(inputs)} inputs"
    assert set(paths) == inputs
    for line in lines:
        if Path(line["path"]).name.startswith("broken"):
            assert line["status"] == "error" and line["error"]
        else:
            assert line["status"] == "ok", line
            overlay = out / line["overlay"]
            with Image.open(overlay) as img:
                img.load()
                assert img.size == (48, 48)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == len(inputs) and metrics["n_errors"] == N_BAD
    assert "</html>" in (out / "report.html").read_text(encoding="utf-8")
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_sigkill_at_random_moments_then_restart_loses_and_duplicates_nothing(trained_work_dir: Path, tmp_path: Path):
    inputs_dir = tmp_path / "inputs ü"
    inputs = make_inputs(inputs_dir)

    def argv(out: Path) -> list[str]:
        return ["predict", CONFIG, "--work-dir", str(trained_work_dir), "--input", str(inputs_dir), "--out", str(out), *PREDICT_OPTIONS]

    # One uninterrupted run through the real command line.
    reference = tmp_path / "reference"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "defectkit.cli", *argv(reference)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    cli_seconds = time.perf_counter() - start
    assert done.returncode == EXIT_SOME_INPUTS_FAILED, done.stderr[-2000:]
    check_complete(reference, inputs)

    zygote = Zygote()
    try:
        # Uninterrupted forked runs measure how long a run lasts once imports are done (the first
        # one warms caches, so the second is what the trials will see).
        for attempt in range(2):
            start = time.perf_counter()
            pid = zygote.start(argv(tmp_path / f"measure{attempt}"))
            assert zygote.wait(pid) == EXIT_SOME_INPUTS_FAILED
            duration = time.perf_counter() - start
            check_complete(tmp_path / f"measure{attempt}", inputs)

        rng = random.Random(20240601)
        # Stratified over the run: trial i is killed somewhere in the i-th twentieth of it.
        delays = [duration * (i + rng.random()) / TRIALS for i in range(TRIALS)]
        rng.shuffle(delays)
        outcomes = []
        for trial, delay in enumerate(delays):
            out = tmp_path / f"trial{trial:02d}"
            pid = zygote.start(argv(out))
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)  # harmless if it already finished (a zombie until waited)
            status = zygote.wait(pid)
            assert status in (-signal.SIGKILL, EXIT_SOME_INPUTS_FAILED), status
            log = out / "predictions.jsonl"
            partial = log.read_bytes().count(b"\n") if log.exists() else 0
            outcomes.append((round(delay, 2), status, partial))

            pid = zygote.start(argv(out))  # restart: resumes what the killed run left
            assert zygote.wait(pid) == EXIT_SOME_INPUTS_FAILED, f"trial {trial}: restart failed"
            check_complete(out, inputs)

        # Kills that land while a batch's lines are being written: the run is made to stall half way
        # through its k-th append and killed there, so the restart must cut a torn last line.
        torn = []
        for k in TORN_AT:
            out = tmp_path / f"torn{k:02d}"
            marker = tmp_path / f"writing{k:02d}"
            pid = zygote.start(argv(out), tear=(k, str(marker)))
            deadline = time.monotonic() + 300
            while not marker.exists():
                assert time.monotonic() < deadline, f"append {k} never started"
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
            assert zygote.wait(pid) == -signal.SIGKILL
            raw = (out / "predictions.jsonl").read_bytes()
            torn.append((k, raw.count(b"\n"), not raw.endswith(b"\n")))
            pid = zygote.start(argv(out))
            assert zygote.wait(pid) == EXIT_SOME_INPUTS_FAILED, f"torn at append {k}: restart failed"
            check_complete(out, inputs)
    finally:
        zygote.close()

    killed = [o for o in outcomes if o[1] == -signal.SIGKILL]
    print(f"cli run {cli_seconds:.1f} s, forked run {duration:.1f} s; (delay, status, lines before restart): {sorted(outcomes)}")
    print(f"kills during an append (append, complete lines, torn tail): {torn}")
    # Most kills really interrupted a run (timing varies with load, so not all of them need to).
    assert len(killed) >= TRIALS // 2
    # Every kill during an append left (k-1) whole batches, 3 lines of the k-th and a torn 4th; the restart repaired it.
    assert torn == [(k, 4 * (k - 1) + 3, True) for k in TORN_AT]
