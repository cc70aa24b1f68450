"""Albumentations and Resize transforms: brightness for dark photos, masks aligned, overlaps kept."""

from __future__ import annotations

import numpy as np
import pytest

from defectkit.data.transforms import (
    Albumentations,
    Resize,
    build_albumentation,
    default_car_augmentation,
)
from defectkit.errors import ConfigError
from defectkit.registry import TRANSFORMS, build, registered_names


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A bright square on a grey background, with a scratch mask on the square and an overlapping dent."""
    image = np.full((40, 60, 3), 80, np.uint8)
    image[5:25, 5:30] = 230
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:25, 5:30] = True
    masks[1, 15:35, 20:50] = True
    return image, masks


def test_brightness_augmentation_changes_intensity_and_leaves_masks_alone() -> None:
    image, masks = _scene()
    darken = Albumentations([dict(type="RandomBrightnessContrast", brightness_limit=(-0.4, -0.4),
                                  contrast_limit=0, p=1.0)], seed=0)
    out, out_masks = darken(image, masks)

    assert out.mean() < image.mean() - 50
    assert np.array_equal(out_masks, masks) and out_masks.dtype == bool


def test_masks_stay_aligned_with_the_image_under_flips_and_brightness() -> None:
    image, masks = _scene()
    augment = Albumentations(
        [
            dict(type="HorizontalFlip", p=1.0),
            dict(type="VerticalFlip", p=1.0),
            dict(type="RandomBrightnessContrast", brightness_limit=0.3, contrast_limit=0.2, p=1.0),
        ],
        seed=1,
    )
    out, out_masks = augment(image, masks)

    gray = out.mean(axis=2)
    threshold = (gray.max() + gray.min()) / 2
    assert np.array_equal(gray > threshold, out_masks[0])
    assert np.array_equal(out_masks, masks[:, ::-1, ::-1])


def test_overlapping_classes_keep_both_under_geometric_augmentation() -> None:
    image, masks = _scene()
    augment = Albumentations([dict(type="Affine", rotate=(15, 15), scale=(0.9, 0.9), p=1.0)], seed=0)
    _, out_masks = augment(image, masks)
    overlap = out_masks[0] & out_masks[1]
    assert overlap.sum() > 0.6 * (masks[0] & masks[1]).sum()


def test_single_channel_and_missing_masks_keep_their_form() -> None:
    image, masks = _scene()
    flip = Albumentations([dict(type="HorizontalFlip", p=1.0)])
    out, single = flip(image, masks[0].astype(np.uint8))
    assert single.shape == (40, 60) and single.dtype == np.uint8
    assert np.array_equal(single, masks[0][:, ::-1])
    assert flip(image)[1] is None
    with pytest.raises(ValueError, match="does not match"):
        flip(image, masks[:, :10])


def test_unknown_transform_names_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'RandomBrightnessContrast'.*Valid names: .*HorizontalFlip"):
        Albumentations([dict(type="RandomBrightnesContrast")])


def test_unknown_or_invalid_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown argument.*'brightnes_limit'"):
        build_albumentation(dict(type="RandomBrightnessContrast", brightnes_limit=0.2))
    with pytest.raises(ConfigError, match="invalid"):
        build_albumentation(dict(type="RandomBrightnessContrast", brightness_limit="dark"))


def test_nested_blocks_are_built() -> None:
    block = build_albumentation(dict(type="OneOf", transforms=[dict(type="Blur"), dict(type="MotionBlur")], p=1))
    assert [type(t).__name__ for t in block.transforms] == ["Blur", "MotionBlur"]


def test_resize_uses_nearest_for_masks_and_keeps_their_dtype() -> None:
    image, masks = _scene()
    out, out_masks = Resize(size=(20, 30))(image, masks)
    assert out.shape == (20, 30, 3) and out_masks.shape == (2, 20, 30) and out_masks.dtype == bool
    assert set(np.unique(out_masks)) <= {False, True}
    assert np.array_equal(out_masks, masks[:, ::2, ::2])
    with pytest.raises(ConfigError):
        Resize(size=(0, 10))


def test_default_car_augmentation_builds_runs_and_is_reproducible_with_a_seed() -> None:
    assert {"Albumentations", "Resize"} <= set(registered_names(TRANSFORMS))
    image, masks = _scene()
    cfg = default_car_augmentation(size=(32, 48), seed=5)
    names = [t["type"] for t in cfg["transforms"]]
    assert "RandomBrightnessContrast" in names and "HorizontalFlip" in names

    first = build(TRANSFORMS, cfg)
    second = build(TRANSFORMS, cfg)
    for _ in range(3):
        (a, ma), (b, mb) = first(image, masks), second(image, masks)
        assert a.shape == (32, 48, 3) and ma.shape == (2, 32, 48)
        assert np.array_equal(a, b) and np.array_equal(ma, mb)


def test_car_augmentation_zoom_range_is_an_option_and_bad_ranges_are_refused() -> None:
    affine = next(t for t in default_car_augmentation()["transforms"] if t["type"] == "Affine")
    assert affine["scale"] == (0.85, 1.15)
    image, masks = _scene()
    zoomed = build(TRANSFORMS, dict(type="CarDamageAugmentation", size=(32, 48), seed=0, scale=(1.0, 1.5)))
    out, out_masks = zoomed(image, masks)
    assert out.shape == (32, 48, 3) and out_masks.shape == (2, 32, 48)
    for bad in ((1.5, 1.0), (0.0, 1.0), (1.2,)):
        with pytest.raises(ConfigError, match="CarDamageAugmentation scale"):
            default_car_augmentation(scale=bad)
