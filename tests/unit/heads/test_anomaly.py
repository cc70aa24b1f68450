"""PatchCore / PaDiM heads on small synthetic textures (a bright blob is the defect)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from defectkit.heads.anomaly import GaussianBlur, Padim, PatchCore, greedy_coreset, nearest_distances
from defectkit.heads.backbones import to_input_tensor


def texture(rng: np.random.Generator, size: int = 64, blob: bool = False) -> np.ndarray:
    """Smooth grey noise texture (HxWx3 uint8), optionally with a bright blob."""
    noise = rng.normal(0, 1, (size // 4, size // 4)).astype(np.float32)
    img = torch.nn.functional.interpolate(torch.from_numpy(noise)[None, None], size=(size, size), mode="bicubic")[0, 0]
    img = (110 + 18 * img.numpy()).clip(0, 255)
    if blob:
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 8) ** 2] = 250
    return np.repeat(img.astype(np.uint8)[..., None], 3, axis=2)


def batch(n: int, seed: int, blob: bool = False) -> torch.Tensor:
    """NCHW batch in [-1, 1] of synthetic textures."""
    rng = np.random.default_rng(seed)
    return to_input_tensor([texture(rng, blob=blob) for _ in range(n)])


@pytest.fixture(scope="module")
def fitted_patchcore() -> PatchCore:
    model = PatchCore(layers=(2, 3), coreset_size=300)
    model.fit([batch(12, 0)])
    return model


def test_patchcore_scores_defective_images_higher_than_normal(fitted_patchcore: PatchCore) -> None:
    normal_scores, _ = fitted_patchcore(batch(6, 1))
    defect_scores, _ = fitted_patchcore(batch(6, 2, blob=True))
    assert defect_scores.min() > normal_scores.max()


def test_patchcore_maps_have_input_resolution_and_highlight_the_blob(fitted_patchcore: PatchCore) -> None:
    rng = np.random.default_rng(5)
    image = texture(rng)
    image[40:56, 40:56] = 250
    scores, maps = fitted_patchcore(to_input_tensor([image]))
    assert scores.shape == (1,) and maps.shape == (1, 64, 64)
    assert maps[0, 40:56, 40:56].mean() > maps[0, :24, :24].mean()


def test_patchcore_memory_bank_is_a_buffer_in_state_dict(fitted_patchcore: PatchCore) -> None:
    state = fitted_patchcore.state_dict()
    assert state["memory_bank"].shape == (300, fitted_patchcore.embedder.channels)


def test_coreset_is_capped_and_fast() -> None:
    features = torch.randn(50_000, 152)
    start = time.perf_counter()
    idx = greedy_coreset(features, 500, proj_dim=64, max_points=20_000, batch=8)
    assert time.perf_counter() - start < 5.0
    assert idx.shape == (500,) and idx.unique().numel() == 500
    assert int(idx.max()) < 50_000


def test_coreset_covers_points_better_than_random() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.cat([torch.randn(3000, 8, generator=gen), torch.randn(30, 8, generator=gen) + 12])
    core = features[greedy_coreset(features, 40, proj_dim=None, batch=4)]
    rand = features[torch.randperm(len(features), generator=gen)[:40]]
    assert nearest_distances(features, core).max() < nearest_distances(features, rand).max()


def test_nearest_distances_match_cdist() -> None:
    q, b = torch.randn(500, 16), torch.randn(300, 16)
    expected = torch.cdist(q, b).amin(1)
    assert torch.allclose(nearest_distances(q, b, chunk=128), expected, atol=1e-3)
    assert torch.allclose(nearest_distances(q, b), expected, atol=1e-3)


@pytest.mark.parametrize("shape", [(3, 1, 96, 96), (2, 1, 40, 130)])
def test_separable_blur_equals_anomalibs_two_dimensional_kernel(shape: tuple[int, ...]) -> None:
    from anomalib.models.components import GaussianBlur2d

    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(GaussianBlur(4.0)(maps), GaussianBlur2d(sigma=4.0, channels=1)(maps), atol=1e-5)


def test_blur_keeps_the_shape_of_maps_smaller_than_its_radius() -> None:
    maps = torch.ones(1, 1, 6, 9)
    assert torch.allclose(GaussianBlur(4.0)(maps), maps)


def test_padim_scores_defective_images_higher_than_normal() -> None:
    model = Padim(layers=(1, 2), n_features=32)
    model.fit([batch(16, 0)])
    normal_scores, _ = model(batch(6, 1))
    defect_scores, maps = model(batch(6, 2, blob=True))
    assert maps.shape == (6, 64, 64)
    assert defect_scores.mean() > normal_scores.mean()


def test_unfitted_patchcore_refuses_to_score() -> None:
    with pytest.raises(ValueError, match="empty"):
        PatchCore(coreset_size=10)(batch(1, 0))
