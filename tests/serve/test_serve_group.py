"""A sequence-parallel worker group (torchrun, 2 CPU processes, gloo): the leader claims, both ranks step
in lockstep, a cancel stops both at the same step, and SIGTERM ends the group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from magihuman.serve.config import ServeConfig
from magihuman.serve.jobs import JobService
from magihuman.serve.store import JobStore
from magihuman.serve.worker import CONFIG_ENV

from .serve_helpers import FAKE_FACTORY, REPO_ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BODY = {"prompt": "A man says hello.", "seconds": 0.4, "size": "64x64"}


def test_torchrun_group_renders_and_cancels(tmp_path):
    config = ServeConfig(data_dir=tmp_path / "data", ui=False, pipeline_factory=FAKE_FACTORY, poll_seconds=0.05,
                         lease_seconds=20, heartbeat_seconds=2)
    store = JobStore(config.url)
    service = JobService(config, store)
    env = dict(os.environ, **{CONFIG_ENV: config.to_json(), "MAGIHUMAN_FAKE_STEP_SECONDS": "0.15",
                              "OMP_NUM_THREADS": "1",
                              "PYTHONPATH": str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")})
    log = tmp_path / "group.log"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "magihuman.serve.worker", "--cp", "2", "--name", "group"]
    with open(log, "wb") as out:
        group = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while log.read_text().count("ready") < 2:
            assert group.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        first, _ = service.create(dict(BODY), {})
        second, _ = service.create({**BODY, "seed": 2}, {})
        while store.get(second.id).status != "in_progress":
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        while store.get(second.id).progress == 0:
            time.sleep(0.02)
        service.cancel(second.id)
        third, _ = service.create({**BODY, "seed": 3}, {})
        while store.get(third.id).status not in ("completed", "failed"):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        os.killpg(group.pid, signal.SIGTERM)  # as a service manager stops torchrun
        group.wait(60)
    text = log.read_text()
    for job, status in ((first, "completed"), (second, "cancelled"), (third, "completed")):
        record = store.get(job.id)
        assert record.status == status and record.attempts == 1, (record, text[-3000:])
    assert store.get(first.id).worker_id == "group"
    assert [p.name for p in (config.videos_dir / first.id).glob("*.mp4")] == ["attempt-1.mp4"]
    assert not list((config.videos_dir / second.id).glob("*.mp4"))
    assert f"{second.id} stopped" in text  # the leader saw the cancel; the other rank stopped at the same step,
    # or the collectives of the third job would not have matched
    store.close()
