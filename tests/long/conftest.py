"""Fixtures of the long-clip, extend and retake tests (this folder is a package, so this conftest does not
shadow tests/conftest.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

#: Frames and size of the test clip: 1 s at 25 fps, 32x32 (two 2x2 latent patches each way).
CLIP_FRAMES, CLIP_SIZE = 25, 32


def clip_frames(count: int = CLIP_FRAMES, size: int = CLIP_SIZE) -> np.ndarray:
    """Smoothly moving colour ramps, ``uint8 [count, size, size, 3]`` (H.264 keeps them within a few levels)."""
    x = np.linspace(0, 200, size, dtype=np.float32)
    return np.stack([np.broadcast_to(((x[None, :, None] + 6 * k + np.arange(3) * 40) % 256).astype(np.uint8),
                                     (size, size, 3)) for k in range(count)])


def write_clip(path, *, count: int = CLIP_FRAMES, size: int = CLIP_SIZE, sound: bool = True):
    """An MP4 clip of :func:`clip_frames` (CRF 0) with a 440 Hz tone as long as the video, or silent."""
    from magihuman.pipeline.media import write_mp4

    audio = None
    if sound:
        t = np.arange(int(44100 * count / 25)) / 44100
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        audio = np.stack([tone, tone])
    return write_mp4(path, clip_frames(count, size), audio=audio, crf=0, preset="ultrafast")


class Spy:
    """Wraps the transformer, keeping a copy of every call's latents (``calls``) and text embedding (``texts``)."""

    def __init__(self, model):
        self.model, self.calls, self.texts = model, [], []

    def __call__(self, video, audio, text, **kwargs):
        self.calls.append((video.clone(), audio.clone()))
        self.texts.append(text.clone())
        return self.model(video, audio, text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture(scope="package")
def clip(tmp_path_factory):
    """A 1 s 32x32 test clip with sound."""
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="package")
def silent_clip(tmp_path_factory):
    """A 1 s 32x32 test clip without an audio track."""
    return write_clip(tmp_path_factory.mktemp("silent") / "silent.mp4", sound=False)


@pytest.fixture(scope="package")
def distill(demo_root):
    """The distilled demo pipeline (random weights), loaded once for the folder."""
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

    return MagiHumanPipeline.from_official(demo_root, preset="distill")


def benchmark_module(name: str):
    """The script ``benchmarks/<name>.py`` loaded as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_generate(monkeypatch, *args: str):
    """``magihuman generate ARGS`` with the pipeline replaced by a recorder: ``(result, requests asked for)``."""
    from typer.testing import CliRunner

    import magihuman.cli.app as cli
    import magihuman.pipeline.magihuman_pipeline as pipeline

    asked = []

    class Recorder:
        def __call__(self, request, progress=False, decode=True):
            asked.append(request)
            return pipeline.GenerationOutput(np.zeros((5, 32, 32, 3), np.uint8), np.zeros((2, 8820), np.float32),
                                             25, 44100)

    monkeypatch.setattr(pipeline.MagiHumanPipeline, "from_official", classmethod(lambda cls, *a, **k: Recorder()))
    return CliRunner().invoke(cli.app, ["generate", *args]), asked
