"""ForegroundCrop: crops stay inside the photo and honour the foreground share."""

import numpy as np
import pytest

from defectkit.data.transforms import ForegroundCrop
from defectkit.errors import ConfigError


def _photo_with_one_small_defect(height=300, width=400):
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    masks = np.zeros((3, height, width), dtype=bool)
    masks[2, 250:260, 20:30] = True  # a rare class in a corner
    return image, masks


def test_every_crop_has_the_crop_size_and_comes_from_inside_the_photo():
    image, masks = _photo_with_one_small_defect()
    crop = ForegroundCrop((96, 128), foreground_share=0.5, seed=1)
    for _ in range(200):
        y, x = crop.origin(image.shape, masks)
        assert 0 <= y <= 300 - 96 and 0 <= x <= 400 - 128
    out_image, out_masks = crop(image, masks)
    assert out_image.shape == (96, 128, 3) and out_masks.shape == (3, 96, 128)


def test_the_crop_shows_the_pixels_of_the_photo_at_its_origin():
    image, masks = _photo_with_one_small_defect()
    crop = ForegroundCrop((64, 64), foreground_share=1.0, seed=3)
    state = crop.rng.bit_generator.state
    y, x = crop.origin(image.shape, masks)
    crop.rng.bit_generator.state = state  # replay the same draw
    out_image, out_masks = crop(image, masks)
    np.testing.assert_array_equal(out_image, image[y : y + 64, x : x + 64])
    np.testing.assert_array_equal(out_masks, masks[:, y : y + 64, x : x + 64])


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_the_share_of_crops_showing_the_defect_follows_the_foreground_share(share):
    image, masks = _photo_with_one_small_defect()
    crop = ForegroundCrop((64, 64), foreground_share=share, seed=7)
    hits = np.mean([crop(image, masks)[1][2].any() for _ in range(400)])
    # A uniform 64x64 crop of a 300x400 photo shows the 10x10 defect about 3% of the time.
    assert hits >= share * 0.95 and hits <= share + 0.08


def test_classes_present_are_drawn_uniformly_so_a_rare_class_is_not_swamped():
    image, masks = _photo_with_one_small_defect()
    masks[0, :150, :] = True  # a common class over half the photo
    crop = ForegroundCrop((64, 64), foreground_share=1.0, seed=11)
    rare = np.mean([crop(image, masks)[1][2].any() for _ in range(400)])
    assert 0.4 <= rare <= 0.65


def test_a_photo_smaller_than_the_crop_is_padded_with_background():
    image = np.full((40, 50, 3), 200, np.uint8)
    mask = np.ones((40, 50), bool)
    out_image, out_mask = ForegroundCrop((64, 64), seed=0)(image, mask)
    assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    assert out_mask[:40, :50].all() and not out_mask[40:].any() and not out_image[:, 50:].any()


def test_the_same_seed_gives_the_same_crops():
    image, masks = _photo_with_one_small_defect()
    a, b = ForegroundCrop((64, 64), seed=5), ForegroundCrop((64, 64), seed=5)
    for _ in range(10):
        np.testing.assert_array_equal(a(image, masks)[0], b(image, masks)[0])


@pytest.mark.parametrize("kwargs", [dict(size=(0, 32)), dict(size="big"), dict(size=(32, 32), foreground_share=1.5)])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        ForegroundCrop(**kwargs)
