"""``defectkit predict`` on a folder of every kind of awkward input: one line per file, errors with
their reason, odd-but-valid images processed, exit status 3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.cli import EXIT_OK, EXIT_SOME_INPUTS_FAILED, main
from defectkit.io import images

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "texture_defect.py")
TRAINED_WITH = "pipeline.0.model.coreset_size=500"  # the work dir's gate was fitted so; loading checks the model config


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def trained_work_dir(tiny_texture_work_dir: Path) -> Path:
    return tiny_texture_work_dir


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, (height, width, 3), dtype=np.uint8)


def make_inputs(folder: Path) -> dict[str, str]:
    """Write every input kind; return ``{relative name: "ok" | reason expected in the error}``."""
    folder.mkdir(parents=True)
    expected: dict[str, str] = {}

    def ok(name: str) -> Path:
        expected[name] = "ok"
        return folder / name

    Image.fromarray(_texture(64, 64)).save(ok("good photo ü.png"))
    Image.fromarray(_texture(48, 64, 1)).save(ok("Prüfung kratzer 1.jpg"), quality=90)
    Image.fromarray(_texture(40, 40, 2)[..., 0], mode="L").save(ok("gray.png"))
    rgba = np.dstack([_texture(40, 50, 3), np.full((40, 50), 30, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(ok("rgba.png"))
    Image.fromarray((_texture(40, 40, 4)[..., 0].astype(np.uint16) * 200)).save(ok("deep 16-bit.png"))
    Image.new("CMYK", (50, 40), (0, 200, 200, 20)).save(ok("cmyk.jpg"), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80 wide x 40 high, displayed 40 x 80
    Image.fromarray(_texture(40, 80, 5)).save(ok("rotated.jpg"), exif=exif.tobytes(), quality=90)
    Image.new("RGB", (1, 1), (120, 130, 140)).save(ok("one pixel.png"))
    Image.fromarray(_texture(400, 600, 6)).save(ok("large.jpg"), quality=85)  # above max_side=256
    (folder / "sub folder Ω").mkdir()
    Image.fromarray(_texture(32, 32, 7)).save(ok("sub folder Ω/inner.png"))

    full_jpeg = (folder / "Prüfung kratzer 1.jpg").read_bytes()
    full_png = (folder / "good photo ü.png").read_bytes()
    bad = {
        "zero.jpg": (b"", "empty file"),
        "zero.png": (b"", "empty file"),
        "truncated.jpg": (full_jpeg[: len(full_jpeg) // 2], "corrupt or truncated"),
        "truncated.png": (full_png[: len(full_png) // 2], "corrupt or truncated"),
        "notes.jpg": (b"meeting notes, not a photo\n" * 20, "not an image"),
    }
    for name, (content, reason) in bad.items():
        (folder / name).write_bytes(content)
        expected[name] = reason
    Image.fromarray(_texture(500, 700, 8)).save(folder / "bomb.png")  # above the patched MAX_PIXELS
    expected["bomb.png"] = "exceeds the limit"
    return expected


def test_every_bad_input_is_one_error_line_and_the_run_finishes(trained_work_dir: Path, tmp_path: Path, monkeypatch):
    inputs = tmp_path / "Prüfung Ω uploads"
    expected = make_inputs(inputs)
    monkeypatch.setattr(images, "MAX_PIXELS", 300_000)  # instead of allocating a real 100 MP image
    out = tmp_path / "out dir ü"
    argv = [
        "predict", CONFIG, "--work-dir", str(trained_work_dir), "--input", str(inputs), "--out", str(out),
        "--cfg-options", "predict.batch_size=4", "predict.max_side=256", "runtime.num_threads=1", TRAINED_WITH,
    ]

    assert main(argv) == EXIT_SOME_INPUTS_FAILED

    lines = read_lines(out / "predictions.jsonl")
    by_name = {Path(line["path"]).relative_to(inputs).as_posix(): line for line in lines}
    assert len(lines) == len(by_name) == len(expected)
    assert set(by_name) == set(expected)
    for name, want in expected.items():
        line = by_name[name]
        if want == "ok":
            assert line["status"] == "ok", (name, line.get("error"))
            assert line["gate"]["label"] in ("normal", "defect")
            assert (out / line["overlay"]).is_file()
        else:
            assert line["status"] == "error", name
            assert want in line["error"] and name.split("/")[-1] in line["error"], (name, line["error"])
    assert (by_name["rotated.jpg"]["height"], by_name["rotated.jpg"]["width"]) == (80, 40)
    assert (by_name["one pixel.png"]["height"], by_name["one pixel.png"]["width"]) == (1, 1)
    large = by_name["large.jpg"]
    assert (large["height"], large["width"]) == (400, 600) and large["scale"] == pytest.approx(256 / 600, abs=1e-3)
    for inst in large["instances"]:
        assert all(0 <= x <= 600 and 0 <= y <= 400 for x, y in inst["polygon"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == len(expected) and metrics["n_errors"] == 6
    assert (out / "report.html").is_file()

    # Run again: nothing is redone or duplicated, and the exit status still says some inputs failed.
    assert main(argv) == EXIT_SOME_INPUTS_FAILED
    assert read_lines(out / "predictions.jsonl") == lines


def test_only_good_inputs_exit_0(trained_work_dir: Path, tmp_path: Path):
    inputs = tmp_path / "good"
    inputs.mkdir()
    Image.fromarray(_texture(64, 64)).save(inputs / "a b ü.png")
    out = tmp_path / "out"
    argv = ["predict", CONFIG, "--work-dir", str(trained_work_dir), "--input", str(inputs / "a b ü.png"), "--out", str(out)]
    assert main([*argv, "--cfg-options", "runtime.num_threads=1", TRAINED_WITH]) == EXIT_OK
    assert [line["status"] for line in read_lines(out / "predictions.jsonl")] == ["ok"]


def test_weights_for_other_classes_are_refused(trained_work_dir: Path, tmp_path: Path, capsys):
    manifest = json.loads((trained_work_dir / "weights" / "gate.json").read_text())
    assert manifest["head"] == "PatchCore" and manifest["input_size"]
    copy = tmp_path / "work"
    (copy / "weights").mkdir(parents=True)
    for name in ("gate.safetensors", "gate.json"):
        (copy / "weights" / name).write_bytes((trained_work_dir / "weights" / name).read_bytes())
    patched = dict(manifest, classes=["defect"])
    (copy / "weights" / "gate.json").write_text(json.dumps(patched))
    image = tmp_path / "a.png"
    Image.fromarray(_texture(32, 32)).save(image)
    argv = ["predict", CONFIG, "--work-dir", str(copy), "--input", str(image), "--out", str(tmp_path / "o")]
    assert main([*argv, "--cfg-options", "runtime.num_threads=1", "classes=['scratch']"]) == 1
    assert "fitted for classes ['defect']" in capsys.readouterr().err
    # Tampered tensors: refused with a checksum error, nothing unpickled.
    tensors = copy / "weights" / "gate.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    assert main([*argv, "--cfg-options", "runtime.num_threads=1"]) == 1
    assert "checksum" in capsys.readouterr().err
