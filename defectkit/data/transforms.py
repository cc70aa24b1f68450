"""Image transforms and augmentations: albumentations pipelines built from config dicts, and resizing.

Every transform follows the TRANSFORMS contract: ``transform(image, mask=None) -> (image, mask)``
on HxWx3 uint8 RGB images and optional HxW or CxHxW masks. CxHxW masks are multi-label: each
class channel is transformed on its own, so pixels carrying two classes keep both.

Example:
    >>> from defectkit.registry import TRANSFORMS, build
    >>> augment = build(TRANSFORMS, default_car_augmentation())
    >>> image, masks = augment(image, masks)  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

# albumentations 2.x checks PyPI for a newer version on import; the machines running this are
# often offline, where the check only costs a timeout.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

from defectkit.errors import ConfigError  # noqa: E402
from defectkit.registry import TRANSFORMS, build  # noqa: E402


def albumentations_names() -> list[str]:
    """Names of the albumentations transforms and composition blocks a config may use, sorted."""
    names = []
    for name in dir(A):
        obj = getattr(A, name)
        if inspect.isclass(obj) and issubclass(obj, (A.BasicTransform, A.BaseCompose)) and not inspect.isabstract(obj):
            if not name.startswith("_") and obj not in (A.BasicTransform, A.BaseCompose):
                names.append(name)
    return sorted(set(names))


def build_albumentation(cfg: Mapping[str, Any] | A.BasicTransform | A.BaseCompose) -> A.BasicTransform | A.BaseCompose:
    """One albumentations transform from ``dict(type=<name>, **args)``; blocks (``OneOf``...) nest.

    Raises:
        ConfigError: Unknown name (the message lists valid ones), unknown or invalid arguments.

    Example:
        >>> block = build_albumentation(dict(type="OneOf", transforms=[dict(type="Blur"), dict(type="MotionBlur")]))
        >>> [type(t).__name__ for t in block.transforms]
        ['Blur', 'MotionBlur']
    """
    if isinstance(cfg, (A.BasicTransform, A.BaseCompose)):
        return cfg
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ConfigError(f"an albumentations transform must be a dict with a 'type' key, got {cfg!r}")
    args = dict(cfg)
    name = args.pop("type")
    valid = albumentations_names()
    if name not in valid:
        close = difflib.get_close_matches(str(name), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown albumentations transform {name!r}.{hint} Valid names: {', '.join(valid)}")
    cls = getattr(A, name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # albumentations only warns about unknown arguments; a typo in a config must not pass unnoticed.
        allowed = [n for n in params if n != "self"]
        unknown = sorted(set(args) - set(allowed))
        if unknown:
            raise ConfigError(
                f"albumentations {name} got unknown argument(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(allowed)}"
            )
    if "transforms" in args:
        args["transforms"] = [build_albumentation(t) for t in args["transforms"]]
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"albumentations {name}({args}) is invalid: {exc}") from exc


@TRANSFORMS.register_module()
class Albumentations:
    """An albumentations pipeline built by name from config dicts.

    Masks are moved with the image by geometric transforms (nearest-neighbour, so they stay
    binary) and left alone by photometric ones (brightness, contrast, noise...).

    Args:
        transforms: Dicts ``dict(type=<albumentations class name>, **args)`` (or built transforms),
            applied in order; ``OneOf``/``SomeOf``/``Sequential`` take nested ``transforms``.
        p: Probability of applying the whole pipeline.
        seed: Seed of the pipeline's own random generator, for reproducible augmentation; None
            draws a fresh one.

    Example:
        >>> augment = Albumentations(transforms=[
        ...     dict(type="HorizontalFlip", p=0.5),
        ...     dict(type="RandomBrightnessContrast", brightness_limit=0.4, contrast_limit=0.3, p=0.8),
        ... ], seed=0)
        >>> image, masks = augment(image, masks)  # doctest: +SKIP
    """

    def __init__(self, transforms: Sequence[Mapping[str, Any] | Any], p: float = 1.0, seed: int | None = None) -> None:
        if isinstance(transforms, Mapping) or not isinstance(transforms, Sequence):
            raise ConfigError(f"Albumentations: transforms must be a list of dicts, got {transforms!r}")
        self.transforms = [build_albumentation(t) for t in transforms]
        self.compose = A.Compose(self.transforms, p=p, seed=seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment ``image`` and its HxW or CxHxW ``mask`` (bool or integer) the same way.

        Returns:
            The augmented image (uint8 RGB) and mask (same dtype and channel layout as given).
        """
        _check_image(image)
        if mask is None:
            return self.compose(image=image)["image"], None
        mask = np.asarray(mask)
        _check_mask(mask, image)
        channels = mask[None] if mask.ndim == 2 else mask
        # albumentations does not take bool masks; uint8 0/1 keeps them exact under nearest warps.
        result = self.compose(image=image, masks=[np.ascontiguousarray(c, dtype=np.uint8) for c in channels])
        out = np.stack([np.asarray(m) for m in result["masks"]]) if len(channels) else _empty_like(channels, result)
        out = out.astype(mask.dtype)
        return result["image"], out[0] if mask.ndim == 2 else out

    def __repr__(self) -> str:
        return f"Albumentations({[type(t).__name__ for t in self.transforms]})"


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``image`` at ``(height, width)`` ``size``: area averaging when shrinking (no aliasing), linear
    when enlarging. The one resize rule of every stage that feeds a network a fixed input size.

    Args:
        image: HxW or HxWxC uint8 (an HxW image is repeated into three channels).
        size: ``(height, width)``.

    Returns:
        The resized image, or ``image`` itself when it already has that size.

    Example:
        >>> resize_image(np.zeros((40, 60), np.uint8), (20, 30)).shape
        (20, 30, 3)
    """
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image
    shrink = image.shape[0] * image.shape[1] > height * width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@TRANSFORMS.register_module()
class Resize:
    """Resize an image to ``(height, width)`` and its masks with nearest neighbour.

    Args:
        size: ``(height, width)`` of the output.
        interpolation: ``"linear"``, ``"area"``, ``"cubic"`` or ``"nearest"`` for the image;
            ``"auto"`` uses area averaging when shrinking (no aliasing of fine scratches) and
            linear when enlarging.

    Example:
        >>> image, masks = Resize(size=(512, 512))(image, masks)  # doctest: +SKIP
    """

    INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC,
                      "nearest": cv2.INTER_NEAREST}

    def __init__(self, size: Sequence[int], interpolation: str = "auto") -> None:
        height, width = _parse_size(size, "Resize")
        if interpolation != "auto" and interpolation not in self.INTERPOLATIONS:
            raise ConfigError(f"Resize: interpolation must be 'auto' or one of {sorted(self.INTERPOLATIONS)}")
        self.size = (height, width)
        self.interpolation = interpolation

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        _check_image(image)
        height, width = self.size
        if self.interpolation == "auto":
            resized = resize_image(image, self.size)
        else:
            resized = cv2.resize(image, (width, height), interpolation=self.INTERPOLATIONS[self.interpolation])
        if mask is None:
            return resized, None
        mask = np.asarray(mask)
        _check_mask(mask, image)
        channels = mask[None] if mask.ndim == 2 else mask
        out = np.zeros((len(channels), height, width), dtype=mask.dtype)
        for index, channel in enumerate(channels):
            out[index] = cv2.resize(channel.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        return resized, out[0] if mask.ndim == 2 else out

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


def default_car_augmentation(
    size: Sequence[int] | None = None, seed: int | None = None, scale: Sequence[float] = (0.85, 1.15)
) -> dict[str, Any]:
    """Config of the car-damage training augmentation, for ``build(TRANSFORMS, ...)``.

    The production model failed on photos taken in the dark, so brightness is pushed further down
    than up and gamma, noise and blur stand in for dim, noisy, handheld shots; mild flips and
    affine warps vary the framing (cars are left-right symmetric, but never upside down).

    Args:
        size: ``(height, width)`` to resize to at the end, or None to keep the size.
        seed: Seed of the augmentation's random generator.
        scale: ``(low, high)`` zoom range of the affine warp (applied to half the photos); a high
            end above 1 shows thin damage larger than the photo resized to ``size`` does.

    Raises:
        ConfigError: ``scale`` is not two positive numbers, low <= high.

    Example:
        >>> from defectkit.registry import TRANSFORMS, build
        >>> augment = build(TRANSFORMS, default_car_augmentation(size=(512, 512), seed=0))
    """
    zoom = tuple(float(v) for v in scale) if isinstance(scale, (list, tuple)) else ()
    if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
        raise ConfigError(f"CarDamageAugmentation scale must be (low, high) with 0 < low <= high, got {scale!r}")
    transforms: list[dict[str, Any]] = [
        dict(type="HorizontalFlip", p=0.5),
        dict(type="Affine", scale=zoom, translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.5),
        dict(type="RandomBrightnessContrast", brightness_limit=(-0.5, 0.2), contrast_limit=(-0.4, 0.2), p=0.8),
        dict(type="RandomGamma", gamma_limit=(80, 200), p=0.3),
        dict(type="HueSaturationValue", hue_shift_limit=5, sat_shift_limit=20, val_shift_limit=10, p=0.3),
        dict(type="GaussNoise", std_range=(0.02, 0.08), p=0.25),
        dict(type="OneOf", transforms=[dict(type="MotionBlur", blur_limit=(3, 7)), dict(type="GaussianBlur")], p=0.15),
        dict(type="ImageCompression", quality_range=(60, 95), p=0.25),
    ]
    if size is not None:
        height, width = (int(v) for v in size)
        transforms.append(dict(type="Resize", height=height, width=width, area_for_downscale="image"))
    return dict(type="Albumentations", transforms=transforms, seed=seed)


@TRANSFORMS.register_module(name="CarDamageAugmentation")
def car_damage_augmentation(
    size: Sequence[int] | None = None, seed: int | None = None, scale: Sequence[float] = (0.85, 1.15)
) -> Albumentations:
    """The car-damage training augmentation of :func:`default_car_augmentation`, by name for configs."""
    return build(TRANSFORMS, default_car_augmentation(size, seed, scale))


@TRANSFORMS.register_module()
class ForegroundCrop:
    """A random ``(height, width)`` crop that, with probability ``foreground_share``, contains a defect.

    Training on crops at (near) native resolution keeps thin scratches and panel gaps as wide as
    the network will see them at prediction time, where shrinking the whole photo to the training
    size loses most of their width. Defects are a few percent of the pixels, so uniform crops
    would mostly show paint: as nnU-Net oversamples foreground, a share of the crops is centred
    (with jitter) on a pixel of one class present in the mask, the class drawn uniformly among
    those present, so rare classes are seen as often as common ones. The other crops are uniform.
    Crops always lie inside the image; an image smaller than the crop is padded with zeros (mask
    background).

    Args:
        size: ``(height, width)`` of the crop.
        foreground_share: Probability in [0, 1] that a crop is centred on a defect pixel (when the
            mask has any).
        seed: Seed of the crop generator.

    Example:
        >>> crop = ForegroundCrop((32, 32), foreground_share=1.0, seed=0)
        >>> mask = np.zeros((2, 100, 100), bool); mask[1, 90:95, 5:10] = True
        >>> image, out = crop(np.zeros((100, 100, 3), np.uint8), mask)
        >>> image.shape, out.shape, bool(out[1].any())
        ((32, 32, 3), (2, 32, 32), True)
    """

    def __init__(self, size: Sequence[int], foreground_share: float = 0.67, seed: int | None = None) -> None:
        height, width = _parse_size(size, "ForegroundCrop")
        if not 0.0 <= float(foreground_share) <= 1.0:
            raise ConfigError(f"ForegroundCrop: foreground_share must be in [0, 1], got {foreground_share!r}")
        self.size = (height, width)
        self.foreground_share = float(foreground_share)
        self.rng = np.random.default_rng(seed)

    def origin(self, image_shape: Sequence[int], mask: np.ndarray | None) -> tuple[int, int]:
        """The crop's top-left ``(y, x)`` in an image of ``image_shape`` (before any padding)."""
        height, width = int(image_shape[0]), int(image_shape[1])
        crop_h, crop_w = self.size
        max_y, max_x = max(0, height - crop_h), max(0, width - crop_w)
        if mask is not None and self.rng.random() < self.foreground_share:
            channels = mask[None] if mask.ndim == 2 else mask
            present = [c for c in range(len(channels)) if channels[c].any()]
            if present:
                ys, xs = np.nonzero(channels[present[int(self.rng.integers(len(present)))]])
                pick = int(self.rng.integers(len(ys)))
                # Jitter by up to a quarter crop so the defect is not always in the centre.
                cy = ys[pick] + int(self.rng.integers(-(crop_h // 4), crop_h // 4 + 1))
                cx = xs[pick] + int(self.rng.integers(-(crop_w // 4), crop_w // 4 + 1))
                return int(np.clip(cy - crop_h // 2, 0, max_y)), int(np.clip(cx - crop_w // 2, 0, max_x))
        return int(self.rng.integers(max_y + 1)), int(self.rng.integers(max_x + 1))

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        _check_image(image)
        if mask is not None:
            _check_mask(np.asarray(mask), image)
        y, x = self.origin(image.shape, mask)
        crop_h, crop_w = self.size
        out = _pad_to(image[y : y + crop_h, x : x + crop_w], self.size)
        if mask is None:
            return out, None
        return out, _pad_to(np.asarray(mask)[..., y : y + crop_h, x : x + crop_w], self.size)

    def __repr__(self) -> str:
        return f"ForegroundCrop(size={self.size}, foreground_share={self.foreground_share})"


def _pad_to(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``array`` (HxWx3 image or HxW / CxHxW mask) zero-padded at the bottom and right to ``size``."""
    image_like = array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8
    height, width = array.shape[:2] if image_like else array.shape[-2:]
    if (height, width) == size:
        return np.ascontiguousarray(array)
    pad = [(0, size[0] - height), (0, size[1] - width)]
    pad = pad + [(0, 0)] if image_like else [(0, 0)] * (array.ndim - 2) + pad
    return np.pad(array, pad)


class Compose:
    """Transforms applied in order, each ``(image, mask) -> (image, mask)``.

    Example:
        >>> flip = Compose([ForegroundCrop((8, 8), seed=0)])
        >>> flip(np.zeros((16, 16, 3), np.uint8))[0].shape
        (8, 8, 3)
    """

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask


SEEDED_AUGMENTATIONS = ("Albumentations", "CarDamageAugmentation")


def _parse_size(size: Any, kind: str) -> tuple[int, int]:
    """``(height, width)`` of a size option, both positive.

    Raises:
        ConfigError: Not two integers, or not positive; the message names ``kind``.
    """
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{kind}: size must be (height, width), got {size!r}") from exc
    if height < 1 or width < 1:
        raise ConfigError(f"{kind}: size must be positive, got {size!r}")
    return height, width


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {type(image).__name__} {shape}")


def _check_mask(mask: np.ndarray, image: np.ndarray) -> None:
    if mask.ndim not in (2, 3) or mask.shape[-2:] != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]} (expected HxW or CxHxW)")


def _empty_like(channels: np.ndarray, result: dict[str, Any]) -> np.ndarray:
    height, width = result["image"].shape[:2]
    return np.zeros((0, height, width), dtype=channels.dtype)


__all__ = ["Albumentations", "Compose", "ForegroundCrop", "Resize", "albumentations_names", "build_albumentation", "build_augmentation",
           "car_damage_augmentation", "default_car_augmentation"]


def build_augmentation(cfg: dict[str, Any] | None, seed: int) -> Any:
    """Build an augmentation config from TRANSFORMS, seeding Albumentations pipelines for reproducible training."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    if cfg.get("type") in SEEDED_AUGMENTATIONS:
        cfg.setdefault("seed", seed)
    return build(TRANSFORMS, cfg)
