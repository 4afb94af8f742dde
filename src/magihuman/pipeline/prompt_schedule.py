"""Prompt schedules: later prompts that take over a long clip from a given time (ours).

A clip generated in windows (docs/long_clips.md) uses the request's one prompt in every window, so a spoken
line is said again in every window. A schedule gives the prompt for later parts of the clip: a list of cues
``(start seconds, prompt)``; the request's ``prompt`` holds from 0 s and each cue's prompt from its start on.
Other pipelines with long or multi-shot video take a list of prompts the same way (one per segment, or with
timestamps), because a diffusion pass sees one text.

The model sees one prompt per window pass, so a cue takes over at a window: the window whose new frames (those
after its held ones) start nearest the cue's time, the later one on a tie. The held frames keep the picture and
voice continuous across the change; what the new prompt changes appears from that window's first new frame.
The effective times are reported as notices. The rules:

* cues need a clip generated in windows (longer than one window), and times in ``(0, seconds)``, strictly
  increasing; each cue's prompt is checked as the main one is (not empty, at most
  :data:`~magihuman.pipeline.validation.MAX_PROMPT_CHARS` characters);
* a cue must not land on the first window (its prompt would replace the main one: make it the prompt), and two
  cues must not land on one window (the earlier would never be used: space them at least a window apart).

The input checks plan the windows with the default video decoder's chunks, as every other long-clip check
(:mod:`magihuman.pipeline.windows`); when the loaded decoder changes the plan, :func:`window_prompt_indices`
applies the same rule to the windows that run and says which cue, if any, it had to drop.

Torch-free: the input boundary checks schedules before anything loads.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from magihuman.pipeline.errors import InputError
from magihuman.pipeline.windows import WindowPlan

__all__ = ["MAX_PROMPT_CUES", "PromptCue", "cue_from_value", "window_start_seconds", "window_prompt_indices",
           "check_prompt_schedule", "parse_prompt_at"]

#: Most cues one request may hold (a 60 s clip in 2 s windows has 30 windows after the first).
MAX_PROMPT_CUES = 32
_FPS = 25  # pixel frames per second (architecture.md §13.2)
_STRIDE = 4  # pixel frames per latent frame after the first (architecture.md §11.3)


class PromptCue(BaseModel):
    """One cue of a prompt schedule.

    Attributes:
        start: seconds from the clip's start at which ``prompt`` takes over (> 0; applied at the nearest window).
        prompt: the text prompt from then on (the same rules as the request's ``prompt``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: float = Field(allow_inf_nan=False)
    prompt: str


def cue_from_value(value: Any) -> Any:
    """A ``(start, prompt)`` pair (tuple or list) as the mapping :class:`PromptCue` validates; anything else as
    given (a mapping, a :class:`PromptCue`, or a wrong value that validation then names)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return {"start": value[0], "prompt": value[1]}
    return value


def window_start_seconds(plan: WindowPlan) -> list[float]:
    """Seconds at which each window's new (not held) frames start: latent frame ``j = start + clean_frames``
    begins at pixel frame ``4j - 3`` (frame 0 for ``j = 0``; architecture.md §11.3), at 25 frames per second."""
    times = []
    for window in plan.windows:
        first = window.start + window.clean_frames
        times.append(0.0 if first == 0 else (_STRIDE * first - _STRIDE + 1) / _FPS)
    return times


def _nearest_window(times: list[float], start: float) -> int:
    """Index of the window whose new frames start nearest ``start`` seconds (the later one on a tie)."""
    return min(range(len(times)), key=lambda i: (round(abs(times[i] - start), 9), -i))


def window_prompt_indices(plan: WindowPlan, cues: list[PromptCue]) -> tuple[list[int], list[str]]:
    """Which prompt each window of ``plan`` uses, for the windows that actually run.

    Args:
        plan: the clip's windows.
        cues: the schedule, checked by :func:`check_prompt_schedule` (sorted by ``start``).

    Returns:
        ``(indices, notices)``: per window ``0`` for the request's prompt or ``k`` for ``cues[k - 1]``; and a
        notice per cue that had to be dropped because it landed on the first window or on the window of a later
        cue (possible only when the loaded decoder plans other windows than the input checks did).
    """
    times = window_start_seconds(plan)
    landed = [_nearest_window(times, cue.start) for cue in cues]
    taker = {window: k for k, window in enumerate(landed, start=1)}  # a later cue on a window replaces an earlier
    notices = []
    for k, (cue, window) in enumerate(zip(cues, landed), start=1):
        if window == 0 or taker[window] != k:
            where = "the first window" if window == 0 else "the window of the cue after it"
            notices.append(f"the prompt cue at {cue.start:g} s is not used: with the loaded video decoder's windows "
                           f"it lands on {where}")
    indices, current = [], 0
    for i in range(len(plan.windows)):
        current = taker.get(i, current) if i > 0 else 0
        indices.append(current)
    return indices, notices


def check_prompt_schedule(request: Any) -> list[str]:
    """Check ``request.prompt_schedule`` (module docstring) before any model loads.

    Returns:
        Notices: when each cue takes over (the start of its window's new frames).

    Raises:
        InputError: (field ``prompt_schedule``) a schedule on a clip made in one pass, a time out of range or out
            of order, an empty or too long cue prompt, or cues landing on the first window or on one window.
    """
    from magihuman.pipeline.validation import MAX_PROMPT_CHARS, long_clip_window, request_windows

    cues = list(getattr(request, "prompt_schedule", None) or [])
    if not cues:
        return []
    if len(cues) > MAX_PROMPT_CUES:
        raise InputError(f"{len(cues)} prompt cues are over the limit of {MAX_PROMPT_CUES}; merge some",
                         field="prompt_schedule")
    window = long_clip_window(request)
    if window is None:
        raise InputError(f"a prompt schedule needs a clip generated in windows, but {request.seconds:g} s is made in "
                         "one pass; ask for a longer clip or shorter --window-seconds, or drop the schedule",
                         field="prompt_schedule")
    before = 0.0
    for cue in cues:
        if not math.isfinite(cue.start) or not before < cue.start < request.seconds:
            raise InputError(f"prompt cue times must increase and lie inside the clip, in (0, {request.seconds:g}) "
                             f"seconds; the cue at {cue.start:g} s does not", field="prompt_schedule")
        if not cue.prompt.strip():
            raise InputError(f"the prompt cue at {cue.start:g} s has an empty prompt; give its text",
                             field="prompt_schedule")
        if len(cue.prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"the prompt cue at {cue.start:g} s has {len(cue.prompt):,} characters, over the limit "
                             f"of {MAX_PROMPT_CHARS:,}; shorten it", field="prompt_schedule")
        before = cue.start
    times = window_start_seconds(request_windows(request))
    landed = [_nearest_window(times, cue.start) for cue in cues]
    if landed[0] == 0:
        raise InputError(f"the prompt cue at {cues[0].start:g} s is nearer the clip's start than the second "
                         f"window's new frames ({times[1]:g} s), so it would replace the prompt: make it the prompt, "
                         f"or start it after {times[1] / 2:g} s", field="prompt_schedule")
    for a, b, cue_a, cue_b in zip(landed, landed[1:], cues, cues[1:]):
        if a == b:
            raise InputError(f"the prompt cues at {cue_a.start:g} s and {cue_b.start:g} s land on the same window "
                             f"(from {times[a]:g} s); the clip's windows are {window:g} s long, so space cues at "
                             "least that far apart", field="prompt_schedule")
    return [f"the prompt cue at {cue.start:g} s takes over at {times[i]:g} s (window {i + 1} of {len(times)})"
            for cue, i in zip(cues, landed)]


def parse_prompt_at(value: str) -> PromptCue:
    """``SECONDS=TEXT`` (the CLI's ``--prompt-at``) as a :class:`PromptCue`.

    Raises:
        InputError: (field ``prompt_schedule``) no ``=``, or a start that is not a number.
    """
    seconds, sep, text = value.partition("=")
    try:
        start = float(seconds)
    except ValueError:
        start = math.nan
    if not sep or not math.isfinite(start):
        raise InputError(f"--prompt-at takes SECONDS=TEXT, e.g. --prompt-at \"8=She smiles and says ...\"; got "
                         f"{value[:60]!r}", field="prompt_schedule")
    return PromptCue(start=start, prompt=text)
