"""Shared test fixtures: where the reference material lives, and deterministic torch settings."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAGIHUMAN_SHARED", REPO_ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
EXAMPLES = SHARED / "examples"


def write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit PCM ``[samples, channels]`` (int16) as a WAV file; returns ``path``."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return path


def write_tone(path: Path, *, seconds: float = 1.0, rate: int = 44100, hz: float = 440.0) -> Path:
    """A mono sine tone at amplitude 0.3 as a 16-bit WAV file (samples truncated toward zero)."""
    t = np.arange(int(seconds * rate)) / rate
    return write_wav(path, (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype(np.int16)[:, None], rate)


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
    from magihuman.demo.bundle import ensure_demo_bundle

    return ensure_demo_bundle()
