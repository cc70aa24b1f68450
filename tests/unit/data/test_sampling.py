"""Repeat-factor oversampling: rare classes repeated, common ones and empty images left at 1."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import WeightedRandomSampler

from defectkit.data.sampling import (
    oversampling_sampler,
    oversampling_weights,
    record_label_sets,
    repeat_factors,
    repeated_indices,
)
from defectkit.errors import ConfigError
from defectkit.sample import Record


def _skin_lesions() -> list[list[str]]:
    """100 images: moles everywhere, melanoma in 2, one image with nothing annotated."""
    sets = [["mole"] for _ in range(99)] + [[]]
    sets[0].append("melanoma")
    sets[1].append("melanoma")
    return sets


def test_an_image_with_a_rare_class_is_repeated_and_a_common_class_is_not() -> None:
    factors = repeat_factors(_skin_lesions(), threshold=0.1)

    assert factors[0] == factors[1] == pytest.approx(math.sqrt(0.1 / 0.02))
    assert factors[0] > 1
    assert np.all(factors[2:99] == 1.0)


def test_images_without_boxes_get_factor_one() -> None:
    assert repeat_factors(_skin_lesions())[-1] == 1.0
    assert repeat_factors([[], []]).tolist() == [1.0, 1.0]


def test_an_image_takes_the_factor_of_its_rarest_class() -> None:
    sets = [["a"]] * 8 + [["a", "b"], ["a", "c"], ["b", "c"]]

    factors = repeat_factors(sets, threshold=0.5)

    rare = math.sqrt(0.5 / (2 / 11))
    assert factors[8] == factors[9] == factors[10] == pytest.approx(rare)


def test_a_class_repeated_within_one_image_counts_once() -> None:
    once = repeat_factors([["scratch"], ["dent"], ["dent"], ["dent"]], threshold=0.5)
    many = repeat_factors([["scratch"] * 5, ["dent"], ["dent"], ["dent"]], threshold=0.5)

    assert np.array_equal(once, many)


@settings(max_examples=100, deadline=None)
@given(
    sets=st.lists(st.lists(st.sampled_from("abcdef"), max_size=4), max_size=40),
    threshold=st.floats(0.001, 1.0),
)
def test_factors_are_at_least_one_and_follow_the_lvis_formula(sets: list[list[str]], threshold: float) -> None:
    factors = repeat_factors(sets, threshold)

    assert factors.shape == (len(sets),) and np.all(factors >= 1.0)
    images_with = Counter(c for labels in sets for c in set(labels))
    for labels, factor in zip(sets, factors):
        expected = max([math.sqrt(threshold * len(sets) / images_with[c]) for c in labels] + [1.0])
        assert factor == pytest.approx(expected)


def test_weighted_random_sampler_draws_rare_class_images_about_r_times_per_epoch() -> None:
    sets = _skin_lesions()
    weights, num_samples = oversampling_weights(sets, threshold=0.1)
    sampler = WeightedRandomSampler(weights, num_samples * 200, replacement=True,
                                    generator=torch.Generator().manual_seed(0))

    drawn = Counter(int(i) for i in sampler)

    assert num_samples == round(weights.sum())
    rare_per_epoch = (drawn[0] + drawn[1]) / 2 / 200
    common_per_epoch = sum(drawn[i] for i in range(2, 100)) / 98 / 200
    assert rare_per_epoch == pytest.approx(weights[0], rel=0.15)
    assert common_per_epoch == pytest.approx(1.0, rel=0.05)


def test_the_sampler_keeps_the_epoch_length_when_asked_and_repeats_the_same_draws_with_a_seed() -> None:
    sets = _skin_lesions()
    grown = oversampling_sampler(sets, seed=3, threshold=0.1)
    kept = oversampling_sampler(sets, seed=3, threshold=0.1, keep_epoch_length=True)

    assert len(grown) == round(repeat_factors(sets, 0.1).sum()) > len(sets)
    assert len(kept) == len(sets)
    assert list(kept) == list(oversampling_sampler(sets, seed=3, threshold=0.1, keep_epoch_length=True))
    assert list(kept) != list(oversampling_sampler(sets, seed=4, threshold=0.1, keep_epoch_length=True))


def test_repeated_indices_show_every_image_and_repeat_by_factor_on_average() -> None:
    factors = np.array([1.0, 2.5, 1.0, 3.0])
    rng = np.random.default_rng(0)

    epochs = [repeated_indices(factors, rng) for _ in range(400)]

    for epoch in epochs:
        counts = np.bincount(epoch, minlength=4)
        assert counts[0] == counts[2] == 1 and counts[3] == 3 and counts[1] in (2, 3)
    mean_counts = np.mean([np.bincount(e, minlength=4) for e in epochs], axis=0)
    assert mean_counts[1] == pytest.approx(2.5, abs=0.1)


def test_repeated_indices_are_reproducible_with_a_seed() -> None:
    factors = repeat_factors(_skin_lesions(), threshold=0.3)

    first = repeated_indices(factors, np.random.default_rng(7))
    again = repeated_indices(factors, np.random.default_rng(7))

    assert np.array_equal(first, again)


def test_record_label_sets_list_each_records_box_classes() -> None:
    records = [Record("a.png", boxes=[("mole", 0, 0, 4, 4), ("melanoma", 5, 5, 9, 9)]), Record("b.png")]

    assert record_label_sets(records) == [["mole", "melanoma"], []]


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5, True])
def test_a_threshold_outside_zero_to_one_is_a_config_error(threshold: float) -> None:
    with pytest.raises(ConfigError, match=r"threshold must be a fraction of images in \(0, 1\]"):
        repeat_factors([["a"]], threshold=threshold)


def test_a_label_set_given_as_a_bare_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="list of class names per image"):
        repeat_factors(["mole", "melanoma"])


def test_no_images_give_no_factors() -> None:
    assert repeat_factors([]).shape == (0,)
    assert oversampling_weights([])[1] == 0
