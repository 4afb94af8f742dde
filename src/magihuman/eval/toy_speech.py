"""The toy's own speech analysis: spoken words counted as voiced segments, and low/high pitch.

Words: short-time energy (20 ms windows, 10 ms hop) above a threshold 26 dB below the loudest window
marks speech; runs shorter than 40 ms are dropped and gaps shorter than 30 ms bridged; each remaining run
is one word (the toy says one syllable per word). Pitch: in each voiced 40 ms window, the lag of the
highest normalised autocorrelation peak between 60 and 400 Hz gives the fundamental; the clip's pitch is
the median, called ``low`` below :data:`~magihuman.toy.voice.PITCH_SPLIT_HZ` and ``high`` above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magihuman.toy.voice import PITCH_SPLIT_HZ

__all__ = ["SpeechAnalysis", "voiced_segments", "fundamental_hz", "analyse_toy_speech"]

_WINDOW_S, _HOP_S = 0.02, 0.01
_THRESHOLD_DB = 26.0
_MIN_RUN_S, _MAX_GAP_S = 0.04, 0.03
_F0_RANGE = (60.0, 400.0)


@dataclass(frozen=True)
class SpeechAnalysis:
    """Result of :func:`analyse_toy_speech`.

    Attributes:
        words: voiced segments found.
        segments: their ``(start, end)`` seconds.
        f0_hz: median fundamental over voiced windows (NaN when nothing is voiced).
        pitch: ``"low"``, ``"high"``, or None when nothing is voiced.
    """

    words: int
    segments: tuple[tuple[float, float], ...]
    f0_hz: float
    pitch: str | None


def _mono(waveform: np.ndarray) -> np.ndarray:
    mono = np.asarray(waveform, dtype=np.float64)
    return mono.mean(axis=0) if mono.ndim == 2 else mono


def voiced_segments(waveform: np.ndarray, sample_rate: int) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of each run of speech energy (module docstring); ``[]`` for silence."""
    mono = _mono(waveform)
    win, hop = int(_WINDOW_S * sample_rate), int(_HOP_S * sample_rate)
    if mono.size < win:
        return []
    starts = np.arange(0, mono.size - win + 1, hop)
    energy = np.array([np.mean(mono[s:s + win] ** 2) for s in starts])
    if energy.max() <= 1e-10:
        return []
    active = energy > energy.max() * 10 ** (-_THRESHOLD_DB / 10)
    runs, begin = [], None
    for i, on in enumerate(np.append(active, False)):
        if on and begin is None:
            begin = i
        elif not on and begin is not None:
            runs.append([begin, i - 1])
            begin = None
    merged: list[list[int]] = []
    for run in runs:
        if merged and (run[0] - merged[-1][1] - 1) * _HOP_S < _MAX_GAP_S:
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    segments = []
    for first, last in merged:
        start, end = starts[first] / sample_rate, (starts[last] + win) / sample_rate
        if end - start >= _MIN_RUN_S + _WINDOW_S:
            segments.append((float(start), float(end)))
    return segments


def fundamental_hz(waveform: np.ndarray, sample_rate: int, segments: list[tuple[float, float]]) -> float:
    """Median autocorrelation fundamental over 40 ms windows inside ``segments``; NaN if none is voiced."""
    mono = _mono(waveform)
    win = int(0.04 * sample_rate)
    lo, hi = int(sample_rate / _F0_RANGE[1]), int(sample_rate / _F0_RANGE[0])
    estimates = []
    for start, end in segments:
        for s in range(int(start * sample_rate), int(end * sample_rate) - win, win // 2):
            frame = mono[s:s + win] - mono[s:s + win].mean()
            energy = float(np.dot(frame, frame))
            if energy <= 1e-8:
                continue
            spectrum = np.fft.rfft(frame, 2 * win)
            acf = np.fft.irfft(np.abs(spectrum) ** 2)[: win] / energy
            lag = lo + int(np.argmax(acf[lo:hi]))
            if acf[lag] > 0.3:
                estimates.append(sample_rate / lag)
    return float(np.median(estimates)) if estimates else float("nan")


def analyse_toy_speech(waveform: np.ndarray, sample_rate: int) -> SpeechAnalysis:
    """Word count and pitch of a toy utterance (``float [samples]`` or ``[channels, samples]``)."""
    segments = voiced_segments(waveform, sample_rate)
    f0 = fundamental_hz(waveform, sample_rate, segments)
    pitch = None if np.isnan(f0) else ("low" if f0 < PITCH_SPLIT_HZ else "high")
    return SpeechAnalysis(len(segments), tuple(segments), f0, pitch)
