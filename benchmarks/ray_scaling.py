"""Throughput of ``defectkit predict --engine ray`` with 1 and 2 workers (and the local engine) on the same input.

Usage::

    python benchmarks/ray_scaling.py configs/texture_defect.py --work-dir work_dirs/texture_defect \\
        [--images 160 --size 256] [--workers 1 2] [--cfg-options runtime.num_threads=1 ...] [--out scaling.json]

Uses a trained work dir (``defectkit run`` or ``train`` first). Writes ``--images`` generated
textures of ``--size`` pixels to a temporary folder, then runs the real command once per engine
setting, each into a fresh results folder, and reads what it wrote to ``timings.json``: the whole
command's wall time (process start, Ray start, loading the pipeline in every worker, predicting,
writing, report), the run's own images per second, and for Ray the seconds to the first result and
the pool's rate from its first worker being ready (pipeline loaded) to its last batch (the steady
state, which is what more workers buy). Ray is started on this
machine with as many CPUs as workers; the local engine uses the config's threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int, size: int) -> None:
    """Smooth random textures (PNG), a fixed seed so every setting sees the same input."""
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = rng.integers(40, 220, (size // 8, size // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        image.save(folder / f"texture_{index:04d}.png")


def run(config: str, work_dir: str, inputs: Path, out: Path, options: list[str], engine: list[str]) -> dict:
    command = [sys.executable, "-m", "defectkit.cli", "predict", config, "--work-dir", work_dir, "--input", str(inputs),
               "--out", str(out), *engine]
    if options:
        command += ["--cfg-options", *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 3):
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    timings = json.loads((out / "timings.json").read_text())
    return {"command_wall_s": round(wall, 1), **{k: timings.get(k) for k in (
        "images_this_session", "wall_seconds", "img_per_s", "workers", "seconds_to_first_result", "img_per_s_workers_ready")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-local", action="store_true", help="skip the local engine's run")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="also write the table as JSON here")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        write_images(inputs, args.images, args.size)
        settings = [] if args.no_local else [("local", [])]
        settings += [(f"ray, {n} worker(s)", ["--engine", "ray", "--workers", str(n)]) for n in args.workers]
        for index, (name, engine) in enumerate(settings):
            rows[name] = run(args.config, args.work_dir, inputs, Path(tmp) / f"out{index}", args.cfg_options, engine)
            print(name, json.dumps(rows[name]), flush=True)
    ray_rows = [rows[f"ray, {n} worker(s)"] for n in args.workers]
    rates = [r["img_per_s_workers_ready"] for r in ray_rows]
    if len(rates) >= 2 and all(rates):
        print(f"steady-state speed-up {args.workers[-1]} vs {args.workers[0]} workers: {rates[-1] / rates[0]:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"images": args.images, "size": args.size, "cpus": os.cpu_count(), "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
