"""RoiCrop: the inner stage sees only the region of interest; its results land in image coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from defectkit.errors import ConfigError
from defectkit.sample import Detections, Instance, Record, Roi, Sample
from defectkit.stages.base import Detects
from defectkit.stages.roi_crop import RoiCrop


class CropRecorder:
    """Inner stage double: a map of ones over its input, one instance in its top-left corner."""

    classes = ["dent"]

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def predict(self, samples: list[Sample]) -> list[Sample]:
        for sample in samples:
            height, width = sample.image.shape[:2]
            self.shapes.append((height, width))
            sample.prob_maps = np.ones((1, height, width), np.float32)
            sample.map_classes = ["dent"]
            sample.instances = [Instance("dent", 0.9, (0.0, 0.0, 5.0, 4.0), 20.0, [[0.0, 0.0], [4.0, 0.0], [4.0, 3.0]])]
        return samples


class FixedLocalizer(Detects):
    classes = ["car", "person"]

    def __init__(self, boxes: list[list[float]], scores: list[float], labels: list[int]) -> None:
        self.found = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(labels, np.int64))

    def detect(self, images):
        return [self.found for _ in images]


def _sample(meta: dict | None = None, shape: tuple[int, int] = (60, 80), scale: float = 1.0) -> Sample:
    return Sample(record=Record(path="car.jpg", meta=meta or {}), image=np.zeros((*shape, 3), np.uint8), scale=scale)


def test_given_box_crops_the_inner_input_and_pastes_maps_back_with_zeros_outside():
    inner = CropRecorder()
    (sample,) = RoiCrop(inner=inner, margin=0.0).predict([_sample({"roi": [10, 20, 50, 40]})])
    assert inner.shapes == [(20, 40)]
    assert sample.prob_maps.shape == (1, 60, 80)
    assert sample.prob_maps[0, 20:40, 10:50].min() == 1.0 and sample.prob_maps.sum() == 20 * 40
    assert sample.roi == Roi((10, 20, 50, 40), "record")


def test_instances_are_shifted_back_to_image_coordinates():
    (sample,) = RoiCrop(inner=CropRecorder(), margin=0.0).predict([_sample({"roi": [10, 20, 50, 40]})])
    (instance,) = sample.instances
    assert instance.box == (10.0, 20.0, 15.0, 24.0)
    assert instance.polygon[2] == [14.0, 23.0]


def test_margin_grows_the_box_and_stays_inside_the_image():
    inner = CropRecorder()
    (sample,) = RoiCrop(inner=inner, margin=0.25).predict([_sample({"roi": [0, 20, 40, 40]})])
    assert sample.roi.box == (0, 15, 50, 45)


def test_given_box_in_original_pixels_follows_a_reduced_decode():
    (sample,) = RoiCrop(inner=CropRecorder(), margin=0.0).predict([_sample({"roi": [20, 40, 100, 80]}, scale=0.5)])
    assert sample.roi.box == (10, 20, 50, 40)


def test_localizer_box_of_the_wanted_class_is_used_when_the_record_has_none():
    localizer = FixedLocalizer([[0, 0, 30, 30], [5, 5, 45, 35], [0, 0, 80, 60]], [0.9, 0.8, 0.95], [1, 0, 1])
    inner = CropRecorder()
    (sample,) = RoiCrop(inner=inner, localizer=localizer, localizer_class="car", margin=0.0).predict([_sample()])
    assert sample.roi == Roi((5, 5, 45, 35), "localizer")


def test_without_a_confident_box_the_whole_image_is_used():
    localizer = FixedLocalizer([[5, 5, 45, 35]], [0.1], [0])
    inner = CropRecorder()
    (sample,) = RoiCrop(inner=inner, localizer=localizer, min_score=0.5).predict([_sample()])
    assert sample.roi.source == "whole image" and inner.shapes == [(60, 80)]


def test_unknown_localizer_class_is_a_config_error():
    localizer = FixedLocalizer([[5, 5, 45, 35]], [0.9], [0])
    with pytest.raises(ConfigError, match="'truck'"):
        RoiCrop(inner=CropRecorder(), localizer=localizer, localizer_class="truck").predict([_sample()])


def test_malformed_given_box_names_the_image():
    with pytest.raises(ValueError, match="car.jpg"):
        RoiCrop(inner=CropRecorder()).predict([_sample({"roi": "left half"})])


def test_roi_crop_cannot_wrap_itself():
    with pytest.raises(ConfigError, match="cannot wrap"):
        RoiCrop(inner=dict(type="RoiCrop"))
