"""Append-only JSON-lines result files that survive a killed run without losing or duplicating lines.

Each batch is appended and fsynced. On opening, a torn last line (a kill mid-write) is cut off, damaged
lines elsewhere are removed and reported (their inputs are processed again), and the keys already
present are what a resumed run skips.

Paths are recorded losslessly whatever bytes they hold: a file name that is not valid UTF-8 is kept
as Python's ``surrogateescape`` string, whose lone surrogates are written as JSON ``\\udcXX`` escapes
(so the file stays valid UTF-8); ``json.loads`` gives the same string back and ``os.fsencode`` its
original bytes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from defectkit.io.atomic import atomic_write_bytes, with_path

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_line(record: dict[str, Any]) -> str:
    """``record`` as one JSON line (UTF-8 text, lone surrogates from undecodable names escaped).

    Raises:
        TypeError, ValueError: ``record`` holds something JSON cannot represent.
    """
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    # Surrogates only occur inside JSON strings, where \\uXXXX means the same character.
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


class ResultLog:
    """A ``.jsonl`` file of records keyed by ``key_field``, safe to append to across restarts.

    Attributes:
        problems: What opening the file repaired (a torn last line, damaged lines), one message each.

    Example:
        >>> log = ResultLog(tmp_path / "predictions.jsonl")  # doctest: +SKIP
        >>> log.append([{"path": "a.jpg", "status": "ok"}])  # doctest: +SKIP
        >>> "a.jpg" in log.done  # doctest: +SKIP
        True
    """

    def __init__(self, path: str | Path, key_field: str = "path") -> None:
        self.path = Path(path)
        self.key_field = key_field
        self.problems: list[str] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self.done: set[str] = {str(r[key_field]) for r in self.read()}

    def _parse(self, raw: bytes) -> dict[str, Any] | None:
        """The record on one line, or None when the line is damaged."""
        try:
            record = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # bad UTF-8 or JSON
            return None
        return record if isinstance(record, dict) and self.key_field in record else None

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # Killed mid-append: keep only complete lines.
            cut = data.rfind(b"\n") + 1
            self.problems.append(f"{self.path}: cut a torn last line ({len(data) - cut} bytes) left by an interrupted run")
            data = data[:cut]
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
                handle.flush()
                os.fsync(handle.fileno())
        lines = data.split(b"\n")[:-1] if data else []
        damaged = [number for number, raw in enumerate(lines, 1) if raw.strip() and self._parse(raw) is None]
        if damaged:
            # A damaged line is neither a result nor a marker that its input is done: drop it so the
            # input is processed again and the file holds only valid lines.
            kept = b"".join(raw + b"\n" for number, raw in enumerate(lines, 1) if number not in set(damaged) and raw.strip())
            atomic_write_bytes(self.path, kept)
            shown = ", ".join(map(str, damaged[:10])) + (" ..." if len(damaged) > 10 else "")
            self.problems.append(
                f"{self.path}: removed {len(damaged)} damaged line(s) (line {shown}); their inputs are processed again"
            )

    def read(self) -> list[dict[str, Any]]:
        """All records, last one winning when a key repeats (damaged lines are skipped)."""
        if not self.path.exists():
            return []
        by_key: dict[str, dict[str, Any]] = {}
        for raw in self.path.read_bytes().split(b"\n"):
            record = self._parse(raw) if raw.strip() else None
            if record is not None:
                by_key[str(record[self.key_field])] = record
        return list(by_key.values())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably (one write and fsync per call).

        A record that cannot be written as JSON becomes an error record with its key, so every
        key still gets exactly one line and the rest of the batch is not lost.

        Raises:
            OSError: The file cannot be written (its path is in the error).
        """
        lines, keys = [], []
        for record in records:
            key = str(record[self.key_field])
            if key in self.done or key in keys:
                continue
            try:
                line = encode_line(record)
            except (TypeError, ValueError, RecursionError) as exc:
                line = encode_line({self.key_field: key, "status": "error",
                                    "error": f"result could not be written ({type(exc).__name__}: {exc})"})
            lines.append(line)
            keys.append(key)
        if not lines:
            return
        with with_path(self.path), open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        self.done.update(keys)  # only once they are on disk
