"""A stand-in pipeline for testing the server and its clients without models: same call, no weights.

``magihuman serve --pipeline-factory magihuman.serve.fake_pipeline:load_fake_pipeline`` serves it. It checks
the request as the real pipeline does, sleeps ``step_seconds`` per denoising step (8 for distill, 32 for
base, plus 5 SR steps for the SR presets), calls ``callback_on_step_end`` after each step with the real
pipeline's arguments, and returns a clip of the requested size and length: seeded noise frames and a
440 Hz tone. A prompt containing ``[[fail]]`` raises ``RuntimeError`` after the first step (to test failures).

Environment: ``MAGIHUMAN_FAKE_STEP_SECONDS`` (default 0.01) sets the time per step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FakePipeline", "FakeOutput", "load_fake_pipeline", "STEP_SECONDS_ENV", "FAIL_MARKER"]

STEP_SECONDS_ENV = "MAGIHUMAN_FAKE_STEP_SECONDS"
#: A prompt containing this text makes the fake generation fail.
FAIL_MARKER = "[[fail]]"
_STEPS = {"distill": 8, "base": 32}
_SR_STEPS = 5


@dataclass
class FakeOutput:
    """What the fake pipeline returns: ``frames`` uint8 ``[F, H, W, 3]``, ``audio`` float32 ``[2, samples]``."""

    frames: np.ndarray
    audio: np.ndarray
    fps: int = 25
    sample_rate: int = 44100
    timings: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the MP4 atomically (x264 ``ultrafast``).

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        from magihuman.pipeline.media import write_mp4

        return write_mp4(path, self.frames, fps=self.fps, audio=self.audio, sample_rate=self.sample_rate,
                         overwrite=overwrite, preset="ultrafast")


class FakePipeline:
    """Callable like ``MagiHumanPipeline`` for one preset.

    Args:
        preset: the preset it pretends to be loaded for.
        step_seconds: sleep per denoising step.
    """

    def __init__(self, preset: str = "distill", step_seconds: float = 0.01):
        self.preset_name, self.step_seconds = preset, step_seconds
        self.calls = 0

    def __call__(self, request: Any, *, callback_on_step_end: Callable[..., Any] | None = None,
                 **_: Any) -> FakeOutput:
        """Pretend to generate ``request`` (a ``GenerationRequest``, or an extend / retake request); returns a
        :class:`FakeOutput`.

        Raises:
            ValueError: a request for another preset, or one the pipeline's checks refuse.
            RuntimeError: the prompt contains :data:`FAIL_MARKER`.
        """
        notices, (frames_count, height, width) = _checked(request)
        if request.preset != self.preset_name:
            raise ValueError(f"this pipeline was loaded for preset {self.preset_name!r}, not {request.preset!r}")
        self.calls += 1
        start = time.perf_counter()
        stages = [("denoise", _STEPS.get(self.preset_name, 32))]
        if self.preset_name.startswith("sr_"):
            stages.append(("super_resolution", _SR_STEPS))
        total = sum(n for _, n in stages)
        completed = 0
        for stage, steps in stages:
            for index in range(steps):
                time.sleep(self.step_seconds)
                if FAIL_MARKER in request.prompt:
                    raise RuntimeError("fake failure requested by the prompt")
                completed += 1
                if callback_on_step_end is not None:
                    callback_on_step_end(self, index, 1000.0 * (1 - index / steps),
                                         {"stage": stage, "num_steps": steps, "total_steps": total,
                                          "completed_steps": completed})
        timings = {"denoise": time.perf_counter() - start}
        rng = np.random.default_rng(request.seed)
        frames = rng.integers(0, 256, (frames_count, height, width, 3), dtype=np.uint8)
        t = np.arange(int(44100 * frames_count / 25)) / 44100
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        return FakeOutput(frames, np.stack([tone, tone]), timings=timings, notices=notices)


def _checked(request: Any) -> tuple[list[str], tuple[int, int, int]]:
    """The pipeline's checks of ``request`` and the ``(frames, height, width)`` of its output; an extend or
    retake request (:mod:`magihuman.serve.clip_edits`) gives the clip's frames (plus the new ones)."""
    if hasattr(request, "clip"):
        plan = request.plan()
        return plan.notices, (plan.clip_frames + getattr(plan, "new_pixel_frames", 0), plan.height, plan.width)
    from magihuman.pipeline.validation import validate_request

    notices = validate_request(request)
    plan = request.plan()
    return notices, (4 * ((plan.audio_latents - 1) // 4) + 1, plan.height, plan.width)


def load_fake_pipeline(root: Path | None, preset: str, device: str, runtime: dict | None = None) -> FakePipeline:
    """Pipeline factory for ``--pipeline-factory``: a :class:`FakePipeline` (``root``/``device`` are ignored)."""
    return FakePipeline(preset, float(os.environ.get(STEP_SECONDS_ENV, "0.01")))
