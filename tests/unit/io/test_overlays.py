"""Overlay drawing, JPEG writing and overlay file names."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defectkit.io.overlays import (
    class_colour,
    draw_overlay,
    overlay_name,
    write_overlay,
)
from defectkit.sample import Instance, Record, Sample


def _sample(**kwargs) -> Sample:
    return Sample(Record("img.jpg"), **kwargs)


def _square(class_name: str = "scratch", score: float = 0.9) -> Instance:
    polygon = [[40, 60], [120, 60], [120, 140], [40, 140]]
    return Instance(class_name, score, (40, 60, 120, 140), 6400.0, polygon)


def test_overlay_draws_polygon_outline_in_class_colour():
    image = np.zeros((200, 200, 3), np.uint8)
    out = draw_overlay(image, _sample(instances=[_square("scratch")]))
    colour = np.array(class_colour("scratch"))
    # Middle of the right edge: far from the label tag and the header band.
    assert np.abs(out[100, 120].astype(int) - colour).max() <= 2
    # Inside the polygon nothing is filled when there is no mask.
    assert out[100, 80].tolist() == [0, 0, 0]


def test_overlay_draws_box_only_for_instances_without_polygon():
    image = np.zeros((200, 200, 3), np.uint8)
    boxed = Instance("dent", 0.7, (40, 60, 120, 140), 6400.0)
    out_box = draw_overlay(image, _sample(instances=[boxed]))
    assert np.abs(out_box[100, 120].astype(int) - np.array(class_colour("dent"))).max() <= 2

    # With a polygon, the box (which is larger here) must not be drawn.
    with_poly = Instance("dent", 0.7, (10, 60, 190, 190), 1.0, [[40, 60], [120, 60], [120, 140], [40, 140]])
    out_poly = draw_overlay(image, _sample(instances=[with_poly]))
    assert out_poly[120, 190].tolist() == [0, 0, 0]


def test_boxes_under_the_review_threshold_are_not_drawn_or_counted():
    image = np.zeros((200, 200, 3), np.uint8)
    shown = Instance("lesion", 0.6, (40, 60, 120, 140), 6400.0)
    hidden = Instance("lesion", 0.15, (40, 60, 120, 140), 6400.0, confident=False)
    out = draw_overlay(image, _sample(instances=[shown, hidden], gate_label="defect", gate_score=0.9))
    assert np.array_equal(out, draw_overlay(image, _sample(instances=[shown], gate_label="defect", gate_score=0.9)))
    alone = draw_overlay(image, _sample(instances=[hidden], gate_label="defect", gate_score=0.9))
    assert np.array_equal(alone, draw_overlay(image, _sample(instances=[], gate_label="defect", gate_score=0.9)))


def test_overlay_fills_masks_translucently_in_class_colour():
    image = np.full((64, 64, 3), 100, np.uint8)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 30:50, 5:25] = True
    masks[1, 30:50, 40:60] = True
    out = draw_overlay(image, _sample(masks=masks, map_classes=["scratch", "dent"]))
    for (y, x), name in (((40, 15), "scratch"), ((40, 50), "dent")):
        pixel = out[y, x].astype(int)
        colour = np.array(class_colour(name))
        assert not np.array_equal(pixel, [100, 100, 100])
        # Translucent: strictly between the photo and the pure class colour on a changed channel.
        expected = np.rint(100 * 0.6 + colour * 0.4)
        assert np.abs(pixel - expected).max() <= 1
    assert out[60, 30].tolist() == [100, 100, 100]


def test_overlay_class_colour_is_stable_and_distinguishes_classes():
    assert class_colour("scratch") == class_colour("scratch")
    assert len({class_colour(n) for n in ["scratch", "dent", "crack", "stain"]}) >= 3


def test_overlay_header_shows_gate_decision():
    image = np.full((120, 400, 3), 200, np.uint8)
    plain = draw_overlay(image, _sample())
    gated = draw_overlay(image, _sample(gate_label="defect", gate_score=0.87))
    # The header band is darkened and holds different text for a different decision.
    assert plain[2, 390].max() < 200
    assert not np.array_equal(plain[:20], gated[:20])
    assert np.array_equal(plain[60:], gated[60:])


def test_overlay_does_not_modify_input():
    image = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    before = image.copy()
    masks = np.ones((1, 50, 60), bool)
    sample = _sample(instances=[_square()], masks=masks, map_classes=["scratch"], gate_label="defect")
    out = draw_overlay(image, sample)
    assert np.array_equal(image, before)
    assert out is not image and out.shape == image.shape and out.dtype == np.uint8


@pytest.mark.parametrize("shape", [(1, 1, 3), (8, 8, 3), (1, 300, 3), (300, 1, 3)])
def test_overlay_handles_one_pixel_image(shape):
    image = np.zeros(shape, np.uint8)
    sample = _sample(
        instances=[_square(), Instance("dent", float("nan"), (0, 0, 1e12, -1e12), 1.0)],
        masks=np.ones((1,) + shape[:2], bool),
        map_classes=["scratch"],
        gate_label="defect",
        gate_score=0.5,
    )
    out = draw_overlay(image, sample)
    assert out.shape == shape


def test_overlay_handles_large_image_and_degenerate_geometry():
    image = np.zeros((3000, 4000, 3), np.uint8)
    weird = [
        Instance("a", 0.5, (0, 0, 0, 0), 0.0, [[5, 5]]),
        Instance("b", 0.5, (0, 0, 1, 1), 0.0, [[float("inf"), 1], [float("nan"), 2]]),
        Instance("c", 0.5, (-1e9, -1e9, 1e9, 1e9), 0.0),
        Instance("e", 0.5, (0, 0, 1, 1), 1.0, [[100, 1500], [1e12, 1500]]),
        Instance("d", 0.5, (10, 10, 20, 20), 1.0, [[1e30, -1e30], [0, 0], [3, 3]]),
    ]
    out = draw_overlay(image, _sample(instances=weird, gate_score=float("nan")))
    assert out.shape == image.shape
    # A line to a far-away vertex is clipped to the image, not wrapped around by int32 overflow.
    assert out[1500, 100:3990].any(axis=1).all()


def test_overlay_resizes_masks_of_another_resolution():
    image = np.zeros((40, 40, 3), np.uint8)
    masks = np.ones((1, 10, 10), bool)
    out = draw_overlay(image, _sample(masks=masks, map_classes=[]))
    assert out[30, 30].any()


def test_overlay_is_written_as_jpeg_to_unicode_path_with_spaces(tmp_path):
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, :, 0] = 255  # pure red in RGB
    path = tmp_path / "dossier été" / "ligne 1 ✓.jpg"
    returned = write_overlay(path, image)
    assert returned == path
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (32, 48, 3)
    b, g, r = decoded[16, 24].tolist()
    assert r > 200 and g < 50 and b < 50  # channels were swapped to BGR before encoding
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_overlay_write_rejects_empty_image(tmp_path):
    with pytest.raises(ValueError):
        write_overlay(tmp_path / "x.jpg", np.zeros((0, 5, 3), np.uint8))


def test_overlay_names_differ_for_same_stem_in_different_folders():
    a = overlay_name("lot1/img.jpg")
    b = overlay_name("lot2/img.jpg")
    assert a != b
    assert a.startswith("img_") and a.endswith(".jpg")
    assert overlay_name("lot1/img.jpg") == a


@pytest.mark.parametrize(
    "path",
    ["a b/c d.png", "x/ärger ü.JPG", "..\\evil\\..\\name.png", "/tmp/日本語.jpg", "", ".hidden", "a/<b>|:*?.png"],
)
def test_overlay_names_are_filesystem_safe(path):
    name = overlay_name(path)
    assert name.endswith(".jpg")
    assert name.isascii()
    assert not name.startswith(".")
    assert all(c.isalnum() or c in "._-" for c in name)
    assert len(name) <= 80


def test_header_text_fits_a_narrow_image():
    from defectkit.sample import Record, Sample

    sample = Sample(Record("x.png"), image=np.full((128, 128, 3), 120, np.uint8), gate_label="defect", gate_score=0.73)
    out = draw_overlay(sample.image, sample)
    header = out[:20].astype(int)
    # Text pixels are white; the rightmost column of the header stays free of text.
    bright = (header > 200).all(axis=2)
    assert bright.any()
    assert not bright[:, -3:].any()
