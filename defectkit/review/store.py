"""Reviewers' decisions on a run, saved atomically in the work dir after every change.

``<work dir>/review/decisions.json``::

    {"version": 1,
     "images": {"<predictions.jsonl path>": {
         "instances": {"0": {"decision": "accept" | "reject", "class": "dent"}},  # by index in the line
         "added": [{"id": "a1", "class": "scratch", "polygon": [[x, y], ...]}],  # missed damage
         "done": true,                                                          # reviewed
         "updated": "2026-11-30T01:02:03Z"}}}

Every change rewrites the file beside itself and renames it into place (``io/atomic.py``), so a
killed server leaves the previous or the new decisions, never a torn file.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

from defectkit.errors import DataError
from defectkit.io.atomic import atomic_write_json
from defectkit.polygons import PolygonError, validate_ring

DECISIONS_FILE = "decisions.json"
DECISIONS = ("accept", "reject")
# A polygon drawn by hand never needs more; the cap keeps one request from bloating the file.
MAX_POINTS = 2000
MAX_ADDED_PER_IMAGE = 500


class ReviewError(DataError):
    """A decision that cannot be stored (unknown class, bad polygon...); the message says which."""


class DecisionStore:
    """Decisions per image key, thread-safe, persisted on every change.

    Args:
        path: The decisions file (created on the first change).
        classes: Class names a decision may set or a drawn region may have.

    Raises:
        DataError: The file exists but is not a decisions file.

    Example:
        >>> store = DecisionStore(tmp_path / "decisions.json", ["scratch", "dent"])  # doctest: +SKIP
        >>> store.decide("a.jpg", 0, "reject")  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, classes: list[str]) -> None:
        self.path = Path(path)
        self.classes = list(classes)
        self._lock = threading.Lock()
        self._images: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{self.path}: cannot read review decisions ({exc})") from exc
            if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
                raise DataError(f"{self.path}: not a review decisions file (expected an 'images' object)")
            self._images = data["images"]

    def get(self, key: str) -> dict[str, Any]:
        """A copy of one image's decisions (empty lists and maps when it has none)."""
        with self._lock:
            entry = self._images.get(key)
            return copy.deepcopy(entry) if entry else {"instances": {}, "added": [], "done": False}

    def all(self) -> dict[str, dict[str, Any]]:
        """A copy of every image's decisions."""
        with self._lock:
            return copy.deepcopy(self._images)

    def decide(self, key: str, index: int, decision: str | None = None, class_name: str | None = None) -> dict[str, Any]:
        """Accept or reject predicted instance ``index`` and/or change its class; returns the image's decisions.

        ``decision`` None keeps the current decision (or clears it when ``class_name`` is None too).
        """
        if decision is not None and decision not in DECISIONS:
            raise ReviewError(f"decision must be one of {list(DECISIONS)}, got {decision!r}")
        if class_name is not None:
            self._check_class(class_name)
        if index < 0:
            raise ReviewError(f"instance index must be >= 0, got {index}")
        with self._lock:
            entry = self._entry(key)
            current = entry["instances"].get(str(index), {})
            if decision is None and class_name is None:
                current = {}
            if decision is not None:
                current["decision"] = decision
            if class_name is not None:
                current["class"] = class_name
            if current:
                entry["instances"][str(index)] = current
            else:
                entry["instances"].pop(str(index), None)
            return self._save(key, entry)

    def add_region(self, key: str, class_name: str, polygon: Any = None, box: Any = None) -> dict[str, Any]:
        """Mark missed damage as a polygon ``[[x, y], ...]`` or a box ``[x1, y1, x2, y2]`` (stored as its polygon)."""
        self._check_class(class_name)
        if box is not None:
            try:
                x1, y1, x2, y2 = (float(v) for v in box)
            except (TypeError, ValueError) as exc:
                raise ReviewError(f"box must be [x1, y1, x2, y2], got {box!r}") from exc
            x1, x2 = sorted((x1, x2))
            y1, y2 = sorted((y1, y2))
            if x2 - x1 < 1 or y2 - y1 < 1:
                raise ReviewError("box must be at least one pixel wide and high")
            polygon = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
        if polygon is None:
            raise ReviewError("a region needs a polygon or a box")
        try:
            points = validate_ring(polygon)
        except PolygonError as exc:
            raise ReviewError(f"polygon: {exc}") from exc
        if len(points) > MAX_POINTS:
            raise ReviewError(f"polygon has {len(points)} points; at most {MAX_POINTS}")
        with self._lock:
            entry = self._entry(key)
            if len(entry["added"]) >= MAX_ADDED_PER_IMAGE:
                raise ReviewError(f"at most {MAX_ADDED_PER_IMAGE} drawn regions per image")
            number = 1 + max((int(a["id"][1:]) for a in entry["added"]), default=0)
            ring = [[round(float(x), 1), round(float(y), 1)] for x, y in points]
            entry["added"].append({"id": f"a{number}", "class": class_name, "polygon": ring})
            return self._save(key, entry)

    def remove_region(self, key: str, region_id: str) -> dict[str, Any]:
        """Delete a drawn region by its id."""
        with self._lock:
            entry = self._entry(key)
            kept = [a for a in entry["added"] if a["id"] != region_id]
            if len(kept) == len(entry["added"]):
                raise ReviewError(f"no drawn region {region_id!r} on this image")
            entry["added"] = kept
            return self._save(key, entry)

    def set_done(self, key: str, done: bool) -> dict[str, Any]:
        """Mark the image reviewed (it is then exported) or not."""
        with self._lock:
            entry = self._entry(key)
            entry["done"] = bool(done)
            return self._save(key, entry)

    def _check_class(self, class_name: str) -> None:
        if class_name not in self.classes:
            raise ReviewError(f"unknown class {class_name!r}; known: {self.classes}")

    def _entry(self, key: str) -> dict[str, Any]:
        # Work on a copy: if saving fails, memory keeps what the file has.
        entry = copy.deepcopy(self._images.get(key) or {"instances": {}, "added": [], "done": False})
        entry.setdefault("instances", {})
        entry.setdefault("added", [])
        entry.setdefault("done", False)
        return entry

    def _save(self, key: str, entry: dict[str, Any]) -> dict[str, Any]:
        entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        images = dict(self._images)
        images[key] = entry
        atomic_write_json(self.path, {"version": 1, "images": images})
        self._images = images
        return copy.deepcopy(entry)


def is_reviewed(entry: dict[str, Any], n_instances: int) -> bool:
    """An image counts as reviewed when marked done, or when every predicted instance has a decision."""
    if entry.get("done"):
        return True
    decided = {k for k, v in (entry.get("instances") or {}).items() if v.get("decision")}
    return n_instances > 0 and len(decided) >= n_instances and all(str(i) in decided for i in range(n_instances))
