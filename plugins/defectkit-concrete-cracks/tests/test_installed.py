"""The plugin as a user gets it: pip-installed into an environment, found by `defectkit plugins`,
and its config run end to end by `defectkit run` on a data set this test generates."""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
CONFIG = PLUGIN_ROOT / "defectkit_concrete_cracks" / "configs" / "concrete_cracks.py"


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory) -> Path:
    """A virtual environment that sees defectkit's packages and has the plugin pip-installed."""
    env_dir = tmp_path_factory.mktemp("plugin env")
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The environment's own pip (from the system site) installs into the venv; no index is needed.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index", "-e", str(PLUGIN_ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return python


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # A wide terminal, so the plugins table is not cut to 80 columns.
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "COLUMNS": "250"}
    # Run from outside the source tree so the plugin is imported from the installed package only.
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_defectkit_plugins_lists_the_installed_plugin(plugin_python: Path, tmp_path: Path):
    done = _run(plugin_python, "-m", "defectkit.cli", "plugins", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "concrete_cracks" in done.stdout and "loaded" in done.stdout
    for name in ("CrackFolder", "SyntheticConcreteCracks", "CrackShapeFilter"):
        assert name in done.stdout


def test_defectkit_run_trains_and_evaluates_the_plugin_config(plugin_python: Path, tmp_path: Path):
    data = tmp_path / "cracks data"
    make = _run(
        plugin_python, "-c",
        f"from defectkit_concrete_cracks import write_synthetic_cracks; write_synthetic_cracks({str(data)!r}, 30, 15, 96, seed=3)",
        cwd=tmp_path,
    )
    assert make.returncode == 0, make.stderr[-2000:]
    work_dir = tmp_path / "work"
    done = _run(
        plugin_python, "-m", "defectkit.cli", "run", str(CONFIG), "--data-root", str(data), "--work-dir", str(work_dir),
        "--cfg-options", "pipeline.0.image_size=(96,96)", "pipeline.0.model.coreset_size=500", "runtime.num_threads=1",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((work_dir / "metrics.json").read_text())
    assert metrics["n_images"] == 9 and metrics["n_errors"] == 0
    for key in ("image_auroc", "pixel_auroc", "miou"):
        assert 0.0 <= metrics[key] <= 1.0
    lines = [json.loads(line) for line in (work_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and {line["gate"]["label"] for line in lines} <= {"normal", "defect"}
    assert (work_dir / "weights" / "gate.safetensors").is_file()
    report = (work_dir / "report.html").read_text()
    assert "crack_shape" in report
