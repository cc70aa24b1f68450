"""Zero-DCE (and the Zero-DCE++ speed-ups): low-light enhancement learned without reference images.

Zero-DCE (Guo et al., CVPR 2020) predicts, per pixel, the parameters of a quadratic light-enhancement
curve ``LE(x) = x + a * x * (1 - x)`` and applies it ``n_iterations`` times. With ``a`` in [-1, 1]
(a ``tanh`` output) every iteration is monotone and maps [0, 1] onto [0, 1], so the result needs no
clipping and keeps the order of intensities. The curve estimator, DCE-Net, is seven plain 3x3
convolutions with symmetric skip concatenations. It is trained with four no-reference losses
(:func:`spatial_consistency_loss`, :func:`exposure_loss`, :func:`color_constancy_loss`,
:func:`illumination_smoothness_loss`, combined by :func:`zero_dce_loss`), so any unpaired set of
photos, darkened or not, is training data.

Zero-DCE++ (Li et al., TPAMI 2021) makes it cheap at high resolution: the curves are estimated on a
downscaled copy (``scale_factor``) and upsampled bilinearly to the full image, and the convolutions
may be depthwise separable (``depthwise=True``).

Example:
    >>> import torch
    >>> net = DceNet(scale_factor=4)
    >>> enhanced, curves = net(torch.rand(1, 3, 64, 64) * 0.2)
    >>> enhanced.shape, curves.shape
    (torch.Size([1, 3, 64, 64]), torch.Size([1, 24, 64, 64]))
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from defectkit.registry import HEADS

__all__ = [
    "CurveEstimator",
    "DceNet",
    "ZERO_DCE_LOSS_WEIGHTS",
    "apply_curves",
    "color_constancy_loss",
    "exposure_loss",
    "illumination_smoothness_loss",
    "spatial_consistency_loss",
    "zero_dce_loss",
]

# The weights of the released Zero-DCE training code (spa 1, exp 10, col 5, tvA 200). The paper
# writes W_col = 0.5 and W_tvA = 20 for a unit exposure weight; the code multiplies all but the
# spatial term by 10, and those are the weights the published model was trained with.
ZERO_DCE_LOSS_WEIGHTS: dict[str, float] = {"spatial": 1.0, "exposure": 10.0, "color": 5.0, "smoothness": 200.0}

# Seven 3x3 convolutions see 7 pixels to each side: a tile computed with this much context around
# it gives exactly the curves of the whole image (used by tiled inference).
RECEPTIVE_RADIUS = 7


class _SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 convolution (Zero-DCE++'s cheaper building block)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def apply_curves(x: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
    """Apply ``LE(x) = x + a * x * (1 - x)`` once per 3-channel group of ``curves``.

    Args:
        x: ``[N, 3, H, W]`` image in [0, 1].
        curves: ``[N, 3 * k, H, W]`` curve parameters in [-1, 1] (``k`` iterations, RGB each).

    Returns:
        ``[N, 3, H, W]`` enhanced image, in [0, 1] up to rounding.

    Example:
        >>> x = torch.full((1, 3, 2, 2), 0.25)
        >>> float(apply_curves(x, torch.ones(1, 3, 2, 2))[0, 0, 0, 0])
        0.4375
    """
    for a in torch.split(curves, 3, dim=1):
        x = x + a * x * (1 - x)
    return x


@HEADS.register_module()
class DceNet(nn.Module):
    """DCE-Net: estimates ``n_iterations`` RGB light-enhancement curves per pixel.

    Layers: ``conv1..conv4`` (3->32->32->32->32), then ``conv5(cat(conv4, conv3))``,
    ``conv6(cat(conv5, conv2))``, ``conv7(cat(conv6, conv1))`` -> ``3 * n_iterations`` channels,
    ReLU after each but the last, ``tanh`` on the last.

    Args:
        n_filters: Feature maps of each hidden layer (32 in the paper).
        n_iterations: Curve applications (8 in the paper); the net outputs ``3 * n_iterations`` maps.
        scale_factor: Estimate the curves on the image downscaled by this factor (bilinear,
            antialiased) and upsample them bilinearly to full size (Zero-DCE++); 1 disables it.
        depthwise: Use depthwise-separable convolutions (Zero-DCE++), about 8x fewer weights.

    Example:
        >>> net = DceNet()
        >>> enhanced, curves = net(torch.rand(2, 3, 32, 32))
        >>> enhanced.shape, curves.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 24, 32, 32]))
    """

    def __init__(self, n_filters: int = 32, n_iterations: int = 8, scale_factor: float = 1, depthwise: bool = False) -> None:
        super().__init__()
        if scale_factor < 1:
            raise ValueError(f"scale_factor must be >= 1, got {scale_factor}")
        self.n_filters = int(n_filters)
        self.n_iterations = int(n_iterations)
        self.scale_factor = float(scale_factor)
        self.depthwise = bool(depthwise)

        def conv(cin: int, cout: int) -> nn.Module:
            # The first layer has only 3 input channels: a depthwise split there saves nothing.
            if self.depthwise and cin > 3:
                return _SeparableConv(cin, cout)
            return nn.Conv2d(cin, cout, 3, padding=1)

        f = self.n_filters
        self.conv1 = conv(3, f)
        self.conv2 = conv(f, f)
        self.conv3 = conv(f, f)
        self.conv4 = conv(f, f)
        self.conv5 = conv(2 * f, f)
        self.conv6 = conv(2 * f, f)
        self.conv7 = conv(2 * f, 3 * self.n_iterations)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: N(0, 0.02) weights, zero biases.

        Small weights make the initial curves nearly zero, so an untrained net is close to the
        identity and training starts from "change nothing".
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)

    def low_resolution_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the curves are estimated at for a ``height`` x ``width`` input."""
        if self.scale_factor == 1:
            return height, width
        return max(1, round(height / self.scale_factor)), max(1, round(width / self.scale_factor))

    def downscale(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the curve estimator: ``x`` downscaled by ``scale_factor`` (unchanged at 1)."""
        size = self.low_resolution_size(*x.shape[-2:])
        if size == tuple(x.shape[-2:]):
            return x
        # Antialiasing: plain bilinear at 1/4 would read only 4 of every 16 pixels (noise, aliasing).
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def estimate_curves(self, x: torch.Tensor) -> torch.Tensor:
        """The seven convolutions: ``[N, 3, h, w]`` in [0, 1] -> ``[N, 3 * n_iterations, h, w]`` in [-1, 1]."""
        x1 = F.relu(self.conv1(x))
        x2 = F.relu(self.conv2(x1))
        x3 = F.relu(self.conv3(x2))
        x4 = F.relu(self.conv4(x3))
        x5 = F.relu(self.conv5(torch.cat([x4, x3], 1)))
        x6 = F.relu(self.conv6(torch.cat([x5, x2], 1)))
        return torch.tanh(self.conv7(torch.cat([x6, x1], 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Enhance ``x`` (``[N, 3, H, W]`` in [0, 1]).

        Returns:
            ``(enhanced [N, 3, H, W], curves [N, 3 * n_iterations, H, W])``; the curves are at full
            resolution even with ``scale_factor`` (upsampled), as the smoothness loss expects.
        """
        curves = self.estimate_curves(self.downscale(x))
        if curves.shape[-2:] != x.shape[-2:]:
            curves = F.interpolate(curves, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return apply_curves(x, curves), curves

    def config(self) -> dict[str, object]:
        """Constructor arguments, JSON-able (saved beside the weights)."""
        return {
            "type": "DceNet",
            "n_filters": self.n_filters,
            "n_iterations": self.n_iterations,
            "scale_factor": self.scale_factor,
            "depthwise": self.depthwise,
        }


class CurveEstimator(nn.Module):
    """DCE-Net's curve estimator alone (:meth:`DceNet.estimate_curves`) as a module with one input and one
    output, the part of Zero-DCE that is exported (downscaling, tiling and applying the curves stay in PyTorch)."""

    def __init__(self, net: DceNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, h, w]`` in [0, 1] -> ``[N, 3 * n_iterations, h, w]`` curve parameters in [-1, 1]."""
        return self.net.estimate_curves(x)


# ---------------------------------------------------------------------------------------- losses
def spatial_consistency_loss(input: torch.Tensor, enhanced: torch.Tensor, region: int = 4) -> torch.Tensor:
    """Spatial consistency ``L_spa``: keep the contrast between neighbouring regions.

    Both images are averaged over channels and over ``region`` x ``region`` blocks; the loss is the
    squared difference between the input's and the enhanced image's differences of each block to
    its four neighbours, averaged over blocks. It is 0 for any enhancement that keeps local
    contrast, e.g. the identity, and grows when neighbouring regions are flattened or exaggerated.

    Args:
        input: ``[N, 3, H, W]`` original image in [0, 1].
        enhanced: ``[N, 3, H, W]`` enhanced image.
        region: Block size (4 in the paper).

    Example:
        >>> x = torch.rand(1, 3, 32, 32)
        >>> float(spatial_consistency_loss(x, x))
        0.0
    """
    k = max(1, min(region, input.shape[-2], input.shape[-1]))
    org = F.avg_pool2d(input.mean(1, keepdim=True), k)
    enh = F.avg_pool2d(enhanced.mean(1, keepdim=True), k)
    # Differences between neighbours (interior pairs only: the released code pads with zeros,
    # which makes any global brightening "change the contrast" at the border).
    dh = (org[..., 1:, :] - org[..., :-1, :]) - (enh[..., 1:, :] - enh[..., :-1, :])
    dw = (org[..., :, 1:] - org[..., :, :-1]) - (enh[..., :, 1:] - enh[..., :, :-1])
    zero = input.new_zeros(())
    # Every pair is the "left" of one block and the "right" of another: counted twice, as in the paper.
    return 2 * ((dh**2).mean() if dh.numel() else zero) + 2 * ((dw**2).mean() if dw.numel() else zero)


def exposure_loss(enhanced: torch.Tensor, patch_size: int = 16, well_exposed: float = 0.6) -> torch.Tensor:
    """Exposure control ``L_exp``: mean intensity of each ``patch_size`` patch should be ``well_exposed``.

    Example:
        >>> float(exposure_loss(torch.full((1, 3, 32, 32), 0.6))) < 1e-9
        True
        >>> round(float(exposure_loss(torch.full((1, 3, 32, 32), 0.1))), 4)
        0.25
    """
    k = max(1, min(patch_size, enhanced.shape[-2], enhanced.shape[-1]))
    mean = F.avg_pool2d(enhanced.mean(1, keepdim=True), k)
    return ((mean - well_exposed) ** 2).mean()


def color_constancy_loss(enhanced: torch.Tensor) -> torch.Tensor:
    """Colour constancy ``L_col`` (grey-world): the mean of each channel should be equal.

    ``sqrt((dRG^2)^2 + (dRB^2)^2 + (dGB^2)^2)`` per image, averaged over the batch.

    Example:
        >>> float(color_constancy_loss(torch.full((1, 3, 8, 8), 0.3))) < 1e-5
        True
    """
    r, g, b = enhanced.mean((2, 3)).unbind(1)
    drg, drb, dgb = (r - g) ** 2, (r - b) ** 2, (g - b) ** 2
    # The epsilon keeps the gradient of sqrt finite for a perfectly grey image.
    return torch.sqrt(drg**2 + drb**2 + dgb**2 + 1e-12).mean()


def illumination_smoothness_loss(curves: torch.Tensor) -> torch.Tensor:
    """Illumination smoothness ``L_tvA``: total variation (squared gradients) of the curve maps.

    Keeps the curves of neighbouring pixels alike, so enhancement cannot create edges or halos.
    Normalised as in the released code: ``2 * (mean squared vertical + horizontal difference)``.

    Example:
        >>> float(illumination_smoothness_loss(torch.zeros(1, 24, 8, 8)))
        0.0
    """
    zero = curves.new_zeros(())
    dh = curves[..., 1:, :] - curves[..., :-1, :]
    dw = curves[..., :, 1:] - curves[..., :, :-1]
    return 2 * ((dh**2).mean() if dh.numel() else zero) + 2 * ((dw**2).mean() if dw.numel() else zero)


def zero_dce_loss(
    input: torch.Tensor,
    enhanced: torch.Tensor,
    curves: torch.Tensor,
    weights: Mapping[str, float] | None = None,
    patch_size: int = 16,
    well_exposed: float = 0.6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The Zero-DCE training objective: the weighted sum of the four no-reference losses.

    Args:
        input: ``[N, 3, H, W]`` input in [0, 1].
        enhanced: What the net made of it.
        curves: The full-resolution curve maps the net applied.
        weights: ``{"spatial", "exposure", "color", "smoothness"}`` weights; missing keys take
            :data:`ZERO_DCE_LOSS_WEIGHTS`.
        patch_size: Exposure-control patch.
        well_exposed: Target mean intensity of a patch (E = 0.6 in the paper).

    Returns:
        ``(total, parts)``: the differentiable total and each unweighted term as a float.

    Example:
        >>> net = DceNet()
        >>> x = torch.rand(2, 3, 32, 32) * 0.3
        >>> total, parts = zero_dce_loss(x, *net(x))
        >>> total.backward()
        >>> sorted(parts)
        ['color', 'exposure', 'smoothness', 'spatial']
    """
    w = {**ZERO_DCE_LOSS_WEIGHTS, **(weights or {})}
    terms = {
        "spatial": spatial_consistency_loss(input, enhanced),
        "exposure": exposure_loss(enhanced, patch_size, well_exposed),
        "color": color_constancy_loss(enhanced),
        "smoothness": illumination_smoothness_loss(curves),
    }
    total = sum(w[name] * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
