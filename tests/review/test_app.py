"""The review app's API: filters, decisions kept across a restart, files confined to the run, token,
host and write guards, capped uploads decoded by the hardened decoder."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from .conftest import CAR_CONFIG, NEEDS_REVIEW_EXTRA, TINY_DATA_OPTIONS

pytest.importorskip("starlette", reason=NEEDS_REVIEW_EXTRA)
pytest.importorskip("httpx", reason=NEEDS_REVIEW_EXTRA)
from starlette.testclient import TestClient  # noqa: E402

from defectkit.cli import EXIT_FATAL, main  # noqa: E402
from defectkit.review.app import ReviewState, create_app  # noqa: E402
from defectkit.review.command import is_loopback  # noqa: E402

HEADERS = {"X-Review": "1"}


@pytest.fixture
def client(demo_state) -> TestClient:
    return TestClient(create_app(demo_state), base_url="http://127.0.0.1:8000")


def test_grid_filters_and_sorts(client: TestClient):
    everything = client.get("/api/items").json()
    assert everything["total"] == 10
    scores = [i["score"] for i in everything["items"]]
    assert scores[-1] is None, "the unreadable file has no score and sorts last"
    assert scores[:-1] == sorted(scores[:-1], reverse=True)
    ascending = [i["score"] for i in client.get("/api/items", params={"sort": "score_asc"}).json()["items"]]
    assert ascending[:-1] == sorted(scores[:-1]) and ascending[-1] is None
    assert [i["status"] for i in client.get("/api/items", params={"status": "error"}).json()["items"]] == ["error"]
    normal = client.get("/api/items", params={"gate": "normal"}).json()["items"]
    assert normal and all(i["gate"] == "normal" and i["n"] == 0 for i in normal)
    dents = client.get("/api/items", params={"cls": "dent"}).json()["items"]
    assert dents and all("dent" in i["classes"] for i in dents)
    ranged = client.get("/api/items", params={"min_score": 0.5, "max_score": 0.9}).json()["items"]
    assert ranged and all(0.5 <= i["score"] <= 0.9 for i in ranged)
    assert client.get("/api/items", params={"min_score": "high"}).status_code == 400


def test_photo_detail_has_ground_truth_of_an_evaluation(client: TestClient):
    item = client.get("/api/items", params={"gate": "damaged"}).json()["items"][0]
    detail = client.get(f"/api/items/{item['id']}").json()
    assert detail["width"] == 128 and detail["height"] == 96 and detail["instances"]
    assert detail["ground_truth"] and all(len(s["polygon"]) >= 3 for s in detail["ground_truth"])
    thumb = client.get(f"/api/items/{item['id']}/image", params={"size": "thumb"})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (128, 96)
    broken = client.get("/api/items", params={"status": "error"}).json()["items"][0]
    assert client.get(f"/api/items/{broken['id']}/image").status_code == 404
    assert client.get("/api/items/0123456789abcdef").status_code == 404


def test_ground_truth_never_regenerates_the_builtin_photos(demo_work_dir: Path):
    manifest = demo_work_dir / "builtin_data" / "manifest.json"
    before = manifest.read_bytes()
    state = ReviewState(demo_work_dir, CAR_CONFIG)  # without the run's --cfg-options
    client = TestClient(create_app(state), base_url="http://127.0.0.1")
    item = client.get("/api/items", params={"gate": "damaged"}).json()["items"][0]
    detail = client.get(f"/api/items/{item['id']}").json()
    assert detail["ground_truth"] is None and "generated with other settings" in detail["ground_truth_note"]
    assert manifest.read_bytes() == before


def test_decisions_survive_a_restart(client: TestClient, demo_work_dir: Path):
    item = client.get("/api/items", params={"gate": "damaged"}).json()["items"][0]
    url = f"/api/items/{item['id']}"
    assert client.post(f"{url}/instances/0", json={"decision": "reject"}, headers=HEADERS).status_code == 200
    assert client.post(f"{url}/instances/1", json={"class": "spacing"}, headers=HEADERS).status_code == 200
    assert client.post(f"{url}/regions", json={"class": "dent", "box": [5, 5, 25, 25]}, headers=HEADERS).status_code == 200
    bad = client.post(f"{url}/instances/99", json={"decision": "reject"}, headers=HEADERS)
    assert bad.status_code == 400 and "no instance 99" in bad.json()["error"]
    assert client.post(f"{url}/regions", json={"class": "rust", "box": [1, 1, 9, 9]}, headers=HEADERS).status_code == 400

    restarted = TestClient(create_app(ReviewState(demo_work_dir, CAR_CONFIG, dict(TINY_DATA_OPTIONS))), base_url="http://127.0.0.1")
    decisions = restarted.get(url).json()["decisions"]
    assert decisions["instances"] == {"0": {"decision": "reject"}, "1": {"class": "spacing"}}
    assert decisions["added"][0]["polygon"] == [[5.0, 5.0], [25.0, 5.0], [25.0, 25.0], [5.0, 25.0]]
    exported = restarted.post("/api/export", headers=HEADERS).json()
    assert exported["images"] == 0, "nothing is exported before the photo is reviewed"
    restarted.post(f"{url}/done", json={"done": True}, headers=HEADERS)
    assert restarted.post("/api/export", headers=HEADERS).json()["images"] == 1
    assert restarted.get("/files/review/export/coco.json").json()["annotations"]


@pytest.mark.parametrize(
    "path",
    [
        "/files/../../../etc/passwd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/builtin_data/../../outside.txt",
        "/files/.hidden",
        "/files/escape/outside.txt",
        "/files/builtin_data",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
    ],
)
def test_no_file_outside_the_run_is_served(client: TestClient, demo_work_dir: Path, path: str):
    (demo_work_dir.parent / "outside.txt").write_text("secret")
    (demo_work_dir / ".hidden").write_text("secret")
    if not (demo_work_dir / "escape").exists():
        os.symlink(demo_work_dir.parent, demo_work_dir / "escape")
    response = client.get(path)
    assert response.status_code == 404 and "secret" not in response.text and "root:" not in response.text


def test_the_runs_own_files_are_served(client: TestClient):
    assert "report" in client.get("/files/report.html").text
    assert "defectkit review" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200


def test_foreign_host_headers_and_writes_without_the_header_are_refused(client: TestClient):
    assert client.get("/api/summary", headers={"Host": "attacker.example"}).status_code == 400
    assert client.get("/api/summary", headers={"Host": "attacker.example:8000"}).status_code == 400
    for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
        assert client.get("/api/summary", headers={"Host": host}).status_code == 200
    assert client.post("/api/export").status_code == 403


def test_a_token_is_required_when_listening_beyond_this_machine(demo_state):
    app = create_app(demo_state, token="s3cret-token", allowed_hosts=["*"])
    client = TestClient(app, base_url="http://192.0.2.7:8000")
    assert client.get("/api/summary").status_code == 401
    assert client.get("/api/summary", params={"token": "wrong"}).status_code == 401
    assert client.get("/api/summary", params={"token": "s3cret-tökén"}).status_code == 401
    entered = client.get("/", params={"token": "s3cret-token"}, follow_redirects=False)
    assert entered.status_code == 303 and "token" not in entered.headers["location"]
    assert client.get("/api/summary").status_code == 200, "the cookie set on entry carries the session"
    assert TestClient(app, base_url="http://192.0.2.7").get("/api/summary", headers={"X-Review-Token": "s3cret-token"}).status_code == 200
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")


def test_uploads_are_capped_and_decoded_like_a_run(demo_work_dir: Path, tmp_path: Path):
    state = ReviewState(demo_work_dir, CAR_CONFIG, dict(TINY_DATA_OPTIONS), max_upload_bytes=5000)
    client = TestClient(create_app(state), base_url="http://127.0.0.1")
    big = client.post("/api/upload", content=b"x" * 6000, headers=HEADERS)
    assert big.status_code == 413
    junk = client.post("/api/upload", content=b"GIF89a broken", headers={**HEADERS, "X-Filename": "photo.gif"})
    assert junk.status_code == 422 and junk.json()["error"].startswith("photo.gif: ")
    assert str(demo_work_dir) not in junk.json()["error"]
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (120, 20, 20)).save(buffer, format="PNG")
    ok = client.post("/api/upload", content=buffer.getvalue(), headers={**HEADERS, "X-Filename": "panel.png"})
    body = ok.json()
    assert ok.status_code == 200 and (body["width"], body["height"]) == (40, 30)
    assert body["prediction"] is None and "no weights/" in body["note"], "the demo run has no fitted pipeline"
    assert client.get(f"/api/uploads/{body['id']}/image").headers["content-type"] == "image/jpeg"
    assert client.get("/api/uploads/..%2F..%2Fpredictions.jsonl/image").status_code == 404
    # Only the decodable upload is kept.
    assert len(list((demo_work_dir / "review" / "uploads").glob("*.upload"))) == 1


def test_review_command_reports_a_missing_work_dir_in_one_line(tmp_path: Path, capsys):
    assert main(["review", str(tmp_path / "nowhere")]) == EXIT_FATAL
    assert "nowhere: not a folder" in " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    (tmp_path / "empty").mkdir()
    assert main(["review", str(tmp_path / "empty")]) == EXIT_FATAL
    assert "no predictions.jsonl here" in " ".join(capsys.readouterr().err.split())
