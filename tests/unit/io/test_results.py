"""ResultLog: append-only JSON lines that survive a killed run."""

from __future__ import annotations

import errno
import json
import os

import pytest

from defectkit.io import results
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


def test_undecodable_file_names_round_trip_losslessly(tmp_path):
    name = os.fsdecode(b"/data/lot \xff\xfe/img \xe9\x80.jpg")  # not UTF-8: surrogateescape holds the bytes
    path = tmp_path / "p.jsonl"
    ResultLog(path).append([{"path": name, "status": "ok", "error": f"{name}: fine"}, {"path": "plain ü.jpg"}])
    raw = path.read_bytes()
    raw.decode("utf-8")  # the file stays valid UTF-8
    assert b"\\udcff\\udcfe" in raw and "plain ü.jpg".encode() in raw
    reopened = ResultLog(path)
    assert reopened.done == {name, "plain ü.jpg"} and not reopened.problems
    assert os.fsencode(next(r for r in reopened.read() if r["path"] != "plain ü.jpg")["path"]) == b"/data/lot \xff\xfe/img \xe9\x80.jpg"


def test_a_record_that_cannot_be_written_becomes_an_error_line_and_the_batch_survives(tmp_path):
    path = tmp_path / "p.jsonl"
    log = ResultLog(path)
    log.append([{"path": "a.jpg", "v": 1}, {"path": "b.jpg", "v": object()}, {"path": "c.jpg", "v": 3}])
    lines = _lines(path)
    assert [r["path"] for r in lines] == ["a.jpg", "b.jpg", "c.jpg"]
    assert lines[1]["status"] == "error" and "could not be written" in lines[1]["error"]
    assert log.done == {"a.jpg", "b.jpg", "c.jpg"}


def test_damaged_lines_in_the_middle_are_removed_and_reported(tmp_path):
    path = tmp_path / "p.jsonl"
    ResultLog(path).append([{"path": "a.jpg"}])
    with open(path, "ab") as handle:
        handle.write(b'{"path": "b.jpg", "sta\n')  # damaged: not JSON
        handle.write(b"\xff\xfe not utf-8\n")
        handle.write(b'["a list"]\n{"no_key": 1}\n')
        handle.write(b'{"path": "c.jpg"}\n')
    log = ResultLog(path)
    assert log.done == {"a.jpg", "c.jpg"}
    assert len(log.problems) == 1 and "removed 4 damaged line(s) (line 2, 3, 4, 5)" in log.problems[0]
    assert _lines(path) == [{"path": "a.jpg"}, {"path": "c.jpg"}]  # every line valid again
    assert ResultLog(path).problems == []


def test_torn_tail_is_reported(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"path": "a.jpg"}\n{"path": "b')
    assert "torn last line" in ResultLog(path).problems[0]


def test_a_failed_write_names_the_file_and_marks_nothing_done(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    log = ResultLog(path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full)
    with pytest.raises(OSError) as info:
        log.append([{"path": "a.jpg"}])
    assert info.value.filename == str(path) and info.value.errno == errno.ENOSPC
    assert log.done == set()
