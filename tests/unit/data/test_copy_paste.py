"""CopyPaste: pasted objects land inside the image, on free ground, with their boxes, masks and labels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defectkit.data.copy_paste import CopyPaste, boxes_and_labels
from defectkit.errors import ConfigError

OBJECT = 250  # grey level of pasted objects; nothing else in these scenes is this bright
BACKGROUND = 100


def _source(box: tuple[int, int, int, int], size: tuple[int, int] = (40, 50)) -> np.ndarray:
    """A black image with a uniformly bright object filling ``box``."""
    image = np.zeros((*size, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = OBJECT
    return image


def _target(size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.full((*size, 3), BACKGROUND, np.uint8)


def _no_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


def _bank(labels: list[int], **options) -> CopyPaste:
    """One source image per label, each with one 8x6 object near its top-left corner."""
    box = (2, 3, 10, 9)
    images = [_source(box) for _ in labels]
    return CopyPaste.from_items(images, [[box]] * len(labels), [[label] for label in labels], **options)


def _overlaps(a: np.ndarray, b: np.ndarray, margin: float = 0.0) -> bool:
    return bool(a[0] - margin < b[2] and b[0] < a[2] + margin and a[1] - margin < b[3] and b[1] < a[3] + margin)


def _touched_pixels(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    touched = np.zeros(size, bool)
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    touched[max(y1, 0):int(np.ceil(box[3])), max(x1, 0):int(np.ceil(box[2]))] = True
    return touched


def test_a_paste_appends_the_object_box_and_label_and_keeps_the_existing_ones() -> None:
    paste = _bank([3], p=1.0, max_pastes=1, seed=0)
    existing = np.array([[40.0, 40.0, 60.0, 60.0]])

    image, boxes, labels, masks = paste(_target(), existing, [1])

    assert boxes.dtype == np.float32 and boxes.shape == (2, 4) and labels.dtype == np.int64
    assert np.array_equal(boxes[0], existing[0]) and labels.tolist() == [1, 3]
    assert masks is None
    x1, y1, x2, y2 = boxes[1]
    assert sorted((x2 - x1, y2 - y1)) == pytest.approx([6, 8], abs=2)  # the 8x6 object, turned and resized


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(12, 80),
    width=st.integers(12, 80),
    scale=st.floats(0.3, 3.0),
    context=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_pasted_boxes_always_lie_inside_the_image(height: int, width: int, scale: float, context: int, seed: int) -> None:
    paste = _bank([0, 1, 2], p=1.0, max_pastes=5, scale_range=(scale, scale * 1.5), context_px=context, seed=seed)

    _, boxes, _, _ = paste(_target((height, width)), *_no_boxes())

    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= width) and np.all(boxes[:, 3] <= height)
    assert np.all(boxes[:, 2:] > boxes[:, :2])


@st.composite
def _layouts(draw: st.DrawFn) -> tuple[np.ndarray, float, int]:
    """Random existing boxes (float corners, possibly overlapping each other) on a 64x64 image."""
    count = draw(st.integers(0, 8))
    boxes = []
    for _ in range(count):
        x1, y1 = draw(st.floats(0, 56)), draw(st.floats(0, 56))
        boxes.append([x1, y1, x1 + draw(st.floats(1, 30)), y1 + draw(st.floats(1, 30))])
    return np.asarray(boxes, np.float64).reshape(-1, 4), draw(st.floats(0, 4)), draw(st.integers(0, 2**16))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=_layouts())
def test_copy_paste_never_pastes_over_existing_boxes(layout: tuple[np.ndarray, float, int]) -> None:
    existing, margin, seed = layout
    paste = _bank([0, 1], p=1.0, max_pastes=6, scale_range=(0.5, 2.0), margin_px=margin, seed=seed)
    image = _target()

    out, boxes, _, _ = paste(image, existing, np.zeros(len(existing), np.int64))

    pasted = boxes[len(existing):]
    for new in pasted:
        assert not any(_overlaps(new, old, margin) for old in existing)
    for i, first in enumerate(pasted):
        assert not any(_overlaps(first, second) for second in pasted[i + 1:])
    for old in existing:
        under = _touched_pixels(old, image.shape[:2])
        assert np.array_equal(out[under], image[under])


def test_an_image_without_room_gets_no_paste() -> None:
    paste = _bank([0, 1], p=1.0, max_pastes=3, max_tries=50, seed=0)
    image = _target((32, 32))
    covering = np.array([[0.0, 0.0, 32.0, 32.0]])

    out, boxes, labels, _ = paste(image, covering, [0])

    assert out is image and len(boxes) == 1 and labels.tolist() == [0]


def test_an_image_smaller_than_every_patch_gets_no_paste() -> None:
    paste = _bank([0], p=1.0, scale_range=(2.0, 2.0), seed=0)

    out, boxes, _, _ = paste(_target((6, 6)), *_no_boxes())

    assert len(boxes) == 0 and np.array_equal(out, _target((6, 6)))


@pytest.mark.parametrize("seed", range(12))
def test_box_only_pastes_box_exactly_the_pasted_object_under_flips_and_turns(seed: int) -> None:
    # The source object sits in its image's corner, so its context is cut off on two sides: a
    # flip or turn that moved the box wrongly would show as a box off the object.
    source_box = (0, 0, 9, 5)
    paste = CopyPaste.from_items([_source(source_box)], [[source_box]], [[4]], p=1.0, max_pastes=1,
                                 scale_range=(1.0, 1.0), context_px=3, seed=seed)

    out, boxes, _, _ = paste(_target(), *_no_boxes())

    rows, cols = np.nonzero(out[..., 0] == OBJECT)
    assert boxes[0].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_box_only_pastes_fade_into_their_surroundings_instead_of_a_hard_seam() -> None:
    uniform = np.full((30, 30, 3), OBJECT, np.uint8)
    paste = CopyPaste.from_items([uniform], [[(10, 10, 20, 20)]], [[0]], p=1.0, max_pastes=1,
                                 scale_range=(1.0, 1.0), flip=False, rotate=False, context_px=4, seed=0)

    out, boxes, _, _ = paste(_target(), *_no_boxes())

    x1, y1, x2, y2 = boxes[0].astype(int)
    assert np.all(out[y1:y2, x1:x2] == OBJECT)
    ring = out[y1 - 2, x1:x2, 0]
    assert np.all((ring > BACKGROUND) & (ring < OBJECT))


def test_ellipse_alpha_leaves_the_box_corners_to_the_target() -> None:
    uniform = np.full((30, 30, 3), OBJECT, np.uint8)
    paste = CopyPaste.from_items([uniform], [[(5, 5, 25, 25)]], [[0]], p=1.0, max_pastes=1, scale_range=(1.0, 1.0),
                                 flip=False, rotate=False, context_px=0, box_alpha="ellipse", seed=0)

    out, boxes, _, _ = paste(_target(), *_no_boxes())

    x1, y1, x2, y2 = boxes[0].astype(int)
    assert out[y1, x1, 0] == BACKGROUND and out[(y1 + y2) // 2, (x1 + x2) // 2, 0] == OBJECT


def _masked_source() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """An L-shaped object of class channel 1 inside its box, on a two-channel mask."""
    image = np.zeros((40, 40, 3), np.uint8)
    masks = np.zeros((2, 40, 40), bool)
    masks[1, 10:22, 10:14] = True
    masks[1, 18:22, 10:20] = True
    image[masks[1]] = OBJECT
    return image, masks, (9, 9, 21, 23)


@pytest.mark.parametrize("seed", range(8))
def test_masks_are_pasted_and_the_pasted_mask_fills_exactly_the_new_box(seed: int) -> None:
    image, masks, box = _masked_source()
    paste = CopyPaste.from_items([image], [[box]], [[1]], masks_per_image=[masks], p=1.0, max_pastes=1,
                                 scale_range=(1.0, 1.0), seed=seed)
    target_masks = np.zeros((2, 64, 64), bool)

    out, boxes, labels, out_masks = paste(_target(), *_no_boxes(), masks=target_masks)

    assert out_masks.dtype == bool and out_masks.shape == target_masks.shape and labels.tolist() == [1]
    rows, cols = np.nonzero(out_masks[1])
    assert boxes[0].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    assert out_masks[1].sum() == masks[1].sum() and not out_masks[0].any()
    assert np.array_equal(out[..., 0] == OBJECT, out_masks[1])  # the mask sits on the pasted pixels


def test_resized_masks_keep_their_values_and_box() -> None:
    image, masks, box = _masked_source()
    label_map = masks[1].astype(np.uint8) * 7
    paste = CopyPaste.from_items([image], [[box]], [[1]], masks_per_image=[label_map], p=1.0, max_pastes=1,
                                 scale_range=(1.7, 1.7), seed=3)

    _, boxes, _, out_masks = paste(_target(), *_no_boxes(), masks=np.zeros((64, 64), np.uint8))

    assert set(np.unique(out_masks)) == {0, 7}
    rows, cols = np.nonzero(out_masks)
    assert boxes[0].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_masks_with_a_box_only_bank_are_rejected() -> None:
    paste = _bank([0], p=1.0)

    with pytest.raises(ValueError, match="box-only"):
        paste(_target(), *_no_boxes(), masks=np.zeros((64, 64), bool))


def test_a_bank_mixing_masked_and_box_only_sources_is_rejected() -> None:
    image, masks, box = _masked_source()
    paste = CopyPaste()
    paste.add_source(image, [box], [1], mask=masks)

    with pytest.raises(ValueError, match="same mask layout"):
        paste.add_source(image, [box], [1])


def test_balance_classes_pastes_rare_classes_more_often() -> None:
    labels = [0] * 20 + [1] * 2
    plain = _bank(labels, p=1.0, max_pastes=1, seed=0)
    balanced = _bank(labels, p=1.0, max_pastes=1, balance_classes=True, seed=0)

    def rare_share(paste: CopyPaste) -> float:
        pasted = Counter(int(paste(_target(), *_no_boxes())[2][0]) for _ in range(300))
        return pasted[1] / sum(pasted.values())

    assert rare_share(plain) < 0.2 < 0.35 < rare_share(balanced)


def test_class_weights_choose_which_classes_are_pasted() -> None:
    paste = _bank([0, 0, 1, 2], p=1.0, max_pastes=1, class_weights={0: 0.0, 1: 0.0}, seed=0)

    pasted = {int(paste(_target(), *_no_boxes())[2][0]) for _ in range(30)}

    assert pasted == {2}


def test_same_seed_gives_the_same_pastes_and_another_seed_different_ones() -> None:
    def run(seed: int) -> list[np.ndarray]:
        paste = _bank([0, 1, 2], p=0.7, max_pastes=3, seed=seed)
        return [paste(_target(), *_no_boxes())[1] for _ in range(5)]

    first, again, other = run(5), run(5), run(6)

    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first, other))


def test_a_call_rng_makes_the_result_independent_of_earlier_calls() -> None:
    paste = _bank([0, 1, 2], p=1.0, max_pastes=3, seed=0)
    before = paste(_target(), *_no_boxes(), rng=np.random.default_rng(42))
    paste(_target(), *_no_boxes())

    after = paste(_target(), *_no_boxes(), rng=np.random.default_rng(42))

    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_the_source_images_own_patches_are_excluded_when_asked() -> None:
    paste = _bank([0, 1, 2], p=1.0, max_pastes=3, seed=0)

    pasted = set()
    for _ in range(40):
        pasted |= set(paste(_target(), *_no_boxes(), source_id=1)[2].tolist())

    assert pasted == {0, 2}


def test_a_bank_holding_only_the_images_own_patches_pastes_nothing() -> None:
    paste = _bank([5], p=1.0, seed=0)

    _, boxes, _, _ = paste(_target(), *_no_boxes(), source_id=0)

    assert len(boxes) == 0


def test_region_mask_confines_every_changed_pixel() -> None:
    region = np.zeros((64, 64), bool)
    region[20:60, 5:45] = True
    paste = _bank([0, 1], p=1.0, max_pastes=4, scale_range=(0.8, 1.2), seed=0)

    for _ in range(20):
        out, boxes, _, _ = paste(_target(), *_no_boxes(), region_mask=region)
        changed = np.any(out != BACKGROUND, axis=2)
        assert not changed[~region].any()


def test_p_zero_never_pastes_and_returns_the_inputs_untouched() -> None:
    paste = _bank([0], p=0.0, seed=0)
    image = _target()

    out, boxes, _, _ = paste(image, *_no_boxes())

    assert out is image and len(boxes) == 0


def test_the_inputs_are_never_modified() -> None:
    image_src, masks_src, box = _masked_source()
    paste = CopyPaste.from_items([image_src], [[box]], [[1]], masks_per_image=[masks_src], p=1.0, seed=0)
    image, masks, boxes = _target(), np.zeros((2, 64, 64), bool), np.array([[0.0, 0.0, 4.0, 4.0]])

    paste(image, boxes, [0], masks=masks)

    assert np.all(image == BACKGROUND) and not masks.any() and boxes.tolist() == [[0.0, 0.0, 4.0, 4.0]]


def test_boxes_thinner_than_a_pixel_or_outside_the_image_are_not_cut() -> None:
    paste = CopyPaste()

    added = paste.add_source(_source((2, 2, 10, 10)), [[2, 2, 10, 10], [3, 3, 3.5, 9], [60, 60, 70, 70]], [0, 1, 2])

    assert added == 1 and paste.class_counts() == {0: 1}


def test_record_boxes_convert_to_arrays_of_boxes_and_labels() -> None:
    boxes, labels = boxes_and_labels([("mole", 1, 2, 3, 4), ("melanoma", 5, 6, 7, 8)], ["melanoma", "mole"])

    assert boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and labels.tolist() == [1, 0]
    assert boxes_and_labels(None, ["mole"])[0].shape == (0, 4)
    with pytest.raises(ValueError, match="not one of the classes"):
        boxes_and_labels([("scar", 0, 0, 1, 1)], ["mole"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(p=1.5), "p must be a probability in"),
        (dict(max_pastes=0), "max_pastes must be an integer >= 1"),
        (dict(scale_range=(2.0, 1.0)), "0 < low <= high"),
        (dict(scale_range=(0.0, 1.0)), "0 < low <= high"),
        (dict(scale_range=1.0), r"scale_range must be \(low, high\)"),
        (dict(margin_px=-1), "margin_px must be a finite number >= 0"),
        (dict(max_tries=0), "max_tries must be an integer >= 1"),
        (dict(context_px=-2), "context_px must be an integer >= 0"),
        (dict(box_alpha="circle"), "box_alpha must be one of rectangle, ellipse"),
        (dict(flip="yes"), "flip must be True or False"),
        (dict(class_weights={0: -1.0}), "finite numbers >= 0"),
        (dict(class_weights={"mole": 1.0}), "keys must be int labels"),
        (dict(class_weights=[1.0], balance_classes=True), "not both"),
    ],
)
def test_invalid_options_raise_config_errors_saying_what_is_valid(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CopyPaste(**options)
