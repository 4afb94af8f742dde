"""A worker: one process holding loaded pipelines, claiming jobs from the store and rendering them.

The models are loaded once when the process starts (one pipeline per served preset), never per job. For
each claimed job the worker

1. renews its lease every ``heartbeat_seconds`` from a background thread;
2. calls the pipeline with ``callback_on_step_end`` (the diffusers convention): after every denoising step
   of every stage it records ``progress`` (steps done over ``total_steps``) and renews the lease in one
   conditional update; when that update finds the job no longer ours (cancelled, deleted, or re-queued
   after a lost lease) it raises, which stops the generation between two steps;
3. writes ``attempt-<n>.mp4`` (atomically, in the job folder) and a WebP thumbnail, then marks the job
   completed *only if the run still owns it*; otherwise it deletes what it wrote.

A worker started by the supervisor exits when the supervisor dies (its stdin pipe closes), so a killed server
leaves no orphan rendering; its job's lease then expires and another worker re-runs it.

Run alone (another machine sharing a PostgreSQL queue): ``magihuman serve --no-api ...`` starts workers
only; ``python -m magihuman.serve.worker --device cuda:0`` runs one, reading its settings as JSON from
``$MAGIHUMAN_SERVE_CONFIG``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from magihuman.serve.adapters import AdapterSet, LoraJobError
from magihuman.serve.config import ServeConfig
from magihuman.serve.jobs import THUMBNAIL_NAME, generation_request
from magihuman.serve.store import Job, JobStore
from magihuman.serve.uploads import remove_folder

__all__ = ["Worker", "JobStopped", "WorkerStopping", "load_pipelines", "load_official_pipeline", "warm_up", "main",
           "CONFIG_ENV",
           "GO", "STOPPED", "RELEASE"]

logger = logging.getLogger("magihuman.serve.worker")

#: Environment variable carrying the worker's :class:`ServeConfig` as JSON.
CONFIG_ENV = "MAGIHUMAN_SERVE_CONFIG"


#: Step verdicts: go on, stop (the run no longer owns its job), release (the worker is stopping).
GO, STOPPED, RELEASE = 0, 1, 2


class JobStopped(Exception):
    """Raised inside the step callback: the run no longer owns its job (cancelled, deleted, lease lost)."""


class WorkerStopping(Exception):
    """Raised inside the step callback: this worker is shutting down; the job goes back to the queue."""


def load_official_pipeline(root: Path | None, preset: str, device: str, runtime: dict | None = None):
    """``MagiHumanPipeline.from_official(root, preset=preset, device=device, runtime=RuntimeOptions(**runtime))``."""
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline
    from magihuman.runtime.options import RuntimeOptions
    options = RuntimeOptions(**(runtime or {}))
    return MagiHumanPipeline.from_official(root, preset=preset, device=device, runtime=options)


def load_pipelines(config: ServeConfig, device: str) -> dict[str, Any]:
    """One pipeline per served preset, from ``config.pipeline_factory`` (``module:function``).

    Raises:
        ImportError, AttributeError: the factory cannot be found.
        Exception: whatever loading the checkpoints raises.
    """
    module, _, name = config.pipeline_factory.partition(":")
    factory = getattr(importlib.import_module(module), name)
    return {preset: factory(config.checkpoint_root, preset, device, config.runtime) for preset in config.models}


class Worker:
    """Claims and renders jobs until ``stop`` is set.

    Args:
        config: settings (lease, heartbeat, poll interval, data folder).
        store: the job store.
        pipelines: loaded pipelines by preset; the worker claims only jobs of these presets.
        worker_id: name recorded on claimed jobs (default ``host:pid:device``).
        stop: event that ends :meth:`run`; a running job is released back to the queue at its next step.
    """

    def __init__(self, config: ServeConfig, store: JobStore, pipelines: dict[str, Any], *,
                 worker_id: str | None = None, stop: threading.Event | None = None):
        self.config, self.store, self.pipelines = config, store, pipelines
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stop = stop or threading.Event()
        self.jobs_done = 0
        self._reaped = -float("inf")
        self._adapters: dict[str, AdapterSet] = {}

    def run(self) -> None:
        """Loop: re-queue expired leases, claim the oldest job of a served preset, render it."""
        while not self.stop.is_set():
            if not self.run_once():
                self.stop.wait(self.config.poll_seconds)

    def run_once(self) -> bool:
        """Claim and render at most one job; False when none was queued."""
        now = time.monotonic()
        if now - self._reaped >= self.config.heartbeat_seconds:  # not every poll: each is a write on SQLite
            self.store.reap_expired()
            self._reaped = now
        job = self.store.claim(self.worker_id, self.pipelines, self.config.lease_seconds)
        if job is None:
            return False
        self.render(job)
        self.jobs_done += 1
        return True

    def render(self, job: Job) -> None:
        """Render a claimed job and record the outcome (completed, failed, released or dropped)."""
        folder = self.config.videos_dir / job.id
        lost = threading.Event()
        beating = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, lost, beating), daemon=True)
        beat.start()
        logger.info("%s: %s (attempt %d) started", self.worker_id, job.id, job.attempts)
        try:
            out = self._generate(job, folder, lost)
            name = self._write(job, folder, out)
        except JobStopped:
            logger.info("%s: %s stopped: cancelled, deleted or lease lost", self.worker_id, job.id)
            self._discard(job, folder)
            return
        except WorkerStopping:
            self.store.release(job)
            logger.info("%s: %s released back to the queue (worker stopping)", self.worker_id, job.id)
            return
        except LoraJobError as exc:
            logger.warning("%s: %s failed: %s", self.worker_id, job.id, exc)
            self.store.fail(job, exc.code, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the worker goes on
            logger.exception("%s: %s failed", self.worker_id, job.id)
            self.store.fail(job, "generation_failed", f"{type(exc).__name__}: {exc}")
            return
        finally:
            beating.set()
            beat.join()
        timings = dict(getattr(out, "timings", {}) or {})
        if self.store.complete(job, name, timings):
            logger.info("%s: %s completed", self.worker_id, job.id)
        else:
            logger.info("%s: %s finished after losing the job; output discarded", self.worker_id, job.id)
            self._discard(job, folder, name)

    def _generate(self, job: Job, folder: Path, lost: threading.Event):
        pipe = self.pipelines[job.model]
        request = generation_request(job, folder)
        done = 0
        last = [-1]

        def on_step_end(_pipe, _step, _timestep, callback_kwargs: dict) -> dict:
            nonlocal done
            done = int(callback_kwargs.get("completed_steps") or done + 1)
            total = int(callback_kwargs.get("total_steps") or callback_kwargs.get("num_steps") or done)
            verdict = self._agree(self._step_verdict(job, min(99, int(100 * done / max(total, done))), lost, last))
            if verdict == RELEASE:
                raise WorkerStopping()
            if verdict == STOPPED:
                raise JobStopped()
            return callback_kwargs

        adapters = self._adapter_set(job.model, pipe)
        try:
            if adapters is not None:
                adapters.apply(job.params.get("loras") or [])
            out = self._call_pipeline(pipe, request, on_step_end)
        finally:
            if adapters is not None:
                adapters.reset()
        if lost.is_set():
            raise JobStopped()
        return out

    def _adapter_set(self, model: str, pipe) -> AdapterSet | None:
        """The LoRA adapters of ``model``'s pipeline (None for a pipeline without a transformer, e.g. the fake)."""
        if model not in self._adapters and (self.config.lora_dir is not None or hasattr(pipe, "transformer")):
            self._adapters[model] = AdapterSet(pipe, self.config.lora_dir)
        return self._adapters.get(model)

    def _step_verdict(self, job: Job, progress: int, lost: threading.Event, last: list[int]) -> int:
        """After a step: :data:`GO`, :data:`STOPPED` (the run lost its job) or :data:`RELEASE` (worker stopping).
        Records ``progress`` (and renews the lease) when it changed."""
        if self.stop.is_set():
            return RELEASE
        if lost.is_set():
            return STOPPED
        if progress != last[0]:
            if not self.store.heartbeat(job, self.config.lease_seconds, progress=progress):
                return STOPPED
            last[0] = progress
        return GO

    def _agree(self, verdict: int) -> int:
        """The verdict every process of the worker acts on (one process: its own)."""
        return verdict

    def _call_pipeline(self, pipe, request, on_step_end):
        if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
            return pipe(request, callback_on_step_end=on_step_end)
        return pipe(request)  # a pipeline without step callbacks: progress jumps at the end, a cancel drops the result

    def _write(self, job: Job, folder: Path, out) -> str:
        """``attempt-<n>.mp4`` and the thumbnail, each written atomically; returns the MP4's name."""
        name = f"attempt-{job.attempts}.mp4"
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        out.save(folder / name, overwrite=True)
        _write_thumbnail(out.frames, folder / THUMBNAIL_NAME)
        if hasattr(out, "timings"):
            out.timings["write"] = time.perf_counter() - start
        return name

    def _discard(self, job: Job, folder: Path, name: str | None = None) -> None:
        current = self.store.get(job.id, include_deleted=True)
        if current is None or self.store.get(job.id) is None:  # deleted: the whole folder goes
            remove_folder(folder)
        elif name is not None and current.output != name:
            (folder / name).unlink(missing_ok=True)

    def _heartbeat(self, job: Job, lost: threading.Event, done: threading.Event) -> None:
        while not done.wait(self.config.heartbeat_seconds):
            try:
                if not self.store.heartbeat(job, self.config.lease_seconds):
                    lost.set()
                    return
            except Exception:  # noqa: BLE001 - a database hiccup: try again at the next beat
                logger.exception("%s: heartbeat of %s failed", self.worker_id, job.id)


