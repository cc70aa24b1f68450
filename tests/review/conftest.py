"""A small evaluation work dir for the review app: the car config's built-in photos and ground truth,
with prediction lines written from that ground truth (some regions moved, one missed, one false
positive, one unreadable file), so tests need no training and know what each image holds."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CAR_CONFIG = str(REPO / "configs" / "car_damage.py")
NEEDS_REVIEW_EXTRA = "the review app needs the 'review' extra (pip install -e '.[review,review-test]')"
TINY_DATA_OPTIONS = {"builtin_dataset.n_damaged": 6, "builtin_dataset.n_normal": 3, "builtin_dataset.image_size": (96, 128)}


def write_demo_work_dir(work_dir: Path) -> Path:
    """Write ``predictions.jsonl`` and ``run_info.json`` of an evaluation over the tiny built-in car set."""
    from defectkit.data.synthetic_car import SyntheticCarDamage
    from defectkit.polygons import polygon_area

    reader = SyntheticCarDamage(
        work_dir / "builtin_data", n_damaged=6, n_normal=3, image_size=(96, 128), classes=["scratch", "dent", "spacing", "breakage"]
    )
    lines = []
    for index, record in enumerate(sorted(reader.records(), key=lambda r: r.path)):
        instances = []
        for class_name, polygons in (record.polygons or {}).items():
            for number, polygon in enumerate(polygons):
                if index == 1 and number == 0:
                    continue  # a missed region, for the reviewer to draw
                ring = [[float(x) + 1.0, float(y)] for x, y in polygon[0]]
                xs, ys = [p[0] for p in ring], [p[1] for p in ring]
                instances.append(
                    {"class": class_name, "score": round(0.6 + 0.05 * (index % 7), 3), "box": [min(xs), min(ys), max(xs) + 1, max(ys) + 1],
                     "area": polygon_area(ring), "polygon": ring}
                )
        if index % 3 == 0:  # a false positive in the corner
            instances.append({"class": "dent", "score": 0.31, "box": [2, 2, 14, 12], "area": 120.0, "polygon": [[2, 2], [13, 2], [13, 11], [2, 11]]})
        gate = "damaged" if instances else "normal"
        score = round(0.95 - 0.1 * index, 3) if instances else round(0.02 * index, 3)
        lines.append({"path": record.path, "status": "ok", "height": 96, "width": 128, "gate": {"label": gate, "score": score}, "instances": instances})
    bad = work_dir / "builtin_data" / "broken.jpg"
    bad.write_bytes(b"not a photo")
    lines.append({"path": str(bad), "status": "error", "error": f"{bad}: not an image file (no known image format)"})
    with open(work_dir / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    stamp = {"mode": "eval", "split": "all", "data_root": str(REPO / "builtin")}
    (work_dir / "run_info.json").write_text(json.dumps({"stamp": stamp, "config": CAR_CONFIG}))
    (work_dir / "report.html").write_text("<html><body><h1>report</h1></body></html>")
    return work_dir


@pytest.fixture
def demo_work_dir(tmp_path: Path) -> Path:
    """A fresh evaluation work dir (photos, ground truth, predictions) for one test."""
    return write_demo_work_dir(tmp_path / "run ü")


@pytest.fixture
def demo_state(demo_work_dir: Path):
    """The review state over :func:`demo_work_dir`, with the config options matching its data."""
    from defectkit.review.app import ReviewState

    return ReviewState(demo_work_dir, CAR_CONFIG, dict(TINY_DATA_OPTIONS))


@pytest.fixture
def live_server(demo_state) -> Iterator[str]:
    """The app served by uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    from defectkit.review.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(demo_state), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("review server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
