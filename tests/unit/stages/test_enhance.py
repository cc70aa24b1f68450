"""Enhancement stages (ZeroDce, Clahe, Gamma) and their luminance rule, on tiny synthetic photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from defectkit.sample import Record, Sample
from defectkit.stages.base import FitContext
from defectkit.stages.enhance import Clahe, Gamma, ZeroDce, darken, is_dark, mean_luma


def photo(seed: int, size: tuple[int, int] = (48, 48), level: float = 140.0) -> np.ndarray:
    """A smooth colourful HxWx3 uint8 "photo" with mean level around ``level``."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    return np.clip(level + 40 * smooth, 0, 255).astype(np.uint8)


def sample_of(image: np.ndarray, name: str = "x.png") -> Sample:
    return Sample(record=Record(path=name), image=image)


TINY = dict(train_size=(32, 32), epochs=1, batch_size=4, max_images=20, seed=0)


@pytest.fixture(scope="module")
def fitted_zero_dce() -> tuple[ZeroDce, dict]:
    """A ZeroDce fitted for two steps on 8 synthetic photos (decoded from memory, one fails)."""
    images = {f"img{i}.png": photo(i, (40 + 4 * i, 48)) for i in range(8)}
    records = [Record(path=p) for p in images] + [Record(path="broken.png")]

    def load_samples(recs):
        return [Sample(record=r, image=images[r.path]) if r.path in images else Sample(record=r, error="unreadable") for r in recs]

    progress_calls: list[tuple[str, int]] = []

    def progress(description: str, total: int):
        progress_calls.append((description, total))
        return lambda n=1: None

    lines: list[str] = []
    stage = ZeroDce(**TINY)
    summary = stage.fit(records, [], FitContext(work_dir=Path("."), load_samples=load_samples, progress=progress, log=lines.append))
    summary["progress"], summary["log"] = progress_calls, lines
    return stage, summary


# ------------------------------------------------------------------ helpers
def test_mean_luma_uses_rec601_weights() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 100, 50, 200
    assert mean_luma(image) == pytest.approx(0.299 * 100 + 0.587 * 50 + 0.114 * 200)
    assert mean_luma(np.full((3, 3), 42, np.uint8)) == pytest.approx(42)


def test_is_dark_compares_mean_luma_with_the_threshold() -> None:
    assert is_dark(np.full((8, 8, 3), 60, np.uint8), 70)
    assert not is_dark(np.full((8, 8, 3), 80, np.uint8), 70)
    assert is_dark(np.full((8, 8, 3), 80, np.uint8), 100)


def test_darken_mimics_a_night_photo() -> None:
    day = photo(0)
    night = darken(day, 0.35, 1.5)
    assert night.dtype == np.uint8 and night.shape == day.shape
    assert mean_luma(night) < 0.35 * mean_luma(day)
    assert int(darken(np.full((1, 1, 3), 128, np.uint8), 0.35, 1.5)[0, 0, 0]) == 32
    # Monotone per pixel: darkening never swaps which pixel is brighter.
    flat = day[..., 0].ravel()
    order = np.argsort(flat, kind="stable")
    assert (np.diff(night[..., 0].ravel()[order].astype(int)) >= 0).all()


# ------------------------------------------------------------------ the luminance rule
@pytest.mark.parametrize("make", [lambda: Gamma(), lambda: Clahe()], ids=["gamma", "clahe"])
def test_enhance_skips_well_lit_images(make) -> None:
    image = photo(1, level=150)
    original = image.copy()
    sample = make().predict([sample_of(image)])[0]
    assert sample.image is image and np.array_equal(sample.image, original)
    assert sample.enhancement.enhanced is False
    assert sample.enhancement.luma_before == sample.enhancement.luma_after == pytest.approx(mean_luma(original), abs=1e-3)


def test_zero_dce_skips_well_lit_images(fitted_zero_dce) -> None:
    stage, _ = fitted_zero_dce
    image = photo(2, level=150)
    original = image.copy()
    sample = stage.predict([sample_of(image)])[0]
    assert np.array_equal(sample.image, original)
    assert sample.enhancement.enhanced is False


@pytest.mark.parametrize("make", [lambda: Gamma(), lambda: Gamma(gamma=0.6), lambda: Clahe()], ids=["gamma-auto", "gamma-fixed", "clahe"])
def test_enhance_brightens_dark_images(make) -> None:
    dark = darken(photo(3), 0.35, 1.5)
    sample = make().predict([sample_of(dark)])[0]
    assert sample.enhancement.enhanced is True
    assert sample.enhancement.luma_after > sample.enhancement.luma_before + 10
    assert sample.enhancement.luma_after == pytest.approx(mean_luma(sample.image), abs=1e-3)
    assert sample.image.shape == dark.shape and sample.image.dtype == np.uint8


