"""MaskFolder: images/NAME.jpg + masks/<class>/NAME.png, and exact mask-to-polygon conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from defectkit.data.mask_folder import MaskFolder, mask_to_polygons_with_holes
from defectkit.data.masks import ground_truth_masks
from defectkit.errors import DataError
from defectkit.polygons import polygons_to_mask

H, W = 16, 20


def _image(path: Path, size=(W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(path)


def _mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _shapes() -> tuple[np.ndarray, np.ndarray]:
    scratch = np.zeros((H, W), bool)
    scratch[2:12, 2:14] = True
    scratch[5:8, 6:9] = False  # a hole
    dent = np.zeros((H, W), bool)
    dent[8:15, 10:19] = True  # overlaps the scratch
    return scratch, dent


def test_class_masks_become_exact_polygons_and_overlaps_keep_both(tmp_path: Path) -> None:
    scratch, dent = _shapes()
    _image(tmp_path / "images" / "0001_as-7.jpg")
    _mask(tmp_path / "masks" / "scratch" / "0001_as-7.png", scratch)
    _mask(tmp_path / "masks" / "dent" / "0001_as-7.png", dent)
    reader = MaskFolder(tmp_path, classes=["scratch", "dent"])
    record = reader.records()[0]

    masks, problems = ground_truth_masks(record, (H, W), ["scratch", "dent"])
    assert problems == []
    assert np.array_equal(masks[0], scratch) and np.array_equal(masks[1], dent)
    assert (masks[0] & masks[1]).any()
    assert (record.label, record.group) == (1, "as-7")
    assert reader.problems == []


def test_images_without_masks_are_undamaged_unless_masks_are_required(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "clean.jpg")
    (tmp_path / "masks" / "scratch").mkdir(parents=True)
    record = MaskFolder(tmp_path, classes=["scratch"]).records()[0]
    assert (record.label, record.category, record.polygons) == (0, "normal", {})

    _image(tmp_path / "images" / "other.jpg")
    _mask(tmp_path / "masks" / "scratch" / "other.png", np.ones((H, W), bool))
    strict = MaskFolder(tmp_path, classes=["scratch"], require_masks=True)
    assert [Path(r.path).name for r in strict.records()] == ["other.jpg"]
    assert strict.problem_counts == {"missing_label": 1} and "clean.jpg" in strict.problems[0]


def test_unknown_folders_orphan_masks_and_size_mismatches_are_reported(tmp_path: Path) -> None:
    scratch, _ = _shapes()
    _image(tmp_path / "images" / "a.jpg")
    _mask(tmp_path / "masks" / "rust" / "a.png", scratch)
    _mask(tmp_path / "masks" / "scratch" / "ghost.png", scratch)
    _mask(tmp_path / "masks" / "scratch" / "a.png", np.kron(scratch, np.ones((2, 2), bool)))
    reader = MaskFolder(tmp_path, classes=["scratch"])
    record = reader.records()[0]

    assert reader.problem_counts == {"unknown_label": 1, "missing_image": 1, "size_mismatch": 1}
    text = "\n".join(reader.problems)
    assert "rust" in text and "ghost.png" in text and "a.png" in text
    masks, _ = ground_truth_masks(record, (H, W), ["scratch"])
    assert np.array_equal(masks[0], scratch)


def test_label_map_renames_and_drops_class_folders(tmp_path: Path) -> None:
    scratch, dent = _shapes()
    _image(tmp_path / "images" / "a.jpg")
    _mask(tmp_path / "masks" / "Scratched" / "a.png", scratch)
    _mask(tmp_path / "masks" / "background" / "a.png", dent)
    reader = MaskFolder(tmp_path, classes=["scratch"], label_map={"Scratched": "scratch", "background": None})
    assert sorted(reader.records()[0].polygons) == ["scratch"]
    assert reader.problems == []


def test_a_root_without_masks_folder_raises(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.jpg")
    with pytest.raises(DataError, match="masks/"):
        MaskFolder(tmp_path, classes=["scratch"]).records()


@settings(max_examples=150, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))))
def test_mask_to_polygons_with_holes_redraws_every_mask_exactly(mask: np.ndarray) -> None:
    polygons = mask_to_polygons_with_holes(mask)
    redrawn, problems = polygons_to_mask(polygons, mask.shape)
    assert problems == []
    assert np.array_equal(redrawn, mask)
