"""Seams of a clip made in pieces (windows, extend, retake): is the join visible or audible?

A clip generated window by window (docs/long_clips.md) joins a window's first new latent frame to the
previous window's last one. With the time convention of the sampler (latent frame ``t`` covers pixel frames
``4t - 3 .. 4t``), a join before latent frame ``s`` lies between pixel frames ``4s - 4`` and ``4s - 3``.

* **Picture**: the mean absolute difference (0-255 sRGB units) between consecutive frames, at the seams
  against every other pair of consecutive frames (inside the windows), and each seam against the pairs inside
  the two pieces it joins (``pieces_difference_p95``, ``pieces_difference_max``): a long clip's motion varies
  along it, and these are the frames the seam sits between. A join can only fall between two latent frames, and
  the video decoders draw the step across a latent-frame boundary (pixel frames ``4k`` to ``4k + 1``) differently
  from the steps within one latent frame, so each seam is also set against the inside steps across latent-frame
  boundaries (``boundary_difference_*``), the like-for-like steps.
* **Colours**: the toy parts' colours (:func:`~magihuman.eval.toy_vision.part_colours`) of each piece.
* **Voice**: a gap is a silent run across the seam, with sound on both sides of it, longer than the longest pause
  elsewhere in the clip. A silent run across a seam that reaches the clip's end (or its start) is the clip's ending
  (or lead-in), as it is for the pauses elsewhere, which leave out such runs: it is reported
  (``seam_pause_s``, ``seam_pause_open``) but is not a gap. A
  click is a sample-to-sample step near the seam larger than the clip's own largest step elsewhere
  (``click_ratio`` above 1).
* **Sync**: :func:`~magihuman.eval.sync.measure_sync` over the whole clip and per piece.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from magihuman.eval.sync import measure_sync
from magihuman.eval.toy_vision import part_colours, toy_mouth_opening
from magihuman.toy.voice import frame_loudness

__all__ = ["SeamReport", "seam_frames", "frame_differences", "seam_report"]

_STRIDE = 4  # pixel frames per latent frame after the first


def seam_frames(join_latent_frames: list[int]) -> list[int]:
    """Pixel frame index of the first frame after each join: ``4s - 3`` for a join before latent frame ``s``.

    Raises:
        ValueError: a join at latent frame 0 (nothing precedes it).
    """
    if any(s < 1 for s in join_latent_frames):
        raise ValueError(f"joins must be at latent frames >= 1, got {join_latent_frames}")
    return [_STRIDE * s - 3 for s in join_latent_frames]


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """``float64 [F - 1]``: mean absolute difference of frame ``i + 1`` and frame ``i`` (uint8 ``[F, H, W, 3]``)."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 4 or x.shape[0] < 2:
        raise ValueError(f"frames must be [F >= 2, H, W, 3], got shape {x.shape}")
    return np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))


@dataclass(frozen=True)
class SeamReport:
    """Figures of :func:`seam_report` (differences in 0-255 units, loudness in waveform units)."""

    seams: list[int]
    seam_difference: list[float]
    inside_difference_mean: float
    inside_difference_p95: float
    inside_difference_max: float
    boundary_difference_mean: float
    boundary_difference_p95: float
    boundary_difference_max: float
    pieces_difference_p95: list[float]
    pieces_difference_max: list[float]
    colours_per_piece: list[dict[str, str]]
    colours_constant: bool
    longest_pause_inside_s: float
    seam_pause_s: list[float]
    seam_pause_open: list[bool]
    gaps: int
    click_ratio: list[float]
    clicks: int
    sync_offset_frames: float
    sync_correlation: float
    sync_per_piece: list[dict[str, float]]

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return asdict(self)


def _silent_runs(loudness: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """``[start, stop)`` frame runs whose loudness is below ``threshold``."""
    runs, start = [], None
    for i, quiet in enumerate(loudness < threshold):
        if quiet and start is None:
            start = i
        if not quiet and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(loudness)))
    return runs


def _step_figures(name: str, steps: np.ndarray) -> dict[str, float]:
    """``{name}_difference_mean`` / ``_p95`` / ``_max`` of ``steps`` (NaN when there are none)."""
    if not steps.size:
        return {f"{name}_difference_{k}": float("nan") for k in ("mean", "p95", "max")}
    return {f"{name}_difference_mean": float(steps.mean()), f"{name}_difference_p95": float(np.percentile(steps, 95)),
            f"{name}_difference_max": float(steps.max())}


