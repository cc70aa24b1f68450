"""ResultLog: append-only JSON lines that survive a killed run."""

from __future__ import annotations

import json

from defectkit.io.results import ResultLog


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_appended_keys_are_done_after_reopening(tmp_path):
    path = tmp_path / "sub" / "predictions.jsonl"
    log = ResultLog(path)
    log.append([{"path": "a.jpg", "status": "ok"}, {"path": "b.jpg", "status": "error"}])
    assert log.done == {"a.jpg", "b.jpg"}
    reopened = ResultLog(path)
    assert reopened.done == {"a.jpg", "b.jpg"}
    assert {r["path"]: r["status"] for r in reopened.read()} == {"a.jpg": "ok", "b.jpg": "error"}


def test_torn_last_line_is_cut_on_reopen_and_nothing_is_duplicated(tmp_path):
    path = tmp_path / "predictions.jsonl"
    ResultLog(path).append([{"path": "a.jpg", "n": 1}, {"path": "b.jpg", "n": 2}])
    with open(path, "ab") as handle:
        handle.write(b'{"path":"c.jpg","n":')  # killed mid-write: no newline
    log = ResultLog(path)
    assert log.done == {"a.jpg", "b.jpg"}
    assert path.read_bytes().endswith(b"\n")
    log.append([{"path": "b.jpg", "n": 99}, {"path": "c.jpg", "n": 3}])
    lines = _lines(path)  # every line parses: the torn fragment is gone
    assert [r["path"] for r in lines] == ["a.jpg", "b.jpg", "c.jpg"]
    assert lines[1]["n"] == 2


def test_torn_first_line_leaves_an_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"path": "a.j')
    log = ResultLog(path)
    assert log.done == set()
    assert path.read_bytes() == b""


def test_appending_an_already_done_key_is_ignored(tmp_path):
    path = tmp_path / "p.jsonl"
    log = ResultLog(path)
    log.append([{"path": "a.jpg", "v": 1}])
    log.append([{"path": "a.jpg", "v": 2}])
    ResultLog(path).append([{"path": "a.jpg", "v": 3}])
    assert _lines(path) == [{"path": "a.jpg", "v": 1}]


def test_duplicate_keys_within_one_batch_are_written_once(tmp_path):
    path = tmp_path / "p.jsonl"
    ResultLog(path).append([{"path": "a.jpg", "v": 1}, {"path": "a.jpg", "v": 2}])
    assert _lines(path) == [{"path": "a.jpg", "v": 1}]


def test_custom_key_field_and_non_string_keys(tmp_path):
    path = tmp_path / "eval.jsonl"
    log = ResultLog(path, key_field="key")
    log.append([{"key": 1, "x": "é"}])
    assert ResultLog(path, key_field="key").done == {"1"}
    assert "é" in path.read_text(encoding="utf-8")


def test_reset_removes_file_and_forgets_keys(tmp_path):
    path = tmp_path / "p.jsonl"
    log = ResultLog(path)
    log.append([{"path": "a.jpg"}])
    log.reset()
    assert not path.exists()
    assert log.done == set()
    assert log.read() == []
    log.append([{"path": "a.jpg", "again": True}])
    assert _lines(path) == [{"path": "a.jpg", "again": True}]


def test_empty_append_creates_no_file(tmp_path):
    path = tmp_path / "p.jsonl"
    ResultLog(path).append([])
    assert not path.exists()
