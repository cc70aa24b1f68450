"""Reader for COCO object-detection boxes (``bbox`` ``[x, y, w, h]``), built on the COCO helpers of :mod:`~defectkit.data.coco`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from defectkit.data.box_dataset import DEFAULT_MAX_OVERSHOOT, Box, BoxDataset
from defectkit.data.class_mapped import parse_size
from defectkit.data.coco import CocoFileLayout, CocoIndex, coco_bbox_xyxy
from defectkit.errors import DataError
from defectkit.registry import DATASETS
from defectkit.sample import Record

BOX_CROWD_MODES = ("keep", "skip")


@DATASETS.register_module()
class CocoBoxes(CocoFileLayout, BoxDataset):
    """COCO object detection: the ``bbox`` of every annotation, as per-image boxes.

    Category names go through ``label_map`` (None: category name = class name). Images listed
    without annotations are images without boxes (label 0); images in the image folder that the
    file does not list are noted in ``problems``. Crowd annotations (``iscrowd: 1``, one box over a
    cluster of objects) are kept as boxes or, with ``crowd="skip"``, left out (counted in
    ``stats["crowd_skipped"]``).

    The annotation file must be well formed, since a half-read file silently changes what is
    evaluated: JSON that does not parse, entries without ids or file names, repeated image ids,
    annotations of unknown images or categories, and a ``bbox`` that is missing, not four numbers,
    empty or far outside its image raise :class:`DataError` naming the file and entry.

    Records: ``boxes``, ``label``, ``category`` (rarest class present), ``group`` (``group_pattern``
    on the file name), ``meta`` = ``image_id``, ``width``, ``height``, ``damaged_area_ratio``.

    Args:
        data_root: The data folder.
        classes: The config's class names.
        ann_file: COCO JSON, relative to the root.
        image_dir: Folder the ``file_name`` entries are relative to (inside the root); None for the
            annotation file's folder.
        label_map: Category name -> class name (None drops it; ``"*"`` catches every other name).
        crowd: ``"keep"`` or ``"skip"`` crowd annotations.
        group_pattern: Regex for the group key in the file name; None for no groups.
        max_overshoot: Fraction of the image side a box may reach past it (clipped) before the file
            is rejected.
        image_classes: Names of the image-level labels.

    Example:
        >>> from defectkit.registry import DATASETS, build
        >>> reader = build(DATASETS, dict(type="CocoBoxes", data_root="acne_coco/valid",
        ...                               ann_file="_annotations.coco.json", classes=["lesion"],
        ...                               label_map={"*": "lesion"}))
        >>> reader.records()[0].boxes[:1]  # doctest: +SKIP
        [('lesion', 330.0, 523.0, 350.0, 540.0)]
    """

    LAYOUT = """\
<root>/
  annotations.json              COCO: images [{id, file_name, width, height}], categories [{id, name}],
                                annotations [{image_id, category_id, bbox [x, y, w, h], iscrowd}]
  <file_name>                   images, relative to the annotation file's folder (or image_dir)"""

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        classes: Sequence[str],
        ann_file: str = "annotations.json",
        image_dir: str | None = None,
        label_map: Mapping[Any, str | None] | None = None,
        crowd: str = "keep",
        group_pattern: str | None = None,
        max_overshoot: float = DEFAULT_MAX_OVERSHOOT,
        image_classes: Sequence[str] = ("normal", "defect"),
    ) -> None:
        super().__init__(data_root, classes, label_map, group_pattern, max_overshoot, image_classes)
        self.set_coco_layout(ann_file, image_dir, crowd, BOX_CROWD_MODES)

    def records(self, split: str | None = None) -> list[Record]:
        """Every listed image whose file exists, sorted by path; missing files are noted in ``problems``.

        Raises:
            DataError: Missing root or annotation file, a malformed annotation file, or no usable image.
        """
        self.check_split(split)
        self.start()
        ann_path, index = self.open_annotations()
        if index.problems:
            # load_coco notes what it would skip; for boxes a skipped entry is a wrong evaluation.
            first = index.problems[0][1].rsplit("; ", 1)[0]
            more = f" (and {len(index.problems) - 1} more such problems)" if len(index.problems) > 1 else ""
            raise DataError(f"{first}{more}; fix the annotation file")
        records: list[Record] = []
        for image_id, entry, image, where in self.listed_images(index, ann_path):
            size = parse_size(entry.get("width"), entry.get("height")) or self.image_size(image)
            if size is not None:
                boxes = self._boxes(index, image_id, size, where)
                records.append(self.make_box_record(image, boxes, size, meta={"image_id": image_id}))
        return self.finish(records, f"no usable image listed in {self.ann_file}")

    def _boxes(self, index: CocoIndex, image_id: Any, size: tuple[int, int], where: str) -> list[Box]:
        boxes: list[Box] = []
        for annotation in index.annotations[image_id]:
            ann_where = f"{where} annotation {annotation.get('id', '?')}"
            category = annotation.get("category_id")
            if category not in index.categories:
                raise DataError(
                    f"{ann_where}: category id {category!r} is not in categories {sorted(index.categories, key=str)}; "
                    "fix the annotation or add the category"
                )
            if annotation.get("iscrowd") and self.crowd == "skip":
                self.stats["crowd_skipped"] += 1
                continue
            edges = coco_bbox_xyxy(annotation)
            if edges is None:
                raise DataError(f"{ann_where}: {_bbox_problem(annotation.get('bbox'))}; fix or remove the annotation")
            self.add_box(boxes, index.categories[category], edges, size, ann_where)
        return boxes


def _bbox_problem(bbox: Any) -> str:
    """Why a ``bbox`` that :func:`coco_bbox_xyxy` refused is not ``[x, y, w, h]`` with a positive size."""
    if bbox is None:
        return "no bbox"
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox {bbox!r} is not [x, y, w, h]"
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        return f"bbox {bbox!r} holds a value that is not a number"
    if not all(math.isfinite(v) for v in values):
        return f"bbox {bbox!r} holds a non-finite value"
    return f"bbox {bbox!r} is empty (width and height must be positive)"


__all__ = ["BOX_CROWD_MODES", "CocoBoxes"]
