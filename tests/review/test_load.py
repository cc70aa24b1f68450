"""A bounded load test on 127.0.0.1: 20 concurrent clients send 1,000 requests (grid, photos,
thumbnails, decisions) to the real server; every one must succeed and no decision may be lost."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import NEEDS_REVIEW_EXTRA

pytest.importorskip("starlette", reason=NEEDS_REVIEW_EXTRA)
pytest.importorskip("uvicorn", reason=NEEDS_REVIEW_EXTRA)

CLIENTS = 20
REQUESTS = 1000


def request(url: str, body: dict | None = None) -> tuple[int, float]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"X-Review": "1", "Content-Type": "application/json"} if body is not None else {}
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
        response.read()
        return response.status, time.perf_counter() - started


def test_twenty_clients_thousand_requests_without_an_error(live_server: str, demo_work_dir: Path):
    assert live_server.startswith("http://127.0.0.1:")
    items = json.loads(urllib.request.urlopen(f"{live_server}/api/items?status=ok", timeout=10).read())["items"]
    with_instances = [i for i in items if i["n"]]
    plan = []
    for n in range(REQUESTS):
        item = items[n % len(items)]
        kind = n % 5
        if kind == 0:
            plan.append((f"{live_server}/api/items?sort=score_asc&min_score=0.1", None))
        elif kind == 1:
            plan.append((f"{live_server}/api/items/{item['id']}", None))
        elif kind == 2:
            plan.append((f"{live_server}/api/items/{item['id']}/image?size=thumb", None))
        elif kind == 3:
            target = with_instances[n % len(with_instances)]
            decision = "accept" if (n // 5) % 2 else "reject"
            plan.append((f"{live_server}/api/items/{target['id']}/instances/{n % target['n']}", {"decision": decision}))
        else:
            plan.append((f"{live_server}/api/summary", None))

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda job: request(*job), plan))
    wall = time.perf_counter() - started
    statuses = [status for status, _ in results]
    assert statuses.count(200) == REQUESTS, f"non-200 answers: {sorted(set(statuses))}"
    latencies = sorted(seconds for _, seconds in results)
    print(f"\n{REQUESTS} requests, {CLIENTS} clients: {wall:.1f} s, {REQUESTS / wall:.0f} req/s, "
          f"p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, p95 {latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms")

    # Concurrent writes never tear the decisions file, and the last write of each instance is kept.
    saved = json.loads((demo_work_dir / "review" / "decisions.json").read_text())["images"]
    assert saved and all(d["decision"] in ("accept", "reject") for entry in saved.values() for d in entry["instances"].values())
    assert not list((demo_work_dir / "review").glob(".*.tmp"))
