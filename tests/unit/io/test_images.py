"""Decoding image files into upright HxWx3 uint8 RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from defectkit.errors import ImageDecodeError
from defectkit.io.images import decode_record, decode_records, is_image_file, load_image, load_mask
from defectkit.sample import Record


def _gradient(height: int = 6, width: int = 8) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    image[..., 2] = 77
    return image


def _check_rgb(array: np.ndarray, shape: tuple[int, int]) -> None:
    assert array.shape == (*shape, 3)
    assert array.dtype == np.uint8
    assert array.flags["C_CONTIGUOUS"]


def test_rgb_png_decodes_exactly(tmp_path):
    expected = _gradient()
    Image.fromarray(expected).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), expected)


def test_grayscale_png_is_repeated_into_three_channels(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    _check_rgb(image, (4, 5))
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 10  # almost transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    _check_rgb(image, (3, 4))
    assert (image[..., 0] == 200).all() and (image[..., 1:] == 0).all()


def test_palette_png_is_converted_to_its_colours(tmp_path):
    img = Image.new("P", (5, 3))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putpixel((0, 0), 1)
    img.putpixel((4, 2), 2)
    img.save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    _check_rgb(image, (3, 5))
    assert image[0, 0].tolist() == [255, 0, 0]
    assert image[2, 4].tolist() == [0, 0, 255]
    assert image[1, 1].tolist() == [0, 0, 0]


def test_16_bit_png_is_stretched_to_8_bits(tmp_path):
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    image = load_image(tmp_path / "deep.png")
    _check_rgb(image, (2, 2))
    assert image[0, 0, 0] == 0 and image[1, 1, 0] == 255
    assert image[0, 1, 0] == round((2000 - 1000) * 255 / 4000)
    assert (image[..., 0] == image[..., 2]).all()


def test_constant_16_bit_image_decodes_to_black(tmp_path):
    Image.fromarray(np.full((3, 3), 4000, np.uint16)).save(tmp_path / "flat.png")
    assert (load_image(tmp_path / "flat.png") == 0).all()


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # red in CMYK
    image = load_image(tmp_path / "c.jpg")
    _check_rgb(image, (4, 6))
    red, green, blue = image.reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60


def test_exif_rotated_jpeg_is_returned_upright(tmp_path):
    pixels = np.zeros((4, 10, 3), np.uint8)  # stored 10 wide, 4 high
    pixels[:, :5] = 255  # left half white
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    image = load_image(tmp_path / "r.jpg")
    _check_rgb(image, (10, 4))
    # Rotating clockwise puts the stored left half at the top.
    assert image[:5].mean() > 200 and image[5:].mean() < 50


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    image = load_image(tmp_path / "one.png")
    _check_rgb(image, (1, 1))
    assert image[0, 0].tolist() == [1, 2, 3]


def test_unicode_and_space_in_path(tmp_path):
    folder = tmp_path / "Prüfung Ω bilder"
    folder.mkdir()
    path = folder / "kratzer 1 ü.png"
    Image.fromarray(_gradient()).save(path)
    np.testing.assert_array_equal(load_image(str(path)), _gradient())


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty"),
        ("notes.jpg", b"this is not an image\n" * 10, "not an image"),
    ],
)
def test_non_images_raise_decode_error_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert reason in str(info.value)


def test_truncated_jpeg_raises_decode_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_decode_error_naming_the_file(tmp_path):
    path = tmp_path / "gone.png"
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_image_over_max_pixels_is_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 10)).save(path)
    with pytest.raises(ImageDecodeError) as info:
        load_image(path, max_pixels=199)
    assert "20x10" in str(info.value) and str(path) in str(info.value)
    assert load_image(path, max_pixels=200).shape == (10, 20, 3)


def test_decode_record_turns_failures_into_sample_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    good = tmp_path / "good.png"
    Image.fromarray(_gradient()).save(good)
    failed = decode_record(Record(str(bad), label=1))
    assert failed.image is None
    assert not failed.ok
    assert str(bad) in failed.error
    decoded = decode_record(Record(str(good)))
    assert decoded.ok and decoded.image.shape == (6, 8, 3)


def test_decode_records_keeps_order_with_an_executor(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    records = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (i + 1, 2)).save(path)
        records.append(Record(str(path)))
    with ThreadPoolExecutor(2) as executor:
        samples = decode_records(records, executor)
    assert [s.image.shape[1] for s in samples] == [1, 2, 3, 4, 5]
    assert [s.record for s in samples] == records


def test_load_mask_thresholds_and_resizes(tmp_path):
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255
    mask[3, 3] = 100  # below the default threshold
    Image.fromarray(mask).save(tmp_path / "m.png")
    loaded = load_mask(tmp_path / "m.png")
    assert loaded.dtype == bool and loaded.sum() == 4
    resized = load_mask(tmp_path / "m.png", shape=(8, 8))
    assert resized.shape == (8, 8) and resized.sum() == 16


def test_is_image_file_checks_suffix_case_insensitively():
    assert is_image_file("a/B.JPG") and is_image_file("x.tiff")
    assert not is_image_file("notes.txt")
