"""AihubDamage: AI-Hub car-damage folders of images/NAME.jpg + labels/NAME.json MultiPolygon labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.data.aihub import AIHUB_LABEL_MAP, AihubDamage
from defectkit.data.masks import ground_truth_masks
from defectkit.errors import DataError
from defectkit.io.images import load_image
from defectkit.registry import DATASETS, build

CLASSES = ["scratch", "dent", "spacing", "breakage"]
SQUARE = [[2, 2], [12, 2], [12, 12], [2, 12]]


def _annotation(damage: str | None, rings: list, part: str | None = None) -> dict:
    return {"id": 1, "image_id": 1, "segmentation": [rings], "damage": damage, "part": part, "level": None}


def _pair(folder: Path, name: str, annotations: list[dict], size=(24, 18), fmt: str = "JPEG") -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(folder / "images" / f"{name}.jpg", format=fmt)
    label = {
        "info": {"name": "socar"},
        "images": {"id": 1, "width": size[0], "height": size[1], "file_name": f"{name}.jpg"},
        "annotations": annotations,
        "categories": {"id": name.split("_")[-1], "supercategory_name": "CityCar"},
    }
    (folder / "labels" / f"{name}.json").write_text(json.dumps(label))


def test_reads_every_subfolder_with_classes_groups_and_sizes(tmp_path: Path) -> None:
    _pair(tmp_path / "sample_damage", "0000001_as-0001", [_annotation("Scratched", [SQUARE])])
    _pair(tmp_path / "sample_damage", "0000002_as-0001", [_annotation("Crushed", [SQUARE])])
    _pair(tmp_path / "dataset_subset", "0000003_sc-0002", [_annotation("Breakage", [SQUARE])])
    reader = AihubDamage(tmp_path, classes=CLASSES, label_map=AIHUB_LABEL_MAP)
    records = reader.records()

    summary = [(r.meta["folder"], Path(r.path).stem, r.label, r.category, r.group) for r in records]
    assert summary == [
        ("dataset_subset", "0000003_sc-0002", 1, "breakage", "sc-0002"),
        ("sample_damage", "0000001_as-0001", 1, "scratch", "as-0001"),
        ("sample_damage", "0000002_as-0001", 1, "dent", "as-0001"),
    ]
    assert records[0].meta["width"] == 24 and records[0].meta["case_id"] == "sc-0002"
    assert reader.class_image_counts == {"scratch": 1, "dent": 1, "breakage": 1}
    assert reader.problems == []


def test_a_single_pair_folder_is_a_valid_root(tmp_path: Path) -> None:
    _pair(tmp_path, "0000001_as-0001", [_annotation("Separated", [SQUARE])])
    records = AihubDamage(tmp_path).records()
    assert [sorted(r.polygons) for r in records] == [["spacing"]]


def test_multipolygon_holes_stay_empty_and_overlapping_classes_keep_both(tmp_path: Path) -> None:
    outer = [[1, 1], [20, 1], [20, 16], [1, 16]]
    hole = [[6, 6], [12, 6], [12, 12], [6, 12]]
    second = [[14, 2], [18, 2], [18, 6], [14, 6]]
    annotation = {"segmentation": [[outer, hole], [second]], "damage": "Crushed", "part": None}
    _pair(tmp_path, "0000001_as-1", [annotation, _annotation("Scratched", [SQUARE])])
    record = AihubDamage(tmp_path).records()[0]

    assert len(record.polygons["dent"]) == 2
    masks, problems = ground_truth_masks(record, (18, 24), CLASSES)
    assert problems == []
    dent, scratch = masks[1], masks[0]
    assert not dent[9, 9] and dent[3, 3]
    assert scratch[9, 9] and (dent & scratch).any()


def test_part_only_annotations_are_counted_not_reported(tmp_path: Path) -> None:
    _pair(tmp_path, "0000001_as-1", [_annotation(None, [SQUARE], part="Front bumper")])
    _pair(tmp_path, "0000002_as-1", [_annotation("Scratched", [SQUARE]), _annotation(None, [SQUARE], part="Bonnet")])
    reader = AihubDamage(tmp_path)
    records = reader.records()
    assert [(r.label, r.category) for r in records] == [(0, "normal"), (1, "scratch")]
    assert reader.stats["annotations_without_damage"] == 2
    assert reader.stats["images_without_regions"] == 1
    assert reader.problems == []


def test_unknown_damage_labels_are_reported_and_counted(tmp_path: Path) -> None:
    _pair(tmp_path, "0000001_as-1", [_annotation("Dirty", [SQUARE]), _annotation("Dirty", [SQUARE])])
    reader = AihubDamage(tmp_path)
    reader.records()
    assert reader.problem_counts == {"unknown_label": 2}
    assert all("0000001_as-1.json" in p and "'Dirty'" in p for p in reader.problems)


def test_label_map_none_drops_a_class_on_purpose(tmp_path: Path) -> None:
    _pair(tmp_path, "0000001_as-1", [_annotation("Breakage", [SQUARE]), _annotation("Scratched", [SQUARE])])
    label_map = dict(AIHUB_LABEL_MAP, Breakage=None)
    reader = AihubDamage(tmp_path, classes=["scratch", "dent", "spacing"], label_map=label_map)
    record = reader.records()[0]
    assert sorted(record.polygons) == ["scratch"]
    assert reader.problems == [] and reader.stats["dropped_label:Breakage"] == 1


def test_degenerate_holes_are_dropped_and_the_outline_kept(tmp_path: Path) -> None:
    _pair(tmp_path, "0000001_as-1", [_annotation("Scratched", [SQUARE, [[3, 3], [4, 4]]])])
    reader = AihubDamage(tmp_path)
    record = reader.records()[0]
    assert record.polygons["scratch"] == [[[[float(x), float(y)] for x, y in SQUARE]]]
    assert reader.problem_counts == {"degenerate_ring": 1}
    assert "hole 1" in reader.problems[0] and "has 2 point(s)" in reader.problems[0]


def test_unpaired_and_unreadable_files_are_reported(tmp_path: Path) -> None:
    _pair(tmp_path, "0000001_as-1", [_annotation("Scratched", [SQUARE])])
    _pair(tmp_path, "0000002_as-2", [_annotation("Scratched", [SQUARE])])
    _pair(tmp_path, "0000003_as-3", [_annotation("Scratched", [SQUARE])])
    (tmp_path / "labels" / "0000001_as-1.json").unlink()
    (tmp_path / "images" / "0000002_as-2.jpg").unlink()
    (tmp_path / "labels" / "0000003_as-3.json").write_text("{truncated")
    _pair(tmp_path, "0000004_as-4", [_annotation("Scratched", [SQUARE])])
    reader = AihubDamage(tmp_path)

    assert [Path(r.path).stem for r in reader.records()] == ["0000004_as-4"]
    assert reader.problem_counts == {"missing_label": 1, "missing_image": 1, "bad_annotation": 1}
    text = "\n".join(reader.problems)
    assert "0000001_as-1.jpg" in text and "0000002_as-2.json" in text and "0000003_as-3.json" in text


def test_png_data_named_jpg_is_read(tmp_path: Path) -> None:
    _pair(tmp_path, "0000459_sc-226797", [_annotation("Scratched", [SQUARE])], fmt="PNG")
    record = AihubDamage(tmp_path).records()[0]
    assert load_image(record.path).shape == (18, 24, 3)


def test_a_root_without_pair_folders_raises_a_layout_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="labels"):
        AihubDamage(tmp_path).records()


def test_builds_from_the_registry(tmp_path: Path) -> None:
    _pair(tmp_path, "0000001_as-1", [_annotation("Scratched", [SQUARE])])
    cfg = dict(type="AihubDamage", data_root=str(tmp_path), classes=CLASSES, label_map=AIHUB_LABEL_MAP)
    reader = build(DATASETS, cfg)
    assert len(reader.records()) == 1
