"""Bounded load on loopback: 20 concurrent clients create 200 jobs against a real server (fake fast pipeline,
two workers, queue limit 40). No job is lost, every accepted job finishes once, the queue limit holds.
Figures (request latency p50/p99, jobs per second) go to test-artifacts/serve_load.json."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import numpy as np
import pytest

from .conftest import FAKE_QUEUE_LIMIT
from .serve_helpers import ARTIFACTS

pytestmark = pytest.mark.timeout(300)

CLIENTS = 20
JOBS = 200
#: Hard limit of the whole load run, seconds.
DEADLINE = 180.0
BODY = {"prompt": "A man in a blue shirt says: \"Load test.\"", "seconds": 0.4, "size": "64x64"}


class _Load:
    """Shared state of the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.accepted: list[str] = []
        self.refused = 0
        self.errors: list[str] = []
        self.peak_active = 0
        self.stop_at = time.monotonic() + DEADLINE


def _client(load: _Load, url: str, headers: dict, index: int) -> None:
    """Create this client's share of the jobs; on 429 wait ``Retry-After`` (at most 1 s) and retry."""
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for n in range(JOBS // CLIENTS):
            while time.monotonic() < load.stop_at:
                start = time.perf_counter()
                response = http.post("/v1/videos", json={**BODY, "seed": index * 1000 + n},
                                     headers={"Idempotency-Key": f"load-{index}-{n}"})
                with load.lock:
                    load.latencies.append(time.perf_counter() - start)
                if response.status_code == 200:
                    with load.lock:
                        load.accepted.append(response.json()["id"])
                    break
                if response.status_code != 429:
                    with load.lock:
                        load.errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                with load.lock:
                    load.refused += 1
                time.sleep(min(float(response.headers["Retry-After"]), 1.0))


def _monitor(load: _Load, url: str, done: threading.Event) -> None:
    """Track the most jobs queued or running at once, from ``/healthz`` every 50 ms."""
    with httpx.Client(base_url=url, timeout=30) as http:
        while not done.is_set():
            health = http.get("/healthz").json()
            load.peak_active = max(load.peak_active, health["queued"] + health["in_progress"])
            time.sleep(0.05)


def test_twenty_clients_two_hundred_jobs(fake_server):
    headers = {"Authorization": f"Bearer {fake_server.api_key}"}
    load = _Load()
    done = threading.Event()
    watcher = threading.Thread(target=_monitor, args=(load, fake_server.url, done), daemon=True)
    watcher.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=_client, args=(load, fake_server.url, headers, i)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE + 10)
    submitted = time.perf_counter() - start
    assert not load.errors, load.errors[:5]
    assert len(load.accepted) == JOBS and len(set(load.accepted)) == JOBS

    with httpx.Client(base_url=fake_server.url, headers=headers, timeout=30) as http:
        while time.monotonic() < load.stop_at:  # drained when nothing is queued or running
            health = http.get("/healthz").json()
            if health["queued"] + health["in_progress"] == 0:
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        done.set()
        finished = {video_id: http.get(f"/v1/videos/{video_id}").json() for video_id in load.accepted}
    watcher.join(5)
    statuses = [body["status"] for body in finished.values()]
    assert statuses == ["completed"] * JOBS, {s: statuses.count(s) for s in set(statuses)}
    assert all(body["attempts"] == 1 for body in finished.values())  # each ran once
    for video_id in load.accepted:
        assert len(list((fake_server.data_dir / "videos" / video_id).glob("*.mp4"))) == 1
    assert load.refused > 0, "the load never reached the queue limit; the limit was not exercised"
    assert load.peak_active <= FAKE_QUEUE_LIMIT

    ms = np.array(load.latencies) * 1000
    figures = {
        "clients": CLIENTS, "jobs": JOBS, "queue_limit": FAKE_QUEUE_LIMIT, "workers": 2,
        "requests": len(load.latencies), "refused_429": load.refused, "peak_active_jobs": load.peak_active,
        "create_latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1),
                              "p99": round(float(np.percentile(ms, 99)), 1), "max": round(float(ms.max()), 1)},
        "submit_seconds": round(submitted, 2), "total_seconds": round(elapsed, 2),
        "jobs_per_second": round(JOBS / elapsed, 2), "load_average_1min": round(os.getloadavg()[0], 2),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "serve_load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("load:", json.dumps(figures))
