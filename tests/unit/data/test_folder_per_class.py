"""FolderPerClass: one folder per class, same-name masks beside the images (Magnetic Tile layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.data.folder_per_class import FolderPerClass
from defectkit.errors import ConfigError, DataError
from defectkit.registry import DATASETS, build


def _jpg(path: Path, value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format="JPEG")


def _mask(path: Path, soft: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = soft
    Image.fromarray(mask).save(path, format="PNG")


@pytest.fixture
def tile_root(tmp_path: Path) -> Path:
    """A miniature Magnetic Tile tree: 3 normal images (masks on two), 2 blowholes, 1 crack."""
    root = tmp_path / "magnetic_tile"
    for name in ("n1", "n2", "n3"):
        _jpg(root / "MT_Free" / "Imgs" / f"{name}.jpg")
    _mask(root / "MT_Free" / "Imgs" / "n1.png", soft=0)
    _mask(root / "MT_Free" / "Imgs" / "n2.png", soft=0)
    for name in ("b2", "b1"):
        _jpg(root / "MT_Blowhole" / "Imgs" / f"{name}.jpg")
        _mask(root / "MT_Blowhole" / "Imgs" / f"{name}.png")
    _jpg(root / "MT_Crack" / "Imgs" / "c1.jpg")
    _mask(root / "MT_Crack" / "Imgs" / "c1.png")
    (root / "README_upstream.md").write_text("notes at the root are not data\n")
    return root


def test_folder_per_class_reads_labels_categories_and_masks(tile_root: Path) -> None:
    records = FolderPerClass(str(tile_root)).records()

    by_name = {Path(r.path).stem: r for r in records}
    assert sorted(by_name) == ["b1", "b2", "c1", "n1", "n2", "n3"]
    assert {n: r.label for n, r in by_name.items()} == {"b1": 1, "b2": 1, "c1": 1, "n1": 0, "n2": 0, "n3": 0}
    assert by_name["b1"].category == "Blowhole"
    assert by_name["c1"].category == "Crack"
    assert by_name["n1"].category == "Free"
    assert by_name["b1"].mask_path == str(tile_root / "MT_Blowhole" / "Imgs" / "b1.png")
    assert all(Path(r.path).is_absolute() and r.group is None for r in records)


def test_normal_image_without_mask_is_allowed(tile_root: Path) -> None:
    reader = FolderPerClass(tile_root)
    n3 = next(r for r in reader.records() if r.path.endswith("n3.jpg"))

    assert n3.mask_path is None and n3.label == 0
    assert reader.problems == []


def test_records_are_sorted_by_path_and_repeatable(tile_root: Path) -> None:
    first = FolderPerClass(tile_root).records()
    second = FolderPerClass(tile_root).records()

    assert [r.path for r in first] == sorted(r.path for r in first)
    assert first == second


def test_stray_files_are_skipped_and_reported_by_name(tile_root: Path) -> None:
    imgs = tile_root / "MT_Crack" / "Imgs"
    (imgs / "notes.txt").write_text("x")
    _mask(imgs / "orphan.png")
    (imgs / "nested").mkdir()
    (imgs / ".DS_Store").write_bytes(b"\0")
    (tile_root / "extra_class").mkdir()

    reader = FolderPerClass(tile_root)
    records = reader.records()

    assert len(records) == 6
    problems = "\n".join(reader.problems)
    assert "notes.txt" in problems
    assert "orphan.png" in problems and "mask without an image" in problems
    assert "nested" in problems
    assert "extra_class" in problems
    assert ".DS_Store" not in problems  # hidden files are system noise, not data


def test_missing_root_error_names_expected_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(DataError) as info:
        FolderPerClass(missing).records()

    message = str(info.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert "<prefix><class>/" in message and "Imgs" in message and "MT_" in message


def test_root_matching_nothing_error_names_expected_layout(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()

    with pytest.raises(DataError, match="no class folders") as info:
        FolderPerClass(tmp_path).records()
    assert "<prefix><class>/" in str(info.value)


def test_class_folders_without_images_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "MT_Free" / "Imgs").mkdir(parents=True)
    (tmp_path / "MT_Free" / "Imgs" / "readme.txt").write_text("x")

    with pytest.raises(DataError, match="no images"):
        FolderPerClass(tmp_path).records()


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file_root = tmp_path / "data.zip"
    file_root.write_bytes(b"PK")

    with pytest.raises(DataError, match="not a folder"):
        FolderPerClass(file_root).records()


def test_images_directly_in_class_folders_with_empty_subdir(tmp_path: Path) -> None:
    _jpg(tmp_path / "ok" / "a.JPG")
    _jpg(tmp_path / "scratch" / "b.jpeg")
    _mask(tmp_path / "scratch" / "b.png")

    records = FolderPerClass(tmp_path, normal_class="ok", class_prefix="", image_subdir="").records()

    assert [(Path(r.path).name, r.label, r.category) for r in records] == [("a.JPG", 0, "ok"), ("b.jpeg", 1, "scratch")]
    assert records[1].mask_path.endswith("b.png")


def test_png_images_with_a_different_mask_suffix(tmp_path: Path) -> None:
    (tmp_path / "MT_Free").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "MT_Free" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "MT_Free" / "a.bmp")

    records = FolderPerClass(tmp_path, image_subdir="", image_suffixes=(".png",), mask_suffix=".bmp").records()

    assert [Path(r.path).name for r in records] == ["a.png"]
    assert records[0].mask_path.endswith("a.bmp")


def test_classes_allow_list_selects_classes(tile_root: Path) -> None:
    records = FolderPerClass(tile_root, classes=["Free", "Crack"]).records()

    assert sorted({r.category for r in records}) == ["Crack", "Free"]


def test_unknown_class_in_allow_list_is_refused_with_found_classes(tile_root: Path) -> None:
    with pytest.raises(DataError, match="'Dent'.*Blowhole, Crack, Free"):
        FolderPerClass(tile_root, classes=["Free", "Dent"]).records()


def test_missing_normal_class_is_reported(tile_root: Path) -> None:
    reader = FolderPerClass(tile_root, normal_class="Good")
    records = reader.records()

    assert all(r.label == 1 for r in records)
    assert any("MT_Good" in p for p in reader.problems)


def test_mask_suffix_that_is_also_an_image_suffix_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mask_suffix"):
        FolderPerClass(tmp_path, image_suffixes=(".jpg", ".png"), mask_suffix=".png")


def test_predefined_split_is_refused(tile_root: Path) -> None:
    with pytest.raises(DataError, match="no predefined split 'test'"):
        FolderPerClass(tile_root).records(split="test")


def test_paths_escaping_root_are_refused(tile_root: Path, tmp_path: Path) -> None:
    reader = FolderPerClass(tile_root)

    assert reader.resolve("MT_Free/Imgs/n1.jpg") == tile_root / "MT_Free" / "Imgs" / "n1.jpg"
    assert reader.resolve(str(tile_root / "MT_Free")) == tile_root / "MT_Free"
    assert reader.resolve("MT_Free/../MT_Crack/Imgs/c1.jpg") == tile_root / "MT_Crack" / "Imgs" / "c1.jpg"
    for bad in ("../secret.txt", "MT_Free/../../x.jpg", "/etc/passwd", str(tmp_path / "other" / "a.jpg"), ""):
        with pytest.raises(DataError):
            reader.resolve(bad)
    # A sibling whose name merely starts with the root's name is outside it too.
    with pytest.raises(DataError, match="outside the data root"):
        reader.resolve(str(tile_root) + "_copy/a.jpg")


def test_built_from_registry_by_name(tile_root: Path) -> None:
    reader = build(DATASETS, dict(type="FolderPerClass", data_root=str(tile_root), classes=["Crack"]))

    assert isinstance(reader, FolderPerClass)
    assert [r.category for r in reader.records()] == ["Crack"]