def _write_thumbnail(frames, path: Path) -> None:
    """The first frame as WebP, written to a temp name and renamed."""
    import PIL.Image

    if frames is None or len(frames) == 0:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    PIL.Image.fromarray(frames[0]).save(tmp, format="WEBP", quality=85)
    os.replace(tmp, path)


def _exit_when_parent_dies() -> None:
    """Block on stdin (a pipe from the supervisor); EOF means the supervisor is gone: exit at once."""
    try:
        while sys.stdin.buffer.read(1):
            pass
    except (OSError, ValueError):
        pass
    os._exit(3)


def main(argv: list[str] | None = None) -> None:
    """``python -m magihuman.serve.worker --device DEVICE [--cp N]``; settings from ``$MAGIHUMAN_SERVE_CONFIG``."""
    parser = argparse.ArgumentParser(prog="python -m magihuman.serve.worker", description=main.__doc__)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--name", default=None, help="worker name shown on its jobs")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes (set by the supervisor)")
    parser.add_argument("--cp", type=int, default=1, help="sequence-parallel group size: launch with torchrun "
                        "--nproc_per_node N ... --cp N; the group renders one job at a time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.watch_stdin:
        threading.Thread(target=_exit_when_parent_dies, daemon=True).start()
    text = os.environ.get(CONFIG_ENV)
    if not text:
        parser.error(f"${CONFIG_ENV} must hold the server settings as JSON")
    config = ServeConfig.from_json(text)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    store = JobStore(config.url)
    name = args.name or f"{socket.gethostname()}:{os.getpid()}:{args.device}"
    if args.cp > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from magihuman.serve.group_worker import run_group

        run_group(config, store, cp=args.cp, device=args.device, name=name, stop=stop)
    else:
        logger.info("%s: loading %s", name, ", ".join(config.models))
        pipelines = load_pipelines(config, args.device)
        warm_up()
        logger.info("%s: ready", name)
        Worker(config, store, pipelines, worker_id=name, stop=stop).run()
    store.close()
    logger.info("%s: stopped", name)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # not a normal exit: the stdin watcher thread may hold stdin's lock during interpreter shutdown


def warm_up() -> None:
    """Import what the first job needs (request checks, MP4 writer) before declaring the worker ready."""
    importlib.import_module("magihuman.pipeline.validation")
    importlib.import_module("magihuman.pipeline.media.mp4")


if __name__ == "__main__":
    main()
