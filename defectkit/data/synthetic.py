"""The built-in data set: crops of real texture photographs with synthetic defects and exact masks.

The photographs (brick, grass, gravel) ship inside scikit-image, so the default pipeline runs on a
fresh clone with no download. Images are generated once into a cache folder and reused while a
small manifest of the generation parameters still matches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from defectkit.data.base import ImageDataset
from defectkit.errors import ConfigError, DataError
from defectkit.io.atomic import atomic_write_bytes, atomic_write_json
from defectkit.registry import DATASETS
from defectkit.sample import Record

# Bump when the drawing code changes, so caches written by older code are regenerated.
GENERATOR_VERSION = 1
DEFECT_KINDS = ("scratch", "hole", "stain")
DEFAULT_TEXTURES = ("brick", "grass", "gravel")
MANIFEST = "manifest.json"
# A pixel counts as defective only if some channel moved by at least this many grey levels:
# smaller changes are invisible, and labelling them would ask the detector for the impossible.
VISIBLE_DELTA = 12
# A drawn defect must cover this many pixels and change them this much on average, or it is
# redrawn: keeps every defect visible to the eye.
MIN_DEFECT_AREA = 12
MIN_SPECK_AREA = 5
MIN_MEAN_DELTA = 30.0


_NOT_IMAGES = ("download_all", "lbp_frontal_face_cascade_filename", "data_dir")


@lru_cache(maxsize=16)
def load_texture(name: str) -> np.ndarray:
    """A texture photograph shipped with scikit-image, as HxWx3 uint8 RGB (read-only).

    Args:
        name: An image function of :mod:`skimage.data` that reads a bundled file, e.g. ``"brick"``.

    Raises:
        ConfigError: ``name`` is not an image of :mod:`skimage.data`.
        DataError: The image cannot be loaded (e.g. it is one scikit-image downloads on demand).
    """
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if name.startswith("_") or not callable(loader) or name in _NOT_IMAGES:
        raise ConfigError(
            f"unknown texture {name!r}: textures are images shipped with scikit-image, "
            f"e.g. {', '.join(DEFAULT_TEXTURES)}"
        )
    try:
        image = np.asarray(loader())
    except Exception as exc:  # noqa: BLE001 - any fetch failure means the same thing to the user
        raise DataError(
            f"texture {name!r} could not be loaded from scikit-image ({type(exc).__name__}: {exc}); "
            f"use textures bundled with scikit-image such as {', '.join(DEFAULT_TEXTURES)}"
        ) from exc
    if image.dtype != np.uint8:
        values = image.astype(np.float64)
        # Float and boolean images are in 0..1; anything else is taken as grey levels.
        scale = 255.0 if image.dtype == bool or values.max() <= 1.0 else 1.0
        image = np.clip(values * scale, 0, 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[..., :3]
    else:
        raise ConfigError(f"texture {name!r} is not a single image (shape {image.shape})")
    image = np.ascontiguousarray(image)
    image.setflags(write=False)
    return image


def random_crop(texture: np.ndarray, size: int, rng: np.random.Generator, rotate: bool = True) -> np.ndarray:
    """A ``size`` x ``size`` crop at a random position, randomly flipped/rotated, brightness-jittered.

    Args:
        texture: HxWx3 uint8 source photograph.
        size: Crop side in pixels.
        rng: Source of randomness (the crop is a function of its state).
        rotate: Also flip and rotate by multiples of 90 degrees.
    """
    h, w = texture.shape[:2]
    if size > min(h, w):
        raise ConfigError(f"image_size {size} is larger than the texture ({w}x{h})")
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    crop = texture[y : y + size, x : x + size].astype(np.float32)
    if rotate:
        crop = np.rot90(crop, k=int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
    # Mild lighting variation, so "normal" is not one exact exposure.
    gain = rng.uniform(0.92, 1.08)
    offset = rng.uniform(-6.0, 6.0)
    return np.ascontiguousarray(np.clip(crop * gain + offset, 0, 255).round().astype(np.uint8))


def draw_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, visible_delta: int = VISIBLE_DELTA
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic defect of ``kind`` on a copy of ``image``.

    The mask is exactly the drawn defect: the pixels changed by at least ``visible_delta`` grey
    levels (less isolated crumbs of a few pixels), with one-pixel gaps bridged and enclosed pixels
    filled. Every change outside it (invisible anti-aliasing and blur tails, crumbs) is reverted
    rather than left unlabelled, so nothing outside the mask differs from ``image``.

    Args:
        image: HxWx3 uint8 RGB clean crop.
        kind: ``"scratch"`` (thin bright or dark anti-aliased polyline), ``"hole"`` (dark ellipse with
            soft rim) or ``"stain"`` (blurred tinted blob).
        rng: Source of randomness.
        visible_delta: Smallest per-pixel change (grey levels, any channel) kept and labelled.

    Returns:
        ``(defect image HxWx3 uint8, mask HxW bool)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> crop = random_crop(load_texture("brick"), 128, rng)
        >>> out, mask = draw_defect(crop, "hole", rng)
        >>> bool((out != crop).any(-1)[~mask].any())
        False
    """
    drawers = {"scratch": _scratch, "hole": _hole, "stain": _stain}
    if kind not in drawers:
        raise ConfigError(f"unknown defect kind {kind!r}; valid kinds: {', '.join(DEFECT_KINDS)}")
    base = image.astype(np.int16)
    for _ in range(50):
        drawn = np.clip(drawers[kind](image.astype(np.float32), rng), 0, 255).round().astype(np.int16)
        delta = np.abs(drawn - base).max(axis=2)
        visible = _drop_specks(delta >= visible_delta)
        if visible.sum() >= MIN_DEFECT_AREA and float(delta[visible].mean()) >= MIN_MEAN_DELTA:
            # Where a dark pit meets its light rim the change passes through zero; bridging
            # one-pixel gaps and filling enclosed pixels keeps such a defect one region.
            mask = ndimage.binary_fill_holes(visible | ndimage.binary_closing(visible, _EIGHT))
            out = np.where(mask[..., None], drawn, base).astype(np.uint8)
            return out, mask
    raise RuntimeError(f"could not draw a visible {kind} on this crop")  # pragma: no cover - never seen


