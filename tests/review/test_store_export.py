"""Decisions survive a restart and are refused when malformed; exports read back with the project's
own readers (PolygonJson, CocoSegmentation) and with pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from defectkit.data.coco import CocoSegmentation
from defectkit.data.polygon_json import PolygonJson
from defectkit.errors import DataError
from defectkit.review.export import export_review
from defectkit.review.run_data import load_items
from defectkit.review.store import DecisionStore, ReviewError, is_reviewed

CLASSES = ["scratch", "dent", "spacing", "breakage"]


def test_decisions_are_saved_at_once_and_reloaded(tmp_path: Path):
    path = tmp_path / "review" / "decisions.json"
    store = DecisionStore(path, CLASSES)
    store.decide("a.jpg", 0, "reject")
    store.decide("a.jpg", 1, "accept", "dent")
    store.add_region("a.jpg", "scratch", box=[10, 20, 4, 8])
    store.add_region("a.jpg", "spacing", polygon=[[0, 0], [5, 0], [5, 5]])
    reloaded = DecisionStore(path, CLASSES).get("a.jpg")
    assert reloaded["instances"] == {"0": {"decision": "reject"}, "1": {"decision": "accept", "class": "dent"}}
    assert reloaded["added"][0] == {"id": "a1", "class": "scratch", "polygon": [[4.0, 8.0], [10.0, 8.0], [10.0, 20.0], [4.0, 20.0]]}
    assert [a["id"] for a in reloaded["added"]] == ["a1", "a2"]
    assert not list(path.parent.glob(".*.tmp")), "no temporary file is left behind"
    DecisionStore(path, CLASSES).remove_region("a.jpg", "a1")
    assert [a["id"] for a in DecisionStore(path, CLASSES).get("a.jpg")["added"]] == ["a2"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.decide("a.jpg", 0, "maybe"), "decision must be one of"),
        (lambda s: s.decide("a.jpg", 0, None, "rust"), "unknown class 'rust'"),
        (lambda s: s.add_region("a.jpg", "dent", polygon=[[0, 0], [1, 1]]), "a polygon needs at least 3"),
        (lambda s: s.add_region("a.jpg", "dent", polygon=[[0, 0], [1, float("nan")], [2, 2]]), "NaN"),
        (lambda s: s.add_region("a.jpg", "dent", box=[1, 1, 1.5, 9]), "at least one pixel"),
        (lambda s: s.add_region("a.jpg", "dent"), "needs a polygon or a box"),
        (lambda s: s.remove_region("a.jpg", "a9"), "no drawn region 'a9'"),
    ],
)
def test_bad_decisions_are_refused_and_not_saved(tmp_path: Path, call, message: str):
    store = DecisionStore(tmp_path / "decisions.json", CLASSES)
    with pytest.raises(ReviewError, match=message):
        call(store)
    assert not (tmp_path / "decisions.json").exists()


def test_a_corrupt_decisions_file_is_one_clear_error(tmp_path: Path):
    path = tmp_path / "decisions.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="decisions.json: cannot read review decisions"):
        DecisionStore(path, CLASSES)


def test_reviewed_means_done_or_every_instance_decided():
    assert not is_reviewed({}, 2)
    assert not is_reviewed({"instances": {"0": {"decision": "reject"}}}, 2)
    assert not is_reviewed({"instances": {"0": {"class": "dent"}, "1": {"decision": "accept"}}}, 2)
    assert is_reviewed({"instances": {"0": {"decision": "reject"}, "1": {"decision": "accept"}}}, 2)
    assert is_reviewed({"done": True}, 0)
    assert not is_reviewed({}, 0)


def test_reviewers_get_only_the_boxes_not_marked_under_the_review_threshold(tmp_path: Path):
    box = {"box": [0, 0, 4, 4], "area": 16.0, "polygon": []}
    line = {"path": "a.jpg", "status": "ok", "instances": [
        {"class": "dent", "score": 0.6, "confident": True, **box},
        {"class": "scratch", "score": 0.15, "confident": False, **box},
        {"class": "dent", "score": 0.5, **box},  # lines written before the mark existed
    ]}
    (tmp_path / "predictions.jsonl").write_text(json.dumps(line) + "\n")
    (item,) = load_items(tmp_path)
    assert [i["score"] for i in item.instances] == [0.6, 0.5] and item.classes == ["dent"]
    assert is_reviewed({"instances": {"0": {"decision": "accept"}, "1": {"decision": "accept"}}}, len(item.instances))


def test_export_round_trips_through_the_polygon_json_and_coco_readers(demo_work_dir: Path):
    items = load_items(demo_work_dir)
    ok = [i for i in items if i.status == "ok"]
    with_instances = [i for i in ok if len(i.instances) >= 2]
    first, second, partly = with_instances[:3]
    third = next(i for i in ok if not i.instances)
    store = DecisionStore(demo_work_dir / "review" / "decisions.json", CLASSES)
    store.decide(first.path, 0, "reject")
    store.set_done(first.path, True)
    for index in range(len(second.instances)):
        store.decide(second.path, index, "accept", "breakage" if index == 0 else None)
    store.add_region(second.path, "scratch", box=[40, 30, 60, 50])
    store.set_done(third.path, True)  # confirmed undamaged
    store.decide(partly.path, 0, "accept")  # partly decided, not done: not exported

    result = export_review(demo_work_dir, items, store.all(), CLASSES)
    assert result["images"] == 3
    expected_regions = len(first.instances) - 1 + len(second.instances) + 1
    assert result["regions"] == expected_regions

    export = demo_work_dir / "review" / "export"
    records = {Path(r.path).name: r for r in PolygonJson(export, classes=CLASSES, label_map=None).records()}
    assert len(records) == 3
    by_source = {Path(r["source"]).name: r for r in json.loads((export / "annotations.json").read_text())}
    second_record = records[by_source[Path(second.path).name]["file_name"]]
    assert sum(len(v) for v in second_record.polygons.values()) == len(second.instances) + 1
    assert len(second_record.polygons["breakage"]) == 1 + sum(1 for i in second.instances[1:] if i["class"] == "breakage")
    third_record = records[by_source[Path(third.path).name]["file_name"]]
    assert third_record.label == 0 and not third_record.polygons

    coco_records = {Path(r.path).name: r for r in CocoSegmentation(export, ann_file="coco.json", classes=CLASSES).records()}
    assert {k: sum(len(p) for p in r.polygons.values()) for k, r in coco_records.items()} == {
        k: sum(len(p) for p in r.polygons.values()) for k, r in records.items()
    }

    coco = COCO(str(export / "coco.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == expected_regions
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    drawn = next(a for a in coco.loadAnns(coco.getAnnIds()) if a["bbox"] == [40.0, 30.0, 20.0, 20.0])
    mask = coco.annToMask(drawn)
    assert mask.shape == (96, 128) and 350 <= int(mask.sum()) <= 450
    assert np.isclose(drawn["area"], 400.0)

    # Un-reviewing an image removes its copy: the folder reads back as exactly the reviewed set.
    store.set_done(third.path, False)
    export_review(demo_work_dir, items, store.all(), CLASSES)
    assert len(list((export / "images").iterdir())) == 2
