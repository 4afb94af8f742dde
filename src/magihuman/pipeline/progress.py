"""Progress, timing and cancellation of one generation.

* :class:`StageTimer`: wall time per stage (CUDA-synchronised), with an optional progress bar per stage.
* :class:`StepReporter`: after every denoising step of every stage, calls the user's
  ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` (diffusers' convention) and checks
  ``pipe.interrupt``; :exc:`GenerationInterrupted` is what an interrupt raises.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from magihuman.sampling.records import Latents

#: ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> dict | None``.
StepEndCallback = Callable[[Any, int, int, dict[str, Any]], dict | None]


class GenerationInterrupted(RuntimeError):
    """Raised when ``pipe.interrupt`` was set: generation stopped between two steps or decode windows."""


class StageTimer:
    """Wall time per stage (CUDA-synchronised), with an optional progress bar per stage.

    Attributes:
        timings: ``{stage name: seconds}`` in the order the stages first ran; a stage run again (once per window
            of a long clip) adds its seconds to the stage's entry.
    """

    def __init__(self, progress: bool, device: torch.device):
        self.progress, self.device = progress, device
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[tqdm]:
        """Time the block as stage ``name`` (added to the stage's earlier seconds, if any); yields its progress
        bar of ``total`` ticks (disabled unless ``progress``)."""
        bar = tqdm(total=total, desc=name, disable=not self.progress, leave=True, dynamic_ncols=True)
        start = time.perf_counter()
        try:
            yield bar
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            if total == 1 and bar.n == 0:
                bar.update(1)
            bar.close()


class StepReporter:
    """Per-step hook of one request: progress bar tick, the user's callback, the interrupt check.

    Args:
        pipe: the pipeline (handed to the callback; its ``interrupt`` flag is checked).
        callback: ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` or None. Its return
            value is accepted for diffusers compatibility and ignored: the latents are read only here.
        total_steps: denoising steps of all stages of the request.

    ``callback_kwargs`` holds ``"stage"`` (``"denoise"`` or ``"super_resolution"``), ``"num_steps"`` (of that
    stage), ``"total_steps"`` (all stages), ``"completed_steps"`` (all stages, this step included) and
    ``"latents"`` (the loop's :class:`~magihuman.sampling.records.Latents` after the step).
    """

    def __init__(self, pipe: Any, callback: StepEndCallback | None, total_steps: int):
        self.pipe, self.callback, self.total_steps = pipe, callback, total_steps
        self.completed_steps = 0

    def for_stage(self, stage: str, num_steps: int, bar: tqdm) -> Callable[[int, int, Latents], None]:
        """The :func:`~magihuman.sampling.loop.denoise` callback for one stage."""

        def on_step(step_index: int, timestep: int, latents: Latents) -> None:
            bar.update(1)
            self.completed_steps += 1
            if self.callback is not None:
                kwargs = {"stage": stage, "num_steps": num_steps, "total_steps": self.total_steps,
                          "completed_steps": self.completed_steps, "latents": latents}
                self.callback(self.pipe, step_index, timestep, kwargs)
            self.check_interrupt(f"after {stage} step {step_index + 1}/{num_steps}")

        return on_step

    def check_interrupt(self, where: str) -> None:
        """Raise :exc:`GenerationInterrupted` (clearing the flag) if ``pipe.interrupt`` is set."""
        check_interrupt(self.pipe, where)


def check_interrupt(pipe: Any, where: str) -> None:
    """Raise :exc:`GenerationInterrupted` if ``pipe.interrupt`` is set; the flag is cleared, so the pipeline
    can run the next request.

    Raises:
        GenerationInterrupted: naming where generation stopped.
    """
    if getattr(pipe, "interrupt", False):
        pipe.interrupt = False
        raise GenerationInterrupted(f"generation interrupted {where} (pipe.interrupt was set)")
