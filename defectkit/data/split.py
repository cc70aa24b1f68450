"""Deterministic, stratified, group-aware train/val/test splits."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from defectkit.errors import DataError
from defectkit.io.atomic import atomic_write_json
from defectkit.sample import Record

SPLIT_NAMES = ("train", "val", "test")


def default_stratum(record: Record) -> str:
    """Stratify by the finest label a record has: its category, else its image label."""
    return str(record.category if record.category is not None else record.label)


def split_records(
    records: Sequence[Record],
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    stratum: Callable[[Record], str] = default_stratum,
) -> dict[str, list[Record]]:
    """Split records into train/val/test with the same class mix in each part.

    Records sharing a ``group`` move together: a group is assigned as a unit, stratified by the
    stratum of its first record. The assignment depends only on the records' paths and ``seed``, not
    on the order they are listed in or the folder the data set is stored in.

    Args:
        records: Everything a reader returned.
        ratios: Fractions for train, val and test; normalised to sum to 1.
        seed: Changes the assignment; the same seed always gives the same split.
        stratum: Key to stratify by.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted by path.

    Example:
        >>> parts = split_records(records, ratios=(0.8, 0.1, 0.1), seed=0)  # doctest: +SKIP
    """
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative fractions for train/val/test, got {ratios}")
    weights = np.asarray(ratios, dtype=float) / float(sum(ratios))
    groups, by_stratum = stratified_groups(records, seed, stratum)
    parts: dict[str, list[Record]] = {name: [] for name in SPLIT_NAMES}
    for keys in by_stratum.values():
        sizes = [len(groups[k]) for k in keys]
        targets = weights * sum(sizes)
        filled = np.zeros(3)
        for key, size in zip(keys, sizes):
            # Give each group to the part furthest below its target share, so small strata still
            # reach test and val before train takes everything.
            part = int(np.argmax(targets - filled)) if targets.max() > 0 else 0
            parts[SPLIT_NAMES[part]].extend(groups[key])
            filled[part] += size
    return {name: sorted(members, key=lambda r: r.path) for name, members in parts.items()}


def stratified_groups(
    records: Sequence[Record], seed: int, stratum: Callable[[Record], str] = default_stratum,
) -> tuple[dict[str, list[Record]], dict[str, list[str]]]:
    """Records by group, and each stratum's group keys in a seeded order: the units splits and folds deal out.

    Records sharing a ``group`` form one unit; any other record is a unit of its own, keyed by its
    path relative to the records' common folder, so the same data set is dealt out the same way
    wherever it is stored. A group's stratum is its first record's (by path). The order of the
    keys depends only on ``seed`` and the keys, never on the order the records are listed in.

    Returns:
        ``(groups, by_stratum)``: key -> records, and stratum name (sorted) -> keys in seeded order.
    """
    base = common_folder([r.path for r in records])
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        key = record.group if record.group is not None else "path:" + (os.path.relpath(record.path, base) if base else record.path)
        groups[key].append(record)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        by_stratum[stratum(min(members, key=lambda r: r.path))].append(key)
    ordered = {name: sorted(by_stratum[name], key=lambda k: stable_order_key(seed, k)) for name in sorted(by_stratum)}
    return dict(groups), ordered


def common_folder(paths: list[str]) -> str:
    """The folder every path lies in (a single path's folder); "" for none or mixed absolute and relative paths."""
    if not paths:
        return ""
    try:
        common = os.path.commonpath(paths)
    except ValueError:  # mixed absolute and relative paths
        return ""
    return common if len(paths) > 1 else os.path.dirname(common)


def stable_order_key(seed: int, text: str) -> str:
    """Sort key for a reproducible shuffle: depends only on ``seed`` and ``text``, never on list order."""
    return hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()


def stable_order(records: Iterable[Record], seed: int) -> list[Record]:
    """``records`` in a reproducible shuffled order that depends only on ``seed`` and their relative paths.

    Paths are taken relative to the records' common folder, so the same data set gives the same
    order wherever it is stored (a work dir's built-in data, a copied data root), and so do the
    choices made from that order (which images build a model, which are held out).

    Example:
        >>> a = [Record(path=f"/data/a/{i}.png") for i in range(5)]
        >>> b = [Record(path=f"/elsewhere/b/{i}.png") for i in range(5)]
        >>> [r.path[-5:] for r in stable_order(a, 0)] == [r.path[-5:] for r in stable_order(b, 0)]
        True
    """
    records = list(records)
    base = common_folder([r.path for r in records])
    return sorted(records, key=lambda r: stable_order_key(seed, os.path.relpath(r.path, base) if base else r.path))


def save_split(path: str | Path, parts: dict[str, list[Record]]) -> None:
    """Record which paths went where, so later commands evaluate on exactly the same images."""
    atomic_write_json(path, {name: [r.path for r in members] for name, members in parts.items()})


def load_split(path: str | Path, records: Sequence[Record]) -> dict[str, list[Record]]:
    """Rebuild a saved split from freshly read records.

    Raises:
        DataError: The saved split names images the data root no longer has.
    """
    saved = json.loads(Path(path).read_text())
    by_path = {r.path: r for r in records}
    parts = {}
    for name in SPLIT_NAMES:
        missing = [p for p in saved.get(name, []) if p not in by_path]
        if missing:
            raise DataError(
                f"{path}: the saved split lists {len(missing)} image(s) not in the data root, e.g. {missing[0]}; "
                "use the same --data-root as the run that trained, or a new --work-dir"
            )
        parts[name] = [by_path[p] for p in saved.get(name, [])]
    return parts
