"""The real pipeline (demo bundle) behind a worker: progress comes from ``callback_on_step_end`` after each
denoising step, and a cancel stops the generation between two steps."""

from __future__ import annotations

import pytest

from magihuman.serve.worker import Worker, load_official_pipeline

from .serve_helpers import InProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BODY = {"prompt": "A man in a blue shirt says: \"Good morning.\"", "seconds": 0.4, "size": "64x64"}


def test_demo_pipeline_progress_per_step_and_cancel_between_steps(tmp_path, demo_root):
    server = InProcess(tmp_path / "data")
    pipe = load_official_pipeline(demo_root, "distill", "cpu")
    seen: list[int] = []
    real_heartbeat = server.store.heartbeat
    cancel_at: list[int] = []

    def spy(job, lease_seconds, *, progress=None):
        if progress is not None:
            seen.append(progress)
            if cancel_at and progress >= cancel_at[0]:
                server.store.cancel(job.id)  # a client's cancel arriving during this step
        return real_heartbeat(job, lease_seconds, progress=progress)

    server.store.heartbeat = spy
    worker = Worker(server.config, server.store, {"distill": pipe}, worker_id="demo")
    try:
        job = server.client.post("/v1/videos", json=BODY).json()
        assert worker.run_once()
        done = server.client.get(f"/v1/videos/{job['id']}").json()
        assert done["status"] == "completed" and done["progress"] == 100
        assert seen == [12, 25, 37, 50, 62, 75, 87, 99]  # distill: 8 steps, one update after each

        seen.clear()
        cancel_at.append(25)
        job = server.client.post("/v1/videos", json={**BODY, "seed": 1}).json()
        assert worker.run_once()
        stopped = server.client.get(f"/v1/videos/{job['id']}").json()
        assert stopped["status"] == "cancelled" and stopped["progress"] == 12
        assert seen == [12, 25]  # the generation stopped at the step that found the job cancelled
        assert not list((server.config.videos_dir / job["id"]).glob("*.mp4"))
    finally:
        server.close()
