"""CocoSegmentation and the COCO parsing helpers: polygons, RLE, crowd regions, hardening."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from defectkit.data.coco import (
    CocoSegmentation,
    coco_bbox_xyxy,
    coco_polygons,
    decode_rle,
    load_coco,
)
from defectkit.data.masks import ground_truth_masks
from defectkit.errors import DataError

W, H = 24, 20
FLAT_SQUARE = [2, 2, 10, 2, 10, 10, 2, 10]


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 60, np.uint8)).save(path)


def _coco(tmp_path: Path, images: list[dict], annotations: list[dict], files=None, categories=None) -> Path:
    for name in files if files is not None else [i["file_name"] for i in images]:
        _image(tmp_path / name)
    categories = categories or [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    return tmp_path


def _img(image_id: int, name: str) -> dict:
    return {"id": image_id, "file_name": name, "width": W, "height": H}


def _ann(image_id: int, category: int, segmentation, iscrowd: int = 0, ann_id: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
            "iscrowd": iscrowd, "bbox": [2, 2, 8, 8]}


def _reader(root: Path, **kwargs) -> CocoSegmentation:
    return CocoSegmentation(root, classes=["scratch", "dent"], **kwargs)


def test_polygons_become_per_class_regions_and_unannotated_images_normal(tmp_path: Path) -> None:
    root = _coco(
        tmp_path,
        [_img(1, "a.jpg"), _img(2, "b.jpg")],
        [_ann(1, 1, [FLAT_SQUARE, [12, 12, 20, 12, 20, 18]]), _ann(1, 2, [FLAT_SQUARE])],
    )
    reader = _reader(root)
    a, b = reader.records()

    assert len(a.polygons["scratch"]) == 2 and len(a.polygons["dent"]) == 1
    assert (a.label, b.label, b.category) == (1, 0, "normal")
    assert a.meta["image_id"] == 1 and a.meta["width"] == W
    masks, problems = ground_truth_masks(a, (H, W), ["scratch", "dent"])
    assert problems == [] and (masks[0] & masks[1]).sum() == 81
    assert reader.problems == []


def test_label_map_renames_categories_and_unknown_names_are_reported(tmp_path: Path) -> None:
    root = _coco(tmp_path, [_img(1, "a.jpg")], [_ann(1, 1, [FLAT_SQUARE]), _ann(1, 2, [FLAT_SQUARE])],
                 categories=[{"id": 1, "name": "damage"}, {"id": 2, "name": "rust"}])
    reader = CocoSegmentation(root, classes=["defect"], label_map={"damage": "defect"})
    record = reader.records()[0]
    assert sorted(record.polygons) == ["defect"]
    assert reader.problem_counts == {"unknown_label": 1}
    assert "'rust'" in reader.problems[0]


def test_compressed_and_uncompressed_rle_are_decoded_exactly(tmp_path: Path) -> None:
    mask = np.zeros((H, W), np.uint8)
    mask[3:15, 4:20] = 1
    mask[7:10, 9:13] = 0  # a hole
    compressed = coco_mask.encode(np.asfortranarray(mask))
    compressed["counts"] = compressed["counts"].decode()
    flat = mask.flatten(order="F")
    runs, current, count = [], 0, 0
    for value in flat:
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    runs.append(count)
    uncompressed = {"size": [H, W], "counts": runs}
    root = _coco(tmp_path, [_img(1, "a.jpg")], [_ann(1, 1, compressed), _ann(1, 2, uncompressed, iscrowd=1)])
    reader = _reader(root)
    record = reader.records()[0]

    masks, problems = ground_truth_masks(record, (H, W), ["scratch", "dent"])
    assert problems == []
    assert np.array_equal(masks[0], mask.astype(bool)) and np.array_equal(masks[1], mask.astype(bool))
    assert reader.stats["rle_regions"] == 2 and reader.stats["crowd_keep"] == 1


def test_crowd_regions_can_be_ignored_or_skipped(tmp_path: Path) -> None:
    annotations = [_ann(1, 1, [FLAT_SQUARE]), _ann(1, 2, [FLAT_SQUARE], iscrowd=1)]
    root = _coco(tmp_path, [_img(1, "a.jpg")], annotations)

    ignored = _reader(root, crowd="ignore").records()[0]
    assert sorted(ignored.polygons) == ["scratch"]
    assert sorted(ignored.meta["ignore_polygons"]) == ["dent"]

    reader = _reader(root, crowd="skip")
    skipped = reader.records()[0]
    assert sorted(skipped.polygons) == ["scratch"] and "ignore_polygons" not in skipped.meta
    assert reader.stats["crowd_skipped"] == 1


def test_hardening_reports_every_skipped_item(tmp_path: Path) -> None:
    _image(tmp_path.parent / "outside.jpg")
    images = [
        _img(1, "a.jpg"),
        _img(1, "dup.jpg"),  # duplicate id
        _img(2, "../outside.jpg"),  # escapes the root
        _img(3, "missing.jpg"),  # no file
    ]
    annotations = [
        _ann(1, 9, [FLAT_SQUARE]),  # unknown category id
        _ann(1, 1, [[1, 1, 2, 2]]),  # degenerate
        _ann(1, 1, [FLAT_SQUARE]),
        _ann(7, 1, [FLAT_SQUARE]),  # unknown image
    ]
    root = _coco(tmp_path, images, annotations, files=["a.jpg", "dup.jpg", "unlisted.jpg"])
    reader = _reader(root)
    records = reader.records()

    assert [Path(r.path).name for r in records] == ["a.jpg"]
    assert len(records[0].polygons["scratch"]) == 1
    assert reader.problem_counts == {
        "duplicate_image": 1,
        "outside_root": 1,
        "missing_image": 1,
        "unknown_label": 1,
        "degenerate_ring": 1,
        "bad_annotation": 1,
        "missing_label": 2,  # dup.jpg (its id was a duplicate) and unlisted.jpg
    }
    text = "\n".join(reader.problems)
    for name in ("dup.jpg", "outside.jpg", "missing.jpg", "unlisted.jpg"):
        assert name in text


def test_malformed_segmentation_is_reported(tmp_path: Path) -> None:
    root = _coco(tmp_path, [_img(1, "a.jpg")], [_ann(1, 1, "not a polygon"), _ann(1, 1, [FLAT_SQUARE])])
    reader = _reader(root)
    assert len(reader.records()[0].polygons["scratch"]) == 1
    assert reader.problem_counts == {"bad_annotation": 1}


def test_images_can_live_in_a_separate_folder(tmp_path: Path) -> None:
    root = _coco(tmp_path, [_img(1, "a.jpg")], [], files=["train2017/a.jpg"])
    records = _reader(root, image_dir="train2017").records()
    assert records[0].path == str(tmp_path / "train2017" / "a.jpg")


def test_a_missing_or_broken_annotation_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="annotations.json"):
        _reader(tmp_path).records()
    (tmp_path / "annotations.json").write_text("[]")
    with pytest.raises(DataError, match="not a COCO file"):
        _reader(tmp_path).records()


def test_helpers_parse_boxes_polygons_and_rle(tmp_path: Path) -> None:
    assert coco_bbox_xyxy({"bbox": [2, 3, 10, 5]}) == (2.0, 3.0, 12.0, 8.0)
    assert coco_bbox_xyxy({"bbox": [2, 3, 0, 5]}) is None
    assert coco_polygons([[0, 0, 4, 0, 4, 4, 9]], 10, 10) == [[[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0]]]]
    with pytest.raises(ValueError, match="RLE size"):
        decode_rle({"size": [5, 5], "counts": [25]}, 10, 10)
    root = _coco(tmp_path, [_img(1, "a.jpg"), _img(1, "b.jpg")], [_ann(1, 1, [FLAT_SQUARE])])
    index = load_coco(root / "annotations.json")
    assert list(index.images) == [1] and index.categories == {1: "scratch", 2: "dent"}
    assert len(index.annotations[1]) == 1 and index.problems[0][0] == "duplicate_image"
