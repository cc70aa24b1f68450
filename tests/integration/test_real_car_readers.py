"""Car-damage readers against the real data in ../shared/data (skipped where it is absent).

Counts are those of each folder's SOURCE.md ("Split used here": the development part).
"""

from __future__ import annotations

from collections import Counter

import pytest

from defectkit.data.aihub import AIHUB_LABEL_MAP, AihubDamage
from defectkit.data.coco import CocoSegmentation
from defectkit.data.grouping import damage_stratum
from defectkit.data.split import split_records
from defectkit.io.images import load_image

pytestmark = pytest.mark.real_data

CLASSES = ["scratch", "dent", "spacing", "breakage"]


def test_aihub_reader_finds_every_photo_and_class(real_data) -> None:
    reader = AihubDamage(real_data("aihub_car_damage"), classes=CLASSES, label_map=AIHUB_LABEL_MAP)
    records = reader.records()

    assert len(records) == 828
    assert Counter(r.meta["folder"] for r in records) == {
        "sample_damage": 299,
        "sample_damage_part": 312,
        "dataset_subset": 217,
    }
    assert reader.class_image_counts == {"scratch": 723, "dent": 210, "spacing": 297, "breakage": 246}
    assert reader.problems == []
    # sample_damage_part photos with car-part outlines only: no damage region, so label 0.
    assert reader.stats["images_without_regions"] == sum(r.label == 0 for r in records) == 7
    assert all(r.group is not None and r.group == r.meta["case_id"] for r in records)


def test_aihub_png_data_named_jpg_still_loads(real_data) -> None:
    records = AihubDamage(real_data("aihub_car_damage")).records()
    png_named_jpg = [r for r in records if _magic(r.path) == b"\x89PNG\r\n\x1a\n"]
    assert png_named_jpg, "SOURCE.md lists PNG data named .jpg"
    for record in png_named_jpg:
        assert load_image(record.path).shape == (record.meta["height"], record.meta["width"], 3)


def _magic(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(8)


def test_aihub_split_keeps_cases_together_and_every_class_in_test(real_data) -> None:
    records = AihubDamage(real_data("aihub_car_damage")).records()
    parts = split_records(records, ratios=(0.8, 0.1, 0.1), seed=0, stratum=damage_stratum)

    groups = {name: {r.group for r in members} for name, members in parts.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert {r.category for r in parts["test"]} >= set(CLASSES)


def test_coco_train_has_59_images_with_140_polygons(real_data) -> None:
    root = real_data("car_damage_coco") / "train"
    reader = CocoSegmentation(root, ann_file="COCO_train_annos.json", classes=["damage"])
    records = reader.records()

    assert len(records) == 59
    assert sum(len(r.polygons.get("damage", [])) for r in records) == 140
    assert all(r.label == 1 for r in records)
    assert reader.problems == []
