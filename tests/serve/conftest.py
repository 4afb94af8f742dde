"""Session fixtures of the serve tests (this folder is a package, so this conftest does not shadow
tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from .serve_helpers import FAKE_FACTORY, ServerProcess, inproc  # noqa: F401 - inproc: a fixture

#: Queue limit of the shared fake-pipeline server (the load test fills it).
FAKE_QUEUE_LIMIT = 40
#: API key of the shared fake-pipeline server (also the UI password).
FAKE_API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory):
    """A real server process (API + UI + two workers) on loopback serving the fake pipeline (10 ms per step)."""
    root = tmp_path_factory.mktemp("fake-server")
    server = ServerProcess(root / "data", "--devices", "cpu,cpu", "--pipeline-factory", FAKE_FACTORY,
                           "--queue-limit", str(FAKE_QUEUE_LIMIT), "--max-upload-mb", "1",
                           env={"MAGIHUMAN_FAKE_STEP_SECONDS": "0.01", "MAGIHUMAN_API_KEY": FAKE_API_KEY},
                           api_key=FAKE_API_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster (skipped only outside CI when the package is missing)."""
    from .serve_helpers import PostgresCluster

    try:
        cluster = PostgresCluster()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    cluster.start()
    yield cluster
    cluster.stop()
