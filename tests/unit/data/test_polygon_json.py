"""PolygonJson: the production polygon JSON (image_id, damage_level, regions), all-in-one or per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.data.masks import ground_truth_masks
from defectkit.data.polygon_json import PolygonJson
from defectkit.errors import DataError
from defectkit.registry import DATASETS, build

CLASSES = ["scratch", "dent", "spacing"]
LABEL_MAP = {0: None, 1: "scratch", 2: "dent", 3: "spacing"}
SQUARE = [[2, 2], [9, 2], [9, 9], [2, 9]]


def _image(path: Path, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(path)


def _root(tmp_path: Path, records: list[dict], names: tuple[str, ...] = ()) -> Path:
    root = tmp_path / "claims"
    for name in names or tuple(f"{r['image_id']}.jpg" for r in records if isinstance(r, dict)):
        _image(root / "images" / name)
    (root / "annotations.json").write_text(json.dumps(records))
    return root


def _reader(root: Path) -> PolygonJson:
    return PolygonJson(root, classes=CLASSES, label_map=LABEL_MAP)


def test_records_carry_label_category_group_size_and_area_ratio(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        [
            {"image_id": "0001_as-12", "damage_level": 1, "regions": [{"class_name": 2, "points": SQUARE}]},
            {"image_id": "0002_as-12", "damage_level": 0, "regions": []},
        ],
    )
    reader = _reader(root)
    records = reader.records()

    damaged, clean = records
    assert damaged.path == str(root / "images" / "0001_as-12.jpg")
    assert (damaged.label, damaged.category, damaged.group) == (1, "dent", "as-12")
    assert damaged.polygons == {"dent": [[[[2.0, 2.0], [9.0, 2.0], [9.0, 9.0], [2.0, 9.0]]]]}
    assert damaged.meta["width"] == 20 and damaged.meta["height"] == 16
    assert damaged.meta["damaged_area_ratio"] == pytest.approx(64 / 320, abs=0.05)
    assert (clean.label, clean.category, clean.polygons) == (0, "normal", {})
    assert reader.problems == []


def test_per_image_label_files_name_the_image_by_their_stem(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    _image(root / "images" / "a.png")
    (root / "labels").mkdir()
    label = {"damage_level": 1, "regions": [{"class_name": "1", "points": SQUARE}]}
    (root / "labels" / "a.json").write_text(json.dumps(label))
    records = _reader(root).records()
    assert [(Path(r.path).name, sorted(r.polygons)) for r in records] == [("a.png", ["scratch"])]


def test_polygon_with_hole_leaves_the_hole_empty_in_ground_truth_masks(tmp_path: Path) -> None:
    outer = [[1, 1], [14, 1], [14, 14], [1, 14]]
    hole = [[5, 5], [10, 5], [10, 10], [5, 10]]
    root = _root(tmp_path, [{"image_id": "x", "regions": [{"class_name": 1, "points": [outer, hole]}]}])
    record = _reader(root).records()[0]

    masks, problems = ground_truth_masks(record, (16, 20), CLASSES)
    assert problems == []
    assert masks[0, 3, 3] and not masks[0, 7, 7]
    assert masks[0].sum() == 14 * 14 - 6 * 6


def test_overlapping_classes_keep_both(tmp_path: Path) -> None:
    other = [[5, 5], [12, 5], [12, 12], [5, 12]]
    root = _root(
        tmp_path,
        [{"image_id": "x", "regions": [{"class_name": 1, "points": SQUARE}, {"class_name": 2, "points": other}]}],
    )
    record = _reader(root).records()[0]
    masks, _ = ground_truth_masks(record, (16, 20), CLASSES)
    assert masks[0, 7, 7] and masks[1, 7, 7]
    assert record.category in ("scratch", "dent")


def test_out_of_bounds_points_are_reported_and_clipped(tmp_path: Path) -> None:
    outside = [[-5, -5], [30, -5], [30, 30]]
    root = _root(tmp_path, [{"image_id": "x", "regions": [{"class_name": 1, "points": outside}]}])
    reader = _reader(root)
    record = reader.records()[0]

    assert reader.problem_counts == {"out_of_bounds": 1}
    assert "3 point(s) outside the 20x16 image" in reader.problems[0]
    masks, problems = ground_truth_masks(record, (16, 20), CLASSES)
    assert problems == [] and masks[0].any()


def test_degenerate_polygons_are_reported_not_crashed(tmp_path: Path) -> None:
    regions = [
        {"class_name": 1, "points": [[1, 1], [5, 5]]},
        {"class_name": 1, "points": [[1, 1], [float("nan"), 2], [3, 3]]},
        {"class_name": 2, "points": SQUARE},
    ]
    root = _root(tmp_path, [{"image_id": "x", "regions": regions}])
    reader = _reader(root)
    record = reader.records()[0]

    assert reader.problem_counts == {"degenerate_ring": 2}
    assert all("annotations.json" in p for p in reader.problems)
    assert any("NaN" in p for p in reader.problems)
    assert sorted(record.polygons) == ["dent"]


def test_unknown_class_ids_are_reported_and_background_is_dropped_quietly(tmp_path: Path) -> None:
    regions = [{"class_name": 7, "points": SQUARE}, {"class_name": 0, "points": SQUARE}]
    root = _root(tmp_path, [{"image_id": "x", "damage_level": 0, "regions": regions}])
    reader = _reader(root)
    record = reader.records()[0]

    assert reader.problem_counts == {"unknown_label": 1}
    assert "unknown label 7" in reader.problems[0]
    assert reader.stats["dropped_label:0"] == 1
    assert record.label == 0


def test_duplicate_image_ids_are_reported_and_the_first_kept(tmp_path: Path) -> None:
    records = [
        {"image_id": "x", "regions": [{"class_name": 1, "points": SQUARE}]},
        {"image_id": "x", "regions": [{"class_name": 2, "points": SQUARE}]},
    ]
    reader = _reader(_root(tmp_path, records, names=("x.jpg",)))
    found = reader.records()
    assert [sorted(r.polygons) for r in found] == [["scratch"]]
    assert reader.problem_counts == {"duplicate_image": 1}
    assert "record 1" in reader.problems[0]


def test_paths_leaving_the_root_are_refused(tmp_path: Path) -> None:
    _image(tmp_path / "secret.jpg")
    records = [
        {"image_id": "evil", "file_name": "../../secret.jpg", "regions": []},
        {"image_id": "ok", "regions": []},
    ]
    reader = _reader(_root(tmp_path, records, names=("ok.jpg",)))
    found = reader.records()
    assert [Path(r.path).name for r in found] == ["ok.jpg"]
    assert reader.problem_counts == {"outside_root": 1}
    assert "outside the data root" in reader.problems[0]


def test_missing_images_and_unlabelled_images_are_reported(tmp_path: Path) -> None:
    records = [{"image_id": "ghost", "regions": []}, {"image_id": "a", "regions": []}]
    root = _root(tmp_path, records, names=("a.jpg", "stray.jpg"))
    reader = _reader(root)
    assert [Path(r.path).name for r in reader.records()] == ["a.jpg"]
    assert reader.problem_counts == {"missing_image": 1, "missing_label": 1}
    assert any("ghost" in p for p in reader.problems) and any("stray.jpg" in p for p in reader.problems)


def test_damage_level_without_regions_is_damaged_and_reported(tmp_path: Path) -> None:
    reader = _reader(_root(tmp_path, [{"image_id": "x", "damage_level": 1, "regions": []}]))
    record = reader.records()[0]
    assert (record.label, record.category, record.polygons) == (1, "damage", {})
    assert reader.problem_counts == {"level_mismatch": 1}


def test_image_size_is_read_from_the_file_when_the_record_has_none(tmp_path: Path) -> None:
    record = _reader(_root(tmp_path, [{"image_id": "x", "regions": []}])).records()[0]
    assert (record.meta["width"], record.meta["height"]) == (20, 16)
    sized = _reader(_root(tmp_path / "b", [{"image_id": "x", "width": 40, "height": 30, "regions": []}])).records()[0]
    assert (sized.meta["width"], sized.meta["height"]) == (40, 30)


def test_unreadable_json_is_reported(tmp_path: Path) -> None:
    root = _root(tmp_path, [{"image_id": "a", "regions": []}])
    (root / "labels").mkdir()
    (root / "labels" / "broken.json").write_text("{not json")
    reader = _reader(root)
    assert len(reader.records()) == 1
    assert reader.problem_counts == {"bad_annotation": 1}
    assert "broken.json" in reader.problems[0]


def test_missing_annotations_raise_a_layout_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="annotations.json"):
        _reader(tmp_path).records()


def test_builds_from_the_registry(tmp_path: Path) -> None:
    root = _root(tmp_path, [{"image_id": "x", "regions": []}])
    reader = build(DATASETS, dict(type="PolygonJson", data_root=str(root), classes=CLASSES, label_map=LABEL_MAP))
    assert isinstance(reader, PolygonJson) and len(reader.records()) == 1
