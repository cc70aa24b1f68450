"""Choosing the predict engine: wrong combinations are one line and exit status 2, before anything loads;
inputs and results folders given as URLs are listed and copied the way the Ray engine needs (no Ray here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from defectkit.cli import EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "texture_defect.py")


def predict(tmp_path: Path, *extra: str, inputs: str | None = None, out: str | None = None) -> list[str]:
    return ["predict", CONFIG, "--work-dir", str(tmp_path / "wd"), "--input", inputs or str(tmp_path), "--out", out or str(tmp_path / "out"), *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_ray_engine_without_ray_installed_is_one_line_exit_2(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert main(predict(tmp_path, "--engine", "ray")) == EXIT_USAGE
    err = one_error_line(capsys)
    assert "--engine ray needs Ray Data" in err and "pip install 'defectkit[ray]'" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "2"], "--workers need(s) --engine ray"),
        (["--ray-address", "10.0.0.1:6379"], "--ray-address need(s) --engine ray"),
        (["--workers", "2", "--ray-address", "auto"], "--workers and --ray-address need(s) --engine ray"),
    ],
)
def test_ray_options_with_the_local_engine_are_refused(tmp_path: Path, capsys, extra: list[str], message: str):
    assert main(predict(tmp_path, *extra)) == EXIT_USAGE
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("where", ["inputs", "out"])
def test_urls_with_the_local_engine_are_refused(tmp_path: Path, capsys, where: str):
    url = "memory://somewhere"
    argv = predict(tmp_path, inputs=url) if where == "inputs" else predict(tmp_path, out=url)
    assert main(argv) == EXIT_USAGE
    assert f"{url}: URLs need --engine ray" in one_error_line(capsys)


def test_zero_workers_is_refused(tmp_path: Path, capsys):
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'defectkit[ray]')")
    assert main(predict(tmp_path, "--engine", "ray", "--workers", "0")) == EXIT_USAGE
    assert "--workers must be at least 1, got 0" in one_error_line(capsys)


def test_unknown_engine_is_a_usage_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(predict(tmp_path, "--engine", "spark"))
    assert exit_info.value.code == EXIT_USAGE
    assert "invalid choice: 'spark'" in capsys.readouterr().err


def test_inputs_as_file_urls_get_the_local_engines_keys(tmp_path: Path):
    from defectkit.ray_engine import list_inputs
    from defectkit.runner import collect_inputs

    folder = tmp_path / "in ü"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.jpg", ".hidden.png"):
        (folder / name).write_bytes(b"x")
    assert list_inputs([folder.as_uri()]) == list_inputs([str(folder)]) == collect_inputs([str(folder)])
    assert len(collect_inputs([str(folder)])) == 2


def test_inputs_as_memory_urls_keep_the_url_and_skip_hidden_files():
    import fsspec

    from defectkit.errors import DataError
    from defectkit.ray_engine import list_inputs

    fs = fsspec.filesystem("memory")
    try:
        for name in ("b.png", "a.png", "sub/c.png", ".git/x.png", "sub/.d.png"):
            fs.pipe_file(f"/engine-unit/{name}", b"x")
        assert list_inputs(["memory://engine-unit/"]) == [
            "memory://engine-unit/a.png", "memory://engine-unit/b.png", "memory://engine-unit/sub/c.png",
        ]
        assert list_inputs(["memory://engine-unit/a.png"]) == ["memory://engine-unit/a.png"]
        with pytest.raises(DataError, match="input not found: memory://engine-unit-missing"):
            list_inputs(["memory://engine-unit-missing"])
    finally:
        fs.rm("/engine-unit", recursive=True)


def test_url_results_are_copied_file_by_file_and_read_back(tmp_path: Path):
    import fsspec

    from defectkit.ray_engine import _UrlSync

    fs = fsspec.filesystem("memory")
    try:
        staging = tmp_path / "staging"
        (staging / "overlays").mkdir(parents=True)
        (staging / "predictions.jsonl").write_text('{"path": "a"}\n')
        (staging / "overlays" / "a.jpg").write_bytes(b"jpeg")
        (staging / "overlays" / ".a.jpg.123.tmp").write_bytes(b"half")
        (staging / ".defectkit.lock").write_text("pid 1")
        sync = _UrlSync(staging, "memory://engine-sync/out/")
        sync.push("predictions.jsonl")
        assert fs.cat_file("/engine-sync/out/predictions.jsonl") == b'{"path": "a"}\n'
        sync.push_all()
        assert sorted(fs.find("/engine-sync")) == ["/engine-sync/out/overlays/a.jpg", "/engine-sync/out/predictions.jsonl"]
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        _UrlSync(fresh, "memory://engine-sync/out").pull()
        assert sorted(p.name for p in fresh.iterdir()) == ["predictions.jsonl"]  # overlays stay where they are
    finally:
        fs.rm("/engine-sync", recursive=True)
