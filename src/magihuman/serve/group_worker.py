"""A sequence-parallel worker group: N processes (one ``torchrun`` launch) rendering one job at a time together.

``torchrun --nproc_per_node N -m magihuman.serve.worker --cp N`` (settings as JSON in
``$MAGIHUMAN_SERVE_CONFIG``). Every rank loads the pipelines and splits each clip's tokens over the group
(Ulysses, :mod:`magihuman.model.sequence_parallel`); the output rank (the last, architecture.md §6.4) is the
group's leader: it claims jobs, holds the lease, records progress, decodes and writes the MP4. Each
round the leader broadcasts its decision (a job, idle, or stop) to every rank; after each denoising step
the ranks agree on the leader's verdict with one ``all_reduce`` (MAX), so a cancel or shutdown stops all
of them at the same step and no rank waits in a collective the others left.

Fits few, large requests where the latency of one clip matters; for many requests run one worker per GPU
instead (docs/serving.md).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

from magihuman.serve.config import ServeConfig
from magihuman.serve.store import Job, JobStore
from magihuman.serve.worker import GO, JobStopped, Worker, WorkerStopping, load_pipelines, warm_up

__all__ = ["GroupWorker", "run_group"]

logger = logging.getLogger("magihuman.serve.worker")

_IDLE, _STOP = "idle", "stop"


class GroupWorker(Worker):
    """One rank of a worker group. Arguments as :class:`~magihuman.serve.worker.Worker`, plus ``leader``."""

    def __init__(self, config: ServeConfig, store: JobStore, pipelines: dict[str, Any], *, worker_id: str,
                 stop: threading.Event, leader: bool):
        super().__init__(config, store, pipelines, worker_id=worker_id, stop=stop)
        self.leader = leader
        self.source = dist.get_world_size() - 1

    def run(self) -> None:
        """Rounds in lockstep on every rank until the leader says stop."""
        while True:
            message: list[object | None] = [self._decide() if self.leader else None]
            dist.broadcast_object_list(message, src=self.source)
            if message[0] == _STOP:
                return
            if message[0] == _IDLE:
                self.stop.wait(self.config.poll_seconds)
                continue
            self.render(message[0])
            self.jobs_done += 1

    def _decide(self) -> object:
        if self.stop.is_set():
            return _STOP
        try:
            return self._claim()
        except Exception:  # noqa: BLE001 - a database hiccup must not break the group's lockstep
            logger.exception("%s: claiming failed", self.worker_id)
            return _IDLE

    def _claim(self) -> object:
        now = time.monotonic()
        if now - self._reaped >= self.config.heartbeat_seconds:
            self.store.reap_expired()
            self._reaped = now
        job = self.store.claim(self.worker_id, self.pipelines, self.config.lease_seconds)
        return _IDLE if job is None else job

    def render(self, job: Job) -> None:
        """The leader renders and records; the other ranks compute their share of every step."""
        if self.leader:
            return super().render(job)
        try:
            self._generate(job, self.config.videos_dir / job.id, threading.Event())
        except (JobStopped, WorkerStopping):
            pass
        except Exception:  # noqa: BLE001 - the leader fails the job with the same error
            logger.exception("%s: %s failed on this rank", self.worker_id, job.id)

    def _step_verdict(self, job, progress, lost, last) -> int:
        return super()._step_verdict(job, progress, lost, last) if self.leader else GO

    def _agree(self, verdict: int) -> int:
        flag = torch.tensor([verdict], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _call_pipeline(self, pipe, request, on_step_end):
        return pipe(request, callback_on_step_end=on_step_end, decode=self.leader)


def run_group(config: ServeConfig, store: JobStore, *, cp: int, device: str, name: str,
              stop: threading.Event) -> None:
    """Join the ``torchrun`` group, load the pipelines with sequence parallelism, serve until stopped.

    Raises:
        ValueError: ``cp`` does not match the launch (``WORLD_SIZE``), as ``init_sequence_parallel``.
    """
    import os

    from magihuman.model.sequence_parallel import init_sequence_parallel, is_output_rank, shutdown_sequence_parallel

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cp != world:
        raise ValueError(f"--cp {cp} must equal the number of processes ({world}): "
                         f"torchrun --nproc_per_node {cp} -m magihuman.serve.worker --cp {cp}")
    sp = init_sequence_parallel(cp_size=cp)
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    rank_name = f"{name}:rank{dist.get_rank()}"
    logger.info("%s: loading %s (cp %d)", rank_name, ", ".join(config.models), cp)
    pipelines = load_pipelines(config, device)
    for pipe in pipelines.values():
        for model in (getattr(pipe, "transformer", None), getattr(pipe, "sr_transformer", None)):
            if model is not None and sp is not None:
                model.enable_sequence_parallel(sp)
    warm_up()
    logger.info("%s: ready", rank_name)
    GroupWorker(config, store, pipelines, worker_id=name, stop=stop, leader=is_output_rank()).run()
    shutdown_sequence_parallel()
