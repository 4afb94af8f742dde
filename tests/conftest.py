"""Shared test fixtures: where the reference material lives, and deterministic torch settings."""

from __future__ import annotations

import contextlib
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


#: Set to 1 to let the golden and example tests skip when ``../shared`` is absent (e.g. a packaging check
#: outside the project's checkout). Unset, as in CI, a missing folder fails the test.
ALLOW_MISSING_SHARED = os.environ.get("MAGIHUMAN_ALLOW_MISSING_SHARED") == "1"

#: torch's CPU kernel family on the machine that produced the golden vectors' bit-exact figures. bf16
#: vectorised kernels (SDPA, activations, convolutions) round differently on other families (e.g. AVX2), so the
#: bitwise assertions only hold there; the accepted tolerances are asserted everywhere (docs/parity.md).
GOLDEN_CPU_CAPABILITY = "AVX512"


def _missing_shared(what: str, path: Path) -> None:
    message = f"{what} not found under {path}: put the shared folder beside the clone or set MAGIHUMAN_SHARED"
    if ALLOW_MISSING_SHARED:
        pytest.skip(message)
    pytest.fail(message + " (or MAGIHUMAN_ALLOW_MISSING_SHARED=1 to skip)", pytrace=False)


@contextlib.contextmanager
def spawned_rank():
    """Wrap the work of a spawned gloo test rank that has joined its group; the rank saves its results inside.

    On an exception: leave the group without a barrier (the other rank may be inside a collective) and re-raise,
    so ``torch.multiprocessing.spawn`` reports the failure. On success: wait for the other ranks, leave the group
    (``magihuman.train.distributed.shutdown``) and exit at once with status 0. ``os._exit`` skips the interpreter's
    shutdown, where gloo's threads and the last references to the group (held by the rank's FSDP2 modules and
    DTensors) can abort the rank with "terminate called without an active exception". The barrier comes
    first because a rank that leaves while the other still finishes FSDP2's last all-gather dies that way
    (tests/test_sharding.py without it: 5 of 24 runs; 0 of 24 with it); ``os._exit`` because CI still lost a
    tests/train/test_fsdp2.py run to it with the barrier in place.
    """
    import sys

    import torch.distributed as dist

    from magihuman.train.distributed import shutdown

    try:
        yield
    except BaseException:
        shutdown()
        raise
    dist.barrier()
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rel_l2(a, b) -> float:
    """Relative L2 error ``||a - b|| / ||b||`` in float64 (tensors or arrays); 0.0 for two empty inputs."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if b.numel() == 0:  # e.g. an empty audio stream
        return 0.0 if a.numel() == 0 else float("inf")
    return float((a - b).norm() / b.norm())


def max_abs(a, b) -> float:
    """Largest absolute difference, in float64."""
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def tiny_inputs(seed: int = 1, frames: int = 3, audio: int = 9, text: int = 7):
    """Inputs of the tiny DiT (:data:`TINY_TRANSFORMER_CONFIG`): video ``[1, 48, frames, 4, 6]``, audio
    ``[1, audio, 64]``, text ``[1, text, C_text]``, float32, from one seeded generator."""
    from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG

    g = torch.Generator().manual_seed(seed)
    channels = TINY_TRANSFORMER_CONFIG["text_in_channels"]
    return (torch.randn(1, 48, frames, 4, 6, generator=g), torch.randn(1, audio, 64, generator=g),
            torch.randn(1, text, channels, generator=g))


def reference_velocities() -> tuple[torch.Tensor, torch.Tensor]:
    """The plain tiny model's velocities (bf16 block linears) for :func:`tiny_inputs`."""
    from magihuman.demo.random_weights import random_transformer

    with torch.no_grad():
        return random_transformer()(*tiny_inputs())


@pytest.fixture
def tiny_model():
    """A fresh tiny random DiT (``TINY_TRANSFORMER_CONFIG``, seed 0), the one every model-level test shares."""
    from magihuman.demo.random_weights import random_transformer

    return random_transformer()


def golden_case(name: str) -> Path:
    """Folder of one golden case; fails the test (skips with MAGIHUMAN_ALLOW_MISSING_SHARED=1) when absent."""
    path = GOLDEN / name
    if not path.is_dir():
        _missing_shared(f"golden case {name!r}", GOLDEN)
    return path


def require_golden_cpu() -> None:
    """Skip a bit-exactness assertion, with the reason, on CPUs whose torch kernels differ from the golden machine's."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != GOLDEN_CPU_CAPABILITY:
        pytest.skip(
            f"bit-exact only with {GOLDEN_CPU_CAPABILITY} CPU kernels (the golden machine's); this CPU runs "
            f"{capability} kernels, whose bf16 rounding differs. The tolerance tests cover this machine."
        )


@pytest.fixture
def golden():
    return golden_case


@pytest.fixture
def examples_dir() -> Path:
    if not EXAMPLES.is_dir():
        _missing_shared("shared examples", EXAMPLES)
    return EXAMPLES


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (tiny models; spawned gloo ranks use one too), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
