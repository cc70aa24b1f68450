"""Group keys, damage strata and the group-aware stratified split of damage records."""

from __future__ import annotations

import pytest

from defectkit.data.class_mapped import ClassMappedDataset
from defectkit.data.grouping import (
    area_bin,
    area_ratio_cuts,
    assign_categories,
    damage_stratum,
    damaged_area_ratio,
    group_key,
    make_damage_stratum,
)
from defectkit.data.split import split_records
from defectkit.errors import ConfigError
from defectkit.sample import Record


def test_group_key_extracts_the_aihub_case_token() -> None:
    assert group_key("0000002_as-0036229.jpg") == "as-0036229"
    assert group_key("/data/images/0000459_sc-226797.jpg") == "sc-226797"


def test_group_key_uses_the_first_capturing_group_of_a_custom_pattern() -> None:
    assert group_key("claim42_front.jpg", r"claim(\d+)_") == "42"


def test_group_key_is_none_without_match_or_pattern() -> None:
    assert group_key("plain.jpg") is None
    assert group_key("0000002_as-0036229.jpg", None) is None


def test_group_key_only_searches_the_file_name() -> None:
    assert group_key("/cases/as-999/photo.jpg") is None


def test_area_bins_follow_the_fixed_cut_points() -> None:
    assert [area_bin(r) for r in (0.0, 0.009, 0.01, 0.049, 0.05, 0.9)] == [
        "small", "small", "medium", "medium", "large", "large",
    ]


def test_damage_stratum_combines_category_and_area_bin() -> None:
    dent = Record(path="a.jpg", label=1, category="dent", meta={"damaged_area_ratio": 0.2})
    normal = Record(path="b.jpg", label=0, category="normal", meta={"damaged_area_ratio": 0.0})
    unknown_area = Record(path="c.jpg", label=1, category="scratch")
    assert damage_stratum(dent) == "dent/large"
    assert damage_stratum(normal) == "normal"
    assert damage_stratum(unknown_area) == "scratch"
    assert make_damage_stratum((0.3, 0.5))(dent) == "dent/small"


def test_make_damage_stratum_refuses_descending_cuts() -> None:
    with pytest.raises(ConfigError):
        make_damage_stratum((0.5, 0.1))


def test_area_ratio_cuts_are_terciles_of_damaged_records() -> None:
    records = [Record(path=f"{i}.jpg", label=1, meta={"damaged_area_ratio": i / 10}) for i in range(1, 10)]
    records.append(Record(path="n.jpg", label=0, meta={"damaged_area_ratio": 0.0}))
    low, high = area_ratio_cuts(records)
    assert 0.3 < low < 0.4 and 0.6 < high < 0.7


def test_damaged_area_ratio_counts_overlaps_once_and_excludes_holes() -> None:
    square = [[[0, 0], [49.5, 0], [49.5, 49.5], [0, 49.5]]]
    assert damaged_area_ratio({"a": [square], "b": [square]}, (100, 100)) == pytest.approx(0.25, abs=0.02)
    ring = [[[0, 0], [99.5, 0], [99.5, 99.5], [0, 99.5]], [[25, 25], [74.5, 25], [74.5, 74.5], [25, 74.5]]]
    assert damaged_area_ratio({"a": [ring]}, (100, 100)) == pytest.approx(0.75, abs=0.03)


def test_category_is_the_rarest_class_present() -> None:
    square = [[[0, 0], [4, 0], [4, 4]]]
    records = [
        Record(path="1.jpg", label=1, polygons={"scratch": [square], "breakage": [square]}),
        Record(path="2.jpg", label=1, polygons={"scratch": [square]}),
        Record(path="3.jpg", label=0, polygons={}),
        Record(path="4.jpg", label=1, polygons={}),
    ]
    counts = assign_categories(records, ["scratch", "breakage"])
    assert counts == {"scratch": 2, "breakage": 1}
    assert [r.category for r in records] == ["breakage", "scratch", "normal", "damage"]


def _case_records() -> list[Record]:
    records = []
    classes = ["scratch", "dent", "spacing", "breakage"]
    for case in range(240):
        category = classes[case % 4]
        for photo in range(1 + case % 3):
            ratio = (0.004, 0.02, 0.2)[(case + photo) % 3]
            records.append(
                Record(
                    path=f"{case:04d}{photo}_as-{case:05d}.jpg",
                    label=1,
                    category=category,
                    group=group_key(f"{case:04d}{photo}_as-{case:05d}.jpg"),
                    meta={"damaged_area_ratio": ratio},
                )
            )
    return records


def test_group_aware_stratified_split_never_puts_a_case_on_both_sides() -> None:
    records = _case_records()
    parts = split_records(records, ratios=(0.8, 0.1, 0.1), seed=3, stratum=damage_stratum)

    owner: dict[str, str] = {}
    for name, members in parts.items():
        for record in members:
            assert owner.setdefault(record.group, name) == name, f"case {record.group} in two parts"
    assert sum(len(m) for m in parts.values()) == len(records)
    for category in ("scratch", "dent", "spacing", "breakage"):
        assert any(r.category == category for r in parts["test"]), f"no {category} in test"


def test_label_map_targets_must_be_configured_classes(tmp_path) -> None:
    class Reader(ClassMappedDataset):
        def records(self, split=None):  # pragma: no cover - never called
            return []

    with pytest.raises(ConfigError, match="not one of classes"):
        Reader(tmp_path, classes=["scratch"], label_map={"Crushed": "dent"})
    with pytest.raises(ConfigError, match="normal"):
        Reader(tmp_path, classes=["normal", "scratch"])
