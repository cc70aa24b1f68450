"""Training and prediction speed of the car segmenter per compute lever (img/s on this machine).

Times optimizer steps of the car config's U-Net (EfficientNet-Lite0, decoder 128-8, four classes)
on random batches, so the figures isolate compute per step from data loading:

* whole photos shrunk to 288x384 (the earlier default) against 384x384 crops of near-native
  576x768 photos (the current default), each in the default and in channels-last layout;
* whole-photo prediction at 576x768, with and without the horizontal-flip test-time augmentation.

Usage:
    python benchmarks/segmenter_training_speed.py [--threads 2] [--steps 4] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from defectkit.heads.segmenter import build_segmenter, segmentation_loss


def train_rate(model: torch.nn.Module, size: tuple[int, int], batch: int, steps: int, channels_last: bool) -> float:
    """Training images per second (forward, loss, backward, AdamW step) at ``size``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout).train()  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = segmentation_loss("bce_dice", 0.5)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=layout)
    y = (torch.rand(batch, 4, *size) > 0.95).float()
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()  # the first step warms up the kernels
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def predict_rate(model: torch.nn.Module, size: tuple[int, int], batch: int, steps: int, flip: bool) -> float:
    """Prediction images per second at ``size`` in channels-last layout (sigmoid maps), optionally with flip TTA."""
    model = model.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    x = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for step in range(steps + 1):
            if step == 1:
                start = time.perf_counter()
            probs = torch.sigmoid(model(x))
            if flip:
                probs = (probs + torch.sigmoid(model(x.flip(-1))).flip(-1)) / 2
            F.interpolate(probs, scale_factor=600 / size[0], mode="bilinear")  # back to the photo, as the stage does
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_segmenter(dict(type="Unet", decoder_channels=(128, 64, 32, 16, 8)), 4, pretrained=False)
    results = {}
    for name, size in (("whole photo 288x384", (288, 384)), ("crop 384x384 of 576x768", (384, 384))):
        for channels_last in (False, True):
            key = f"train {name}, {'channels-last' if channels_last else 'default layout'}"
            results[key] = round(train_rate(model, size, 8, args.steps, channels_last), 2)
            print(f"{key}: {results[key]} img/s", flush=True)
    for flip in (False, True):
        key = f"predict 576x768{' + flip TTA' if flip else ''}"
        results[key] = round(predict_rate(model, (576, 768), 4, args.steps, flip), 2)
        print(f"{key}: {results[key]} img/s", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"threads": args.threads, "img_per_s": results}, handle, indent=2)


if __name__ == "__main__":
    main()
