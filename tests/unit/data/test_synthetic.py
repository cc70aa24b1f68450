"""SyntheticTextures: the built-in texture data set, generated into a cache from scikit-image photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import defectkit.data.synthetic as synthetic
from defectkit.data.synthetic import (
    DEFECT_KINDS,
    VISIBLE_DELTA,
    SyntheticTextures,
    draw_defect,
    load_texture,
    random_crop,
)
from defectkit.errors import ConfigError
from defectkit.io.images import load_image, load_mask
from defectkit.registry import DATASETS, build

SMALL = dict(n_normal=6, n_defect=6, image_size=48)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_synthetic_masks_cover_exactly_the_drawn_defect(kind: str) -> None:
    for seed in range(8):
        rng = np.random.default_rng(seed)
        crop = random_crop(load_texture(("brick", "grass", "gravel")[seed % 3]), 96, rng)

        out, mask = draw_defect(crop, kind, rng)

        assert out.shape == crop.shape and out.dtype == np.uint8
        assert mask.shape == crop.shape[:2] and mask.dtype == bool
        delta = np.abs(out.astype(int) - crop.astype(int)).max(axis=2)
        assert not delta[~mask].any(), "pixels outside the mask changed"
        # The mask is the visibly changed region; only bridged or enclosed pixels changed less.
        assert mask[delta >= VISIBLE_DELTA].all()
        assert (delta[mask] < VISIBLE_DELTA).mean() < 0.3
        # Visible to the eye: a sizeable region, changed well beyond the threshold on average.
        assert mask.sum() >= 12
        assert delta[mask].mean() >= 25


def test_defects_of_each_kind_have_their_typical_shape() -> None:
    rng = np.random.default_rng(1)
    crop = random_crop(load_texture("gravel"), 128, rng)
    _, scratch = draw_defect(crop, "scratch", rng)
    _, hole = draw_defect(crop, "hole", rng)

    # A scratch is long and thin: its area is small for its extent.
    ys, xs = np.nonzero(scratch)
    assert max(np.ptp(ys), np.ptp(xs)) >= 25
    assert scratch.sum() < 0.5 * (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    # A hole is one compact blob.
    assert ndimage.label(hole)[1] == 1


def test_textures_load_offline_as_rgb() -> None:
    for name in ("brick", "grass", "gravel"):
        texture = load_texture(name)
        assert texture.dtype == np.uint8 and texture.ndim == 3 and texture.shape[2] == 3
        assert min(texture.shape[:2]) >= 256


def test_unknown_texture_and_defect_kind_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown texture"):
        load_texture("no_such_texture")
    with pytest.raises(ConfigError, match="defect kind"):
        SyntheticTextures(tmp_path, defect_kinds=("dent",))
    with pytest.raises(ConfigError, match="textures"):
        SyntheticTextures(tmp_path, textures="brick")
    with pytest.raises(ConfigError):
        SyntheticTextures(tmp_path, n_normal=0, n_defect=0)


def test_synthetic_records_have_labels_categories_and_masks(tmp_path: Path) -> None:
    records = SyntheticTextures(tmp_path / "cache", **SMALL).records()

    assert len(records) == 12
    assert [r.path for r in records] == sorted(r.path for r in records)
    normals = [r for r in records if r.label == 0]
    defects = [r for r in records if r.label == 1]
    assert len(normals) == 6 and all(r.category == "normal" and r.mask_path is None for r in normals)
    assert len(defects) == 6 and sorted({r.category for r in defects}) == ["hole", "scratch", "stain"]
    assert {r.meta["texture"] for r in records} == {"brick", "grass", "gravel"}
    for record in defects:
        image = load_image(record.path)
        mask = load_mask(record.mask_path)
        assert image.shape == (48, 48, 3) and mask.shape == (48, 48)
        assert mask.any()
        assert Path(record.path).name.startswith(record.meta["texture"] + "_defect_")
        assert Path(record.path).parent.name == "images" and Path(record.mask_path).parent.name == "masks"


def test_written_images_differ_from_the_clean_crop_only_inside_the_mask(tmp_path: Path) -> None:
    reader = SyntheticTextures(tmp_path, n_normal=0, n_defect=3, image_size=64, seed=5)
    records = reader.records()

    for i, record in enumerate(records):
        # Rebuild the clean crop from the same random stream the generator used.
        texture = record.meta["texture"]
        rng = np.random.default_rng([5, 1, i])
        clean = random_crop(load_texture(texture), 64, rng)
        changed = (load_image(record.path) != clean).any(axis=2)
        mask = load_mask(record.mask_path)
        assert not changed[~mask].any()
        assert changed[mask].mean() > 0.9


def test_synthetic_generation_is_deterministic_and_cached(tmp_path: Path) -> None:
    first = SyntheticTextures(tmp_path / "a", **SMALL)
    records_a = first.records()
    records_b = SyntheticTextures(tmp_path / "b", **SMALL).records()

    for ra, rb in zip(records_a, records_b, strict=True):
        assert Path(ra.path).name == Path(rb.path).name
        assert Path(ra.path).read_bytes() == Path(rb.path).read_bytes()
        if ra.mask_path:
            assert Path(ra.mask_path).read_bytes() == Path(rb.mask_path).read_bytes()

    stamps = {r.path: Path(r.path).stat().st_mtime_ns for r in records_a}
    again = SyntheticTextures(tmp_path / "a", **SMALL)
    assert again.is_cached()
    assert again.generate() is False
    assert again.records() == records_a
    assert {r.path: Path(r.path).stat().st_mtime_ns for r in records_a} == stamps


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    a = SyntheticTextures(tmp_path / "a", **SMALL, seed=0).records()
    b = SyntheticTextures(tmp_path / "b", **SMALL, seed=1).records()

    assert Path(a[0].path).read_bytes() != Path(b[0].path).read_bytes()


def test_normal_images_do_not_depend_on_the_number_of_defects(tmp_path: Path) -> None:
    few = SyntheticTextures(tmp_path / "few", n_normal=3, n_defect=1, image_size=32).records()
    many = SyntheticTextures(tmp_path / "many", n_normal=3, n_defect=5, image_size=32).records()

    normal_bytes = lambda rs: [Path(r.path).read_bytes() for r in rs if r.label == 0]  # noqa: E731
    assert normal_bytes(few) == normal_bytes(many)


def test_changed_parameters_regenerate_and_remove_stale_files(tmp_path: Path) -> None:
    SyntheticTextures(tmp_path, n_normal=4, n_defect=4, image_size=32).records()

    reader = SyntheticTextures(tmp_path, n_normal=2, n_defect=1, image_size=32)
    assert not reader.is_cached()
    records = reader.records()

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["params"]["n_normal"] == 2 and manifest["params"]["n_defect"] == 1
    on_disk = sorted(str(p) for p in tmp_path.glob("*/*.png"))
    expected = sorted([r.path for r in records] + [r.mask_path for r in records if r.mask_path])
    assert on_disk == expected


def test_missing_file_or_corrupt_manifest_triggers_regeneration(tmp_path: Path) -> None:
    records = SyntheticTextures(tmp_path, **SMALL).records()
    original = Path(records[0].path).read_bytes()

    Path(records[0].path).unlink()
    assert not SyntheticTextures(tmp_path, **SMALL).is_cached()
    SyntheticTextures(tmp_path, **SMALL).records()
    assert Path(records[0].path).read_bytes() == original

    (tmp_path / "manifest.json").write_text("{not json")
    reader = SyntheticTextures(tmp_path, **SMALL)
    assert reader.generate() is True
    assert reader.records() == records


def test_interrupted_generation_leaves_no_partial_files_and_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = synthetic.atomic_write_bytes
    calls = {"n": 0}

    def failing_write(path, data):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-generation
        real_write(path, data)

    monkeypatch.setattr(synthetic, "atomic_write_bytes", failing_write)
    with pytest.raises(KeyboardInterrupt):
        SyntheticTextures(tmp_path, **SMALL).records()

    assert not (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.rglob("*.tmp"))
    for png in tmp_path.rglob("*.png"):
        load_image(png)  # every file that exists is complete

    monkeypatch.setattr(synthetic, "atomic_write_bytes", real_write)
    assert len(SyntheticTextures(tmp_path, **SMALL).records()) == 12


def test_built_from_registry_by_name(tmp_path: Path) -> None:
    cfg = dict(type="SyntheticTextures", data_root=str(tmp_path), n_normal=2, n_defect=1, image_size=32)
    reader = build(DATASETS, cfg)

    assert isinstance(reader, SyntheticTextures)
    assert len(reader.records()) == 3
