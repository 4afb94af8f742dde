"""A generated clip read back from its MP4: frames, waveform, rates (PyAV only, as the writer)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ClipMedia", "read_clip"]


@dataclass(frozen=True)
class ClipMedia:
    """Decoded media of one clip.

    Attributes:
        frames: ``uint8 [F, H, W, 3]`` RGB.
        audio: ``float32 [samples]`` mono (channel mean) at ``sample_rate``; empty for a silent file.
        fps: frames per second.
        sample_rate: audio rate in Hz (0 for a silent file).
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int


def read_clip(path: str | os.PathLike) -> ClipMedia:
    """Decode every frame and the first audio track of an MP4 (or any file PyAV reads).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no video stream or nothing decodable.
    """
    import av

    from magihuman.pipeline.media import load_audio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clip not found: {str(path)!r}")
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            has_audio = bool(container.streams.audio)
            sample_rate = int(container.streams.audio[0].rate) if has_audio else 0
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode {str(path)!r}: {exc}") from exc
    if not frames:
        raise ValueError(f"{str(path)!r} has no decodable video frames")
    audio = load_audio(path, sample_rate=sample_rate) if has_audio else np.zeros(0, dtype=np.float32)
    return ClipMedia(np.stack(frames), audio, fps, sample_rate)
