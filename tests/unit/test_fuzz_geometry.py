"""Property-based (hypothesis) checks of the geometry code: polygons <-> masks, the mask policy,
ground-truth rasterisation and the train/val/test split. Example counts are modest so the suite
stays fast; each property still sees degenerate, NaN, huge and empty inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import binary_fill_holes

from defectkit.data.masks import ground_truth_masks
from defectkit.data.split import split_records
from defectkit.polygons import mask_to_polygons, polygons_to_mask
from defectkit.sample import Record, Sample
from defectkit.stages.mask_policy import MaskPolicy

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

coordinate = st.one_of(
    st.floats(-50, 80, allow_nan=False),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN, inf, 1e308...
    st.integers(-(10**12), 10**12).map(float),
    st.sampled_from([0.0, -0.0, 0.5, 1e-300, -1e9]),
)
point = st.lists(coordinate, min_size=2, max_size=2)
ring = st.one_of(
    st.lists(point, min_size=0, max_size=8),
    st.lists(st.lists(coordinate, min_size=0, max_size=3), max_size=4),  # malformed points
)
polygon = st.lists(ring, min_size=0, max_size=3)
shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))


def _ring_is_valid(r) -> bool:
    try:
        points = np.asarray(r, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3 and bool(np.all(np.isfinite(points)))


def _expected_problem_count(polygons) -> int:
    count = 0
    for poly in polygons:
        if not poly:
            count += 1
            continue
        for index, r in enumerate(poly):
            if not _ring_is_valid(r):
                count += 1
                if index == 0:
                    break
    return count


@FAST
@given(polygons=st.lists(polygon, max_size=4), shape=shapes)
def test_polygons_to_mask_never_raises_and_reports_every_bad_ring(polygons, shape):
    mask, problems = polygons_to_mask(polygons, shape)
    assert mask.shape == shape and mask.dtype == bool
    assert len(problems) == _expected_problem_count(polygons)
    assert all(isinstance(p, str) and p.startswith("polygon ") for p in problems)


@FAST
@given(polygons=st.lists(st.lists(st.lists(point, min_size=3, max_size=6), min_size=1, max_size=2), max_size=3), shape=shapes)
def test_valid_rings_far_outside_the_image_draw_nothing_outside_it(polygons, shape):
    # Whatever the coordinates, the mask keeps its shape: drawing is clipped, never wrapped around.
    mask, _ = polygons_to_mask(polygons, shape)
    assert mask.shape == shape
    finite = [p for p in polygons if all(_ring_is_valid(r) for r in p)]
    far = [p for p in finite if all(min(x for x, _ in r) > 10 * max(shape) for r in p)]
    if far and len(far) == len(polygons):
        assert not mask.any()


@FAST
@given(mask=arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))))
def test_mask_to_polygons_round_trip_reproduces_the_mask(mask):
    polys = mask_to_polygons(mask)
    redrawn, problems = polygons_to_mask([[p] for p in polys], mask.shape)
    assert problems == []
    assert all(len(p) >= 3 for p in polys)
    # Outlines are outer contours: holes are filled, everything else comes back exactly.
    np.testing.assert_array_equal(redrawn, binary_fill_holes(mask))
    if not (binary_fill_holes(mask) & ~mask).any():
        np.testing.assert_array_equal(redrawn, mask)


rule = st.fixed_dictionaries(
    {
        "threshold": st.floats(0.0, 1.0),
        "open_px": st.integers(0, 5),
        "close_px": st.integers(0, 5),
        "min_area": st.integers(0, 20),
        "polygon_epsilon": st.floats(0.0, 3.0),
    }
)


@FAST
@given(
    prob=arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 24), st.integers(1, 24)), elements=st.floats(0, 1, width=32)),
    rules=rule,
    reduction=st.sampled_from([1.0, 0.5, 0.25, 0.3]),
)
def test_mask_policy_never_produces_instances_outside_the_image(prob, rules, reduction):
    channels, height, width = prob.shape
    sample = Sample(Record("x.png"), image=np.zeros((height, width, 3), np.uint8))
    sample.prob_maps = prob
    sample.map_classes = [f"c{i}" for i in range(channels)]
    MaskPolicy(rules={"default": rules}).predict([sample])
    assert sample.masks.shape == prob.shape
    for inst in sample.instances:
        assert len(inst.polygon) >= 3
        assert all(0 <= x <= width - 1 and 0 <= y <= height - 1 for x, y in inst.polygon)
        x1, y1, x2, y2 = inst.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert 0 < inst.area <= width * height
        assert 0.0 <= inst.score <= 1.0
    # Reported in the coordinates of an original image 1/reduction times larger: still inside it.
    sample.original_size = (round(height / reduction), round(width / reduction))
    line = sample.to_prediction()
    H, W = sample.original_size
    for inst in line["instances"]:
        assert all(-0.05 <= x <= W - 1 + 0.05 and -0.05 <= y <= H - 1 + 0.05 for x, y in inst["polygon"])
        assert 0 <= inst["box"][0] < inst["box"][2] <= W + 0.05 and 0 <= inst["box"][1] < inst["box"][3] <= H + 0.05


@FAST
@given(
    polygons=st.dictionaries(st.sampled_from(["scratch", "dent", "ghost", "7"]), st.lists(polygon, max_size=3), max_size=4),
    shape=shapes,
)
def test_ground_truth_masks_never_raise_and_report_unknown_classes(polygons, shape):
    classes = ["scratch", "dent"]
    masks, problems = ground_truth_masks(Record("a.png", polygons=polygons), shape, classes)
    assert masks.shape == (2, *shape) and masks.dtype == bool
    unknown = [c for c in polygons if c not in classes]
    assert sum("is not in the config's classes" in p for p in problems) == len(unknown)
    expected = sum(_expected_problem_count(polys) for c, polys in polygons.items() if c in classes)
    assert len(problems) == len(unknown) + expected


records_strategy = st.lists(
    st.tuples(
        st.integers(0, 10**6),  # path id (unique after dedup)
        st.one_of(st.none(), st.integers(0, 1)),  # label
        st.one_of(st.none(), st.sampled_from(["crack", "hole", "Free"])),  # category
        st.one_of(st.none(), st.integers(0, 6).map(lambda g: f"g{g}")),  # group
    ),
    max_size=40,
    unique_by=lambda t: t[0],
)
ratios_strategy = st.tuples(*[st.floats(0, 1)] * 3).filter(lambda r: sum(r) > 1e-6)


@FAST
@given(rows=records_strategy, ratios=ratios_strategy, seed=st.integers(0, 2**31), shuffle_seed=st.integers(0, 1000))
def test_split_records_partitions_exactly(rows, ratios, seed, shuffle_seed):
    records = [Record(path=f"img/{i:07d}.jpg", label=label, category=cat, group=group) for i, label, cat, group in rows]
    parts = split_records(records, ratios=ratios, seed=seed)
    assert set(parts) == {"train", "val", "test"}
    listed = [r.path for part in parts.values() for r in part]
    assert sorted(listed) == sorted(r.path for r in records)  # nothing lost, nothing duplicated
    for part in parts.values():
        assert [r.path for r in part] == sorted(r.path for r in part)
    where = {r.path: name for name, part in parts.items() for r in part}
    groups: dict[str, set[str]] = {}
    for r in records:
        if r.group is not None:
            groups.setdefault(r.group, set()).add(where[r.path])
    assert all(len(names) == 1 for names in groups.values())  # a group never straddles parts
    shuffled = list(records)
    np.random.default_rng(shuffle_seed).shuffle(shuffled)
    again = split_records(shuffled, ratios=ratios, seed=seed)
    assert {k: [r.path for r in v] for k, v in again.items()} == {k: [r.path for r in v] for k, v in parts.items()}
    for name, ratio in zip(("train", "val", "test"), ratios):
        if ratio == 0:
            assert parts[name] == []  # a part with no share gets nothing
