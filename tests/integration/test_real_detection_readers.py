"""Box readers against the real data in ../shared/data (skipped where it is absent).

Counts are those of acne04's SOURCE.md ("Split used here": the development part, ``valid/``).
"""

from __future__ import annotations

from collections import Counter

import pytest

from defectkit.data.voc import VocBoxes

pytestmark = pytest.mark.real_data

# acne04's four object names encode the image's severity grade, not the lesion type (SOURCE.md),
# so it is evaluated as one class.
ACNE_AS_ONE_CLASS = dict(classes=["lesion"], label_map={"*": "lesion"}, group_pattern=r"levle\d+_\d+")


def test_acne04_valid_has_283_images_and_3425_lesion_boxes(real_data) -> None:
    reader = VocBoxes(real_data("acne04") / "valid", **ACNE_AS_ONE_CLASS)
    records = reader.records()

    assert len(records) == 283
    assert sum(len(r.boxes) for r in records) == 3425
    assert {box[0] for r in records for box in r.boxes} == {"lesion"}
    assert all(r.label == 1 and r.category == "lesion" for r in records)
    assert reader.problems == []
    assert reader.stats.get("clipped_boxes", 0) == 0


def test_acne04_boxes_lie_inside_their_640_pixel_images(real_data) -> None:
    records = VocBoxes(real_data("acne04") / "valid", **ACNE_AS_ONE_CLASS).records()
    assert {(r.meta["width"], r.meta["height"]) for r in records} == {(640, 640)}
    for record in records:
        for _, x1, y1, x2, y2 in record.boxes:
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 640


def test_acne04_source_labels_are_one_severity_grade_per_image(real_data) -> None:
    grades = ["whitehead and blackhead", "pustules", "papules", "nodules and cysts"]
    reader = VocBoxes(real_data("acne04") / "valid", classes=grades, group_pattern=r"levle\d+_\d+")
    records = reader.records()

    assert all(len({box[0] for box in r.boxes}) == 1 for r in records)
    assert Counter(box[0] for r in records for box in r.boxes) == {
        "whitehead and blackhead": 224,
        "pustules": 1102,
        "papules": 914,
        "nodules and cysts": 1185,
    }
    assert reader.class_image_counts == {"whitehead and blackhead": 106, "pustules": 118, "papules": 37, "nodules and cysts": 22}
    assert all(r.group is not None and r.group.startswith("levle") for r in records)
