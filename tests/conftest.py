"""Shared test fixtures: where the reference material lives, and deterministic torch settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAGIHUMAN_SHARED", REPO_ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
EXAMPLES = SHARED / "examples"


def golden_case(name: str) -> Path:
    """Folder of one golden case; skips the test with a reason when the shared folder is absent."""
    path = GOLDEN / name
    if not path.is_dir():
        pytest.skip(f"golden case {name!r} not found under {GOLDEN} (set MAGIHUMAN_SHARED)")
    return path


@pytest.fixture
def golden():
    return golden_case


@pytest.fixture
def examples_dir() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip(f"shared examples not found under {EXAMPLES}")
    return EXAMPLES


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _demo_bundle_location(tmp_path_factory):
    """Build the demo bundle once per test session in a temporary folder (never in the user's cache)."""
    os.environ["MAGIHUMAN_DEMO_DIR"] = str(tmp_path_factory.mktemp("demo") / "bundle")
    yield


@pytest.fixture(scope="session")
def demo_root() -> Path:
    from magihuman.demo import ensure_demo_bundle

    return ensure_demo_bundle()