_EIGHT = np.ones((3, 3), bool)


def _drop_specks(visible: np.ndarray) -> np.ndarray:
    # Crumbs of a few pixels (anti-aliasing tails, the rim's faint edge) are too small to see as
    # part of the defect; they are reverted with the other invisible changes.
    labels, count = ndimage.label(visible, structure=_EIGHT)
    if count <= 1:
        return visible
    sizes = np.bincount(labels.ravel())
    keep = sizes >= MIN_SPECK_AREA
    keep[0] = False
    return keep[labels]


def _scratch(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    n_points = int(rng.integers(2, 5))
    length = rng.uniform(0.3, 0.65) * size
    angle = rng.uniform(0, 2 * np.pi)
    point = rng.uniform(0.2 * size, 0.8 * size, 2)
    points = [point.copy()]
    for _ in range(n_points - 1):
        # Real scratches bend a little; a random walk of the direction gives gentle curves.
        angle += rng.normal(0, 0.35)
        point = point + length / (n_points - 1) * np.array([np.cos(angle), np.sin(angle)])
        points.append(np.clip(point, 2, size - 3))
    alpha = np.zeros(img.shape[:2], np.uint8)
    shift = 4  # sub-pixel vertex positions for smoother anti-aliasing
    pts = (np.array(points) * (1 << shift)).round().astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(alpha, [pts], False, 255, int(rng.integers(1, 3)), cv2.LINE_AA, shift)
    a = alpha.astype(np.float32)[..., None] / 255.0 * rng.uniform(0.75, 0.95)
    target = rng.uniform(215, 250) if rng.random() < 0.5 else rng.uniform(10, 40)
    return img * (1 - a) + target * a


def _hole(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    margin = 0.15 * size
    center = rng.uniform(margin, size - margin, 2)
    axis_a = rng.uniform(0.035, 0.09) * size
    axis_b = axis_a * rng.uniform(0.6, 1.0)
    shift = 4
    fill = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(
        fill,
        tuple(int(round(c * (1 << shift))) for c in center),
        (int(round(axis_a * (1 << shift))), int(round(axis_b * (1 << shift)))),
        float(rng.uniform(0, 180)),
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
        shift,
    )
    a = cv2.GaussianBlur(fill.astype(np.float32) / 255.0, (0, 0), 1.0)
    # A lighter rim just outside the pit, as on chipped or punched surfaces.
    grown = cv2.dilate(fill, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))).astype(np.float32) / 255.0
    rim = np.clip(cv2.GaussianBlur(grown, (0, 0), 1.2) - a, 0, 1)
    depth = rng.uniform(15, 45)
    # Keep a trace of the texture inside the hole so it is not a flat stamp.
    inside = depth + 0.25 * (img - img.mean())
    a3, rim3 = a[..., None], rim[..., None]
    return img * (1 - a3) + inside * a3 + rim3 * rng.uniform(20, 40)


