"""What the review app reads from a work dir: the run's prediction lines, its config and its ground truth.

Nothing here writes: ``predictions.jsonl`` is read as it is (a torn last line is skipped, not cut,
since a run may still be appending), and ground truth comes from the config's reader.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defectkit.errors import DataError, DefectkitError
from defectkit.io.images import load_mask
from defectkit.polygons import mask_to_polygons
from defectkit.sample import Record


def item_id(path: str) -> str:
    """A short, URL-safe id of an image path (URLs never carry paths)."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def read_prediction_lines(path: Path) -> list[dict[str, Any]]:
    """Lines of a ``predictions.jsonl`` in file order, the last one winning when a path repeats.

    Raises:
        DataError: The file does not exist.
    """
    if not path.is_file():
        raise DataError(f"{path}: no predictions.jsonl here; run `defectkit run` or `defectkit predict` first")
    by_path: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # a line still being written
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                by_path[record["path"]] = record
    return list(by_path.values())


def confident_instances(line: dict[str, Any]) -> list[dict[str, Any]]:
    """A prediction line's instances not marked ``"confident": false`` (older lines have no mark)."""
    return [i for i in line.get("instances") or [] if i.get("confident", True) is not False]


def image_score(line: dict[str, Any]) -> float | None:
    """The image's score: the gate's, else its best instance's, else None."""
    gate_score = (line.get("gate") or {}).get("score")
    if gate_score is not None:
        return float(gate_score)
    scores = [float(i["score"]) for i in line.get("instances") or [] if i.get("score") is not None]
    return max(scores) if scores else None


@dataclass
class Item:
    """One image of the run: its prediction line and a summary the grid filters on."""

    id: str
    path: str
    line: dict[str, Any]
    score: float | None
    classes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def status(self) -> str:
        return str(self.line.get("status", "ok"))

    @property
    def gate_label(self) -> str | None:
        return (self.line.get("gate") or {}).get("label")

    @property
    def instances(self) -> list[dict[str, Any]]:
        """The instances reviewers see and decide on: the line's, less a detector's boxes under its
        calibrated review threshold (``"confident": false``; kept in the line for the metrics)."""
        return confident_instances(self.line)


def load_items(work_dir: Path) -> list[Item]:
    """The run's images in ``predictions.jsonl`` order."""
    items = []
    for line in read_prediction_lines(work_dir / "predictions.jsonl"):
        classes = sorted({str(i.get("class")) for i in confident_instances(line)})
        items.append(Item(item_id(line["path"]), line["path"], line, image_score(line), classes))
    return items


def read_run_info(work_dir: Path) -> dict[str, Any]:
    """``run_info.json`` (which config, which data root, eval or predict), empty when absent."""
    try:
        data = json.loads((work_dir / "run_info.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def ground_truth_data_root(work_dir: Path, run_info: dict[str, Any], data_root: str | None) -> str | None:
    """The data root an evaluation read: the one given, else the run's (None: the built-in data set)."""
    if data_root:
        return data_root
    stamped = (run_info.get("stamp") or {}).get("data_root")
    if stamped and Path(stamped).is_dir():
        return stamped
    try:
        trained_on = json.loads((work_dir / "data_root.json").read_text(encoding="utf-8")).get("data_root")
    except (OSError, json.JSONDecodeError, AttributeError):
        trained_on = None
    return trained_on or None


def load_ground_truth(
    cfg: Any, config_path: str | Path, work_dir: Path, data_root: str | None, paths: Sequence[str]
) -> dict[str, Record]:
    """Records of the config's reader for the run's image ``paths``, keyed by those paths.

    Raises:
        DefectkitError: The reader cannot be built or read (the app then shows predictions only).
    """
    from defectkit.runner import build_dataset

    reader = build_dataset(cfg, config_path, work_dir, data_root)
    if data_root is None:
        _check_builtin_cache(reader, Path(work_dir) / "builtin_data")
    # A run started with a relative work dir or data root wrote relative paths: match resolved ones.
    wanted = {str(Path(p).resolve()): p for p in paths}
    found = {}
    for record in reader.records():
        key = wanted.get(str(Path(record.path).resolve()))
        if key is not None:
            found[key] = record
    return found


def _check_builtin_cache(reader: Any, root: Path) -> None:
    """Refuse to read a built-in data set generated with other settings: reading it would regenerate
    the photos the run predicted on (review only reads)."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    params = getattr(reader, "params", None)
    if isinstance(manifest, dict) and callable(params) and manifest.get("params") != params():
        raise DataError(
            f"the built-in data set in {root} was generated with other settings than the config gives "
            "(pass the run's --cfg-options, e.g. builtin_dataset.n_damaged=...)"
        )


def ground_truth_shapes(record: Record, classes: Sequence[str]) -> list[dict[str, Any]]:
    """A record's ground truth as shapes to draw: ``{"class", "polygon"}`` (outer ring) or ``{"class", "box"}``.

    Single-class masks are outlined with :func:`defectkit.polygons.mask_to_polygons` (class: the
    record's category when it is a known class, else the first class).
    """
    shapes: list[dict[str, Any]] = []
    for class_name, polygons in (record.polygons or {}).items():
        for polygon in polygons:
            if polygon:
                shapes.append({"class": class_name, "polygon": [[float(x), float(y)] for x, y in polygon[0]]})
    if record.mask_path:
        class_name = str(record.category) if record.category in classes else (classes[0] if classes else "defect")
        try:
            mask = load_mask(record.mask_path)
        except DefectkitError:
            mask = None
        if mask is not None:
            for ring in mask_to_polygons(mask, epsilon=1.0):
                shapes.append({"class": class_name, "polygon": ring})
    for name, x1, y1, x2, y2 in record.boxes or []:
        shapes.append({"class": str(name), "box": [float(x1), float(y1), float(x2), float(y2)]})
    return shapes
