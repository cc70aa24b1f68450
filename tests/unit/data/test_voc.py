"""VocBoxes: Pascal VOC XML boxes beside images or in the devkit layout, and what it rejects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.data.voc import VocBoxes
from defectkit.errors import ConfigError, DataError
from defectkit.registry import DATASETS, build

W, H = 40, 30


def _image(path: Path, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)
    return path


def _object(name: str, xmin, ymin, xmax, ymax, difficult: int = 0) -> str:
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult>"
        # Field order as Roboflow writes it: x before y.
        f"<bndbox><xmin>{xmin}</xmin><xmax>{xmax}</xmax><ymin>{ymin}</ymin><ymax>{ymax}</ymax></bndbox></object>"
    )


def _xml(path: Path, objects: list[str], size: tuple[int, int] | None = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{size_xml}{''.join(objects)}</annotation>")
    return path


def _pair(folder: Path, stem: str, objects: list[str], **kwargs) -> Path:
    _image(folder / f"{stem}.jpg")
    return _xml(folder / f"{stem}.xml", objects, **kwargs)


def test_voc_reader_turns_one_based_pixels_into_pixel_edges(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("pustules", 11, 6, 20, 15)])
    record = VocBoxes(tmp_path, classes=["pustules"]).records()[0]

    assert record.boxes == [("pustules", 10.0, 5.0, 20.0, 15.0)]
    assert (record.label, record.category) == (1, "pustules")
    assert (record.meta["width"], record.meta["height"]) == (W, H)
    assert record.meta["annotation"].endswith("a.xml")
    assert record.polygons is None


def test_voc_reader_reads_zero_based_edges_as_they_are_when_asked(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("pustules", 0, 0, 10, 10)])
    record = VocBoxes(tmp_path, classes=["pustules"], one_based=False).records()[0]
    assert record.boxes == [("pustules", 0.0, 0.0, 10.0, 10.0)]


def test_wildcard_label_map_puts_every_source_label_in_one_class(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("papules", 1, 1, 5, 5), _object("nodules and cysts", 6, 6, 9, 9)])
    reader = VocBoxes(tmp_path, classes=["lesion"], label_map={"*": "lesion"})
    record = reader.records()[0]

    assert [box[0] for box in record.boxes] == ["lesion", "lesion"]
    assert reader.problems == []


def test_named_labels_win_over_the_wildcard_and_none_drops_on_purpose(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("papules", 1, 1, 5, 5), _object("scar", 6, 6, 9, 9), _object("mole", 2, 2, 4, 4)])
    reader = VocBoxes(tmp_path, classes=["lesion", "scar"], label_map={"scar": "scar", "mole": None, "*": "lesion"})
    record = reader.records()[0]

    assert [box[0] for box in record.boxes] == ["lesion", "scar"]
    assert reader.stats["dropped_label:mole"] == 1
    assert reader.problems == []


def test_unknown_object_name_is_reported_and_its_box_skipped(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("papules", 1, 1, 5, 5), _object("freckle", 6, 6, 9, 9)])
    reader = VocBoxes(tmp_path, classes=["papules"])
    record = reader.records()[0]

    assert [box[0] for box in record.boxes] == ["papules"]
    assert reader.problem_counts == {"unknown_label": 1}
    assert "a.xml object 1" in reader.problems[0] and "'freckle'" in reader.problems[0]


def test_xml_without_objects_is_an_image_without_boxes(tmp_path: Path) -> None:
    _pair(tmp_path, "clear", [])
    record = VocBoxes(tmp_path, classes=["lesion"]).records()[0]
    assert (record.boxes, record.label, record.category) == ([], 0, "normal")
    assert record.meta["damaged_area_ratio"] == 0.0


def test_category_is_the_rarest_class_in_the_image(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("papules", 1, 1, 5, 5), _object("nodules", 6, 6, 9, 9)])
    _pair(tmp_path, "b", [_object("papules", 1, 1, 5, 5)])
    reader = VocBoxes(tmp_path, classes=["papules", "nodules"])
    a, b = reader.records()

    assert (a.category, b.category) == ("nodules", "papules")
    assert reader.class_image_counts == {"papules": 2, "nodules": 1}


def test_group_pattern_takes_the_source_image_id_before_the_roboflow_suffix(tmp_path: Path) -> None:
    _pair(tmp_path, "levle1_27_jpg.rf.0a1b2c", [_object("pustules", 1, 1, 5, 5)])
    _pair(tmp_path, "levle1_27_jpg.rf.9f8e7d", [_object("pustules", 1, 1, 5, 5)])
    records = VocBoxes(tmp_path, classes=["pustules"], group_pattern=r"levle\d+_\d+").records()
    assert [r.group for r in records] == ["levle1_27", "levle1_27"]


def test_groups_are_off_unless_a_pattern_is_given(tmp_path: Path) -> None:
    _pair(tmp_path, "levle1_27", [_object("pustules", 1, 1, 5, 5)])
    assert VocBoxes(tmp_path, classes=["pustules"]).records()[0].group is None


def test_split_subfolders_are_read_together_or_one_by_name(tmp_path: Path) -> None:
    _pair(tmp_path / "train", "a", [_object("lesion", 1, 1, 5, 5)])
    _pair(tmp_path / "valid", "b", [_object("lesion", 1, 1, 5, 5)])
    reader = VocBoxes(tmp_path, classes=["lesion"])

    assert [Path(r.path).name for r in reader.records()] == ["a.jpg", "b.jpg"]
    assert [Path(r.path).name for r in reader.records(split="valid")] == ["b.jpg"]
    with pytest.raises(DataError, match="'test'.*valid splits: 'train', 'valid'"):
        reader.records(split="test")


def test_devkit_layout_reads_annotations_and_jpegimages_with_imagesets_splits(tmp_path: Path) -> None:
    for stem in ("000001", "000002"):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg")
        _xml(tmp_path / "Annotations" / f"{stem}.xml", [_object("lesion", 1, 1, 5, 5)])
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    reader = VocBoxes(tmp_path, classes=["lesion"])

    assert [Path(r.path).name for r in reader.records()] == ["000001.jpg", "000002.jpg"]
    assert [Path(r.path).name for r in reader.records(split="val")] == ["000002.jpg"]


def test_unpaired_images_and_xmls_are_reported_not_read(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("lesion", 1, 1, 5, 5)])
    _image(tmp_path / "no_xml.jpg")
    _xml(tmp_path / "no_image.xml", [_object("lesion", 1, 1, 5, 5)])
    reader = VocBoxes(tmp_path, classes=["lesion"])

    assert len(reader.records()) == 1
    assert reader.problem_counts == {"missing_label": 1, "missing_image": 1}


def test_missing_size_is_read_from_the_image_header(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg", size=(50, 60))
    _xml(tmp_path / "a.xml", [_object("lesion", 1, 1, 5, 5)], size=None)
    record = VocBoxes(tmp_path, classes=["lesion"]).records()[0]
    assert (record.meta["width"], record.meta["height"]) == (50, 60)


def test_box_overshooting_by_a_pixel_is_clipped_silently(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("lesion", 0, 1, W + 1, 5)])
    reader = VocBoxes(tmp_path, classes=["lesion"])
    record = reader.records()[0]

    assert record.boxes == [("lesion", 0.0, 0.0, float(W), 5.0)]
    assert reader.stats["clipped_boxes"] == 1
    assert reader.problems == []


def test_box_slightly_outside_the_image_is_clipped_and_reported(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("lesion", 30, 1, W + 1.5, 5)])  # 1.5 px past a 40 px image: within 5 %
    reader = VocBoxes(tmp_path, classes=["lesion"])
    record = reader.records()[0]

    assert record.boxes == [("lesion", 29.0, 0.0, float(W), 5.0)]
    assert reader.problem_counts == {"out_of_bounds": 1}
    assert "a.xml object 0" in reader.problems[0]


def test_voc_reader_rejects_unparseable_xml(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text("<annotation><object><name>lesion</name>")
    with pytest.raises(DataError, match=r"a\.xml: not a readable Pascal VOC XML file"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_voc_reader_rejects_xml_that_is_not_an_annotation(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text("<config><value>1</value></config>")
    with pytest.raises(DataError, match=r"a\.xml: root element is <config>, expected <annotation>"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_voc_reader_rejects_box_with_xmax_before_xmin(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("lesion", 20, 1, 10, 5)])
    with pytest.raises(DataError, match=r"a\.xml object 0 \('lesion'\): empty box \(xmax before xmin"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_voc_reader_rejects_box_with_ymax_before_ymin(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("lesion", 1, 9, 5, 3)])
    with pytest.raises(DataError, match="ymax before ymin"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_voc_reader_rejects_a_non_numeric_coordinate(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("lesion", 1, 1, "twelve", 5)])
    with pytest.raises(DataError, match=r"a\.xml object 0 \('lesion'\): <xmax> is 'twelve', not a number"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_voc_reader_rejects_an_object_without_bndbox_or_name(tmp_path: Path) -> None:
    _pair(tmp_path, "a", ["<object><name>lesion</name></object>"])
    with pytest.raises(DataError, match=r"a\.xml object 0 \('lesion'\): missing <bndbox>"):
        VocBoxes(tmp_path, classes=["lesion"]).records()
    _pair(tmp_path, "a", ["<object><bndbox><xmin>1</xmin></bndbox></object>"])
    with pytest.raises(DataError, match=r"a\.xml object 0: missing <name>"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_voc_reader_rejects_a_bndbox_missing_a_coordinate(tmp_path: Path) -> None:
    bndbox = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox>"
    _pair(tmp_path, "a", [f"<object><name>lesion</name>{bndbox}</object>"])
    with pytest.raises(DataError, match="<bndbox> has no <ymax>"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_voc_reader_rejects_a_box_far_outside_the_image(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("lesion", 1, 1, 2 * W, 5)])
    with pytest.raises(DataError, match=r"a\.xml object 0 \('lesion'\): box .* far outside the 40x30 image"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_a_malformed_box_is_rejected_even_when_its_label_is_dropped(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("mole", 9, 1, 2, 5)])
    with pytest.raises(DataError, match="empty box"):
        VocBoxes(tmp_path, classes=["lesion"], label_map={"mole": None}).records()


def test_voc_reader_rejects_a_non_numeric_size(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text("<annotation><size><width>wide</width><height>30</height></size></annotation>")
    with pytest.raises(DataError, match=r"a\.xml: <size><width> is 'wide', not a number"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_missing_root_and_empty_root_errors_draw_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="(?s)data root does not exist.*Annotations/"):
        VocBoxes(tmp_path / "nowhere", classes=["lesion"]).records()
    with pytest.raises(DataError, match="no image with a Pascal VOC .xml file"):
        VocBoxes(tmp_path, classes=["lesion"]).records()


def test_label_map_to_a_class_the_config_lacks_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'lesion'.*not one of classes"):
        VocBoxes(tmp_path, classes=["acne"], label_map={"*": "lesion"})
    with pytest.raises(ConfigError, match="max_overshoot"):
        VocBoxes(tmp_path, classes=["acne"], max_overshoot=2)


def test_voc_reader_is_built_by_name_from_a_config(tmp_path: Path) -> None:
    _pair(tmp_path, "a", [_object("papules", 1, 1, 5, 5)])
    reader = build(DATASETS, dict(type="VocBoxes", classes=["lesion"], label_map={"*": "lesion"}), data_root=str(tmp_path))
    assert reader.records()[0].boxes == [("lesion", 0.0, 0.0, 5.0, 5.0)]
    assert "Annotations/" in reader.LAYOUT
