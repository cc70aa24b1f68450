"""A supervised pixel classifier on frozen EfficientNet-Lite0 features, with the anomaly map as a prior.

The anomaly map of a gate fitted on 96 px inputs tells *that* a tile is unusual, not *where*: its
12x12 patch grid blurs a crack into the whole tile. This head looks at each image at a finer grid
(its long side resized to ``long_side`` pixels, aspect ratio kept, stride 4 with stages 1-3) and
learns, from the labelled defect masks with normal tiles as negatives, which positions are defect.
The anomaly map enters as one more input channel, so with few labelled defects the classifier
leans on it, and with many it learns what the defects look like.

The classifier is a 1x1 logistic regression (or a one-hidden-layer MLP) over standardised
features, trained full-batch with L-BFGS: a few seconds on two CPU cores, which is what lets the
gate refit it once per cross-validation fold.

Example:
    >>> head = PixelClassifier(pretrained=False)
    >>> feats = head.features([np.zeros((60, 120, 3), np.uint8)])[0]
    >>> feats.shape[0] == head.embedder.channels
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectkit.data.transforms import resize_image
from defectkit.heads.anomaly import _LiteEmbedder
from defectkit.heads.backbones import to_input_tensor
from defectkit.registry import HEADS

__all__ = ["FEATURE_BATCH", "PixelClassifier"]

FEATURE_BATCH = 4
"""Images per backbone call of :meth:`PixelClassifier.features`: 1.35x one at a time on two AVX2 cores
at 256 px, while batches of 8 or more ran slower (their activations outgrow the caches)."""


@HEADS.register_module()
class PixelClassifier(nn.Module):
    """Per-position defect logits from frozen Lite0 features plus an anomaly prior.

    Args:
        layers: EfficientNet-Lite0 stage indices concatenated at the finest one's stride
            ((1, 2, 3): strides 4, 8 and 16, output at stride 4).
        pool_size: Local neighbourhood averaged into each position's features.
        long_side: The image's long side is resized to this many pixels (aspect ratio kept), so
            thin and elongated tiles keep their shape.
        hidden: Hidden units of the MLP; 0 gives a logistic regression.
        l2: L2 penalty on the weights (per training position).
        steps: L-BFGS iterations.
        pretrained: Load the offline ImageNet weights (False only for tests of shapes).
    """

    def __init__(
        self,
        layers: Sequence[int] = (1, 2, 3),
        pool_size: int = 3,
        long_side: int = 256,
        hidden: int = 0,
        l2: float = 1e-3,
        steps: int = 100,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        if long_side < 32:
            raise ValueError(f"PixelClassifier long_side must be >= 32, got {long_side}")
        self.embedder = _LiteEmbedder(layers, pool_size, pretrained)
        self.long_side = int(long_side)
        self.hidden = int(hidden)
        self.l2 = float(l2)
        self.steps = int(steps)
        n_in = self.embedder.channels + 1
        mlp = self.hidden > 0
        self.net = nn.Sequential(nn.Linear(n_in, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1)) if mlp else nn.Linear(n_in, 1)
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` an image of that size is resized to: long side ``long_side``, aspect kept."""
        ratio = self.long_side / max(height, width)
        return max(32, round(height * ratio)), max(32, round(width * ratio))

    @torch.no_grad()
    def features(self, images: Sequence[np.ndarray], batch_size: int = FEATURE_BATCH) -> list[torch.Tensor]:
        """``[C, h, w]`` float16 features of each HxWx3 uint8 image (h, w: its stride-4 grid).

        Images that resize to the same input size run together, ``batch_size`` at a time.
        """
        sizes = [self.input_size(*image.shape[:2]) for image in images]
        out: list[torch.Tensor | None] = [None] * len(images)
        for size in dict.fromkeys(sizes):
            same = [i for i, s in enumerate(sizes) if s == size]
            for start in range(0, len(same), batch_size):
                chunk = same[start : start + batch_size]
                # The one resize rule (grey -> RGB too).
                feats = self.embedder(to_input_tensor([resize_image(images[i], size) for i in chunk])).half()
                for i, f in zip(chunk, feats):
                    out[i] = f
        return cast(list[torch.Tensor], out)  # every position was filled by its size group

    def _inputs(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """``[P, C + 1]`` standardised rows from ``[P, C]`` features and a ``[P]`` prior."""
        x = torch.cat([features.float(), prior.float()[:, None]], 1)
        return (x - self.mean) / self.scale

    def fit_rows(self, features: torch.Tensor, prior: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> dict[str, Any]:
        """Train on ``[P, C]`` features, ``[P]`` prior values and ``[P]`` targets in {0, 1}; classes weighted equally.

        Returns:
            A summary: rows, positive share and final loss.
        """
        x = torch.cat([features.float(), prior.float()[:, None]], 1)
        self.mean = x.mean(0)
        self.scale = x.std(0) + 1e-4
        x = (x - self.mean) / self.scale
        y = targets.float()
        n_pos = float(y.sum())
        if n_pos == 0 or n_pos == len(y):
            raise ValueError("PixelClassifier.fit_rows needs both defect and normal positions")
        # Class-balanced weights: a defect position counts as much in total as a normal one.
        weights = torch.where(y > 0, 0.5 / n_pos, 0.5 / (len(y) - n_pos))
        torch.manual_seed(seed)
        for module in self.net.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        params = [p for p in self.net.parameters()]
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=self.steps, history_size=20, line_search_fn="strong_wolfe")
        weight_params = [m.weight for m in self.net.modules() if isinstance(m, nn.Linear)]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            logits = self.net(x)[:, 0]
            loss = (weights * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
            loss = loss + self.l2 * sum((w * w).sum() for w in weight_params)
            loss.backward()
            return loss

        with torch.enable_grad():
            loss = optimizer.step(closure)
        return {"rows": len(y), "positive_share": round(n_pos / len(y), 4), "loss": round(float(loss.detach()), 4)}

    @torch.no_grad()
    def logits(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """``[h, w]`` defect logits from ``[C, h, w]`` features and an ``[h, w]`` prior."""
        c, h, w = features.shape
        rows = self._inputs(features.reshape(c, -1).T, prior.reshape(-1))
        return self.net(rows)[:, 0].reshape(h, w)
