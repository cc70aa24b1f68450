"""Large photos: decoded at a bounded working size, reported in original coordinates; bombs refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from defectkit.errors import ImageDecodeError
from defectkit.io import images
from defectkit.io.images import DEFAULT_MAX_SIDE, decode_record, load_image, read_image
from defectkit.polygons import mask_to_polygons
from defectkit.sample import Instance, Record, Sample
from defectkit.stages.mask_policy import MaskPolicy

# A bright square on a dark 6000x4000 photo, in original pixel coordinates (x1, y1, x2, y2).
SQUARE = (3000, 1000, 3600, 1600)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big photo 6000x4000.jpg"
    x1, y1, x2, y2 = SQUARE
    image = np.full((4000, 6000, 3), 20, np.uint8)
    image[y1:y2, x1:x2] = 235
    Image.fromarray(image).save(path, quality=90)
    return path


def test_large_jpeg_is_decoded_at_reduced_size(big_jpeg):
    decoded = read_image(big_jpeg, max_side=DEFAULT_MAX_SIDE)
    assert decoded.original_size == (4000, 6000)
    assert max(decoded.image.shape[:2]) == DEFAULT_MAX_SIDE
    assert decoded.image.shape == (round(4000 * DEFAULT_MAX_SIDE / 6000), DEFAULT_MAX_SIDE, 3)
    assert decoded.scale == pytest.approx(DEFAULT_MAX_SIDE / 6000)
    # Without a limit the full image comes back (backwards compatible default).
    assert load_image(big_jpeg).shape == (4000, 6000, 3)


def test_draft_decoding_reads_the_jpeg_at_a_fraction_of_its_size(big_jpeg):
    # max_side=1000 lets libjpeg decode at 1/4 (1500x1000) instead of 6000x4000 pixels.
    decoded = read_image(big_jpeg, max_side=1000)
    assert decoded.image.shape == (667, 1000, 3)
    x1, y1, x2, y2 = (round(v / 6) for v in SQUARE)
    assert decoded.image[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].mean() > 200
    assert decoded.image[: y1 - 3].mean() < 40


def test_decode_record_records_the_scale(big_jpeg):
    sample = decode_record(Record(str(big_jpeg)))
    assert sample.ok
    assert sample.original_size == (4000, 6000)
    assert sample.scale == pytest.approx(DEFAULT_MAX_SIDE / 6000)
    small = decode_record(Record(str(big_jpeg)), max_side=None)
    assert small.scale == 1.0 and small.image.shape == (4000, 6000, 3)


def test_predictions_are_reported_in_original_coordinates(big_jpeg):
    sample = decode_record(Record(str(big_jpeg)), max_side=1500)
    assert sample.image.shape[:2] == (1000, 1500)
    # What a gate would leave: a probability map at working size, bright where the square is.
    sample.prob_maps = (sample.image[..., 0] > 128).astype(np.float32)[None]
    sample.map_classes = ["defect"]
    MaskPolicy(rules=dict(defect=dict(threshold=0.5, polygon_epsilon=0.0))).predict([sample])
    assert len(sample.instances) == 1

    line = sample.to_prediction()
    assert (line["height"], line["width"]) == (4000, 6000)
    assert line["scale"] == pytest.approx(0.25)
    (inst,) = line["instances"]
    x1, y1, x2, y2 = SQUARE
    assert inst["box"] == pytest.approx([x1, y1, x2, y2], abs=8)
    xs = [p[0] for p in inst["polygon"]]
    ys = [p[1] for p in inst["polygon"]]
    assert min(xs) == pytest.approx(x1, abs=8) and max(xs) == pytest.approx(x2 - 1, abs=8)
    assert min(ys) == pytest.approx(y1, abs=8) and max(ys) == pytest.approx(y2 - 1, abs=8)
    assert inst["area"] == pytest.approx(600 * 600, rel=0.05)


def test_instance_scaling_maps_pixel_centres_and_edges():
    inst = Instance("dent", 0.9, (2.0, 4.0, 6.0, 8.0), 16.0, [[0.0, 0.0], [3.0, 0.0], [3.0, 3.0]])
    scaled = inst.scaled(4.0, 2.0)
    assert scaled.box == (8.0, 8.0, 24.0, 16.0)
    assert scaled.area == 16.0 * 8
    # Pixel 0 of the reduced image covers original pixels 0..3 (centre 1.5) along x, 0..1 along y.
    assert scaled.polygon[0] == [1.5, 0.5]
    assert scaled.polygon[1] == [13.5, 0.5]
    assert inst.scaled(1.0, 1.0) is inst


def test_full_size_sample_reports_its_own_size_without_scale():
    sample = Sample(Record("a.png"), image=np.zeros((5, 7, 3), np.uint8))
    sample.instances = [Instance("x", 0.5, (1, 1, 3, 3), 4, [[1, 1], [2, 1], [2, 2]])]
    line = sample.to_prediction()
    assert (line["height"], line["width"]) == (5, 7)
    assert "scale" not in line
    assert line["instances"][0]["polygon"] == [[1.0, 1.0], [2.0, 1.0], [2.0, 2.0]]


def test_large_png_is_reduced_after_decoding(tmp_path):
    path = tmp_path / "wide.png"
    image = np.zeros((300, 1200), np.uint16)
    image[:, 600:] = 4000  # 16-bit: right half bright after stretching
    Image.fromarray(image).save(path)
    decoded = read_image(path, max_side=400)
    assert decoded.image.shape == (100, 400, 3) and decoded.original_size == (300, 1200)
    assert decoded.image[:, :190].max() == 0 and decoded.image[:, 210:].min() == 255


def test_exif_rotated_large_jpeg_reports_upright_original_size(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1600x800, displayed 800x1600
    Image.new("RGB", (1600, 800), (90, 90, 90)).save(path, exif=exif.tobytes())
    decoded = read_image(path, max_side=400)
    assert decoded.original_size == (1600, 800)
    assert decoded.image.shape == (400, 200, 3)


def test_image_above_max_pixels_becomes_an_error_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 50_000)  # the module limit is read at call time
    with pytest.raises(ImageDecodeError, match="300x200 pixels exceeds the limit of 50000"):
        load_image(path)
    sample = decode_record(Record(str(path)))
    assert not sample.ok and "exceeds the limit" in sample.error and str(path) in sample.error
    line = sample.to_prediction()
    assert line["status"] == "error" and "300x200" in line["error"]
    # The explicit argument still wins.
    assert load_image(path, max_pixels=60_000).shape == (200, 300, 3)


def test_mask_to_polygons_of_reduced_mask_round_trips_through_scaling():
    # A reduced 1/2 mask's instance maps back onto the original square up to the reduction.
    mask = np.zeros((20, 20), bool)
    mask[4:10, 6:12] = True
    (ring,) = mask_to_polygons(mask)
    inst = Instance("d", 1.0, (6, 4, 12, 10), 36, ring).scaled(2.0, 2.0)
    assert inst.box == (12, 8, 24, 20)
    xs = [p[0] for p in inst.polygon]
    assert min(xs) == 12.5 and max(xs) == 22.5


def test_corrupt_exif_block_does_not_stop_decoding(tmp_path):
    path = tmp_path / "bad exif.jpg"
    garbage = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x12\x01\x03\x00" * 8
    Image.new("RGB", (12, 8), (50, 60, 70)).save(path, exif=garbage)
    assert load_image(path).shape == (8, 12, 3)


def test_unexpected_decoder_exceptions_become_sample_errors(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)

    def broken(*args, **kwargs):
        raise TypeError("decoder bug")

    monkeypatch.setattr(images, "_to_rgb_array", broken)
    with pytest.raises(ImageDecodeError, match="TypeError: decoder bug"):
        load_image(path)
    sample = decode_record(Record(str(path)))
    assert not sample.ok and "decoder bug" in sample.error
