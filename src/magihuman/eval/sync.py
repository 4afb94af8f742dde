"""Audio-video sync: the lag between mouth opening and voice loudness, and how clear it is.

Both series have one value per video frame: the mouth opening (from the toy's drawing or a face-landmark
model) and the RMS loudness of the audio over the frame's interval. For every lag ``k`` in
``[-max_lag, max_lag]`` frames the Pearson correlation of ``mouth[t]`` with ``loudness[t - k]`` is taken
over the frames both cover. The **offset** is the lag of the highest correlation: positive when the mouth
moves after the sound (video late), negative when before. The **correlation** is that peak value; the
**confidence** is the peak minus the median over all lags (SyncNet's convention: how far the best lag
stands out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from magihuman.toy.voice import frame_loudness

__all__ = ["DEFAULT_MAX_LAG", "SyncResult", "frame_loudness", "lagged_correlation", "measure_sync"]

#: Lags searched either way, in frames (0.4 s at 25 fps).
DEFAULT_MAX_LAG = 10


@dataclass(frozen=True)
class SyncResult:
    """Result of :func:`measure_sync` (NaN offsets and correlations when a series does not vary).

    Attributes:
        offset_frames: lag of the best correlation (positive: the mouth follows the sound).
        offset_ms: the same in milliseconds.
        correlation: Pearson correlation at that lag, in [-1, 1].
        confidence: correlation minus the median over all lags.
        lags, curve: every lag searched and its correlation (the sync curve).
    """

    offset_frames: float
    offset_ms: float
    correlation: float
    confidence: float
    lags: list[int] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)


def lagged_correlation(mouth: np.ndarray, loudness: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lags, r)``: Pearson r of ``mouth[t]`` and ``loudness[t - k]`` for ``k = -max_lag..max_lag``
    (NaN where an overlap is shorter than 4 frames or constant)."""
    m, a = np.asarray(mouth, dtype=np.float64), np.asarray(loudness, dtype=np.float64)
    n = min(m.size, a.size)
    lags = np.arange(-max_lag, max_lag + 1)
    r = np.full(lags.size, np.nan)
    for i, k in enumerate(lags):
        x, y = (m[k:n], a[: n - k]) if k >= 0 else (m[: n + k], a[-k:n])
        if x.size >= 4 and x.std() > 0 and y.std() > 0:
            r[i] = np.corrcoef(x, y)[0, 1]
    return lags, r


def measure_sync(mouth: np.ndarray, loudness: np.ndarray, *, fps: float = 25.0,
                 max_lag: int = DEFAULT_MAX_LAG) -> SyncResult:
    """Offset and confidence of ``mouth`` against ``loudness`` (both ``[F]``, one value per frame).

    Missing mouth values (NaN: no face found in that frame) are filled by linear interpolation.

    Raises:
        ValueError: fewer than 8 frames, or ``max_lag < 0``.
    """
    mouth = _fill_gaps(np.asarray(mouth, dtype=np.float64))
    if min(mouth.size, np.asarray(loudness).size) < 8 or max_lag < 0:
        raise ValueError(f"sync needs at least 8 frames and max_lag >= 0, got {mouth.size} frames, max_lag {max_lag}")
    lags, r = lagged_correlation(mouth, loudness, max_lag)
    if np.isnan(r).all():
        return SyncResult(float("nan"), float("nan"), float("nan"), float("nan"), lags.tolist(), r.tolist())
    best = int(np.nanargmax(r))
    peak = float(r[best])
    return SyncResult(float(lags[best]), float(lags[best] * 1000.0 / fps), peak, peak - float(np.nanmedian(r)),
                      lags.tolist(), [float(v) for v in r])


def _fill_gaps(series: np.ndarray) -> np.ndarray:
    missing = np.isnan(series)
    if missing.all() or not missing.any():
        return np.zeros_like(series) if missing.all() else series
    index = np.arange(series.size)
    return np.interp(index, index[~missing], series[~missing])
