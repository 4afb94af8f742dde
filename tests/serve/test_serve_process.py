"""A real ``magihuman serve`` process on loopback with the demo bundle: create, poll, download (PyAV);
kill -9 a worker and the whole server while jobs run: no job lost, none run to a second result."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import av
import pytest

from magihuman.serve.store import JobStore

from .serve_helpers import ServerProcess, wait_for, wait_pids_gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

PROMPT = "A man in a blue shirt looks into the camera and says: \"Good morning, everyone.\""
#: Short leases so that a dead worker's job comes back within seconds.
LEASE = ("--lease-seconds", "3", "--heartbeat-seconds", "1")
#: Length of the clips killed mid-run: long enough (25 frames) that a fast machine does not finish one
#: between the test seeing it run and the kill.
KILLED_SECONDS = 1.0


@pytest.fixture(scope="module")
def demo_env(demo_root):
    return {"MAGIHUMAN_DEMO_DIR": str(demo_root)}


def probe(content: bytes) -> tuple[int, int, int, int]:
    """(frames, width, height, audio streams) of an MP4, decoded with PyAV."""
    with av.open(io.BytesIO(content)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.width, stream.height, len(container.streams.audio)


def running_worker(server: ServerProcess, video_id: str) -> int:
    """Pid of the worker process whose name the job records (``--name`` on its command line)."""
    store = JobStore(f"sqlite:///{server.data_dir / 'jobs.sqlite3'}")
    try:
        name = store.get(video_id).worker_id
    finally:
        store.close()
    for pid in server.worker_pids():
        if name in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"):
            return pid
    raise AssertionError(f"no worker process named {name}")


def mp4s(server: ServerProcess, video_id: str) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "videos" / video_id).glob("*.mp4"))


def test_demo_server_download_worker_kill_and_server_kill9(tmp_path, demo_env):
    """One server life: a job end to end, then its worker killed mid-job, then the server killed mid-job and
    started again on the same data folder (two server starts keep the test short)."""
    data = tmp_path / "data"
    # two workers: when one is killed, the other re-runs its job without waiting for the restarted one to load
    server = ServerProcess(data, "--no-ui", "--devices", "cpu,cpu", *LEASE, env=demo_env).start()
    try:
        with server.client() as client:
            job = client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 0.4, "size": "64x64"}).json()
            done = wait_for(client, job["id"], timeout=240)
            assert done["status"] == "completed" and done["progress"] == 100, done
            assert probe(client.get(f"/v1/videos/{job['id']}/content").content) == (9, 64, 64, 1)

            # kill -9 the worker while a job runs: its lease expires, the job is re-queued and completes
            body = {"prompt": PROMPT, "seconds": KILLED_SECONDS, "size": "64x64", "seed": 5}
            victim = client.post("/v1/videos", json=body).json()
            wait_for(client, victim["id"], statuses=("in_progress",), timeout=60)
            worker = running_worker(server, victim["id"])
            os.kill(worker, signal.SIGKILL)
            done = wait_for(client, victim["id"], timeout=240)
            assert done["status"] == "completed" and done["attempts"] == 2, done
            assert mp4s(server, victim["id"]) == ["attempt-2.mp4"]
            assert probe(client.get(f"/v1/videos/{victim['id']}/content").content) == (25, 64, 64, 1)
            assert len(server.worker_pids()) == 2 and worker not in server.worker_pids()  # one was started anew

            # kill -9 the server while a job runs, with one more queued
            ids = [client.post("/v1/videos", json={"prompt": PROMPT, "seconds": KILLED_SECONDS, "size": "64x64",
                                                   "seed": i}).json()["id"] for i in range(10, 12)]
            wait_for(client, ids[0], statuses=("in_progress",), timeout=60)
        workers = server.worker_pids()
        server.kill9()
        assert wait_pids_gone(workers), "the workers of a killed server must exit on their own"
    finally:
        server.stop()

    again = ServerProcess(data, "--no-ui", "--devices", "cpu", *LEASE, env=demo_env).start()
    try:
        with again.client() as client:
            listed = client.get("/v1/videos", params={"limit": 100}).json()["data"]
            assert sorted(v["id"] for v in listed) == sorted([job["id"], victim["id"], *ids])  # nothing lost
            results = [wait_for(client, video_id, timeout=240) for video_id in ids]
            assert [r["status"] for r in results] == ["completed"] * 2, results
            assert results[0]["attempts"] == 2  # interrupted once, re-run once
            assert all(r["attempts"] in (1, 2) for r in results)  # the other was queued or interrupted too
            for video_id, result in zip(ids, results):
                assert mp4s(again, video_id) == [f"attempt-{result['attempts']}.mp4"]  # one result each
            assert probe(client.get(f"/v1/videos/{ids[0]}/content").content) == (25, 64, 64, 1)
    finally:
        again.stop()
