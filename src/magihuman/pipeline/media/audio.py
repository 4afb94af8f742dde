"""Driving-audio input (architecture.md §9.2, §11.5): any file PyAV reads, to mono float32.

Also :func:`check_audio_file`, the decode-level check the input boundary
(:mod:`magihuman.pipeline.validation`) runs before any model loads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np

from magihuman.pipeline.media.probe import _existing_file, _open_input

__all__ = ["AUDIO_INPUT_SAMPLE_RATE", "load_audio", "check_audio_file"]

#: Rate at which driving audio is decoded for the audio VAE: 25 latents/s x 2048 hop (architecture.md §9.2).
AUDIO_INPUT_SAMPLE_RATE = 51200


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int = AUDIO_INPUT_SAMPLE_RATE,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode the first audio stream of a file to mono float32 (architecture.md §9.2, §11.5).

    Mirrors the reference's ffmpeg/whisper loader through PyAV: one ``av.AudioResampler`` converts to
    **mono, signed 16-bit, ``sample_rate`` Hz** (libswresample defaults), then the samples are divided by
    32768. Going through 16-bit matters beyond precision: libswresample normalises the stereo-to-mono
    matrix only for integer output, so the mono signal is ``(L + R) / 2`` as in the reference (a float
    target would give ``0.707 * (L + R)``). Any file PyAV reads works (wav, mp3, m4a/aac, flac, ogg, or a
    video file with an audio track).

    Args:
        path: audio or video file.
        sample_rate: output rate in Hz; 51200 for the audio VAE (25 latents/s x 2048 hop).
        max_seconds: if given (> 0), keep only the first ``int(max_seconds * sample_rate)`` samples (the
            reference truncates to ``seconds * 51200``); decoding stops once enough is read. A shorter
            file is returned whole (callers that need an exact length must check ``len(result)``).

    Returns:
        ``np.ndarray`` float32 of shape ``[samples]``, values in ``[-1, 1)``, at ``sample_rate`` Hz.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable media file, no audio stream, no decodable samples, or bad
            ``sample_rate`` / ``max_seconds``.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    limit: int | None = None
    if max_seconds is not None:
        if (
            isinstance(max_seconds, bool)
            or not isinstance(max_seconds, (int, float, np.number))
            or not math.isfinite(max_seconds)
            or max_seconds <= 0
        ):
            raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}")
        limit = int(max_seconds * sample_rate)
        if limit < 1:
            raise ValueError(f"max_seconds={max_seconds} keeps no sample at {sample_rate} Hz; pass a longer time")
    with _first_audio_stream(path) as (src, container, stream):
        resampler = av.AudioResampler(format="s16", layout="mono", rate=int(sample_rate))
        chunks: list[np.ndarray] = []
        have = 0

        def _take(frames: list[av.AudioFrame]) -> None:
            nonlocal have
            for frame in frames:
                data = frame.to_ndarray().reshape(-1)
                chunks.append(data)
                have += data.shape[0]

        try:
            for frame in container.decode(stream):
                _take(resampler.resample(frame))
                if limit is not None and have >= limit:
                    break
            else:
                _take(resampler.resample(None))  # flush the resampler's delay line
        except av.error.FFmpegError as exc:
            raise ValueError(f"could not decode audio from {str(src)!r}: {exc}") from exc
    if have == 0:
        raise ValueError(f"{str(src)!r}: the audio stream contains no decodable samples")
    samples = np.concatenate(chunks).astype(np.float32) / np.float32(32768.0)
    if limit is not None:
        samples = samples[:limit]
    return np.ascontiguousarray(samples, dtype=np.float32)


def check_audio_file(path: str | os.PathLike, *, min_seconds: float) -> float:
    """Decode an audio file far enough to prove it usable; the input boundary's audio check.

    The first audio stream is decoded until it holds ``min_seconds`` of sound and the container states a
    duration; a file without a stated duration is decoded to its end. Nothing is resampled.

    Args:
        path: audio file, or a video file with an audio track (``~`` is expanded).
        min_seconds: the least sound that is usable, in seconds (> 0).

    Returns:
        The duration of the first audio stream in seconds: the container's value, or the decoded length
        when the whole stream was decoded or the container states none.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a folder, not a media file PyAV reads, no audio stream, damaged data, or under
            ``min_seconds`` of sound.
    """
    with _first_audio_stream(path) as (src, container, stream):
        stated = None
        if stream.duration and stream.time_base:
            stated = float(stream.duration * stream.time_base)
        elif container.duration:
            stated = container.duration / av.time_base
        decoded, complete = 0.0, True
        try:
            for frame in container.decode(stream):
                decoded += frame.samples / (frame.sample_rate or stream.sample_rate or 1)
                if decoded >= min_seconds and stated is not None:
                    complete = False
                    break
        except av.error.FFmpegError as exc:
            raise ValueError(f"could not decode audio from {str(src)!r}: {exc}; the file may be damaged") from exc
    if decoded < min_seconds:
        raise ValueError(
            f"{str(src)!r} holds {decoded:.3f} s of sound, less than the {min_seconds:g} s the audio VAE "
            "needs for one latent frame; pass a longer recording"
        )
    return decoded if complete or stated is None else stated


@contextmanager
def _first_audio_stream(path: str | os.PathLike) -> Iterator[tuple[Path, Any, Any]]:
    """Open a media file for reading and yield ``(path, container, its first audio stream)``; the
    container is closed on leaving.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a folder, not a media file PyAV reads, or a file without an audio stream.
    """
    src = _existing_file(path, "audio file")
    container = _open_input(src, "audio")
    try:
        if not container.streams.audio:
            raise ValueError(
                f"{str(src)!r} has no audio stream; pass a wav/mp3/m4a/flac file or a video with sound"
            )
        yield src, container, container.streams.audio[0]
    finally:
        container.close()
