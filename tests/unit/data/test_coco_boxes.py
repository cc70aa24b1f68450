"""CocoBoxes: COCO ``bbox`` [x, y, w, h] as per-image boxes, and the malformed files it rejects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.data.coco_boxes import CocoBoxes
from defectkit.errors import ConfigError, DataError
from defectkit.registry import DATASETS, build

W, H = 60, 40
CATEGORIES = [{"id": 1, "name": "papules"}, {"id": 2, "name": "nodules"}]


def _coco(root: Path, images: list[dict], annotations: list[dict], categories=None, files=None) -> Path:
    for name in files if files is not None else [i["file_name"] for i in images]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)
    data = {"images": images, "annotations": annotations, "categories": categories or CATEGORIES}
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def _img(image_id: int, name: str, **extra) -> dict:
    return {"id": image_id, "file_name": name, "width": W, "height": H, **extra}


def _ann(ann_id: int, image_id: int, category: int, bbox, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": bbox, "iscrowd": 0, **extra}


def test_bbox_xywh_becomes_pixel_edges_and_unannotated_images_have_no_boxes(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(7, "a.jpg"), _img(8, "b.jpg")], [_ann(1, 7, 1, [10, 5, 20, 10]), _ann(2, 7, 2, [0, 0, 4, 4])])
    reader = CocoBoxes(tmp_path, classes=["papules", "nodules"])
    a, b = reader.records()

    assert a.boxes == [("papules", 10.0, 5.0, 30.0, 15.0), ("nodules", 0.0, 0.0, 4.0, 4.0)]
    # Both classes are in one image each: the tie goes to the earlier class of the config.
    assert (a.label, a.category, a.meta["image_id"], a.meta["width"]) == (1, "papules", 7, W)
    assert (b.boxes, b.label, b.category) == ([], 0, "normal")
    assert reader.problems == []


def test_wildcard_label_map_evaluates_every_category_as_one_class(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(1, "a.jpg")], [_ann(1, 1, 1, [1, 1, 4, 4]), _ann(2, 1, 2, [6, 6, 4, 4])])
    record = CocoBoxes(tmp_path, classes=["lesion"], label_map={"*": "lesion"}).records()[0]
    assert [box[0] for box in record.boxes] == ["lesion", "lesion"]


def test_unknown_category_name_is_reported_and_its_box_skipped(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(1, "a.jpg")], [_ann(1, 1, 1, [1, 1, 4, 4]), _ann(2, 1, 2, [6, 6, 4, 4])])
    reader = CocoBoxes(tmp_path, classes=["papules"])
    assert [box[0] for box in reader.records()[0].boxes] == ["papules"]
    assert reader.problem_counts == {"unknown_label": 1}


def test_crowd_boxes_are_kept_or_skipped(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(1, "a.jpg")], [_ann(1, 1, 1, [1, 1, 4, 4]), _ann(2, 1, 1, [6, 6, 20, 20], iscrowd=1)])
    assert len(CocoBoxes(tmp_path, classes=["papules"]).records()[0].boxes) == 2
    reader = CocoBoxes(tmp_path, classes=["papules"], crowd="skip")
    assert len(reader.records()[0].boxes) == 1
    assert reader.stats["crowd_skipped"] == 1


def test_listed_images_missing_on_disk_and_unlisted_images_are_reported(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(1, "a.jpg"), _img(2, "gone.jpg")], [], files=["a.jpg", "extra.jpg"])
    reader = CocoBoxes(tmp_path, classes=["papules"])
    assert len(reader.records()) == 1
    assert reader.problem_counts == {"missing_image": 1, "missing_label": 1}


def test_size_missing_from_the_file_is_read_from_the_image_header(tmp_path: Path) -> None:
    _coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}], [_ann(1, 1, 1, [1, 1, 4, 4])])
    record = CocoBoxes(tmp_path, classes=["papules"]).records()[0]
    assert (record.meta["width"], record.meta["height"]) == (W, H)


def test_coco_boxes_reader_rejects_unparseable_json(tmp_path: Path) -> None:
    (tmp_path / "annotations.json").write_text("{'images': [")
    with pytest.raises(DataError, match=r"annotations\.json: cannot read COCO annotations"):
        CocoBoxes(tmp_path, classes=["papules"]).records()


@pytest.mark.parametrize(
    ("bbox", "problem"),
    [
        (None, "no bbox"),
        ([1, 2, 3], r"bbox \[1, 2, 3\] is not \[x, y, w, h\]"),
        ([1, 2, "wide", 3], "holds a value that is not a number"),
        ([1, 2, 0, 3], r"is empty \(width and height must be positive\)"),
    ],
)
def test_coco_boxes_reader_rejects_a_malformed_bbox(tmp_path: Path, bbox, problem: str) -> None:
    _coco(tmp_path, [_img(1, "a.jpg")], [_ann(5, 1, 1, bbox)])
    with pytest.raises(DataError, match=rf"annotations\.json image 1 \(a\.jpg\) annotation 5: .*{problem}"):
        CocoBoxes(tmp_path, classes=["papules"]).records()


def test_coco_boxes_reader_rejects_an_unknown_category_id(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(1, "a.jpg")], [_ann(5, 1, 9, [1, 1, 4, 4])])
    with pytest.raises(DataError, match=r"annotation 5: category id 9 is not in categories \[1, 2\]"):
        CocoBoxes(tmp_path, classes=["papules"]).records()


def test_coco_boxes_reader_rejects_entries_missing_fields_or_pointing_nowhere(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(1, "a.jpg"), {"id": 2}], [], files=["a.jpg"])
    with pytest.raises(DataError, match=r"image entry .* needs id and file_name; fix the annotation file"):
        CocoBoxes(tmp_path, classes=["papules"]).records()
    _coco(tmp_path, [_img(1, "a.jpg")], [_ann(5, 1, 1, [1, 1, 4, 4]), _ann(6, 42, 1, [1, 1, 4, 4])])
    with pytest.raises(DataError, match=r"annotation 1 names unknown image id 42"):
        CocoBoxes(tmp_path, classes=["papules"]).records()


def test_coco_boxes_reader_rejects_a_box_far_outside_the_image(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(1, "a.jpg")], [_ann(5, 1, 1, [50, 1, 40, 4])])
    with pytest.raises(DataError, match=r"annotation 5: box .* far outside the 60x40 image"):
        CocoBoxes(tmp_path, classes=["papules"]).records()


def test_missing_annotation_file_and_bad_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="(?s)annotation file annotations.json not found.*bbox"):
        CocoBoxes(tmp_path, classes=["papules"]).records()
    with pytest.raises(ConfigError, match="crowd must be one of"):
        CocoBoxes(tmp_path, classes=["papules"], crowd="ignore")
    with pytest.raises(ConfigError, match="ann_file must be relative"):
        CocoBoxes(tmp_path, classes=["papules"], ann_file="../elsewhere.json")


def test_coco_boxes_reader_is_built_by_name_from_a_config(tmp_path: Path) -> None:
    _coco(tmp_path, [_img(1, "a.jpg")], [_ann(1, 1, 1, [1, 1, 4, 4])])
    reader = build(DATASETS, dict(type="CocoBoxes", classes=["papules"]), data_root=str(tmp_path))
    assert reader.records()[0].boxes == [("papules", 1.0, 1.0, 5.0, 5.0)]
