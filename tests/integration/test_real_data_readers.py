"""Readers against the real data sets in ../shared/data (skipped on machines without them)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from defectkit.data.folder_per_class import FolderPerClass

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("DEFECTKIT_DATA") or REPO.parent / "shared" / "data")
MAGNETIC_TILE = DATA / "magnetic_tile"


@pytest.mark.real_data
@pytest.mark.skipif(
    not MAGNETIC_TILE.is_dir(),
    reason=f"real data absent: {MAGNETIC_TILE} not found (set DEFECTKIT_DATA to the folder holding magnetic_tile/)",
)
def test_folder_per_class_finds_every_magnetic_tile_image() -> None:
    reader = FolderPerClass(MAGNETIC_TILE)
    records = reader.records()

    labels = Counter(r.label for r in records)
    assert labels[0] == 643 and labels[1] == 265
    assert Counter(r.category for r in records) == {
        "Free": 643,
        "Blowhole": 81,
        "Uneven": 74,
        "Break": 50,
        "Crack": 39,
        "Fray": 21,
    }
    assert all(r.mask_path is not None and Path(r.mask_path).is_file() for r in records)
    assert reader.problems == []
