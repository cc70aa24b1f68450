"""The car config's built-in data set: generated panels read back through the polygon-JSON reader."""

import json

import numpy as np
import pytest

from defectkit.data.masks import ground_truth_masks
from defectkit.data.synthetic_car import SyntheticCarDamage, draw_car_photo
from defectkit.errors import ConfigError
from defectkit.sample import Record

CLASSES = ["scratch", "dent", "spacing", "breakage"]


def test_generated_photos_are_read_by_the_production_reader_with_every_kind(tmp_path):
    reader = SyntheticCarDamage(tmp_path, n_damaged=6, n_normal=4, image_size=(96, 128), classes=CLASSES)
    records = reader.records()
    assert len(records) == 10 and not reader.problems
    assert sum(r.label for r in records) == 6
    assert {c for r in records for c in (r.polygons or {})} == {"scratch", "dent", "spacing"}
    entries = json.loads((tmp_path / "annotations.json").read_text())
    assert {"image_id", "damage_level", "regions"} <= set(entries[0])


def test_two_photos_of_a_vehicle_share_a_group(tmp_path):
    records = SyntheticCarDamage(tmp_path, n_damaged=4, n_normal=0, image_size=(64, 64)).records()
    groups = [r.group for r in sorted(records, key=lambda r: r.path)]
    assert groups[0] == groups[1] != groups[2] == groups[3]


def test_polygons_cover_the_painted_damage():
    rng = np.random.default_rng(3)
    image, regions = draw_car_photo((96, 128), ["dent"], rng)
    clean, _ = draw_car_photo((96, 128), [], np.random.default_rng(3))
    assert regions and regions[0]["class_name"] == 2
    record = Record(path="x.jpg", polygons={"dent": [[r["points"]] for r in regions]})
    mask, problems = ground_truth_masks(record, (96, 128), ["dent"])
    assert not problems
    darker = image.astype(int).sum(axis=2) < clean.astype(int).sum(axis=2)
    assert darker[mask[0]].mean() > 0.5 and darker[~mask[0]].mean() < 0.05


def test_cache_is_reused_while_the_parameters_match(tmp_path):
    assert SyntheticCarDamage(tmp_path, n_damaged=2, n_normal=2, image_size=(64, 64)).generate()
    assert not SyntheticCarDamage(tmp_path, n_damaged=2, n_normal=2, image_size=(64, 64)).generate()
    assert SyntheticCarDamage(tmp_path, n_damaged=3, n_normal=2, image_size=(64, 64)).generate()


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="image_size"):
        SyntheticCarDamage("/tmp/unused", image_size=(10, 10))