def test_auto_gamma_reaches_the_target_luma() -> None:
    dark = darken(photo(4), 0.3, 1.5)
    sample = Gamma(gamma="auto", target_luma=100).predict([sample_of(dark)])[0]
    assert sample.enhancement.luma_after == pytest.approx(100, abs=2)


def test_apply_always_enhances_bright_images_too_and_dark_threshold_is_configurable() -> None:
    bright = photo(5, level=150)
    assert Gamma(gamma=0.8, apply="always").predict([sample_of(bright)])[0].enhancement.enhanced is True
    assert Gamma(gamma=0.8, dark_threshold=200).predict([sample_of(bright)])[0].enhancement.enhanced is True
    assert Gamma(gamma=0.8, dark_threshold=50).predict([sample_of(bright)])[0].enhancement.enhanced is False


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="apply"):
        Clahe(apply="sometimes")
    with pytest.raises(ValueError, match="gamma"):
        Gamma(gamma=-1)


def test_enhance_leaves_failed_samples_alone() -> None:
    failed = Sample(record=Record(path="bad.png"), error="unreadable")
    assert Gamma().predict([failed])[0].extras == {}


def test_enhancement_stages_are_built_from_the_stage_registry() -> None:
    from defectkit.registry import STAGES, build

    assert isinstance(build(STAGES, dict(type="Clahe", clip_limit=3.0)), Clahe)
    assert isinstance(build(STAGES, dict(type="Gamma", gamma="auto")), Gamma)
    stage = build(STAGES, dict(type="ZeroDce", scale_factor=4, dark_threshold=60, apply="dark"))
    assert isinstance(stage, ZeroDce) and stage.model.scale_factor == 4


# ------------------------------------------------------------------ ZeroDce
def test_zero_dce_fit_trains_on_crops_with_progress(fitted_zero_dce) -> None:
    stage, summary = fitted_zero_dce
    assert stage.fitted
    assert summary["images"] == 8 and summary["skipped"] == 1 and summary["crops"] == 8
    assert summary["steps"] == 2
    assert set(summary["losses"]) == {"total", "spatial", "exposure", "color", "smoothness"}
    assert any("train" in desc and total == 2 for desc, total in summary["progress"])
    # Trained by the shared Lightning loop: its one line per epoch, then the last epoch's loss terms.
    assert any(line.startswith("zero_dce: train Zero-DCE: epoch 1/1 train loss") for line in summary["log"])
    assert any(line.startswith("zero_dce: last epoch total") for line in summary["log"])


def test_zero_dce_fit_uses_at_most_max_images() -> None:
    images = {f"{i}.png": photo(i, (32, 32)) for i in range(6)}
    stage = ZeroDce(**{**TINY, "max_images": 3, "crops_per_image": 2})
    summary = stage.fit(
        [Record(path=p) for p in images], [], FitContext(work_dir=Path("."), load_samples=lambda rs: [sample_of(images[r.path], r.path) for r in rs], log=lambda m: None)
    )
    assert summary["images"] == 3 and summary["crops"] == 6


def test_zero_dce_enhances_dark_images_in_a_batch_of_mixed_sizes(fitted_zero_dce) -> None:
    stage, _ = fitted_zero_dce
    images = [darken(photo(10 + i, size), 0.35, 1.5) for i, size in enumerate([(40, 40), (24, 56), (40, 40)])]
    samples = stage.predict([sample_of(img, f"{i}.png") for i, img in enumerate(images)])
    for sample, original in zip(samples, images):
        assert sample.enhancement.enhanced is True
        assert sample.image.shape == original.shape and sample.image.dtype == np.uint8
        assert sample.enhancement.luma_before == pytest.approx(mean_luma(original), abs=1e-3)


def test_zero_dce_state_round_trip_gives_identical_outputs(fitted_zero_dce, tmp_path: Path) -> None:
    stage, _ = fitted_zero_dce
    stage.save(tmp_path)
    restored = ZeroDce(**TINY)
    restored.load(tmp_path)
    dark = darken(photo(20), 0.35, 1.5)
    assert np.array_equal(stage.enhance_images([dark])[0], restored.enhance_images([dark])[0])
    for key, value in stage.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key])


@pytest.mark.parametrize("scale_factor", [1, 4])
def test_zero_dce_tiled_prediction_matches_one_pass_over_the_image(scale_factor: int) -> None:
    stage = ZeroDce(scale_factor=scale_factor, tile_size=16, seed=1)
    with torch.no_grad():  # non-trivial curves without training
        for p in stage.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    stage.fitted = True
    image = darken(photo(30, (45, 61)), 0.4, 1.3)
    tiled = stage.enhance_images([image])[0].astype(int)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = (stage.model(x)[0][0].permute(1, 2, 0).numpy() * 255).round().astype(int)
    assert np.abs(tiled - whole).max() <= 1
    assert np.abs(tiled - image.astype(int)).max() > 5  # it did change the image


def test_zero_dce_predict_before_fit_raises() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        ZeroDce().predict([sample_of(darken(photo(0)))])
