"""DefectSplitLayout: train/defect_images + defect_masks + normal_images, unlabelled test/images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.data.defect_split_layout import DefectSplitLayout
from defectkit.errors import DataError
from defectkit.registry import DATASETS, build


def _png(path: Path, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (6, 6) if gray else (6, 6, 3)
    Image.fromarray(np.full(shape, 90, np.uint8)).save(path)


@pytest.fixture
def comp_root(tmp_path: Path) -> Path:
    root = tmp_path / "competition"
    for name in ("d2.png", "d1.png"):
        _png(root / "train" / "defect_images" / name)
        _png(root / "train" / "defect_masks" / name, gray=True)
    for name in ("n1.png", "n2.png", "n3.png"):
        _png(root / "train" / "normal_images" / name)
    for name in ("t1.png", "t2.png"):
        _png(root / "test" / "images" / name)
    return root


def test_train_records_have_labels_categories_and_masks(comp_root: Path) -> None:
    reader = DefectSplitLayout(comp_root)
    records = reader.records()

    summary = [(Path(r.path).name, r.label, r.category, r.mask_path and Path(r.mask_path).name) for r in records]
    assert summary == [
        ("d1.png", 1, "defect", "d1.png"),
        ("d2.png", 1, "defect", "d2.png"),
        ("n1.png", 0, "normal", None),
        ("n2.png", 0, "normal", None),
        ("n3.png", 0, "normal", None),
    ]
    assert records[0].mask_path == str(comp_root / "train" / "defect_masks" / "d1.png")
    assert reader.problems == []


def test_test_images_are_unlabelled(comp_root: Path) -> None:
    reader = DefectSplitLayout(comp_root)
    test = reader.unlabelled_records()

    assert [Path(r.path).name for r in test] == ["t1.png", "t2.png"]
    assert all(r.label is None and r.mask_path is None for r in test)
    assert reader.records(split="test") == test
    assert all(r.label is not None for r in reader.records(split="train"))


def test_defect_image_without_mask_is_kept_and_reported(comp_root: Path) -> None:
    _png(comp_root / "train" / "defect_images" / "d3.png")
    reader = DefectSplitLayout(comp_root)

    d3 = next(r for r in reader.records() if r.path.endswith("d3.png"))

    assert d3.label == 1 and d3.mask_path is None
    assert len(reader.problems) == 1 and "d3.png" in reader.problems[0] and "without a mask" in reader.problems[0]


def test_mask_with_a_different_image_suffix_is_matched_by_name(tmp_path: Path) -> None:
    photo = tmp_path / "train" / "defect_images" / "a.jpg"
    photo.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(photo)
    _png(tmp_path / "train" / "defect_masks" / "a.png", gray=True)

    (record,) = DefectSplitLayout(tmp_path).records()

    assert record.mask_path.endswith("a.png")


def test_stray_files_and_orphan_masks_are_reported(comp_root: Path) -> None:
    (comp_root / "train" / "normal_images" / "list.csv").write_text("n1.png\n")
    _png(comp_root / "train" / "defect_masks" / "ghost.png", gray=True)
    reader = DefectSplitLayout(comp_root)

    assert len(reader.records()) == 5
    problems = "\n".join(reader.problems)
    assert "list.csv" in problems
    assert "ghost.png" in problems and "mask without" in problems


def test_only_normal_images_is_a_valid_layout(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "normal_images" / "n.png")

    assert [r.label for r in DefectSplitLayout(tmp_path).records()] == [0]


def test_missing_root_error_names_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        DefectSplitLayout(tmp_path / "absent").records()

    message = str(info.value)
    assert str(tmp_path / "absent") in message
    assert "defect_images/" in message and "defect_masks/" in message and "normal_images/" in message


def test_root_without_train_folders_error_names_expected_layout(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png")

    with pytest.raises(DataError, match="neither train/defect_images nor train/normal_images") as info:
        DefectSplitLayout(tmp_path).records()
    assert "test/" in str(info.value)


def test_empty_train_folders_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "train" / "defect_images").mkdir(parents=True)

    with pytest.raises(DataError, match="no images"):
        DefectSplitLayout(tmp_path).records()


def test_missing_test_folder_is_an_error_when_asked_for(comp_root: Path, tmp_path: Path) -> None:
    _png(tmp_path / "only_train" / "train" / "normal_images" / "n.png")

    with pytest.raises(DataError, match="no test/images"):
        DefectSplitLayout(tmp_path / "only_train").unlabelled_records()


def test_unknown_split_is_refused(comp_root: Path) -> None:
    with pytest.raises(DataError, match="'val'"):
        DefectSplitLayout(comp_root).records(split="val")


def test_built_from_registry_by_name(comp_root: Path) -> None:
    reader = build(DATASETS, dict(type="DefectSplitLayout", data_root=str(comp_root)))

    assert len(reader.records()) == 5
