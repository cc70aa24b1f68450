"""PixelClassifier: aspect-keeping input size, feature grid, fitting separable rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectkit.heads.pixel import PixelClassifier


@pytest.fixture(scope="module")
def head() -> PixelClassifier:
    return PixelClassifier(long_side=64, pretrained=False)


def test_input_size_keeps_the_aspect_ratio(head) -> None:
    assert head.input_size(100, 300) == (32, 64)  # the short side is at least 32
    assert head.input_size(320, 160) == (64, 32)


def test_features_are_on_the_stride_4_grid(head) -> None:
    (feats,) = head.features([np.zeros((64, 128, 3), np.uint8)])
    assert feats.dtype == torch.float16 and feats.shape == (head.embedder.channels, 8, 16)


def test_features_of_mixed_sizes_come_back_in_order_and_batching_does_not_change_them(head) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(64, 128, 3), (96, 96, 3), (32, 64, 3), (96, 96, 3), (64, 128, 3)]]
    batched = head.features(images, batch_size=2)
    alone = [head.features([image])[0] for image in images]
    assert [f.shape[-2:] for f in batched] == [(8, 16), (16, 16), (8, 16), (16, 16), (8, 16)]
    for together, single in zip(batched, alone):
        torch.testing.assert_close(together.float(), single.float(), atol=2e-2, rtol=1e-2)


def test_fit_rows_learns_a_separable_prior(head) -> None:
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(400, head.embedder.channels))).float()
    prior = torch.from_numpy(rng.normal(size=400)).float()
    targets = (prior > 1.0).to(torch.int8)  # defect where the anomaly prior is high, 16% of rows
    summary = head.fit_rows(feats, prior, targets)
    assert summary["rows"] == 400
    logits = head.logits(feats.T.reshape(-1, 20, 20), prior.reshape(20, 20)).reshape(-1)
    assert ((logits > 0) == (targets > 0)).float().mean() > 0.95


def test_fit_rows_needs_both_classes(head) -> None:
    with pytest.raises(ValueError, match="both defect and normal"):
        head.fit_rows(torch.zeros(10, head.embedder.channels), torch.zeros(10), torch.zeros(10, dtype=torch.int8))
