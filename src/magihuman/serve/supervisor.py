"""Starts everything one machine needs: the job store, the worker processes, the HTTP API (with the UI).

Each worker is a child process (``python -m magihuman.serve.worker``) whose stdin is a pipe from the
supervisor: when the supervisor exits or is killed, the pipe closes and the worker exits at once, so no
orphan keeps rendering. A worker that dies is started again (after 1 s, doubling up to 30 s while it keeps
dying within a minute of its start). The supervisor also re-queues jobs whose lease expired, so a dead
worker's job comes back even while every other worker is busy.

Stopping (Ctrl-C, SIGTERM): the API stops accepting requests, each worker is asked to stop (a running job
goes back to the queue at its next denoising step), and after ``grace_seconds`` the rest are killed; the
jobs they held return to the queue when their leases expire. Nothing is lost either way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from magihuman.serve.config import ServeConfig
from magihuman.serve.store import JobStore
from magihuman.serve.worker import CONFIG_ENV

__all__ = ["Supervisor", "run_server", "resolve_checkpoint_root"]

logger = logging.getLogger("magihuman.serve")

_MAX_BACKOFF = 30.0
_STABLE_SECONDS = 60.0


@dataclass
class _Child:
    device: str
    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = 1.0
    restarts: int = 0
    next_start: float = field(default=0.0)


class Supervisor:
    """Worker processes, one per ``config.devices`` entry, kept running.

    Args:
        config: settings passed to every worker (as JSON in ``$MAGIHUMAN_SERVE_CONFIG``).
        store: the job store, for re-queuing expired leases.
        grace_seconds: how long :meth:`stop` waits for workers before killing them.
    """

    def __init__(self, config: ServeConfig, store: JobStore, *, grace_seconds: float = 10.0):
        self.config, self.store, self.grace_seconds = config, store, grace_seconds
        self.children = [_Child(device, i) for i, device in enumerate(config.devices)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start every worker and the watcher thread."""
        for child in self.children:
            self._spawn(child)
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _spawn(self, child: _Child) -> None:
        env = dict(os.environ, **{CONFIG_ENV: self.config.to_json()})
        name = f"{os.uname().nodename}:{child.device}:w{child.index}"
        child.process = subprocess.Popen(
            [sys.executable, "-m", "magihuman.serve.worker", "--device", child.device, "--name", name, "--watch-stdin"],
            stdin=subprocess.PIPE, env=env,
        )
        child.started = time.monotonic()
        logger.info("worker %s started (pid %d)", name, child.process.pid)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for child in self.children:
                code = child.process.poll() if child.process else None
                if child.process is not None and code is not None:
                    logger.warning("worker %d on %s exited with code %s", child.index, child.device, code)
                    stable = now - child.started > _STABLE_SECONDS
                    child.backoff = 1.0 if stable else min(_MAX_BACKOFF, child.backoff * 2)
                    child.next_start = now + child.backoff
                    child.process = None
                if child.process is None and now >= child.next_start and not self._stop.is_set():
                    child.restarts += 1
                    self._spawn(child)
            try:
                self.store.reap_expired()
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable; try again
                logger.exception("re-queuing expired leases failed")

    def stop(self) -> None:
        """Ask every worker to stop, wait up to ``grace_seconds``, then kill the rest."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in self.children:
            if child.process is not None and child.process.stdin is not None:
                child.process.stdin.close()


def resolve_checkpoint_root(config: ServeConfig) -> ServeConfig:
    """The config with ``checkpoint_root`` set: the given root, or the demo bundle (built once, here, before any
    worker starts). Pipelines from another factory keep ``None``."""
    if config.checkpoint_root is not None or not config.pipeline_factory.endswith(":load_official_pipeline"):
        return config
    from magihuman.demo.bundle import demo_checkpoint_root

    config.checkpoint_root, trained = demo_checkpoint_root()
    logger.warning("no --checkpoint-root: serving the demo bundle (%s)", "the toy world's small trained models"
                   if trained else "tiny RANDOM weights; the videos are noise")
    return config


def run_server(config: ServeConfig) -> None:
    """Run the API (and UI) and the workers until interrupted.

    Raises:
        magihuman.serve.config.ConfigError: bad settings (checked before anything starts).
    """
    config.check()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.videos_dir.mkdir(parents=True, exist_ok=True)
    config = resolve_checkpoint_root(config)
    store = JobStore(config.url)
    requeued, failed = store.reap_expired()
    if requeued or failed:
        logger.info("startup: %d interrupted job(s) re-queued, %d failed after their last attempt", requeued, failed)
    supervisor = Supervisor(config, store)
    supervisor.start()
    try:
        if config.api:
            import uvicorn

            from magihuman.serve.app import create_app

            app = create_app(config, store=store)
            server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                                   timeout_graceful_shutdown=5, server_header=False))
            server.run()
        else:
            stopped = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stopped.set())
            stopped.wait()
    finally:
        supervisor.stop()
        store.close()
