"""Results folders through ``defectkit predict``/``eval``: names of any bytes, other runs' results
refused or moved aside (never deleted), one writer at a time, OS errors as one line, damaged lines
repaired, and weight manifests that cannot choose what is built."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from defectkit.cli import EXIT_FATAL, EXIT_OK, EXIT_SOME_INPUTS_FAILED, main
from defectkit.io.lock import LOCK_NAME

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "texture_defect.py")
# The options the tiny work dir was trained with (loading checks the gate's model config).
OPTIONS = ["--cfg-options", "runtime.num_threads=1", "pipeline.0.model.coreset_size=500", "predict.batch_size=4"]


@pytest.fixture
def work_dir(tiny_texture_work_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the trained work dir (weights, split, built-in data; no results)."""
    copy = tmp_path / "work ü"
    copy.mkdir()
    for name in ("weights", "builtin_data"):
        if (tiny_texture_work_dir / name).is_dir():
            shutil.copytree(tiny_texture_work_dir / name, copy / name)
    for name in ("data_root.json",):  # not split.json: it names the original built-in data by absolute path
        if (tiny_texture_work_dir / name).is_file():
            shutil.copy2(tiny_texture_work_dir / name, copy / name)
    return copy


def _images(folder: Path, n: int, size: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        path = folder / f"img {i:03d}.png"
        Image.fromarray(rng.integers(40, 220, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _predict(work_dir: Path, inputs: Path, out: Path, *extra: str) -> int:
    return main(["predict", CONFIG, "--work-dir", str(work_dir), "--input", str(inputs), "--out", str(out), *extra, *OPTIONS])


def _lines(out: Path) -> list[dict]:
    raw = (out / "predictions.jsonl").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 whatever the input names were
    return [json.loads(line) for line in raw.splitlines()]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    # Config errors (exit 2) say "config error:", the others "error:".
    errors = [line for line in err.splitlines() if line.startswith(("error:", "config error:"))]
    assert len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------------------------------ names of any bytes
@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a file system that takes any bytes in names")
def test_names_that_are_not_utf8_get_one_lossless_line_each(work_dir: Path, tmp_path: Path):
    inputs = tmp_path / "in"
    _images(inputs, 2)
    raw_dir = os.fsencode(inputs)
    shutil.copy(inputs / "img 000.png", os.fsdecode(raw_dir + b"/bad \xff\xfe name.png"))
    with open(os.fsdecode(raw_dir + b"/broken \xe9.jpg"), "wb") as handle:
        handle.write(b"not an image")
    out = tmp_path / "out"
    assert _predict(work_dir, inputs, out) == EXIT_SOME_INPUTS_FAILED
    lines = _lines(out)
    by_bytes = {os.fsencode(line["path"]): line for line in lines}
    assert set(by_bytes) == {os.fsencode(str(p.resolve())) for p in map(Path, map(os.fsdecode, _listdir(raw_dir)))}
    assert by_bytes[raw_dir + b"/bad \xff\xfe name.png"]["status"] == "ok"
    assert by_bytes[raw_dir + b"/broken \xe9.jpg"]["status"] == "error"
    assert (out / "report.html").is_file()
    assert _predict(work_dir, inputs, out) == EXIT_SOME_INPUTS_FAILED  # resumes: nothing redone or duplicated
    assert _lines(out) == lines


def _listdir(raw_dir: bytes) -> list[bytes]:
    return [raw_dir + b"/" + name for name in os.listdir(raw_dir)]


# ------------------------------------------------------------------------- other runs' results
def test_results_of_another_run_and_the_work_dir_are_refused_then_moved_aside(work_dir: Path, tmp_path: Path, capsys):
    assert main(["eval", CONFIG, "--work-dir", str(work_dir), *OPTIONS]) == EXIT_OK  # results into the work dir
    produced = {name: (work_dir / name).read_bytes() for name in ("predictions.jsonl", "eval_records.jsonl", "metrics.json", "report.html")}
    capsys.readouterr()
    inputs = tmp_path / "in"
    _images(inputs, 1)

    assert _predict(work_dir, inputs, work_dir) == EXIT_FATAL
    assert "is the work dir" in _one_error_line(capsys.readouterr().err)
    assert {name: (work_dir / name).read_bytes() for name in produced} == produced  # nothing touched

    other = tmp_path / "other"
    assert _predict(work_dir, inputs, other) == EXIT_OK
    capsys.readouterr()
    assert main(["eval", CONFIG, "--work-dir", str(work_dir), "--out", str(other), *OPTIONS]) == EXIT_FATAL
    assert "holds results of another run (other command" in _one_error_line(capsys.readouterr().err)

    assert _predict(work_dir, inputs, work_dir, "--overwrite") == EXIT_OK
    previous = sorted(work_dir.glob("previous-*"))
    assert len(previous) == 1
    assert {name: (previous[0] / name).read_bytes() for name in produced} == produced  # moved, byte for byte
    assert len(_lines(work_dir)) == 1 and (work_dir / "weights").is_dir()


def test_results_made_with_other_weights_are_another_run(work_dir: Path, tmp_path: Path, capsys):
    inputs = tmp_path / "in"
    _images(inputs, 2)
    out = tmp_path / "out"
    assert _predict(work_dir, inputs, out) == EXIT_OK
    # Retrained weights (same shapes, other values, consistent checksum).
    tensors_path, manifest_path = work_dir / "weights" / "gate.safetensors", work_dir / "weights" / "gate.json"
    tensors = load_file(tensors_path)
    tensors["anomaly_threshold"] = tensors["anomaly_threshold"] + 1.0
    save_file(tensors, tensors_path)
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = hashlib.sha256(tensors_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert _predict(work_dir, inputs, out) == EXIT_FATAL
    assert "other weights of stage(s) 'gate'" in _one_error_line(capsys.readouterr().err)
    assert _predict(work_dir, inputs, out, "--overwrite") == EXIT_OK
    assert len(list(out.glob("previous-*/predictions.jsonl"))) == 1 and len(_lines(out)) == 2


def test_a_damaged_line_is_reported_removed_and_its_input_predicted_again(work_dir: Path, tmp_path: Path, capsys):
    inputs = tmp_path / "in"
    _images(inputs, 3)
    out = tmp_path / "out"
    assert _predict(work_dir, inputs, out) == EXIT_OK
    lines = (out / "predictions.jsonl").read_bytes().splitlines(keepends=True)
    damaged_path = json.loads(lines[1])["path"]
    (out / "predictions.jsonl").write_bytes(lines[0] + lines[1][:25] + b"\n" + lines[2])
    capsys.readouterr()
    assert _predict(work_dir, inputs, out) == EXIT_OK
    assert "removed 1 damaged line(s) (line 2)" in capsys.readouterr().err
    after = _lines(out)
    assert sorted(line["path"] for line in after) == sorted(str(p.resolve()) for p in inputs.iterdir())
    assert after[-1]["path"] == damaged_path


# ------------------------------------------------------------------------------ one writer
def test_a_second_command_on_the_same_out_exits_1_naming_the_first(work_dir: Path, tmp_path: Path, capsys):
    inputs = tmp_path / "in"
    n = 160
    _images(inputs, n, size=96)
    out = tmp_path / "out"
    argv = ["predict", CONFIG, "--work-dir", str(work_dir), "--input", str(inputs), "--out", str(out), *OPTIONS]
    first = subprocess.Popen([sys.executable, "-m", "defectkit.cli", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        lock = out / LOCK_NAME
        deadline = time.monotonic() + 300
        while not (lock.is_file() and f"pid {first.pid}" in lock.read_text()):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first command never took the lock"
            time.sleep(0.05)
        capsys.readouterr()
        assert main(argv) == EXIT_FATAL
        message = _one_error_line(capsys.readouterr().err)
        assert f"pid {first.pid}" in message and "another defectkit command" in message
        assert first.poll() is None, "the first command ended before the second tried: the test proved nothing"
    finally:
        _, err = first.communicate(timeout=600)
    assert first.returncode == EXIT_OK, err[-2000:]
    paths = [line["path"] for line in _lines(out)]
    assert len(paths) == len(set(paths)) == n  # every input once: the second command wrote nothing


# ------------------------------------------------------------------------------ OS errors
def test_an_output_path_that_is_a_file_is_one_line(work_dir: Path, tmp_path: Path, capsys):
    inputs = tmp_path / "in"
    _images(inputs, 1)
    blocker = tmp_path / "not a folder"
    blocker.write_text("")
    assert _predict(work_dir, inputs, blocker / "out") == EXIT_FATAL
    line = _one_error_line(capsys.readouterr().err)
    assert str(blocker) in line and "Not a directory" in line


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_completes(work_dir: Path, tmp_path: Path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    _images(inputs, 12)
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 8:  # the disk fills after the first few writes
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert _predict(work_dir, inputs, out) == EXIT_FATAL
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(out) in line
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _predict(work_dir, inputs, out) == EXIT_OK
    paths = [line["path"] for line in _lines(out)]
    assert len(paths) == len(set(paths)) == 12


def test_a_read_only_folder_is_one_line(work_dir: Path, tmp_path: Path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    _images(inputs, 1)

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert _predict(work_dir, inputs, tmp_path / "out") == EXIT_FATAL
    line = _one_error_line(capsys.readouterr().err)
    assert "Read-only file system" in line and str(tmp_path / "out") in line


# ------------------------------------------------------------------------------ hostile names
def test_a_manifest_or_option_naming_a_module_is_refused_in_one_line(work_dir: Path, tmp_path: Path, capsys):
    inputs = tmp_path / "in"
    _images(inputs, 1)
    marker = tmp_path / "pwned"
    manifest_path = work_dir / "weights" / "gate.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["extra"]["model"] = {"type": "os.system", "command": f"touch '{marker}'"}
    manifest_path.write_text(json.dumps(manifest))
    assert _predict(work_dir, inputs, tmp_path / "out") == EXIT_FATAL
    assert "differs from the config's at extra.model" in _one_error_line(capsys.readouterr().err)
    assert not marker.exists()
    # The same name through --cfg-options: refused before anything is imported (a config error).
    code = main(["predict", CONFIG, "--work-dir", str(work_dir), "--input", str(inputs), "--out", str(tmp_path / "o2"),
                 *OPTIONS, "pipeline.0.type=os.system"])
    assert code in (1, 2)  # bad config values may become usage errors (exit 2)
    assert "module paths are never imported" in _one_error_line(capsys.readouterr().err)
