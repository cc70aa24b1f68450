"""SAHI adapter: a defectkit detector driven by SAHI's own sliced prediction (needs the [sahi] extra)."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
from scipy import ndimage

from defectkit.sample import Detections, Record, Sample
from defectkit.stages.base import Detects
from defectkit.stages.tiling import Tiling

SAHI_MISSING = importlib.util.find_spec("sahi") is None
needs_sahi = pytest.mark.skipif(SAHI_MISSING, reason="sahi is not installed (optional [sahi] extra)")


class BrightBoxDetector(Detects):
    """A detector double: one "dent" box per connected region of 255 in the red channel, scoring
    higher the more of the region the image shows; records the batch sizes it is called with."""

    classes = ["dent"]

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        self.batch_sizes.append(len(images))
        out = []
        for image in images:
            regions, _ = ndimage.label(image[..., 0] == 255)
            boxes = [[c.start, r.start, c.stop, r.stop] for r, c in ndimage.find_objects(regions)]
            if not boxes:
                out.append(Detections.empty())
                continue
            scores = [min(0.99, 0.3 + (x2 - x1) * (y2 - y1) / 10000) for x1, y1, x2, y2 in boxes]
            out.append(Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32),
                                  np.zeros(len(boxes), np.int64)))
        return out


def image_with_defect(box: tuple[int, int, int, int], height: int = 100, width: int = 250) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2, 0] = 255
    return image


@pytest.mark.skipif(not SAHI_MISSING, reason="sahi is installed, so the adapter imports")
def test_without_sahi_the_adapter_names_the_extra_to_install():
    with pytest.raises(ImportError, match=r"\[sahi\] extra"):
        importlib.import_module("defectkit.integrations.sahi")


@needs_sahi
def test_sahi_sliced_prediction_with_a_defectkit_detector_matches_the_tiling_stage():
    from sahi.predict import get_sliced_prediction

    from defectkit.integrations.sahi import DefectkitDetectionModel

    image = image_with_defect((40, 40, 200, 60))  # wider than a slice, cut by every slice border
    detector = BrightBoxDetector()
    model = DefectkitDetectionModel(detector, confidence_threshold=0.3)
    assert model.category_names == ["dent"] and model.num_categories == 1
    result = get_sliced_prediction(
        image, model, slice_height=100, slice_width=100, overlap_height_ratio=0.2, overlap_width_ratio=0.2,
        perform_standard_pred=True, postprocess_type="GREEDYNMM", postprocess_match_metric="IOS",
        postprocess_match_threshold=0.5, force_postprocess_type=True, verbose=0, batch_size=3,
    )
    assert detector.batch_sizes[0] == 3  # SAHI's batch went to the detector in one call
    sahi_boxes = sorted(p.bbox.to_xyxy() for p in result.object_prediction_list)
    tiling = Tiling(inner=BrightBoxDetector(), slice_size=100, overlap=0.2)
    sample = tiling.predict([Sample(Record("x.png"), image=image)])[0]
    assert sahi_boxes == sorted(list(inst.box) for inst in sample.instances) == [[40.0, 40.0, 200.0, 60.0]]


@needs_sahi
def test_the_adapter_shifts_slice_boxes_to_image_coordinates_and_drops_low_scores():
    from defectkit.integrations.sahi import DefectkitDetectionModel

    model = DefectkitDetectionModel(BrightBoxDetector(), confidence_threshold=0.31)
    model.perform_batch_inference([image_with_defect((5, 5, 25, 15), 50, 50), image_with_defect((1, 1, 3, 3), 50, 50)])
    model.convert_original_predictions(shift_amount=[[100, 200], [0, 0]], full_shape=[[500, 500], [500, 500]])
    first, second = model.object_prediction_list_per_image
    assert [p.get_shifted_object_prediction().bbox.to_xyxy() for p in first] == [[105, 205, 125, 215]]
    assert second == []  # 4 px box scores 0.3004


def test_a_non_detector_is_refused():
    pytest.importorskip("sahi", reason="sahi is not installed (optional [sahi] extra)")
    from defectkit.integrations.sahi import DefectkitDetectionModel

    with pytest.raises(TypeError, match="not a defectkit detector"):
        DefectkitDetectionModel(object())
