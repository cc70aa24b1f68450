"""``defectkit predict --engine ray`` against a local Ray cluster the command starts (2 CPUs) and stops.

A run killed with SIGKILL (its whole process group: the command, Ray's head processes, and so its
workers) after its first results appear, then restarted with the same command, ends with exactly one
line per input, equal to the local engine's lines, and the same overlays. A second run reads its
inputs from and writes its results to ``memory://`` URLs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.cli import EXIT_SOME_INPUTS_FAILED, main

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'defectkit[ray]')")
# Starting Ray and a pipeline in each worker dominates: the two tests took 69 s on two quiet cores
# (81 s for the file with the tiny training) and 17 min on two busy ones, over the fast suite's
# budget: run with -m slow. CI does not install Ray, so there they skip.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "texture_defect.py")
N_GOOD, N_BAD = 18, 2
# The work dir's gate was fitted with coreset_size=500 (tests/integration/conftest.py); loading checks the model config.
# Batches of 2 make 10 batches, so a kill after the first results lands mid-run.
OPTIONS = ["--cfg-options", "predict.batch_size=2", "runtime.num_threads=1", "pipeline.0.model.coreset_size=500"]
RUN_TIMEOUT = 900  # seconds; Ray's start is slow on two busy cores


def make_inputs(folder: Path) -> dict[str, bytes]:
    """Write the test images (and two broken files) to ``folder``; return name -> bytes."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        Image.fromarray(rng.integers(40, 220, (48, 48, 3), dtype=np.uint8)).save(folder / f"photo {i:02d} ü.png")
    (folder / "broken 0.jpg").write_bytes(b"not a jpeg at all")
    (folder / "broken 1.png").write_bytes(b"")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def comparable(line: dict) -> dict:
    """A result line without its timings (they differ from run to run)."""
    return {k: v for k, v in line.items() if k != "timings_ms"}


def read_lines(raw: str) -> list[dict]:
    assert raw.endswith("\n")
    return [json.loads(line) for line in raw.splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_texture_work_dir: Path, tmp_path_factory) -> tuple[Path, Path, dict[str, bytes]]:
    """The inputs folder and the local engine's results folder for them."""
    root = tmp_path_factory.mktemp("ray inputs")
    inputs = root / "inputs ü"
    files = make_inputs(inputs)
    out = root / "local"
    argv = ["predict", CONFIG, "--work-dir", str(tiny_texture_work_dir), "--input", str(inputs), "--out", str(out), *OPTIONS]
    assert main(argv) == EXIT_SOME_INPUTS_FAILED
    return inputs, out, files


def session_processes(session: int) -> list[int]:
    """PIDs of the live (not zombie) processes in a session."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not hasattr(os, "killpg") or not Path("/proc").is_dir(), reason="needs os.killpg and /proc")
def test_ray_run_killed_and_restarted_has_one_line_per_input_equal_to_the_local_engine(
    tiny_texture_work_dir: Path, reference: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
):
    inputs, local, files = reference
    out = tmp_path / "ray out"
    command = [
        sys.executable, "-m", "defectkit.cli", "predict", CONFIG, "--work-dir", str(tiny_texture_work_dir),
        "--input", inputs.as_uri(), "--out", str(out), "--engine", "ray", "--workers", "2", *OPTIONS,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log = tmp_path / "first run.log"
    start = time.perf_counter()
    with open(log, "wb") as stderr:
        # A session of its own: Ray's head processes started by the command join its process group.
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    predictions = out / "predictions.jsonl"
    try:
        while not (predictions.is_file() and predictions.stat().st_size > 0):
            assert proc.poll() is None, f"the run ended before writing a result: {log.read_text(errors='replace')[-2000:]}"
            assert time.perf_counter() - start < RUN_TIMEOUT, "no result within the time limit"
            time.sleep(0.05)
        first_results = time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    written = predictions.read_bytes().count(b"\n")
    assert 0 < written < len(files), f"the kill should land mid-run, {written} of {len(files)} lines were written"
    # Without the raylet the workers (process groups of their own) exit too: nothing is left running.
    deadline = time.monotonic() + 120
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_processes(proc.pid) == [], "Ray processes of the killed run are still running"

    restart = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    restart_seconds = time.perf_counter() - restart
    assert done.returncode == EXIT_SOME_INPUTS_FAILED, done.stderr[-3000:]
    assert f"resuming: {written} of {len(files)} images already done" in done.stderr

    lines = read_lines(predictions.read_text(encoding="utf-8"))
    expected = read_lines((local / "predictions.jsonl").read_text(encoding="utf-8"))
    assert len(lines) == len({line["path"] for line in lines}) == len(files)
    assert sorted(map(comparable, lines), key=lambda x: x["path"]) == sorted(map(comparable, expected), key=lambda x: x["path"])
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == sorted(p.name for p in (local / "overlays").iterdir()) and len(overlays) == N_GOOD
    assert all((out / "overlays" / name).read_bytes() == (local / "overlays" / name).read_bytes() for name in overlays)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((local / "metrics.json").read_text())
    assert "</html>" in (out / "report.html").read_text(encoding="utf-8")
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []
    print(f"first results after {first_results:.1f} s, killed with {written} lines; restart ran {restart_seconds:.1f} s")


def test_ray_reads_and_writes_fsspec_urls(tiny_texture_work_dir: Path, reference: tuple[Path, Path, dict[str, bytes]]):
    import fsspec

    _, local, files = reference
    fs = fsspec.filesystem("memory")
    for name, data in files.items():
        fs.pipe_file(f"/ray-test-in/{name}", data)
    fs.pipe_file("/ray-test-in/.hidden.png", b"skipped")
    argv = ["predict", CONFIG, "--work-dir", str(tiny_texture_work_dir), "--input", "memory://ray-test-in",
            "--out", "memory://ray-test-out", "--engine", "ray", "--workers", "1", *OPTIONS]
    try:
        assert main(argv) == EXIT_SOME_INPUTS_FAILED
        lines = read_lines(fs.cat_file("/ray-test-out/predictions.jsonl").decode("utf-8"))
        assert sorted(line["path"] for line in lines) == sorted(f"memory://ray-test-in/{name}" for name in files)
        expected = {Path(line["path"]).name: line for line in read_lines((local / "predictions.jsonl").read_text(encoding="utf-8"))}
        for line in lines:
            want = expected[line["path"].rsplit("/", 1)[1]]
            assert line["status"] == want["status"]
            if line["status"] == "ok":
                # Same predictions; the overlay is named after the URL, and is in the URL's folder.
                assert {k: line[k] for k in ("gate", "instances", "width", "height")} == {k: want[k] for k in ("gate", "instances", "width", "height")}
                assert fs.cat_file(f"/ray-test-out/{line['overlay']}") == (local / want["overlay"]).read_bytes()
            else:
                assert line["error"].startswith(line["path"] + ":"), line["error"]
        for name in ("metrics.json", "timings.json", "report.html", "run_info.json"):
            assert fs.isfile(f"/ray-test-out/{name}"), name
        assert json.loads(fs.cat_file("/ray-test-out/metrics.json")) == {"n_images": len(files), "n_errors": N_BAD}
        # The same command again finds every input done: nothing is predicted twice.
        assert main(argv) == EXIT_SOME_INPUTS_FAILED
        assert len(read_lines(fs.cat_file("/ray-test-out/predictions.jsonl").decode("utf-8"))) == len(files)
    finally:
        fs.rm("/ray-test-in", recursive=True)
        if fs.exists("/ray-test-out"):
            fs.rm("/ray-test-out", recursive=True)
