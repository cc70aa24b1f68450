"""The review app's 'try a photo' page runs the fitted pipeline of the work dir, as ``predict`` would."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the review app needs the 'review' extra (pip install -e '.[review,review-test]')")
pytest.importorskip("httpx", reason="the review app needs the 'review' extra (pip install -e '.[review,review-test]')")
from starlette.testclient import TestClient  # noqa: E402

from defectkit.review.app import ReviewState, create_app  # noqa: E402


def test_an_uploaded_photo_gets_the_pipelines_prediction(tiny_texture_work_dir: Path, texture_config: str, tiny_texture_options: list[str], tmp_path: Path):
    work_dir = tmp_path / "run"
    shutil.copytree(tiny_texture_work_dir / "weights", work_dir / "weights")  # the shared fixture stays untouched
    (work_dir / "predictions.jsonl").write_text(json.dumps({"path": "x.png", "status": "error", "error": "x.png: missing"}) + "\n")
    options = dict(option.split("=", 1) for option in tiny_texture_options)
    options = {k: int(v) for k, v in options.items()}
    client = TestClient(create_app(ReviewState(work_dir, texture_config, options)), base_url="http://127.0.0.1")

    pixels = np.random.default_rng(0).integers(60, 200, (128, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    response = client.post("/api/upload", content=buffer.getvalue(), headers={"X-Review": "1", "X-Filename": "tile.png"})
    assert response.status_code == 200, response.text
    prediction = response.json()["prediction"]
    assert prediction["status"] == "ok" and prediction["path"] == "tile.png"
    assert prediction["gate"]["label"] in ("normal", "defect") and 0.0 <= prediction["gate"]["score"] <= 1.0
    assert (prediction["width"], prediction["height"]) == (128, 128)
    assert all(len(instance["polygon"]) >= 3 for instance in prediction["instances"])
