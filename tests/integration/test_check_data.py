"""``defectkit check-data``: a clean data set passes, planted problems are each reported by kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.cli import EXIT_FATAL, EXIT_OK, EXIT_SOME_INPUTS_FAILED, main
from defectkit.data.check import check_records
from defectkit.sample import Record

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "texture_defect.py")


def make_folder_per_class(root: Path, n: int = 3) -> Path:
    """MT_Free/Imgs and MT_Crack/Imgs with JPEG photos and same-name PNG masks."""
    rng = np.random.default_rng(0)
    for cls in ("Free", "Crack"):
        folder = root / f"MT_{cls}" / "Imgs"
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(folder / f"exp{i}.jpg", quality=90)
            mask = np.zeros((32, 48), np.uint8)
            if cls == "Crack":
                mask[4 + i : 10 + i, 5:12] = 255
                mask[20:24, 30:40] = 255
            Image.fromarray(mask).save(folder / f"exp{i}.png")
    return root


def test_clean_data_set_passes(tmp_path: Path, capsys):
    root = make_folder_per_class(tmp_path / "clean")
    out = tmp_path / "report.json"
    code = main(["check-data", CONFIG, "--data-root", str(root), "--out", str(out)])
    assert code == EXIT_OK
    printed = capsys.readouterr().out
    assert "no problems found" in printed and "6 images" in printed
    report = json.loads(out.read_text())
    assert report["n_images"] == 6 and report["problems"] == []
    assert report["by_label"] == {"normal": 3, "defect": 3}
    assert report["by_category"] == {"Free": 3, "Crack": 3}
    assert report["by_class"] == {"defect": {"images": 3, "regions": 6}}


def test_planted_problems_are_each_reported(tmp_path: Path, capsys):
    root = make_folder_per_class(tmp_path / "data")
    crack = root / "MT_Crack" / "Imgs"
    data = (crack / "exp0.jpg").read_bytes()
    (crack / "exp0.jpg").write_bytes(data[: len(data) // 2])  # truncated photo
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(crack / "exp1.png")  # mask of the wrong size
    (crack / "notes.txt").write_text("stray file")
    (root / "MT_Free" / "Imgs" / "empty.jpg").write_bytes(b"")
    (root / "MT_Free" / "Imgs" / "text.jpg").write_text("not a photo")
    out = tmp_path / "problems.json"

    code = main(["check-data", CONFIG, "--data-root", str(root), "--out", str(out), "--max-problems", "50"])

    assert code == EXIT_SOME_INPUTS_FAILED
    report = json.loads(out.read_text())
    assert report["problem_counts"] == {"reader": 1, "image_decode": 3, "mask_size": 1}
    by_file = {Path(p["path"]).name: p for p in report["problems"]}
    assert by_file["exp0.jpg"]["kind"] == "image_decode" and "truncated" in by_file["exp0.jpg"]["message"]
    assert by_file["exp1.png"]["kind"] == "mask_size" and "10x10" in by_file["exp1.png"]["message"]
    assert by_file["notes.txt"]["kind"] == "reader"
    assert "empty" in by_file["empty.jpg"]["message"] and "not an image" in by_file["text.jpg"]["message"]
    printed = capsys.readouterr().out
    for name in ("exp0.jpg", "exp1.png", "notes.txt", "image_decode", "mask_size"):
        assert name in printed


def test_unusable_root_exits_1_with_the_layout(tmp_path: Path, capsys):
    assert main(["check-data", CONFIG, "--data-root", str(tmp_path / "nowhere")]) == EXIT_FATAL
    assert "data root does not exist" in capsys.readouterr().err
    (tmp_path / "flat").mkdir()
    assert main(["check-data", CONFIG, "--data-root", str(tmp_path / "flat")]) == EXIT_FATAL


def test_annotation_problems_are_reported_never_dropped(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "elsewhere.png"
    for shade, path in enumerate((root / "a.png", root / "b.png", outside)):
        Image.new("RGB", (20, 10), (9, 9, shade)).save(path)
    (root / "c.png").write_bytes((root / "a.png").read_bytes())  # same bytes as a.png
    square = [[[1, 1], [5, 1], [5, 5], [1, 5]]]
    records = [
        Record(
            str(root / "a.png"),
            label=1,
            polygons={
                "scratch": [square, [[[1, 1], [2, 2]]], [[[1, 1], [float("nan"), 2], [3, 3]]]],
                "dent": [[[[1, 1], [40, 1], [40, 5]]]],
                "rust": [square],
            },
            boxes=[("dent", 1, 1, 4, 4), ("scratch", 5, 5, 2, 9), ("dent", 0, 0, 30, 5), ("ghost", 1, 1, 2, 2)],
            meta={"image_id": 7},
        ),
        Record(str(root / "b.png"), label=5, meta={"image_id": 7}),
        Record(str(root / "b.png"), label=0),
        Record(str(root / "c.png"), label=0),
        Record(str(root / ".." / "elsewhere.png"), label=0),
        Record(str(root / "gone.png"), label=0),
    ]
    result = check_records(records, ["scratch", "dent"], ["normal", "defect"], data_root=root, reader_problems=["x.txt: stray"])
    kinds = result.problem_counts()
    assert kinds == {
        "reader": 1,
        "missing_file": 1,
        "outside_root": 1,
        "polygon": 2,  # two points; NaN
        "out_of_bounds": 2,  # the dent polygon and the third box
        "box": 1,
        "unknown_class": 2,  # polygon class 'rust', box class 'ghost'
        "unknown_label": 1,
        "duplicate_path": 1,
        "duplicate_id": 1,
        "duplicate_content": 1,
    }
    messages = "\n".join(p.message for p in result.problems)
    assert "1 point" not in messages and "2 point(s)" in messages and "NaN" in messages
    assert "'rust'" in messages and "'ghost'" in messages and "image_id=7" in messages
    assert result.by_class["scratch"]["regions"] == 3 and result.by_class["dent"]["images"] == 1
    assert result.n_records == 6 and not result.ok
    assert json.loads(json.dumps(result.to_dict()))["problem_counts"] == kinds


def test_reader_refuses_annotation_paths_that_climb_out_of_the_root(tmp_path: Path):
    from defectkit.data.base import ImageDataset
    from defectkit.errors import DataError

    class Listed(ImageDataset):
        def records(self, split=None):
            return [Record(str(self.resolve("../secret.png")))]

    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match="outside the data root"):
        Listed(tmp_path / "root").records()


def test_defect_image_with_an_empty_mask_is_reported(tmp_path: Path, capsys):
    root = make_folder_per_class(tmp_path / "data")
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(root / "MT_Crack" / "Imgs" / "exp2.png")
    code = main(["check-data", CONFIG, "--data-root", str(root)])
    assert code == EXIT_SOME_INPUTS_FAILED
    printed = capsys.readouterr().out
    assert "label_mismatch" in printed and "exp2.png is empty" in printed
