"""One writer per results folder: an exclusive lock held for a whole command.

The lock is ``fcntl.flock`` on ``<folder>/.defectkit.lock`` (``msvcrt.locking`` on Windows), which
the operating system releases when the process ends, however it ends: a killed run never leaves a
stale lock. The holder writes its PID and command into the file so a second command can say who
holds it. Locks are re-entrant within a process (``run`` holds the work dir while it trains and then
evaluates into it).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from defectkit.errors import FolderLockedError
from defectkit.io.atomic import with_path

LOCK_NAME = ".defectkit.lock"

_held: dict[str, tuple[int, int]] = {}  # resolved folder -> (fd, depth)
_guard = threading.Lock()


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "unknown process"


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the exclusive writer lock of ``folder`` (created if missing) until the block ends.

    Raises:
        FolderLockedError: Another process holds it; the message names its PID and command.
        OSError: The folder or its lock file cannot be created (the error names the path).

    Example:
        >>> with folder_lock("work_dirs/run1/predict-a"):  # doctest: +SKIP
        ...     write_results()
    """
    folder = Path(folder)
    key = str(folder.resolve())
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            path = folder / LOCK_NAME
            with with_path(path):
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                raise FolderLockedError(
                    f"{folder} is being written by another defectkit command ({_holder(path)}); "
                    "wait for it to finish or choose another output folder"
                )
            # Only the holder writes here, after locking, so what a refused command reads is complete.
            os.ftruncate(fd, 0)
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]]) if sys.argv and sys.argv[0] else "python"
            os.write(fd, f"pid {os.getpid()}: {command}\n".encode("utf-8", "backslashreplace"))
            _held[key] = (fd, 1)
    try:
        yield folder
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                os.close(fd)  # releases the lock; the file stays (deleting it would race a new holder)
