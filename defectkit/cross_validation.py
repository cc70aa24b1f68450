"""Cross-validation of a whole config on the development part of a data set (``defectkit cv``).

Settings are chosen on data the test split never joins: the run's own split (``split.json`` of
``defectkit run``, the config's ratios and seed) is drawn, its test part is set aside unread, and
train+val are cut into stratified folds. Each fold is held out once: the config is trained by the
ordinary :class:`~defectkit.runner.Runner` on the other folds (cut again into train and val in the
config's train:val proportion) and evaluated on the held-out fold with the config's metrics. The
held-out folds' evaluation records are then pooled and scored once more, so the pooled figures
cover every development image exactly once. Each fold is an ordinary work dir, so an interrupted
cross-validation resumes where it stopped.

Example:
    >>> from defectkit.cross_validation import stratified_folds
    >>> from defectkit.sample import Record
    >>> records = [Record(path=f"{i}.png", label=i % 2) for i in range(8)]
    >>> folds = stratified_folds(records, 2, seed=0, stratum=lambda r: str(r.label))
    >>> [sorted(r.label for r in fold) for fold in folds]
    [[0, 0, 1, 1], [0, 0, 1, 1]]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from defectkit.config import Config
from defectkit.data.split import save_split, split_records, stratified_groups
from defectkit.errors import ConfigError
from defectkit.io.atomic import atomic_write_json
from defectkit.io.results import ResultLog
from defectkit.sample import Record

__all__ = ["cross_validate", "stratified_folds"]

CV_SUMMARY = "cv.json"
"""File (in the cross-validation folder) holding the per-fold and pooled metrics."""


def stratified_folds(records: Sequence[Record], folds: int, seed: int, stratum: Callable[[Record], str]) -> list[list[Record]]:
    """Cut records into ``folds`` parts with the same class mix; records sharing a ``group`` stay together.

    Each stratum's groups are put in a seeded order that depends only on their paths (not on the
    order they are listed in) and dealt round-robin, so fold sizes differ by at most one group per
    stratum.

    Args:
        records: The development records (train and val of the run's split).
        folds: Number of parts (at least 2).
        seed: Changes the assignment; the same seed always gives the same folds.
        stratum: Key to stratify by (as for :func:`~defectkit.data.split.split_records`).

    Returns:
        ``folds`` lists of records.
    """
    if folds < 2:
        raise ConfigError(f"folds={folds}: cross-validation needs at least 2 folds")
    groups, by_stratum = stratified_groups(records, seed, stratum)
    parts: list[list[Record]] = [[] for _ in range(folds)]
    dealt = 0
    for keys in by_stratum.values():
        for key in keys:
            parts[dealt % folds].extend(groups[key])
            dealt += 1
    return parts


def cross_validate(
    cfg: Config,
    config_path: str | Path,
    data_root: str | None,
    out_dir: str | Path,
    folds: int = 4,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate ``cfg`` once per fold of the development images; pool the held-out results.

    Args:
        cfg: The config (with any overrides already merged).
        config_path: Its file, for messages and the fold work dirs' records.
        data_root: The data set folder, or None for the config's built-in data set.
        out_dir: Folder for ``fold<k>/`` work dirs and :data:`CV_SUMMARY`.
        folds: Number of folds.
        log: Receives one line per finished fold.

    Returns:
        ``{"folds", "pooled": metrics over every development image, "per_fold": [...]}`` (also
        written to ``out_dir/cv.json``).
    """
    from defectkit.runner import Runner, compute_metrics, split_stratum

    out = Path(out_dir)
    probe = Runner(cfg, config_path, data_root=data_root, work_dir=str(out / "records"))
    records = probe.records()
    if data_root is None:
        # Every fold reads the images the probe generated, so the saved splits name the same files.
        data_root = str(out / "records" / "builtin_data")
        cfg = Config(cfg.to_dict())
        cfg.dataset = dict(cfg.builtin_dataset)
    split_cfg = dict(cfg.get("split", {}))
    ratios = tuple(float(r) for r in split_cfg.get("ratios", (0.7, 0.1, 0.2)))
    seed = int(split_cfg.get("seed", probe.seed))
    stratum = split_stratum(split_cfg, records)
    run_split = split_records(records, ratios=ratios, seed=seed, stratum=stratum)
    parts = stratified_folds(run_split["train"] + run_split["val"], folds, seed, stratum)
    val_share = ratios[1] / (ratios[0] + ratios[1])

    per_fold: list[dict[str, Any]] = []
    pooled: list[dict[str, Any]] = []
    for k, held_out in enumerate(parts):
        rest = [r for j, part in enumerate(parts) if j != k for r in part]
        inner = split_records(rest, ratios=(1.0 - val_share, val_share, 0.0), seed=seed, stratum=stratum)
        work_dir = out / f"fold{k}"
        work_dir.mkdir(parents=True, exist_ok=True)
        save_split(work_dir / "split.json", {"train": inner["train"], "val": inner["val"], "test": held_out})
        start = time.perf_counter()
        metrics = Runner(cfg, config_path, data_root=data_root, work_dir=str(work_dir)).run()
        seconds = time.perf_counter() - start
        per_fold.append({"fold": k, "images": len(held_out), "seconds": round(seconds, 1), "metrics": metrics})
        pooled.extend(ResultLog(work_dir / "eval_records.jsonl", key_field="key").read())
        log(f"fold {k + 1}/{folds}: " + ", ".join(f"{key} {_short(v)}" for key, v in metrics.items()) + f" ({seconds:.0f} s)")

    pooled_metrics: dict[str, Any] = {"n_images": len(pooled)}
    pooled_metrics.update(compute_metrics(cfg.get("metrics", []), list(cfg.get("classes", [])), pooled))
    summary = {"config": str(config_path), "folds": folds, "seed": seed, "pooled": pooled_metrics, "per_fold": per_fold}
    atomic_write_json(out / CV_SUMMARY, json.loads(json.dumps(summary, default=str)))
    return summary


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value
