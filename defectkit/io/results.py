"""Append-only JSON-lines result files that survive a killed run without losing or duplicating lines.

Each batch is appended and fsynced. On opening, a torn last line (a kill mid-write) is cut off, and
the keys already present are what a resumed run skips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ResultLog:
    """A ``.jsonl`` file of records keyed by ``key_field``, safe to append to across restarts.

    Example:
        >>> log = ResultLog(tmp_path / "predictions.jsonl")  # doctest: +SKIP
        >>> log.append([{"path": "a.jpg", "status": "ok"}])  # doctest: +SKIP
        >>> "a.jpg" in log.done  # doctest: +SKIP
        True
    """

    def __init__(self, path: str | Path, key_field: str = "path") -> None:
        self.path = Path(path)
        self.key_field = key_field
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self.done: set[str] = {str(r[key_field]) for r in self.read()}

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # Killed mid-append: keep only complete lines.
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
                handle.flush()
                os.fsync(handle.fileno())

    def read(self) -> list[dict[str, Any]]:
        """All records, last one winning when a key repeats."""
        if not self.path.exists():
            return []
        by_key: dict[str, dict[str, Any]] = {}
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                by_key[str(record.get(self.key_field))] = record
        return list(by_key.values())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably (one write and fsync per call)."""
        lines = []
        for record in records:
            key = str(record[self.key_field])
            if key in self.done:
                continue
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            self.done.add(key)
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())

    def reset(self) -> None:
        """Start the file afresh (the evaluation it belonged to changed)."""
        self.path.unlink(missing_ok=True)
        self.done = set()
