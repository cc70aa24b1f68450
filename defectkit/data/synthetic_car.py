"""The car config's built-in data set: generated car-panel photos in the production polygon-JSON format.

Painted panels (a colour gradient, a highlight band, panel seams) carry scratches (thin bright
strokes), dents (dark shaded ellipses) and spacing (a widened dark seam), outlined as polygons in
``annotations.json`` exactly as the production system writes them; some photos are undamaged and
some are taken "in the dark". Generated once into a cache folder, then read by
:class:`~defectkit.data.polygon_json.PolygonJson`, so the built-in run exercises the real reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from defectkit.data.polygon_json import POLYGON_JSON_CLASSES, PolygonJson
from defectkit.errors import ConfigError, DataError
from defectkit.io.atomic import atomic_write_bytes, atomic_write_json
from defectkit.polygons import mask_to_polygons
from defectkit.registry import DATASETS
from defectkit.sample import Record

# Bump when the drawing code changes, so caches written by older code are regenerated.
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
CLASS_IDS = {"scratch": 1, "dent": 2, "spacing": 3}
PHOTOS_PER_VEHICLE = 2
PAINT_COLOURS = ((200, 30, 35), (235, 235, 235), (30, 40, 60), (120, 125, 130), (20, 20, 22), (60, 90, 160))


@DATASETS.register_module()
class SyntheticCarDamage(PolygonJson):
    """Generated car-panel photos with scratch / dent / spacing polygons, read as production polygon JSON.

    Damaged photo ``i`` gets one to three regions of kinds cycling through scratch, dent and
    spacing; undamaged photos have ``damage_level`` 0 and no regions. Every ``dark_every``-th photo
    is darkened (the production model failed on dark photos). Two consecutive photos share a
    vehicle case token (``as-<n>``), so the split keeps them together. The same ``seed`` gives the
    same images; a matching ``manifest.json`` means the cache is reused.

    Args:
        data_root: Cache folder for the generated data set.
        n_damaged: Photos with damage.
        n_normal: Undamaged photos.
        image_size: ``(height, width)`` of the photos.
        dark_every: Darken every n-th photo (0: none).
        seed: Changes every photo.
        classes: The config's class names (scratch, dent and spacing are generated).
        image_classes: Names of the image-level labels.

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="SyntheticCarDamage", data_root="work_dirs/_builtin/car"))
        >>> records = reader.records()  # doctest: +SKIP
        >>> sorted({c for r in records for c in (r.polygons or {})})  # doctest: +SKIP
        ['dent', 'scratch', 'spacing']
    """

    def __init__(
        self,
        data_root: str | os.PathLike[str] = "work_dirs/_builtin/car",
        n_damaged: int = 60,
        n_normal: int = 60,
        image_size: Sequence[int] = (192, 256),
        dark_every: int = 4,
        seed: int = 0,
        classes: Sequence[str] = POLYGON_JSON_CLASSES,
        image_classes: Sequence[str] = ("normal", "damaged"),
    ) -> None:
        super().__init__(data_root, classes=classes, image_classes=image_classes)
        if n_damaged < 0 or n_normal < 0 or n_damaged + n_normal == 0:
            raise ConfigError(f"SyntheticCarDamage: need n_damaged, n_normal >= 0 and some photos, got {n_damaged}, {n_normal}")
        height, width = (int(v) for v in image_size)
        if not (64 <= height <= 1024 and 64 <= width <= 1024):
            raise ConfigError(f"SyntheticCarDamage: image_size must be 64..1024 a side, got {list(image_size)}")
        self.n_damaged, self.n_normal = int(n_damaged), int(n_normal)
        self.image_size = (height, width)
        self.dark_every = max(0, int(dark_every))
        self.seed = int(seed)

    def params(self) -> dict[str, Any]:
        """The generation parameters stored in the manifest; a change means regenerating."""
        return {
            "generator": "defectkit.SyntheticCarDamage",
            "version": GENERATOR_VERSION,
            "n_damaged": self.n_damaged,
            "n_normal": self.n_normal,
            "image_size": list(self.image_size),
            "dark_every": self.dark_every,
            "seed": self.seed,
        }

    def generate(self) -> bool:
        """Write ``images/`` and ``annotations.json`` unless the cache matches; True when written."""
        root = self.root
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = None
        if isinstance(manifest, dict) and manifest.get("params") == self.params() and (root / self.annotation_file).is_file():
            return False
        entries = []
        try:
            for index, name, kinds, rng in self._plan():
                image, regions = draw_car_photo(self.image_size, kinds, rng)
                if self.dark_every and index % self.dark_every == self.dark_every - 1:
                    image = (image.astype(np.float32) * rng.uniform(0.2, 0.35)).astype(np.uint8)
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:  # pragma: no cover - in-memory encode of a valid array
                    raise DataError("JPEG encoding failed")
                atomic_write_bytes(root / self.image_dir / f"{name}.jpg", jpeg.tobytes())
                entries.append({
                    "image_id": name,
                    "damage_level": int(bool(regions)),
                    "width": self.image_size[1],
                    "height": self.image_size[0],
                    "regions": regions,
                })
            atomic_write_json(root / self.annotation_file, entries)
            # Written last: its presence is what marks the cache as complete.
            atomic_write_json(root / MANIFEST, {"params": self.params()})
        except OSError as exc:
            raise DataError(f"{self.data_root}: cannot write the built-in car photos ({exc})") from exc
        return True

    def records(self, split: str | None = None) -> list[Record]:
        """Generate (if needed), then read the photos with the polygon-JSON reader."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.generate()
        return super().records(split)

    def _plan(self) -> Iterator[tuple[int, str, list[str], np.random.Generator]]:
        kinds = list(CLASS_IDS)
        for index in range(self.n_damaged + self.n_normal):
            damaged = index < self.n_damaged
            rng = np.random.default_rng([self.seed, index])
            chosen = [kinds[(index + k) % len(kinds)] for k in range(1 + index % 3)] if damaged else []
            name = f"{index:04d}_as-{index // PHOTOS_PER_VEHICLE:05d}"
            yield index, name, chosen, rng


