"""PostgreSQL as the shared queue: a private cluster (Debian's postgresql, run as an unprivileged user), the
API creating 50 jobs, two worker processes claiming concurrently with FOR UPDATE SKIP LOCKED: each job runs
exactly once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from magihuman.serve.config import ServeConfig
from magihuman.serve.store import JobStore
from magihuman.serve.worker import CONFIG_ENV

from .serve_helpers import FAKE_FACTORY, REPO_ROOT

pytestmark = pytest.mark.timeout(300)

JOBS = 50


def test_two_workers_fifty_jobs_each_runs_once(postgres, tmp_path):
    from fastapi.testclient import TestClient

    from magihuman.serve.app import create_app

    config = ServeConfig(data_dir=tmp_path / "shared", database_url=postgres.new_database(), ui=False,
                         pipeline_factory=FAKE_FACTORY, poll_seconds=0.02, lease_seconds=20, heartbeat_seconds=2)
    store = JobStore(config.url)
    env = dict(os.environ, **{CONFIG_ENV: config.to_json(), "MAGIHUMAN_FAKE_STEP_SECONDS": "0.005",
                              "PYTHONPATH": str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")})
    logs = [tmp_path / f"worker-{name}.log" for name in "ab"]
    workers = []
    for name, log in zip("ab", logs):
        with open(log, "wb") as out:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "magihuman.serve.worker", "--name", f"worker-{name}", "--watch-stdin"],
                env=env, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 120
        while not all("ready" in log.read_text() for log in logs):  # both load before any job exists
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
            assert all(w.poll() is None for w in workers), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.2)
        with TestClient(create_app(config, store=store)) as client:
            ids = [client.post("/v1/videos", json={"prompt": "A man says hello.", "seconds": 0.4, "size": "64x64",
                                                   "seed": i}).json()["id"] for i in range(JOBS)]
        while store.counts()["completed"] < JOBS:
            assert time.monotonic() < deadline + 120, store.counts()
            time.sleep(0.2)
    finally:
        for worker in workers:
            worker.stdin.close()  # as when the supervisor goes away
        for worker in workers:
            worker.wait(30)
    started = Counter()
    by_worker = Counter()
    for name, log in zip("ab", logs):
        for job_id in re.findall(r"(video_[0-9a-f]{32}) \(attempt \d+\) started", log.read_text()):
            started[job_id] += 1
            by_worker[name] += 1
    assert sorted(started) == sorted(ids) and set(started.values()) == {1}  # each job ran exactly once
    assert by_worker["a"] > 0 and by_worker["b"] > 0, by_worker  # both claimed concurrently
    for job_id in ids:
        job = store.get(job_id)
        assert (job.status, job.attempts) == ("completed", 1)
        assert [p.name for p in (config.videos_dir / job_id).glob("*.mp4")] == ["attempt-1.mp4"]
    print(f"postgres: {JOBS} jobs, runs per worker {dict(by_worker)}")
    store.close()
