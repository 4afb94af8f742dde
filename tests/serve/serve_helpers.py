"""Helpers and fixtures of the serve tests (imported by the test modules; not a conftest, so that the
suite keeps one `conftest` module): an in-process app with thread workers, real server processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from magihuman.serve.config import ServeConfig
from magihuman.serve.fake_pipeline import FakePipeline
from magihuman.serve.store import JobStore
from magihuman.serve.worker import Worker

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
FAKE_FACTORY = "magihuman.serve.fake_pipeline:load_fake_pipeline"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InProcess:
    """The app (no UI) over a temp data folder, a ``TestClient``, and thread workers started on demand."""

    def __init__(self, data_dir: Path, **overrides):
        from fastapi.testclient import TestClient

        from magihuman.serve.app import create_app

        self.config = ServeConfig(data_dir=data_dir, ui=False, lease_seconds=2.0, heartbeat_seconds=0.5,
                                  poll_seconds=0.02, **overrides)
        self.store = JobStore(self.config.url)
        self.app = create_app(self.config, store=self.store)
        self.client = TestClient(self.app)
        self.stops: list[threading.Event] = []
        self.threads: list[threading.Thread] = []
        self.pipelines: list[FakePipeline] = []

    def start_worker(self, step_seconds: float = 0.005) -> FakePipeline:
        """A worker thread with a fast fake pipeline for every served preset; returns the first pipeline."""
        stop = threading.Event()
        pipes = {m: FakePipeline(m, step_seconds) for m in self.config.models}
        worker = Worker(self.config, self.store, pipes, worker_id=f"test-{len(self.threads)}", stop=stop)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self.stops.append(stop)
        self.threads.append(thread)
        self.pipelines.extend(pipes.values())
        return next(iter(pipes.values()))

    def wait(self, video_id: str, statuses=("completed", "failed", "cancelled"), timeout: float = 30.0) -> dict:
        """Poll ``GET /v1/videos/{id}`` until its status is one of ``statuses``."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.client.get(f"/v1/videos/{video_id}").json()
            if body.get("status") in statuses:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{video_id} still {body.get('status')} after {timeout} s")
            time.sleep(0.02)

    def close(self) -> None:
        for stop in self.stops:
            stop.set()
        for thread in self.threads:
            thread.join(10)
        self.client.close()
        self.store.close()


@pytest.fixture
def inproc(tmp_path):
    server = InProcess(tmp_path / "data")
    yield server
    server.close()


class ServerProcess:
    """``python -m magihuman serve`` as a child process on 127.0.0.1 with a free port.

    Args:
        data_dir: ``--data-dir``.
        args: extra command-line arguments.
        env: extra environment variables.
    """

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None, api_key: str | None = None):
        self.data_dir, self.args, self.api_key = data_dir, list(args), api_key
        self.env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
        src = str(REPO_ROOT / "src")
        self.env["PYTHONPATH"] = src + os.pathsep + self.env.get("PYTHONPATH", "")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Start and wait until ``/healthz`` answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "magihuman", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), *self.args]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not answer within {timeout} s:\n{self.log.read_text()[-4000:]}")

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def worker_pids(self) -> list[int]:
        """Pids of this server's worker processes (its children)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid:  # field 4 of /proc/PID/stat: the parent pid
                pids.append(int(stat.parent.name))
        return pids

    def kill9(self) -> None:
        """SIGKILL the server process only (its workers notice and exit on their own)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole process group after 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def wait_for(client: httpx.Client, video_id: str, statuses=("completed", "failed", "cancelled"),
             timeout: float = 120.0) -> dict:
    """Poll a real server until the job reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/videos/{video_id}").json()
        if body.get("status") in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{video_id} still {body.get('status')} after {timeout} s")
        time.sleep(0.1)


def wait_pids_gone(pids: list[int], timeout: float = 15.0) -> bool:
    """True once none of ``pids`` exists any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


class PostgresCluster:
    """A private PostgreSQL server in a temporary folder, run by an unprivileged user, on 127.0.0.1.

    Uses Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``). As root, the cluster runs as
    ``nobody`` through ``runuser`` (PostgreSQL refuses to run as root); otherwise as the current user.
    """

    def __init__(self) -> None:
        import glob
        import shutil
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None:
            raise FileNotFoundError("initdb not found: apt-get install postgresql")
        self.bin = Path(initdb).parent
        self.base = Path(tempfile.mkdtemp(prefix="magihuman-pg-"))
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("nobody")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", "nobody", "--"]
        self.port = free_port()
        self.data = self.base / "data"
        self.url = f"postgresql+psycopg://magihuman@127.0.0.1:{self.port}/postgres"
        self._count = 0

    def _run(self, *command: str) -> None:
        result = subprocess.run([*self.run_as, *command], capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> PostgresCluster:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "magihuman", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"), "-w",
                  "-o", options, "start")
        return self

    def new_database(self) -> str:
        """URL of a new, empty database."""
        import psycopg

        self._count += 1
        name = f"test_{os.getpid()}_{self._count}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=magihuman dbname=postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        import shutil

        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