def _stain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    margin = 0.2 * size
    center = rng.uniform(margin, size - margin, 2)
    blob = np.zeros(img.shape[:2], np.float32)
    for _ in range(int(rng.integers(1, 4))):
        c = center + rng.normal(0, 0.05 * size, 2)
        r = rng.uniform(0.05, 0.13) * size
        cv2.ellipse(
            blob,
            (int(round(c[0])), int(round(c[1]))),
            (int(round(r)), int(round(r * rng.uniform(0.5, 1.0)))),
            float(rng.uniform(0, 180)),
            0,
            360,
            1.0,
            -1,
        )
    a = cv2.GaussianBlur(blob, (0, 0), rng.uniform(2.5, 5.0))
    a = a / max(float(a.max()), 1e-6)
    # Mostly darkening (dirt, oil, rust), sometimes bleaching. Darkening removes more blue than red,
    # a mild warm tint as real grime has; a loud colour would make stains trivial on grey textures.
    warmth = rng.uniform(0.0, 0.4)
    if rng.random() < 0.7:
        change = -np.array([1.0 - warmth, 1.0 - warmth / 2, 1.0], np.float32)
    else:
        change = np.array([1.0, 1.0, 1.0 - warmth / 2], np.float32)
    amplitude = rng.uniform(45, 75)
    return img + amplitude * a[..., None] * change


