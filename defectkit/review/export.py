"""Reviewed images as training data: COCO instance segmentation and the production polygon JSON.

One export folder holds both, over the same copies of the images::

    <work dir>/review/export/
      images/<stem>-<id><suffix>    the reviewed photos (copied, so the folder is a data root)
      annotations.json              polygon JSON, read by PolygonJson with label_map=None
      coco.json                     COCO, read by CocoSegmentation with ann_file="coco.json"

An image is exported once it is reviewed (:func:`defectkit.review.store.is_reviewed`). Its regions
are the predicted instances not rejected (with a changed class applied; an instance without a
polygon keeps its box as one) plus the regions drawn by the reviewer. A reviewed image without
regions is exported as undamaged (``damage_level`` 0, no COCO annotation): a confirmed negative.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectkit.errors import DataError
from defectkit.io.atomic import atomic_write_bytes, atomic_write_json
from defectkit.polygons import polygon_area
from defectkit.review.run_data import Item
from defectkit.review.store import is_reviewed

EXPORT_DIR = Path("review") / "export"
POLYGON_JSON_FILE = "annotations.json"
COCO_FILE = "coco.json"
IMAGE_DIR = "images"


@dataclass
class ReviewedImage:
    """One exported image: its source, the name of its copy, size and corrected regions."""

    path: str
    file_name: str
    width: int
    height: int
    regions: list[tuple[str, list[list[float]]]]


def reviewed_images(items: Sequence[Item], decisions: Mapping[str, dict[str, Any]]) -> list[ReviewedImage]:
    """The reviewed images of a run with their corrected regions, in run order."""
    out = []
    for item in items:
        entry = decisions.get(item.path) or {}
        instances = item.instances
        if item.status != "ok" or not is_reviewed(entry, len(instances)):
            continue
        regions: list[tuple[str, list[list[float]]]] = []
        for index, instance in enumerate(instances):
            decision = (entry.get("instances") or {}).get(str(index), {})
            if decision.get("decision") == "reject":
                continue
            ring = _instance_ring(instance)
            if ring is not None:
                regions.append((str(decision.get("class") or instance.get("class")), ring))
        for added in entry.get("added") or []:
            regions.append((str(added["class"]), [[float(x), float(y)] for x, y in added["polygon"]]))
        suffix = Path(item.path).suffix.lower() or ".jpg"
        file_name = f"{Path(item.path).stem}-{item.id[:8]}{suffix}"
        out.append(ReviewedImage(item.path, file_name, int(item.line.get("width", 0)), int(item.line.get("height", 0)), regions))
    return out


def _instance_ring(instance: Mapping[str, Any]) -> list[list[float]] | None:
    polygon = instance.get("polygon") or []
    if len(polygon) >= 3:
        return [[float(x), float(y)] for x, y in polygon]
    box = instance.get("box")
    if box and len(box) == 4:
        x1, y1, x2, y2 = (float(v) for v in box)
        return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
    return None


def polygon_json_records(images: Sequence[ReviewedImage]) -> list[dict[str, Any]]:
    """Polygon-JSON records (``image_id``, ``file_name``, ``damage_level``, ``regions``) with class names as labels."""
    return [
        {
            "image_id": Path(image.file_name).stem,
            "file_name": image.file_name,
            "width": image.width,
            "height": image.height,
            "damage_level": int(bool(image.regions)),
            "regions": [{"class_name": name, "points": ring} for name, ring in image.regions],
            "source": image.path,
        }
        for image in images
    ]


def coco_instances(images: Sequence[ReviewedImage], classes: Sequence[str]) -> dict[str, Any]:
    """A COCO instance-segmentation object: ``file_name`` relative to the export folder (``images/...``).

    Categories get ids 1..C in ``classes`` order, followed by any other class a region carries.
    """
    names = list(classes) + sorted({n for image in images for n, _ in image.regions} - set(classes))
    category_ids = {name: index for index, name in enumerate(names, start=1)}
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(images, start=1):
        coco_images.append(
            {"id": image_id, "file_name": f"{IMAGE_DIR}/{image.file_name}", "width": image.width, "height": image.height}
        )
        for name, ring in image.regions:
            xs, ys = [p[0] for p in ring], [p[1] for p in ring]
            x1, y1 = min(xs), min(ys)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[name],
                    "segmentation": [[round(v, 2) for point in ring for v in point]],
                    "area": round(polygon_area(ring), 2),
                    "bbox": [round(x1, 2), round(y1, 2), round(max(xs) - x1, 2), round(max(ys) - y1, 2)],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": n, "supercategory": "defect"} for n, i in category_ids.items()]
    return {"images": coco_images, "annotations": annotations, "categories": categories}


def export_review(
    work_dir: Path, items: Sequence[Item], decisions: Mapping[str, dict[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    """Write the export folder (images, polygon JSON, COCO) and return what was written.

    Copies of images no longer reviewed are removed, so the folder always reads back as exactly
    the reviewed set.
    """
    out = work_dir / EXPORT_DIR
    images = reviewed_images(items, decisions)
    image_dir = out / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    wanted = {image.file_name for image in images}
    for stale in image_dir.iterdir():
        if stale.is_file() and stale.name not in wanted:
            stale.unlink()
    for image in images:
        target = image_dir / image.file_name
        source = Path(image.path)
        try:
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                atomic_write_bytes(target, source.read_bytes())
        except OSError as exc:
            raise DataError(f"{source}: cannot copy the reviewed image into the export ({exc.strerror or exc})") from exc
    atomic_write_json(out / POLYGON_JSON_FILE, polygon_json_records(images))
    atomic_write_json(out / COCO_FILE, coco_instances(images, classes))
    return {
        "folder": str(out),
        "images": len(images),
        "regions": sum(len(image.regions) for image in images),
        "polygon_json": f"{EXPORT_DIR.as_posix()}/{POLYGON_JSON_FILE}",
        "coco": f"{EXPORT_DIR.as_posix()}/{COCO_FILE}",
    }
