"""YoloBoxes: normalised ``class_id cx cy w h`` label files, class names, layouts and what it rejects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.data.yolo import YoloBoxes
from defectkit.errors import ConfigError, DataError
from defectkit.registry import DATASETS, build

W, H = 100, 50


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)


def _pair(root: Path, stem: str, lines: list[str], sub: str = "") -> Path:
    _image(root / "images" / sub / f"{stem}.jpg")
    label = root / "labels" / sub / f"{stem}.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("".join(line + "\n" for line in lines))
    return label


def test_normalised_centre_and_size_become_pixel_edges(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["1 0.5 0.5 0.2 0.4", "0 0.1 0.1 0.1 0.1"])
    record = YoloBoxes(tmp_path, classes=["whitehead", "pustule"]).records()[0]

    assert [(name, *(round(v, 6) for v in edges)) for name, *edges in record.boxes] == [
        ("pustule", 40.0, 15.0, 60.0, 35.0),
        ("whitehead", 5.0, 2.5, 15.0, 7.5),
    ]
    assert (record.label, record.meta["width"], record.meta["height"]) == (1, W, H)
    assert record.meta["annotation"].endswith("a.txt")


def test_class_names_come_from_data_yaml_as_a_list_or_by_id(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["1 0.5 0.5 0.2 0.2"])
    (tmp_path / "data.yaml").write_text("train: images\nnc: 2\nnames: ['papules', 'pustules']\n")
    assert YoloBoxes(tmp_path, classes=["pustules"]).records()[0].boxes[0][0] == "pustules"

    (tmp_path / "data.yaml").write_text("names:\n  0: papules\n  1: nodules\n")
    assert YoloBoxes(tmp_path, classes=["nodules"]).records()[0].boxes[0][0] == "nodules"


def test_class_names_come_from_classes_txt(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["1 0.5 0.5 0.2 0.2"])
    (tmp_path / "classes.txt").write_text("papules\npustules\n")
    assert YoloBoxes(tmp_path, classes=["pustules"]).records()[0].boxes[0][0] == "pustules"


def test_explicit_names_win_and_go_through_the_wildcard_label_map(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 0.5 0.2 0.2", "1 0.2 0.2 0.2 0.2"])
    (tmp_path / "classes.txt").write_text("ignored\n")
    reader = YoloBoxes(tmp_path, classes=["lesion"], names=["papules", "pustules"], label_map={"*": "lesion"})
    assert [box[0] for box in reader.records()[0].boxes] == ["lesion", "lesion"]
    assert reader.problems == []


def test_empty_label_file_is_an_image_without_boxes(tmp_path: Path) -> None:
    _pair(tmp_path, "clear", [])
    record = YoloBoxes(tmp_path, classes=["lesion"]).records()[0]
    assert (record.boxes, record.label, record.category) == ([], 0, "normal")


def test_image_without_label_file_is_skipped_and_reported_unless_counted_as_background(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 0.5 0.2 0.2"])
    _image(tmp_path / "images" / "background.jpg")
    reader = YoloBoxes(tmp_path, classes=["lesion"])
    assert len(reader.records()) == 1
    assert reader.problem_counts == {"missing_label": 1}

    reader = YoloBoxes(tmp_path, classes=["lesion"], images_without_labels="normal")
    records = reader.records()
    assert [(Path(r.path).name, r.label) for r in records] == [("a.jpg", 1), ("background.jpg", 0)]
    assert reader.problems == [] and reader.stats["images_without_labels"] == 1


def test_label_file_without_image_is_reported(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 0.5 0.2 0.2"])
    (tmp_path / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    reader = YoloBoxes(tmp_path, classes=["lesion"])
    reader.records()
    assert reader.problem_counts == {"missing_image": 1}


def test_split_subfolders_of_images_are_read_together_or_by_name(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 0.5 0.2 0.2"], sub="train")
    _pair(tmp_path, "b", ["0 0.5 0.5 0.2 0.2"], sub="val")
    reader = YoloBoxes(tmp_path, classes=["lesion"])

    assert [Path(r.path).name for r in reader.records()] == ["a.jpg", "b.jpg"]
    assert [Path(r.path).name for r in reader.records(split="val")] == ["b.jpg"]
    with pytest.raises(DataError, match="'test'.*valid splits: 'train', 'val'"):
        reader.records(split="test")


def test_roboflow_split_folders_each_with_images_and_labels_are_read(tmp_path: Path) -> None:
    _pair(tmp_path / "train", "a", ["0 0.5 0.5 0.2 0.2"])
    _pair(tmp_path / "valid", "b", ["0 0.5 0.5 0.2 0.2"])
    (tmp_path / "data.yaml").write_text("names: ['lesion']\n")
    reader = YoloBoxes(tmp_path, classes=["lesion"])

    assert [Path(r.path).name for r in reader.records()] == ["a.jpg", "b.jpg"]
    assert [Path(r.path).name for r in reader.records(split="valid")] == ["b.jpg"]


def test_box_slightly_past_the_edge_is_clipped(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.09 0.5 0.2 0.2"])  # left edge at -1 % of the width
    reader = YoloBoxes(tmp_path, classes=["lesion"])
    box = reader.records()[0].boxes[0]
    assert box[1] == 0.0 and box[3] == pytest.approx(19.0)
    assert reader.stats["clipped_boxes"] == 1


def test_yolo_reader_rejects_a_line_with_the_wrong_field_count(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 0.5 0.2 0.2", "0 0.5 0.5 0.2"])
    with pytest.raises(DataError, match=r"a\.txt:2: expected 5 fields 'class_id cx cy w h', got 4"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()


def test_yolo_reader_rejects_a_segmentation_polygon_line(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.1 0.1 0.5 0.1 0.5 0.5"])
    with pytest.raises(DataError, match=r"a\.txt:1: .*got 7 \(a segmentation polygon"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()


def test_yolo_reader_rejects_a_non_numeric_value(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 half 0.2 0.2"])
    with pytest.raises(DataError, match=r"a\.txt:1: cy 'half' is not a number"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()


def test_yolo_reader_rejects_pixel_coordinates_outside_zero_one(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 50 25 20 10"])
    with pytest.raises(DataError, match=r"a\.txt:1: cx 50 is outside \[0, 1\].*not pixels"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()


def test_yolo_reader_rejects_an_unknown_class_id(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["3 0.5 0.5 0.2 0.2"])
    with pytest.raises(DataError, match=r"a\.txt:1: class id 3 has no name \(known ids: \[0, 1\]\)"):
        YoloBoxes(tmp_path, classes=["papules", "pustules"]).records()


def test_yolo_reader_rejects_a_class_id_that_is_not_a_whole_number(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0.5 0.5 0.5 0.2 0.2"])
    with pytest.raises(DataError, match=r"a\.txt:1: class id '0.5' is not a whole number"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()


def test_yolo_reader_rejects_an_empty_box(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 0.5 0 0.2"])
    with pytest.raises(DataError, match=r"a\.txt:1: empty box \(w=0"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()


def test_yolo_reader_rejects_a_box_far_outside_the_image(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.95 0.5 0.5 0.2"])  # right edge at 120 % of the width
    with pytest.raises(DataError, match=r"a\.txt:1: box .* far outside the 100x50 image"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()


def test_yolo_reader_rejects_unreadable_data_yaml(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 0.5 0.2 0.2"])
    (tmp_path / "data.yaml").write_text("names: [unclosed\n")
    with pytest.raises(DataError, match=r"data\.yaml: cannot read it as YAML"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()
    (tmp_path / "data.yaml").write_text("names: 3\n")
    with pytest.raises(DataError, match=r"data\.yaml: names must be a list of class names"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()


def test_missing_layout_and_bad_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="(?s)no images/ \\+ labels/ folders.*class_id cx cy w h"):
        YoloBoxes(tmp_path, classes=["lesion"]).records()
    with pytest.raises(ConfigError, match="images_without_labels must be one of"):
        YoloBoxes(tmp_path, classes=["lesion"], images_without_labels="keep")


def test_yolo_reader_is_built_by_name_from_a_config(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["0 0.5 0.5 0.2 0.2"])
    reader = build(DATASETS, dict(type="YoloBoxes", classes=["lesion"]), data_root=str(tmp_path))
    assert len(reader.records()) == 1
