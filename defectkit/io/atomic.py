"""Writes that never leave a half-written file behind: write beside, fsync, then rename.

The temporary file is ``.<name>.<random>.tmp`` beside the target (:data:`TEMP_GLOB` finds those a
killed run left). It gets the mode a plain ``open`` would give under the process umask (``mkstemp``
alone would leave every result 0600).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_GLOB = ".*.tmp"
"""Names of temporary files :func:`atomic_write_bytes` creates (before they are renamed)."""


def _current_umask() -> int:
    # There is no way to read the umask without setting it; done once at import, before worker
    # threads exist, so no other thread can create a file while it is briefly 0.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()


@contextmanager
def with_path(path: str | Path) -> Iterator[None]:
    """Make an ``OSError`` raised inside name ``path`` when it names no file (a failed write or fsync).

    Example:
        >>> with with_path("out/predictions.jsonl"), open(...) as handle:  # doctest: +SKIP
        ...     handle.write(text)
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never a mix.

    Raises:
        OSError: The folder cannot be written (read-only, full...); the error names ``path``.
    """
    path = Path(path)
    with with_path(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                if hasattr(os, "fchmod"):  # not on Windows, where mkstemp's mode is not 0600 anyway
                    os.fchmod(handle.fileno(), _FILE_MODE)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
