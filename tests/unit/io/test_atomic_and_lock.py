"""Atomic writes keep the umask's mode; the results-folder lock admits one process at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from defectkit.errors import FolderLockedError
from defectkit.io.lock import LOCK_NAME, folder_lock

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask, mode):
    script = textwrap.dedent(
        f"""
        import os, stat
        os.umask({umask:#o})
        from defectkit.io.atomic import atomic_write_bytes
        atomic_write_bytes({str(tmp_path / "a.json")!r}, b"{{}}")
        with open({str(tmp_path / "b.jsonl")!r}, "w"):
            pass
        print(oct(stat.S_IMODE(os.stat({str(tmp_path / "a.json")!r}).st_mode)), oct(stat.S_IMODE(os.stat({str(tmp_path / "b.jsonl")!r}).st_mode)))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == [oct(mode), oct(mode)]


def test_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    folder = tmp_path / "out"
    with folder_lock(folder):
        with folder_lock(folder):
            assert f"pid {os.getpid()}" in (folder / LOCK_NAME).read_text()
        _assert_other_process_is_refused(folder)
    _assert_other_process_can_lock(folder)


def _other_process(folder: Path, hold_seconds: float = 0.0) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import sys, time
        from defectkit.errors import FolderLockedError
        from defectkit.io.lock import folder_lock
        try:
            with folder_lock({str(folder)!r}):
                print("locked", flush=True)
                time.sleep({hold_seconds})
        except FolderLockedError as exc:
            print(exc, flush=True)
            sys.exit(1)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)


def _assert_other_process_is_refused(folder: Path) -> None:
    proc = _other_process(folder)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"pid {os.getpid()}" in out and "another defectkit command" in out, out


def _assert_other_process_can_lock(folder: Path) -> None:
    proc = _other_process(folder)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "locked", out


def test_a_lock_held_by_another_process_is_refused_naming_it_and_freed_when_it_dies(tmp_path):
    folder = tmp_path / "out"
    holder = _other_process(folder, hold_seconds=60)
    assert holder.stdout.readline().strip() == "locked"
    try:
        with pytest.raises(FolderLockedError, match=rf"pid {holder.pid}\b"):
            with folder_lock(folder):
                pass
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock, no stale lock file blocks the next run
        holder.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with folder_lock(folder):
                break
        except FolderLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