@DATASETS.register_module()
class SyntheticTextures(ImageDataset):
    """Crops of real texture photographs, some with a synthetic scratch, hole or stain and its mask.

    Built at run time from brick, grass and gravel photographs that scikit-image ships, written as
    PNGs into ``data_root`` (a cache) and reused while ``manifest.json`` records the same
    generation parameters. Every file is written atomically and the manifest last, so an
    interrupted generation is redone rather than read half-written. The same ``seed`` gives the
    same images. The first :meth:`records` call generates (about 1.5 s for the defaults).

    Normal image ``i`` and defect image ``i`` each draw from their own random stream, so changing
    ``n_defect`` leaves the normal images as they were. Textures alternate image by image and
    defect kinds alternate too, shifted each round so every texture gets every kind.

    Args:
        data_root: Cache folder for the generated images.
        n_normal: Defect-free crops (label 0, category ``"normal"``, no mask).
        n_defect: Crops with one defect (label 1, category = defect kind, mask).
        image_size: Crop side in pixels.
        seed: Changes every crop and defect.
        textures: scikit-image images to crop from.
        defect_kinds: Kinds to draw, from ``("scratch", "hole", "stain")``.
        rotate: Randomly flip and rotate crops by multiples of 90 degrees.
        image_classes: Names of the image-level labels (0, 1).

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="SyntheticTextures", data_root="work_dirs/_builtin/textures"))
        >>> records = reader.records()  # doctest: +SKIP
        >>> sorted({r.category for r in records})  # doctest: +SKIP
        ['hole', 'normal', 'scratch', 'stain']
    """

    LAYOUT = """\
<root>/                               cache folder, written by this reader
  manifest.json                       generation parameters and the file list
  images/<texture>_normal_<i>.png     defect-free crops
  images/<texture>_defect_<i>_<kind>.png
  masks/<texture>_defect_<i>_<kind>.png   0/255 mask of each defect image"""

    def __init__(
        self,
        data_root: str | os.PathLike[str] = "work_dirs/_builtin/textures",
        n_normal: int = 120,
        n_defect: int = 40,
        image_size: int = 128,
        seed: int = 0,
        textures: Sequence[str] = DEFAULT_TEXTURES,
        defect_kinds: Sequence[str] = DEFECT_KINDS,
        rotate: bool = True,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, image_classes=image_classes)
        if n_normal < 0 or n_defect < 0 or n_normal + n_defect == 0:
            raise ConfigError(
                f"SyntheticTextures: need n_normal, n_defect >= 0 and some images, got {n_normal}, {n_defect}"
            )
        if not 16 <= image_size <= 512:
            raise ConfigError(
                f"SyntheticTextures: image_size must be 16..512 (the textures are 512 px), got {image_size}"
            )
        if isinstance(textures, str) or not textures:
            raise ConfigError(f"SyntheticTextures: textures must be a non-empty list of names, got {textures!r}")
        unknown = [k for k in defect_kinds if k not in DEFECT_KINDS]
        if unknown or not defect_kinds:
            raise ConfigError(
                f"SyntheticTextures: unknown defect kind(s) {unknown or defect_kinds!r}; "
                f"valid: {', '.join(DEFECT_KINDS)}"
            )
        self.n_normal = int(n_normal)
        self.n_defect = int(n_defect)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.textures = tuple(textures)
        self.defect_kinds = tuple(defect_kinds)
        self.rotate = bool(rotate)

    def params(self) -> dict[str, Any]:
        """The generation parameters stored in the manifest; a change means regenerating."""
        import skimage

        return {
            "generator": "defectkit.SyntheticTextures",
            "version": GENERATOR_VERSION,
            "n_normal": self.n_normal,
            "n_defect": self.n_defect,
            "image_size": self.image_size,
            "seed": self.seed,
            "textures": list(self.textures),
            "defect_kinds": list(self.defect_kinds),
            "rotate": self.rotate,
            "visible_delta": VISIBLE_DELTA,
            # The source photographs come from the installed scikit-image.
            "skimage": skimage.__version__,
        }

    def is_cached(self) -> bool:
        """Whether the cache holds a complete generation with these parameters."""
        manifest = self._read_manifest()
        if manifest is None or manifest.get("params") != self.params():
            return False
        try:
            return all(
                (self.root / entry[key]).is_file()
                for entry in manifest["files"]
                for key in ("image", "mask")
                if entry.get(key)
            )
        except (KeyError, TypeError, AttributeError):
            return False  # a hand-edited manifest: regenerate rather than guess

    def generate(self, force: bool = False) -> bool:
        """Write the images, masks and manifest unless a matching cache exists.

        Args:
            force: Regenerate even when the cache matches.

        Returns:
            True when images were (re)generated.

        Raises:
            DataError: The cache folder cannot be written.
        """
        if not force and self.is_cached():
            return False
        root = self.root
        old = self._read_manifest()
        files: list[dict[str, Any]] = []
        try:
            for name, texture, kind, label, rng in self._plan():
                crop = random_crop(load_texture(texture), self.image_size, rng, rotate=self.rotate)
                entry: dict[str, Any] = {
                    "image": f"images/{name}",
                    "mask": None,
                    "label": label,
                    "category": kind,
                    "texture": texture,
                }
                if label == 1:
                    crop, mask = draw_defect(crop, kind, rng)
                    entry["mask"] = f"masks/{name}"
                    atomic_write_bytes(root / entry["mask"], _png(mask.astype(np.uint8) * 255))
                atomic_write_bytes(root / entry["image"], _png(crop))
                files.append(entry)
            # Written last: its presence is what marks the cache as complete.
            atomic_write_json(root / MANIFEST, {"params": self.params(), "files": files})
        except OSError as exc:
            raise DataError(f"{self.data_root}: cannot write the built-in texture images ({exc})") from exc
        self._remove_stale(old, files)
        return True

    def records(self, split: str | None = None) -> list[Record]:
        """All generated images (generating them first if needed), sorted by path."""
        self.check_split(split)
        self.problems = []
        self.generate()
        manifest = self._read_manifest()
        if manifest is None:  # pragma: no cover - generate() just wrote it
            raise self.layout_error("manifest.json missing after generation")
        records = [
            Record(
                path=str(self.resolve(entry["image"])),
                label=int(entry["label"]),
                category=entry["category"],
                mask_path=None if not entry.get("mask") else str(self.resolve(entry["mask"])),
                group=None,
                meta={"texture": entry["texture"]},
            )
            for entry in manifest["files"]
        ]
        return self.require_records(records)

    def _plan(self):
        n_tex, n_kinds = len(self.textures), len(self.defect_kinds)
        for i in range(self.n_normal):
            texture = self.textures[i % n_tex]
            yield f"{texture}_normal_{i:04d}.png", texture, "normal", 0, np.random.default_rng([self.seed, 0, i])
        for i in range(self.n_defect):
            texture = self.textures[i % n_tex]
            # Shifting the kind by one each texture round cycles kinds quickly (a handful of
            # defects already has every kind) and still pairs every texture with every kind.
            kind = self.defect_kinds[(i % n_tex + i // n_tex) % n_kinds]
            yield f"{texture}_defect_{i:04d}_{kind}.png", texture, kind, 1, np.random.default_rng([self.seed, 1, i])

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            manifest = json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            return None
        return manifest

    def _remove_stale(self, old: dict[str, Any] | None, files: list[dict[str, Any]]) -> None:
        # Only files an earlier generation listed are removed: the cache folder may be shared.
        if old is None:
            return
        keep = {entry[k] for entry in files for k in ("image", "mask") if entry.get(k)}
        for entry in old["files"]:
            for key in ("image", "mask"):
                rel = entry.get(key) if isinstance(entry, dict) else None
                if not rel or rel in keep:
                    continue
                try:
                    self.resolve(rel).unlink(missing_ok=True)
                except (DataError, OSError):
                    continue


def _png(array: np.ndarray) -> bytes:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - in-memory encode of a valid array
        raise DataError("PNG encoding failed")
    return buffer.tobytes()


__all__ = ["SyntheticTextures", "draw_defect", "random_crop", "load_texture", "DEFECT_KINDS"]
