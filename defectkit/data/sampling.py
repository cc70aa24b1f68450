"""Class-aware oversampling: show images of rare classes more often in each training epoch.

Repeat-factor sampling as in LVIS (Gupta et al., 2019): with ``f_c`` the fraction of images that
contain class ``c``, the class's repeat factor is ``r_c = max(1, sqrt(t / f_c))`` and an image's is
the largest over its classes (images with no boxes get 1). A class in fewer than a fraction ``t``
of the images is repeated; common classes are not, and an image with both a rare and a common
class is repeated for the rare one.

Two ways to use the factors in a PyTorch training loop:

* :func:`oversampling_weights` gives ``(weights, num_samples)`` for
  ``torch.utils.data.WeightedRandomSampler(weights, num_samples, replacement=True)``: each image
  is then drawn ``r_i`` times per epoch on average, but draws are independent, so some images are
  missed in a given epoch.
* :func:`repeated_indices` gives one epoch's list of image indices directly (each image
  ``floor(r_i)`` times, plus once more with probability ``r_i - floor(r_i)``), as detectron2's
  ``RepeatFactorTrainingSampler`` does: every image appears at least once per epoch. Shuffle it
  and use it as the sampler (a list of indices is a valid ``sampler``).

Example:
    >>> from torch.utils.data import WeightedRandomSampler
    >>> label_sets = [["mole"], ["mole"], ["mole", "melanoma"], [], ["mole"]]
    >>> repeat_factors(label_sets, threshold=0.5).round(2).tolist()
    [1.0, 1.0, 1.58, 1.0, 1.0]
    >>> sampler = WeightedRandomSampler(*oversampling_weights(label_sets, threshold=0.5), replacement=True)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch

from defectkit.errors import ConfigError
from defectkit.sample import Record

# LVIS used t = 0.001 for its 1,203-class long tail; defect and lesion sets have a handful of
# classes whose rare ones still appear in a few percent of the images, which 0.001 would never
# repeat. At 0.1 a class in 1% of the images is repeated about 3x, one in 10% or more not at all.
DEFAULT_THRESHOLD = 0.1


def repeat_factors(label_sets: Sequence[Iterable[Hashable]], threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Each image's LVIS repeat factor ``max(1, max over its classes of sqrt(t / f_c))``.

    Args:
        label_sets: The classes in each image (e.g. its box class names); repeats within an image
            count once, and an empty set marks an image with no boxes.
        threshold: ``t`` in (0, 1]: classes in a smaller fraction of the images are repeated.

    Returns:
        float64 factors, one per image, each >= 1.

    Raises:
        ConfigError: ``threshold`` outside (0, 1].
        ValueError: A label set given as a plain string (it would count its letters).

    Example:
        >>> repeat_factors([["scratch"]] * 9 + [["scratch", "hole"]], threshold=0.4).tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise ConfigError(f"repeat_factors: threshold must be a fraction of images in (0, 1], got {threshold!r}")
    classes_per_image = []
    for index, labels in enumerate(label_sets):
        if isinstance(labels, (str, bytes)):
            raise ValueError(
                f"label set {index} is the string {labels!r}; pass a list of class names per image, e.g. [{labels!r}]"
            )
        classes_per_image.append(set(labels))
    images_with = Counter(c for classes in classes_per_image for c in classes)
    total = len(classes_per_image)
    class_factor = {c: max(1.0, math.sqrt(threshold / (n / total))) for c, n in images_with.items()}
    return np.array([max((class_factor[c] for c in classes), default=1.0) for classes in classes_per_image],
                    dtype=np.float64)


def oversampling_weights(
    label_sets: Sequence[Iterable[Hashable]], threshold: float = DEFAULT_THRESHOLD
) -> tuple[np.ndarray, int]:
    """Arguments for ``torch.utils.data.WeightedRandomSampler`` that oversample rare classes.

    The weights are the repeat factors and ``num_samples`` their rounded sum, so with
    ``replacement=True`` image ``i`` is drawn ``r_i`` times per epoch on average and an epoch grows
    by the extra repeats.

    Args:
        label_sets: The classes in each image, as for :func:`repeat_factors`.
        threshold: As for :func:`repeat_factors`.

    Returns:
        ``(weights, num_samples)``: float64 weights, one per image, and the epoch length.

    Example:
        >>> from torch.utils.data import WeightedRandomSampler
        >>> weights, num_samples = oversampling_weights([["mole"], ["mole"], ["melanoma"]], threshold=0.5)
        >>> sampler = WeightedRandomSampler(weights, num_samples, replacement=True)
        >>> num_samples
        3
    """
    factors = repeat_factors(label_sets, threshold)
    return factors, int(round(float(factors.sum())))


def oversampling_sampler(
    label_sets: Sequence[Iterable[Hashable]],
    seed: int,
    threshold: float = DEFAULT_THRESHOLD,
    keep_epoch_length: bool = False,
) -> torch.utils.data.WeightedRandomSampler:
    """A seeded ``WeightedRandomSampler`` that draws images by their repeat factors.

    The training stages' ``oversample`` option: its keys are this function's keyword arguments.

    Args:
        label_sets: The classes in each image, as for :func:`repeat_factors`.
        seed: Seeds the sampler's own generator (reproducible epochs).
        threshold: As for :func:`repeat_factors`.
        keep_epoch_length: Draw ``len(label_sets)`` images per epoch, so an epoch costs what it
            did without oversampling (rare-class images take the place of draws of common ones);
            False: the rounded sum of the factors (an epoch grows by the extra repeats).

    Returns:
        The sampler (``replacement=True``).

    Raises:
        ConfigError: ``threshold`` outside (0, 1].

    Example:
        >>> sets = [["dent"], ["scratch"], ["scratch"], ["scratch"]]
        >>> len(oversampling_sampler(sets, seed=0, threshold=1.0)), len(oversampling_sampler(sets, 0, 1.0, True))
        (5, 4)
    """
    weights, draws = oversampling_weights(label_sets, threshold)
    if keep_epoch_length:
        draws = len(weights)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.WeightedRandomSampler(weights.tolist(), max(1, draws), replacement=True,
                                                  generator=generator)


def repeated_indices(factors: Sequence[float] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch of image indices under repeat factors, unshuffled, with stochastic rounding.

    Image ``i`` appears ``floor(r_i)`` times, plus once more with probability ``r_i - floor(r_i)``,
    so every image is seen each epoch and the expected count is exactly ``r_i``.

    Args:
        factors: Repeat factors (>= 0), e.g. from :func:`repeat_factors`.
        rng: Generator for the rounding; seed it per epoch for reproducible epochs.

    Returns:
        int64 indices in ascending order; shuffle them before use.

    Example:
        >>> repeated_indices([1.0, 2.0, 1.0], np.random.default_rng(0)).tolist()
        [0, 1, 1, 2]
    """
    factors = np.asarray(factors, dtype=np.float64).reshape(-1)
    if np.any(~np.isfinite(factors)) or np.any(factors < 0):
        raise ValueError("repeat factors must be finite and >= 0")
    whole = np.floor(factors)
    counts = whole.astype(np.int64) + (rng.random(len(factors)) < factors - whole)
    return np.repeat(np.arange(len(factors), dtype=np.int64), counts)


def record_label_sets(records: Sequence[Record]) -> list[list[str]]:
    """The box class names of each record, the ``label_sets`` of a detection data set.

    Example:
        >>> record_label_sets([Record("a.png", boxes=[("mole", 0, 0, 4, 4)]), Record("b.png")])
        [['mole'], []]
    """
    return [[box[0] for box in record.boxes or []] for record in records]


__all__ = ["DEFAULT_THRESHOLD", "oversampling_weights", "record_label_sets", "repeat_factors", "repeated_indices"]
