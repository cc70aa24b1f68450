"""Validate a data set before training on it: every image decodes, masks match their images,
polygons can be drawn, classes are known, nothing is listed twice or lies outside the data root.

``defectkit check-data CONFIG --data-root DIR`` runs :func:`check_dataset` on the config's reader and
prints :meth:`DataCheck.summary_tables`; nothing is modified.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from defectkit.data.base import ImageDataset
from defectkit.data.masks import ground_truth_masks
from defectkit.errors import DataError
from defectkit.io.images import DEFAULT_MAX_SIDE, load_mask, read_image
from defectkit.sample import Record

# What each kind of problem means; the order is the order of the summary table.
PROBLEM_KINDS: dict[str, str] = {
    "reader": "the reader ignored or flagged a file (stray file, mask without image, ...)",
    "missing_file": "an image or mask the annotations name does not exist",
    "outside_root": "a path lies outside the data root",
    "image_decode": "the image cannot be decoded (empty, truncated, not an image, too large)",
    "mask_decode": "the mask cannot be decoded",
    "mask_size": "the mask's size differs from its image's",
    "polygon": "a polygon cannot be drawn (fewer than 3 points, NaN or infinite coordinates)",
    "out_of_bounds": "a polygon or box has coordinates outside the image",
    "box": "a box is malformed (NaN, x2 <= x1 or y2 <= y1)",
    "unknown_class": "an annotation names a class not in the config's classes",
    "unknown_label": "an image label is not an index into the config's image_classes",
    "label_mismatch": "an image labelled normal has defect pixels in its mask, or a defect image an empty mask",
    "duplicate_path": "the same image file is listed more than once",
    "duplicate_id": "two records share an image id",
    "duplicate_content": "two image files have identical bytes (would leak across splits)",
}
# Annotations may overshoot the border by this many pixels (vertices on the outer pixel edge).
OUT_OF_BOUNDS_TOLERANCE = 1.0
_ID_KEYS = ("image_id", "id")


@dataclass
class Problem:
    """One thing wrong with the data set."""

    kind: str
    path: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "message": self.message}


@dataclass
class DataCheck:
    """What :func:`check_dataset` found.

    Attributes:
        data_root: The folder checked.
        n_records: Images the reader listed.
        by_label: Images per image-level label name (``"unlabelled"`` when a record has none).
        by_category: Images per category (e.g. defect type folder).
        by_class: Per defect class: ``{"images": n, "regions": n}`` with annotated pixels or polygons.
        problems: Everything found, in record order (reader problems first).
    """

    data_root: str
    n_records: int = 0
    by_label: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)
    by_class: dict[str, Counter] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem_counts(self) -> dict[str, int]:
        """Number of problems per kind, in :data:`PROBLEM_KINDS` order."""
        counts = Counter(p.kind for p in self.problems)
        ordered = [k for k in PROBLEM_KINDS if k in counts] + sorted(k for k in counts if k not in PROBLEM_KINDS)
        return {k: counts[k] for k in ordered}

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_root": self.data_root,
            "n_images": self.n_records,
            "by_label": dict(self.by_label),
            "by_category": dict(self.by_category),
            "by_class": {k: dict(v) for k, v in self.by_class.items()},
            "problem_counts": self.problem_counts(),
            "problems": [p.to_dict() for p in self.problems],
        }

    def summary_tables(self, max_problems: int = 20) -> list[Any]:
        """Rich renderables: counts, problems by kind and the first ``max_problems`` problems."""
        from rich.table import Table
        from rich.text import Text

        counts = Table(title=f"data set {self.data_root}: {self.n_records} images")
        counts.add_column("group")
        counts.add_column("name")
        counts.add_column("images", justify="right")
        counts.add_column("regions", justify="right")
        for name, n in sorted(self.by_label.items()):
            counts.add_row("label", str(name), str(n), "")
        for name, n in sorted(self.by_category.items(), key=lambda kv: str(kv[0])):
            counts.add_row("category", str(name), str(n), "")
        for name, c in self.by_class.items():
            counts.add_row("class", name, str(c["images"]), str(c["regions"]))
        out: list[Any] = [counts]
        if not self.problems:
            out.append(Text("no problems found", style="green"))
            return out
        kinds = Table(title=f"{len(self.problems)} problem(s)")
        kinds.add_column("kind")
        kinds.add_column("count", justify="right")
        kinds.add_column("meaning")
        for kind, n in self.problem_counts().items():
            kinds.add_row(kind, str(n), PROBLEM_KINDS.get(kind, ""))
        out.append(kinds)
        shown = self.problems[:max_problems]
        lines = Text()
        for problem in shown:
            lines.append(f"[{problem.kind}] ", style="yellow")
            lines.append(problem.message + "\n")
        if len(self.problems) > len(shown):
            lines.append(f"... and {len(self.problems) - len(shown)} more (use --out FILE for the full list)\n", style="dim")
        out.append(lines)
        return out


def check_dataset(
    reader: ImageDataset,
    classes: Sequence[str],
    image_classes: Sequence[str] = ("normal", "defect"),
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> DataCheck:
    """Read a data set with its reader and check every record (see :func:`check_records`).

    Raises:
        DataError: The reader cannot list the root at all (missing root, wrong layout).
    """
    records = reader.records()
    return check_records(
        records,
        classes,
        image_classes,
        data_root=reader.root,
        reader_problems=reader.problems,
        progress=progress,
    )


def check_records(
    records: Sequence[Record],
    classes: Sequence[str],
    image_classes: Sequence[str] = ("normal", "defect"),
    data_root: str | os.PathLike[str] | None = None,
    reader_problems: Iterable[Any] = (),
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> DataCheck:
    """Check records: decode every image and mask in full, rasterise polygons, compare classes and ids.

    Args:
        records: What a reader listed.
        classes: The config's defect classes (a mask fills the first one).
        image_classes: The config's image-level labels.
        data_root: Paths must stay inside it (lexically; symlinks inside the root are allowed).
        reader_problems: The reader's own notes (``reader.problems``), reported as kind ``reader``.
        progress: ``progress(total) -> advance(n)``, e.g. a rich progress bar.
    """
    classes = list(classes)
    check = DataCheck(data_root=str(data_root) if data_root is not None else "")
    check.by_class = {c: Counter(images=0, regions=0) for c in classes}
    for note in reader_problems:
        check.problems.append(_reader_problem(note))
    root = Path(os.path.abspath(data_root)) if data_root is not None else None
    advance = progress(len(records)) if progress else (lambda n=1: None)
    seen_paths: dict[str, str] = {}
    seen_ids: dict[str, str] = {}
    seen_content: dict[str, str] = {}
    for record in records:
        check.n_records += 1
        check.by_label[_label_name(record.label, image_classes)] += 1
        if record.category is not None:
            check.by_category[str(record.category)] += 1
        problems = _check_record(record, classes, image_classes, root, seen_paths, seen_ids, seen_content, check.by_class)
        check.problems.extend(problems)
        advance(1)
    return check


def _check_record(
    record: Record,
    classes: list[str],
    image_classes: Sequence[str],
    root: Path | None,
    seen_paths: dict[str, str],
    seen_ids: dict[str, str],
    seen_content: dict[str, str],
    by_class: dict[str, Counter],
) -> list[Problem]:
    path = record.path
    problems: list[Problem] = []

    def add(kind: str, message: str, where: str | None = path) -> None:
        problems.append(Problem(kind, where, message))

    for what, p in (("image", path), ("mask", record.mask_path)):
        if p is not None and root is not None and not _inside(root, p):
            add("outside_root", f"{p}: {what} path lies outside the data root {root}", p)
    key = os.path.normcase(os.path.abspath(path))
    repeated = key in seen_paths
    if repeated:
        add("duplicate_path", f"{path}: listed more than once")
    seen_paths.setdefault(key, path)
    for id_key in _ID_KEYS:
        value = record.meta.get(id_key) if record.meta else None
        if value is not None:
            tag = f"{id_key}={value}"
            if tag in seen_ids and seen_ids[tag] != path:
                add("duplicate_id", f"{path}: {tag} also used by {seen_ids[tag]}")
            seen_ids.setdefault(tag, path)
            break
    if record.label is not None and not (isinstance(record.label, int) and 0 <= record.label < len(image_classes)):
        add("unknown_label", f"{path}: label {record.label!r} is not an index into image_classes {list(image_classes)}")

    if not Path(path).is_file():
        add("missing_file", f"{path}: image file not found")
        return problems
    try:
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        add("image_decode", f"{path}: cannot read file ({exc})")
        return problems
    if not repeated and digest in seen_content:
        add("duplicate_content", f"{path}: same bytes as {seen_content[digest]}")
    seen_content.setdefault(digest, path)
    try:
        # A full decode (not just the header), so truncated files are caught; large images are
        # decoded at reduced size, which still reads every byte of the file.
        decoded = read_image(path, max_side=DEFAULT_MAX_SIDE)
    except DataError as exc:
        add("image_decode", str(exc))
        return problems
    height, width = decoded.original_size
    del decoded

    if record.mask_path is not None:
        if not Path(record.mask_path).is_file():
            add("missing_file", f"{record.mask_path}: mask file not found (image {path})", record.mask_path)
        else:
            try:
                mask = load_mask(record.mask_path)
            except DataError as exc:
                add("mask_decode", str(exc), record.mask_path)
            else:
                if mask.shape != (height, width):
                    add(
                        "mask_size",
                        f"{record.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {path} is {width}x{height}",
                        record.mask_path,
                    )
                elif mask.any():
                    if classes:
                        by_class[classes[0]]["images"] += 1
                        by_class[classes[0]]["regions"] += _count_regions(mask)
                    if record.label == 0:
                        add("label_mismatch", f"{path}: labelled {_label_name(0, image_classes)!r} but its mask has {int(mask.sum())} defect pixels")
                elif record.label not in (None, 0):
                    # Pixel metrics count such an image as defect-free; the image label still counts.
                    add("label_mismatch", f"{path}: labelled {_label_name(record.label, image_classes)!r} but its mask {record.mask_path} is empty")

    polygons = record.polygons or {}
    for class_name, polys in polygons.items():
        if class_name not in classes:
            continue  # reported by ground_truth_masks below
        count = 0
        for index, polygon in enumerate(polys or []):
            count += 1
            bad = _out_of_bounds(polygon, width, height)
            if bad:
                add("out_of_bounds", f"{path}: class {class_name!r} polygon {index} has point {bad} outside the {width}x{height} image")
        if count:
            by_class[class_name]["images"] += 1
            by_class[class_name]["regions"] += count
    if polygons:
        try:
            _, found = ground_truth_masks(replace(record, mask_path=None), (height, width), classes)
        except Exception as exc:  # a malformed structure must be reported, not crash the check
            add("polygon", f"{path}: polygons cannot be drawn ({type(exc).__name__}: {exc})")
        else:
            for message in found:
                add("unknown_class" if "is not in the config's classes" in message else "polygon", message)

    for index, box in enumerate(record.boxes or []):
        try:
            class_name, x1, y1, x2, y2 = box
            x1, y1, x2, y2 = (float(v) for v in (x1, y1, x2, y2))
        except (TypeError, ValueError):
            add("box", f"{path}: box {index} is not (class, x1, y1, x2, y2): {box!r}")
            continue
        if class_name not in classes:
            add("unknown_class", f"{path}: box {index} class {class_name!r} is not in the config's classes {classes}")
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            add("box", f"{path}: box {index} {[x1, y1, x2, y2]} is empty or not finite")
        elif min(x1, y1) < -OUT_OF_BOUNDS_TOLERANCE or x2 > width + OUT_OF_BOUNDS_TOLERANCE or y2 > height + OUT_OF_BOUNDS_TOLERANCE:
            add("out_of_bounds", f"{path}: box {index} {[x1, y1, x2, y2]} extends outside the {width}x{height} image")
    return problems


def _reader_problem(note: Any) -> Problem:
    if isinstance(note, Problem):
        return note
    if isinstance(note, dict):
        return Problem("reader", note.get("path"), str(note.get("message", note)))
    text = str(note)
    head = text.split(": ", 1)[0] if ": " in text else None
    return Problem("reader", head, text)


def _label_name(label: Any, image_classes: Sequence[str]) -> str:
    if label is None:
        return "unlabelled"
    if isinstance(label, int) and 0 <= label < len(image_classes):
        return str(image_classes[label])
    return f"label {label!r}"


def _inside(root: Path, path: str) -> bool:
    candidate = Path(os.path.normpath(os.path.abspath(path)))
    return candidate == root or root in candidate.parents


def _out_of_bounds(polygon: Any, width: int, height: int) -> list[float] | None:
    """The first finite point of a polygon outside the image (with tolerance), or None."""
    tol = OUT_OF_BOUNDS_TOLERANCE
    try:
        rings = list(polygon)
    except TypeError:
        return None
    for ring in rings:
        try:
            points = list(ring)
        except TypeError:
            continue
        for point in points:
            try:
                x, y = float(point[0]), float(point[1])
            except (TypeError, ValueError, IndexError):
                continue
            if not (math.isfinite(x) and math.isfinite(y)):
                continue  # NaN/inf are reported as polygon problems
            if x < -tol or y < -tol or x > width + tol or y > height + tol:
                return [x, y]
    return None


def _count_regions(mask: Any) -> int:
    import cv2
    import numpy as np

    count, _ = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8)
    return int(count) - 1


__all__ = ["DataCheck", "PROBLEM_KINDS", "Problem", "check_dataset", "check_records"]
