"""split_records: deterministic, stratified, group-aware train/val/test splits."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from defectkit.data.split import SPLIT_NAMES, load_split, save_split, split_records
from defectkit.errors import DataError
from defectkit.sample import Record


def _records(counts: dict[str, int], group_size: int = 1) -> list[Record]:
    records = []
    for category, n in counts.items():
        for i in range(n):
            group = None if group_size == 1 else f"{category}-g{i // group_size}"
            path = f"/data/{category}/{i:04d}.png"
            records.append(Record(path=path, label=int(category != "normal"), category=category, group=group))
    return records


def _paths(parts: dict[str, list[Record]]) -> dict[str, list[str]]:
    return {name: [r.path for r in members] for name, members in parts.items()}


def test_stratification_keeps_class_ratios_in_every_part() -> None:
    counts = {"normal": 200, "scratch": 60, "hole": 40}
    parts = split_records(_records(counts), ratios=(0.7, 0.1, 0.2), seed=0)

    for name, fraction in zip(SPLIT_NAMES, (0.7, 0.1, 0.2)):
        per_class = Counter(r.category for r in parts[name])
        for category, n in counts.items():
            assert abs(per_class[category] - fraction * n) <= 1, (name, category, per_class)


def test_every_record_lands_in_exactly_one_part_sorted_by_path() -> None:
    records = _records({"normal": 23, "defect": 11})
    parts = split_records(records, seed=3)

    all_paths = [p for members in _paths(parts).values() for p in members]
    assert sorted(all_paths) == sorted(r.path for r in records)
    assert len(set(all_paths)) == len(all_paths)
    for members in _paths(parts).values():
        assert members == sorted(members)


def test_split_is_deterministic_and_independent_of_input_order() -> None:
    records = _records({"normal": 50, "crack": 17, "fray": 5})
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)

    assert _paths(split_records(records, seed=4)) == _paths(split_records(shuffled, seed=4))
    assert _paths(split_records(records, seed=4)) == _paths(split_records(records, seed=4))


def test_different_seeds_give_different_splits() -> None:
    records = _records({"normal": 50, "defect": 20})

    assert _paths(split_records(records, seed=0)) != _paths(split_records(records, seed=1))


def test_groups_never_straddle_parts() -> None:
    records = _records({"normal": 60, "dent": 30}, group_size=3)
    parts = split_records(records, seed=2)

    part_of_group: dict[str, set[str]] = {}
    for name, members in parts.items():
        for record in members:
            part_of_group.setdefault(record.group, set()).add(name)
    assert all(len(names) == 1 for names in part_of_group.values())
    assert all(parts[name] for name in SPLIT_NAMES)


def test_small_strata_still_reach_test() -> None:
    records = _records({"normal": 100, "rare": 3, "other_rare": 4})

    for seed in range(5):
        test_categories = {r.category for r in split_records(records, seed=seed)["test"]}
        assert {"rare", "other_rare"} <= test_categories


def test_invalid_ratios_are_refused() -> None:
    for ratios in ((0.5, 0.5), (0.8, -0.1, 0.3), (0, 0, 0)):
        with pytest.raises(ValueError, match="ratios"):
            split_records(_records({"normal": 3}), ratios=ratios)


def test_saved_split_round_trips(tmp_path: Path) -> None:
    records = _records({"normal": 12, "defect": 6})
    parts = split_records(records, seed=1)
    save_split(tmp_path / "split.json", parts)

    assert _paths(load_split(tmp_path / "split.json", list(reversed(records)))) == _paths(parts)


def test_saved_split_naming_missing_images_is_a_data_error(tmp_path: Path) -> None:
    records = _records({"normal": 12, "defect": 6})
    save_split(tmp_path / "split.json", split_records(records, seed=1))

    with pytest.raises(DataError, match="not in the data root"):
        load_split(tmp_path / "split.json", records[:5])


def test_split_is_the_same_wherever_the_data_set_is_stored():
    def records(root: str) -> list[Record]:
        return [Record(f"{root}/img_{i}.png", label=int(i % 4 == 0), category=str(i % 4 == 0)) for i in range(40)]

    first = split_records(records("/data/a"), seed=0)
    second = split_records(records("/mnt/elsewhere/copy"), seed=0)
    for part in ("train", "val", "test"):
        assert [r.path.rsplit("/", 1)[1] for r in first[part]] == [r.path.rsplit("/", 1)[1] for r in second[part]]


def test_stable_order_is_the_same_wherever_the_data_set_is_stored() -> None:
    from defectkit.data.split import stable_order

    names = [f"MT_{c}/Imgs/{i}.jpg" for c in ("Free", "Crack") for i in range(12)]
    here = stable_order([Record(path=f"/work/data/{n}") for n in names], seed=3)
    there = stable_order((Record(path=f"/tmp/run 2/builtin_data/{n}") for n in names), seed=3)
    assert [r.path.split("data/")[-1] for r in here] == [r.path.split("data/")[-1] for r in there]
    assert [r.path for r in here] != sorted(r.path for r in here)  # shuffled, not alphabetical
    assert [r.path for r in stable_order(here, seed=4)] != [r.path for r in here]
