"""Reading a training clip as the pipeline would see it: frames at 25 fps, sound at 51.2 kHz.

Frames are taken at ``t_k = k / 25`` s (the latest decoded frame whose timestamp is not after ``t_k``)
and each goes through :func:`magihuman.pipeline.media.preprocess_image`, the inference first-frame
preprocessing (centre crop to the bucket's aspect, Lanczos resize, ``[-1, 1]``; pipeline.md 7.1). Sound
goes through :func:`magihuman.pipeline.media.load_audio` (mono 51.2 kHz) and is duplicated to stereo,
as the pipeline does for a driving track (pipeline.md 7.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from magihuman.train.dataset import LATENT_RATE, DatasetError


@dataclass(frozen=True)
class ClipInfo:
    """Container facts of a clip: pixel size, duration in seconds, whether it has sound."""

    width: int
    height: int
    duration: float
    has_audio: bool


def probe_clip(path: Path, audio: Path | None = None) -> ClipInfo:
    """Size, duration (seconds, from the video stream) and sound of a clip.

    Raises:
        DatasetError: the file cannot be opened or has no video stream.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetError(f"cannot open clip {path}: {exc}") from None
    with container:
        if not container.streams.video:
            raise DatasetError(f"{path} has no video stream")
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = sum(1 for _ in container.decode(stream)) / float(stream.average_rate or LATENT_RATE)
        has_audio = bool(container.streams.audio) if audio is None else True
        return ClipInfo(stream.codec_context.width, stream.codec_context.height, duration, has_audio)


def read_frames(path: Path, num_frames: int, width: int, height: int) -> torch.Tensor:
    """``num_frames`` frames at 25 fps from the start, preprocessed for the VAE.

    Returns:
        ``[1, 3, num_frames, height, width]`` float32 in ``[-1, 1]``.

    Raises:
        DatasetError: the clip holds fewer frames than asked.
    """
    from magihuman.pipeline.media import preprocess_image

    picked: list = [None] * num_frames
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            time = float(frame.pts * stream.time_base) if frame.pts is not None else 0.0
            first_k = max(0, int(np.ceil(time * LATENT_RATE - 1e-6)))
            for k in range(first_k, num_frames):  # this frame is the latest one at or before t_k
                picked[k] = frame
            if first_k >= num_frames:
                break
    missing = [k for k, f in enumerate(picked) if f is None]
    if missing or picked[-1] is None:
        raise DatasetError(f"{path} holds too few frames: {num_frames} at 25 fps are needed")
    tensors = [preprocess_image(frame.to_image(), width, height) for frame in picked]
    return torch.stack(tensors, dim=2)


def read_sound(path: Path, audio_latents: int) -> torch.Tensor:
    """The first ``audio_latents / 25`` s of sound as the audio VAE input (mono duplicated to stereo).

    A track up to one hop short is padded with silence; a shorter one is an error.

    Returns:
        ``[1, 2, 2048 * audio_latents]`` float32 at 51.2 kHz.

    Raises:
        DatasetError: no audio stream, or sound shorter than asked.
    """
    from magihuman.codecs.audio_vae import HOP_LENGTH, MODEL_SAMPLE_RATE
    from magihuman.pipeline.media import load_audio

    need = audio_latents * HOP_LENGTH
    try:
        mono = load_audio(path, sample_rate=MODEL_SAMPLE_RATE, max_seconds=need / MODEL_SAMPLE_RATE)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    if mono.shape[0] < need - HOP_LENGTH:
        raise DatasetError(
            f"{path}: {mono.shape[0] / MODEL_SAMPLE_RATE:.2f} s of sound, the bucket needs "
            f"{need / MODEL_SAMPLE_RATE:.2f} s; trim the clip or add a shorter bucket length"
        )
    mono = np.pad(mono, (0, need - mono.shape[0]))
    return torch.from_numpy(np.stack([mono, mono]))[None]
