"""Per-image evaluation records."""

from __future__ import annotations

import numpy as np
from PIL import Image

from defectkit.evaluation.records import PIXEL_BINS, dense_hist, make_eval_record
from defectkit.sample import Record, Sample

SQUARE = [[[2, 2], [5, 2], [5, 5], [2, 5]]]  # 16 pixels


def _sample(record: Record, **kwargs) -> Sample:
    return Sample(record, image=np.zeros((10, 10, 3), np.uint8), **kwargs)


def test_record_of_errored_sample_carries_error_and_no_scores():
    sample = Sample(Record("bad.jpg", label=1), error="bad.jpg: empty file")
    out = make_eval_record(sample, ["defect"])
    assert out["error"] == "bad.jpg: empty file"
    assert "score" not in out and "pixel" not in out


def test_gate_label_other_than_normal_is_a_positive_prediction():
    for gate_label, expected in [("normal", 0), ("defect", 1), ("scratch", 1)]:
        out = make_eval_record(_sample(Record("a.png", label=1), gate_label=gate_label, gate_score=0.3), [])
        assert out["pred"] == expected
        assert out["score"] == 0.3


def test_positive_labels_restrict_what_counts_as_defect():
    out = make_eval_record(_sample(Record("a.png"), gate_label="suspect"), [], positive_labels={"defect"})
    assert out["pred"] == 0


def test_sample_finished_by_gate_counts_no_predicted_pixels():
    record = Record("a.png", label=1, polygons={"defect": [SQUARE]})
    prob = np.full((1, 10, 10), 0.9, np.float32)  # the gate's map is hot everywhere
    sample = _sample(record, prob_maps=prob, map_classes=["defect"], finished=True, gate_label="normal")
    stats = make_eval_record(sample, ["defect"])["pixel"]["defect"]
    assert stats["pred_pixels"] == 0
    assert stats["intersection"] == 0
    assert stats["union"] == stats["gt_pixels"] == 16
    # The map still feeds pixel AUROC.
    assert dense_hist(stats["pos_hist"]).sum() == 16
    assert dense_hist(stats["neg_hist"]).sum() == 84


def test_unfinished_sample_without_masks_thresholds_its_map_at_one_half():
    record = Record("a.png", label=1, polygons={"defect": [SQUARE]})
    prob = np.zeros((1, 10, 10), np.float32)
    prob[0, 2:6, 2:4] = 0.9  # 8 of the 16 ground-truth pixels
    sample = _sample(record, prob_maps=prob, map_classes=["defect"])
    stats = make_eval_record(sample, ["defect"])["pixel"]["defect"]
    assert (stats["intersection"], stats["union"], stats["pred_pixels"]) == (8, 16, 8)


def test_masks_take_precedence_over_maps_and_channels_follow_map_classes():
    record = Record("a.png", label=1, polygons={"dent": [SQUARE]})
    masks = np.zeros((2, 10, 10), bool)
    masks[1, 2:6, 2:6] = True  # channel 1 is "dent"
    sample = _sample(record, masks=masks, map_classes=["scratch", "dent"])
    pixel = make_eval_record(sample, ["dent", "scratch"])["pixel"]
    assert pixel["dent"]["intersection"] == 16 and pixel["dent"]["union"] == 16
    assert pixel["scratch"]["gt_pixels"] == 0 and pixel["scratch"]["pred_pixels"] == 0
    assert "pos_hist" not in pixel["dent"]


def test_normal_image_without_annotations_has_empty_ground_truth():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 0:2, 0:2] = True
    sample = _sample(Record("n.png", label=0), masks=masks, map_classes=["defect"])
    stats = make_eval_record(sample, ["defect"])["pixel"]["defect"]
    assert stats["gt_pixels"] == 0
    assert stats["union"] == stats["pred_pixels"] == 4


def test_defect_image_without_any_annotation_gets_no_pixel_stats():
    sample = _sample(Record("d.png", label=1), masks=np.zeros((1, 10, 10), bool), map_classes=["defect"])
    assert "pixel" not in make_eval_record(sample, ["defect"])


def test_mask_file_ground_truth_is_read(tmp_path):
    truth = np.zeros((10, 10), np.uint8)
    truth[0:3, 0:3] = 255
    Image.fromarray(truth).save(tmp_path / "m.png")
    record = Record("a.png", label=1, mask_path=str(tmp_path / "m.png"))
    stats = make_eval_record(_sample(record), ["defect"])["pixel"]["defect"]
    assert stats["gt_pixels"] == 9


def test_degenerate_polygons_are_listed_as_problems():
    record = Record("a.png", label=1, polygons={"defect": [[[[1, 1], [2, 2]]]]})
    out = make_eval_record(_sample(record, masks=np.zeros((1, 10, 10), bool), map_classes=["defect"]), ["defect"])
    assert len(out["problems"]) == 1 and "a.png" in out["problems"][0]


def test_histograms_bin_probability_one_into_the_last_bin():
    record = Record("a.png", label=0)
    prob = np.ones((1, 10, 10), np.float32)
    stats = make_eval_record(_sample(record, prob_maps=prob, map_classes=["defect"]), ["defect"])["pixel"]["defect"]
    assert stats["neg_hist"] == [[PIXEL_BINS - 1, 100]]
    assert stats["pos_hist"] == []
