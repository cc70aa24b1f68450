"""Stratified folds for ``defectkit cv``: every record once, class mix kept, groups together, deterministic."""

from __future__ import annotations

import pytest

from defectkit.cross_validation import stratified_folds
from defectkit.errors import ConfigError
from defectkit.sample import Record


def by_label(record: Record) -> str:
    return str(record.label)


def records(n_normal: int, n_defect: int) -> list[Record]:
    return [Record(path=f"/d/n{i}.png", label=0) for i in range(n_normal)] + [
        Record(path=f"/d/d{i}.png", label=1) for i in range(n_defect)
    ]


def test_every_record_lands_in_exactly_one_fold() -> None:
    data = records(37, 11)
    folds = stratified_folds(data, 4, seed=0, stratum=by_label)
    paths = [r.path for fold in folds for r in fold]
    assert sorted(paths) == sorted(r.path for r in data) and len(paths) == len(set(paths))


def test_each_fold_keeps_the_class_mix() -> None:
    folds = stratified_folds(records(40, 12), 4, seed=0, stratum=by_label)
    assert [sum(r.label == 1 for r in fold) for fold in folds] == [3, 3, 3, 3]
    assert [sum(r.label == 0 for r in fold) for fold in folds] == [10, 10, 10, 10]


def test_records_of_one_group_stay_in_one_fold() -> None:
    data = [Record(path=f"/d/car{i // 3}_{i % 3}.png", label=i % 2, group=f"car{i // 3}") for i in range(30)]
    folds = stratified_folds(data, 3, seed=1, stratum=by_label)
    for fold in folds:
        groups = {r.group for r in fold}
        assert all(sum(r.group == g for r in fold) == 3 for g in groups)


def test_folds_depend_on_seed_not_on_listing_order() -> None:
    data = records(20, 8)
    first = stratified_folds(data, 4, seed=3, stratum=by_label)
    again = stratified_folds(list(reversed(data)), 4, seed=3, stratum=by_label)
    other = stratified_folds(data, 4, seed=4, stratum=by_label)
    as_paths = lambda folds: [sorted(r.path for r in fold) for fold in folds]  # noqa: E731
    assert as_paths(first) == as_paths(again)
    assert as_paths(first) != as_paths(other)


def test_fewer_than_two_folds_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 2 folds"):
        stratified_folds(records(4, 4), 1, seed=0, stratum=by_label)