def seam_report(frames: np.ndarray, audio: np.ndarray, sample_rate: int, seams: list[int], *,
                fps: float = 25.0, click_window_s: float = 0.01) -> SeamReport:
    """Measure the joins at pixel frames ``seams`` of a toy clip (module docstring).

    Args:
        frames: ``uint8 [F, H, W, 3]``.
        audio: ``float [channels, samples]`` or ``[samples]`` at ``sample_rate`` Hz, lined up with the frames.
        seams: first pixel frame after each join (:func:`seam_frames`), each in ``1 .. F - 1``.
        click_window_s: half-width in seconds of the span around a seam searched for a click.

    Raises:
        ValueError: a seam outside ``1 .. F - 1``, or fewer than 8 frames.
    """
    frames = np.asarray(frames)
    count = frames.shape[0]
    if count < 8 or any(not 1 <= s < count for s in seams):
        raise ValueError(f"seams must lie in 1..{count - 1} of a clip of >= 8 frames, got {seams}")
    diffs = frame_differences(frames)
    at_seam = np.zeros(diffs.size, dtype=bool)
    at_seam[[s - 1 for s in seams]] = True
    inside = diffs[~at_seam]
    # steps from pixel frame 4k to 4k + 1: across a latent-frame boundary, where every join falls
    boundary = diffs[(np.arange(diffs.size) % _STRIDE == 0) & ~at_seam]
    edges = [0, *seams, count]
    pieces = [(a, b) for a, b in zip(edges[:-1], edges[1:])]
    colours = [{part: c.name for part, c in part_colours(frames[a:b]).items()} for a, b in pieces]
    # the steps inside the two pieces each seam joins (a piece of one frame has none)
    around = [np.concatenate([diffs[a:b - 1] for a, b in pieces[k:k + 2]]) for k in range(len(seams))]

    mono = np.asarray(audio, dtype=np.float64)
    mono = mono.mean(axis=0) if mono.ndim == 2 else mono
    loudness = frame_loudness(mono, count, fps=fps, sample_rate=sample_rate)
    threshold = 0.1 * float(np.percentile(loudness, 90)) if loudness.size else 0.0
    runs = _silent_runs(loudness, threshold)
    # the silent run holding frame s - 1, the last before each seam (runs are disjoint: at most one)
    at_seam = [next((r for r in runs if r[0] < s <= r[1]), None) for s in seams]
    seam_pause = [(r[1] - r[0]) / fps if r else 0.0 for r in at_seam]
    # a run from the clip's first frame or to its last has sound on one side only: lead-in or ending, not a gap
    open_ended = [bool(r) and (r[0] == 0 or r[1] == count) for r in at_seam]
    crossing = {r for r in at_seam if r}
    inside_pauses = [(b - a) / fps for a, b in runs if (a, b) not in crossing and a > 0 and b < count]
    longest = max(inside_pauses, default=0.0)

    steps = np.abs(np.diff(mono))
    half = max(1, int(round(click_window_s * sample_rate)))
    near = np.zeros(steps.size, dtype=bool)
    centres = [int(round(s * sample_rate / fps)) for s in seams]
    for c in centres:
        near[max(0, c - half) : c + half] = True
    own = float(steps[~near].max()) if (~near).any() and steps.size else 0.0
    ratios = [float(steps[max(0, c - half) : c + half].max(initial=0.0)) / own if own > 0 else float("nan")
              for c in centres]

    mouth = toy_mouth_opening(frames)
    whole = measure_sync(mouth, loudness, fps=fps)
    per_piece = []
    for a, b in pieces:
        if b - a >= 8:
            r = measure_sync(mouth[a:b], loudness[a:b], fps=fps)
            per_piece.append({"offset_frames": r.offset_frames, "correlation": r.correlation})
    return SeamReport(
        seams=list(seams), seam_difference=[float(diffs[s - 1]) for s in seams],
        **_step_figures("inside", inside), **_step_figures("boundary", boundary),
        pieces_difference_p95=[float(np.percentile(x, 95)) if x.size else float("nan") for x in around],
        pieces_difference_max=[float(x.max()) if x.size else float("nan") for x in around], colours_per_piece=colours,
        colours_constant=all(c == colours[0] for c in colours), longest_pause_inside_s=longest,
        seam_pause_s=seam_pause, seam_pause_open=open_ended,
        gaps=sum(p > longest and not end for p, end in zip(seam_pause, open_ended)), click_ratio=ratios,
        clicks=sum(r > 1.0 for r in ratios if r == r), sync_offset_frames=whole.offset_frames,
        sync_correlation=whole.correlation, sync_per_piece=per_piece)