def draw_car_photo(size: tuple[int, int], kinds: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A painted panel with one region per entry of ``kinds`` and its polygon-JSON regions.

    Returns:
        ``(HxWx3 uint8 RGB, [{"class_name": id, "points": [[x, y], ...]}, ...])``.
    """
    height, width = size
    paint = np.asarray(PAINT_COLOURS[int(rng.integers(len(PAINT_COLOURS)))], np.float32)
    shade = np.linspace(1.1, 0.75, height, dtype=np.float32)[:, None, None]
    image = paint[None, None] * shade * np.ones((1, width, 1), np.float32)
    band = int(rng.integers(height // 5, height // 2))
    image[band : band + height // 12] = image[band : band + height // 12] * 0.6 + 255 * 0.4  # reflection
    seams = sorted(int(x) for x in rng.integers(width // 5, width - width // 5, size=2))
    for x in seams:
        image[:, x : x + 2] *= 0.35
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    regions: list[dict[str, Any]] = []
    for kind in kinds:
        mask = np.zeros((height, width), np.uint8)
        if kind == "scratch":
            start = rng.uniform([0.1 * width, 0.1 * height], [0.7 * width, 0.9 * height])
            end = start + rng.uniform([0.1 * width, -0.2 * height], [0.3 * width, 0.2 * height])
            cv2.line(mask, tuple(int(v) for v in start), tuple(int(v) for v in end), 1, int(rng.integers(2, 4)))
            image[mask > 0] = image[mask > 0] * 0.3 + 235 * 0.7
        elif kind == "dent":
            centre = (int(rng.integers(width // 6, 5 * width // 6)), int(rng.integers(height // 6, 5 * height // 6)))
            axes = (int(rng.integers(width // 14, width // 7)), int(rng.integers(height // 14, height // 7)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            yy, xx = np.mgrid[0:height, 0:width]
            falloff = np.exp(-(((xx - centre[0]) / max(axes[0], 1)) ** 2 + ((yy - centre[1]) / max(axes[1], 1)) ** 2))
            image *= (1.0 - 0.45 * falloff * (mask > 0))[..., None]
        else:  # spacing: a panel seam pried open
            x = seams[int(rng.integers(len(seams)))]
            top = int(rng.integers(0, height // 2))
            cv2.rectangle(mask, (x - 2, top), (x + 4, top + int(rng.integers(height // 4, height // 2))), 1, -1)
            image[mask > 0] *= 0.1
        for polygon in mask_to_polygons(mask.astype(bool), min_area=4):
            regions.append({"class_name": CLASS_IDS[kind], "points": [[round(x, 1), round(y, 1)] for x, y in polygon]})
    return np.clip(image, 0, 255).astype(np.uint8), regions


__all__ = ["SyntheticCarDamage", "draw_car_photo"]
