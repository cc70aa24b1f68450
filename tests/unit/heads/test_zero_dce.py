"""DCE-Net (Zero-DCE / Zero-DCE++) and its four no-reference losses on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from defectkit.heads.zero_dce import (
    ZERO_DCE_LOSS_WEIGHTS,
    DceNet,
    apply_curves,
    color_constancy_loss,
    exposure_loss,
    illumination_smoothness_loss,
    spatial_consistency_loss,
    zero_dce_loss,
)
from defectkit.registry import HEADS, build


def smooth_image(seed: int, size: int = 32, level: float = 0.5) -> torch.Tensor:
    """A [1, 3, size, size] smooth random image around ``level`` (grey-ish, some local contrast)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, size // 8, size // 8, generator=g) - 0.5
    return (level + 0.3 * torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear")).clamp(0, 1)


def test_dce_net_returns_enhanced_image_and_24_curve_maps_in_range() -> None:
    net = DceNet()
    x = torch.rand(2, 3, 32, 48)
    enhanced, curves = net(x)
    assert enhanced.shape == (2, 3, 32, 48)
    assert curves.shape == (2, 24, 32, 48)
    assert curves.min() >= -1 and curves.max() <= 1
    assert enhanced.min() >= 0 and enhanced.max() <= 1


def test_untrained_net_is_close_to_identity() -> None:
    # The official N(0, 0.02) initialisation: training starts from "change nothing".
    x = torch.rand(1, 3, 32, 32)
    enhanced, _ = DceNet()(x)
    assert (enhanced - x).abs().max() < 0.05


@pytest.mark.parametrize("a", [-1.0, -0.5, 0.5, 1.0])
def test_curve_iterations_keep_values_in_unit_interval(a: float) -> None:
    x = torch.linspace(0, 1, 101).view(1, 1, 1, 101).expand(1, 3, 1, 101)
    out = apply_curves(x, torch.full((1, 24, 1, 101), a))
    assert out.min() >= 0 and out.max() <= 1
    # Monotone: the order of intensities is kept, and black and white are fixed points.
    assert (out[..., 1:] >= out[..., :-1]).all()
    assert out[..., 0].abs().max() == 0 and (out[..., -1] - 1).abs().max() < 1e-6


def test_positive_curves_brighten_negative_curves_darken() -> None:
    x = torch.full((1, 3, 4, 4), 0.2)
    assert apply_curves(x, torch.full((1, 24, 4, 4), 0.5)).mean() > 0.2
    assert apply_curves(x, torch.full((1, 24, 4, 4), -0.5)).mean() < 0.2


def test_plus_plus_variant_estimates_curves_at_low_resolution_and_upsamples_them() -> None:
    net = DceNet(scale_factor=4)
    seen: list[tuple[int, ...]] = []
    net.conv1.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    enhanced, curves = net(torch.rand(1, 3, 64, 48))
    assert seen == [(1, 3, 16, 12)]
    assert curves.shape == (1, 24, 64, 48)
    assert enhanced.shape == (1, 3, 64, 48)


def test_depthwise_variant_is_smaller_with_the_same_outputs_shapes() -> None:
    plain, separable = DceNet(), DceNet(depthwise=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separable) < count(plain) / 4
    enhanced, curves = separable(torch.rand(1, 3, 16, 16))
    assert enhanced.shape == (1, 3, 16, 16) and curves.shape == (1, 24, 16, 16)


def test_dce_net_is_built_from_the_head_registry() -> None:
    net = build(HEADS, dict(type="DceNet", scale_factor=2, n_iterations=4))
    assert isinstance(net, DceNet)
    assert net(torch.rand(1, 3, 16, 16))[1].shape[1] == 12
    assert net.config()["scale_factor"] == 2


def test_scale_factor_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="scale_factor"):
        DceNet(scale_factor=0.5)


def test_exposure_loss_is_zero_when_well_exposed_and_higher_when_dark() -> None:
    well = exposure_loss(torch.full((1, 3, 32, 32), 0.6))
    dark = exposure_loss(torch.full((1, 3, 32, 32), 0.1))
    assert float(well) < 1e-9
    assert float(dark) == pytest.approx(0.25, abs=1e-6)


def test_color_constancy_loss_is_zero_for_grey_and_positive_for_a_colour_cast() -> None:
    grey = torch.full((1, 3, 16, 16), 0.6)
    cast = grey.clone()
    cast[:, 2] = 0.2  # a yellow cast: little blue
    assert float(color_constancy_loss(grey)) < 1e-5
    assert float(color_constancy_loss(cast)) > 0.1


def test_spatial_consistency_loss_is_zero_for_identity_and_uniform_shift_positive_when_contrast_flattened() -> None:
    x = smooth_image(0)
    assert float(spatial_consistency_loss(x, x)) == 0.0
    # A global brightening keeps differences between neighbouring regions: no penalty.
    assert float(spatial_consistency_loss(x, x + 0.2)) < 1e-10
    flattened = torch.full_like(x, float(x.mean()))
    assert float(spatial_consistency_loss(x, flattened)) > 1e-4


def test_illumination_smoothness_loss_is_zero_for_constant_curves_and_positive_for_noisy_ones() -> None:
    assert float(illumination_smoothness_loss(torch.full((1, 24, 16, 16), 0.3))) == 0.0
    noisy = torch.rand(1, 24, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(illumination_smoothness_loss(noisy)) > 0.1


def test_total_loss_is_low_for_a_well_exposed_flat_image_and_higher_for_a_dark_one() -> None:
    zero_curves = torch.zeros(1, 24, 32, 32)
    well = torch.full((1, 3, 32, 32), 0.6)
    dark = torch.full((1, 3, 32, 32), 0.1)
    total_well, _ = zero_dce_loss(well, well, zero_curves)
    total_dark, _ = zero_dce_loss(dark, dark, zero_curves)
    assert float(total_well) < 1e-4
    assert float(total_dark) > 1.0


def test_zero_dce_loss_weights_the_four_terms_with_the_defaults() -> None:
    x = smooth_image(1, level=0.3)
    enhanced, curves = DceNet()(x)
    total, parts = zero_dce_loss(x, enhanced, curves)
    expected = sum(ZERO_DCE_LOSS_WEIGHTS[k] * v for k, v in parts.items())
    assert float(total) == pytest.approx(expected, rel=1e-5)
    only_exposure, _ = zero_dce_loss(x, enhanced, curves, weights=dict(spatial=0, exposure=1, color=0, smoothness=0))
    assert float(only_exposure) == pytest.approx(parts["exposure"], rel=1e-5)


def test_a_few_optimisation_steps_on_a_dark_image_lower_the_exposure_loss() -> None:
    torch.manual_seed(0)
    net = DceNet()
    x = smooth_image(2, level=0.15)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = float(exposure_loss(net(x)[0]))
    for _ in range(5):
        loss, _ = zero_dce_loss(x, *net(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    enhanced, _ = net(x)
    assert float(exposure_loss(enhanced)) < before
    assert float(enhanced.mean()) > float(x.mean())
