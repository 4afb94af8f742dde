"""An input clip as extend and retake use it: frames and sound read once, encoded with the pipeline's VAEs.

The frames are ``uint8`` at the working size (:func:`magihuman.pipeline.media.video.read_clip_frames`); the sound
is read as the driving audio is (mono at 51.2 kHz, duplicated to stereo, architecture.md §9.2), silence when
the clip has none. Encoding follows the image and driving-audio paths: the Wan2.2 VAE's posterior mean,
normalised (architecture.md §11.3, §11.1), and a posterior sample of the Stable Audio Open VAE from the
request's generator (architecture.md §11.5). Kept parts of the output are these frames and this sound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from magihuman.codecs.audio_vae import HOP_LENGTH, MODEL_SAMPLE_RATE
from magihuman.pipeline.errors import expand_path
from magihuman.pipeline.magihuman_pipeline import GenerationOutput

if TYPE_CHECKING:
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

__all__ = ["ClipSource", "ClipEditOutput", "load_clip_source", "encode_frames", "encode_sound"]

#: Frames converted to VAE input at a time (bounds the float32 copy).
_FRAME_CHUNK = 64


@dataclass
class ClipSource:
    """A clip read for editing.

    Attributes:
        frames: ``uint8 [N, H, W, 3]`` at 25 fps and the working size.
        sound: ``float32 [2, S]`` at 51.2 kHz, ``S >= 2048 N`` (silence appended where the track is shorter).
        has_audio: whether the clip has an audio track (else ``sound`` is silence).
    """

    frames: np.ndarray
    sound: np.ndarray
    has_audio: bool


@dataclass
class ClipEditOutput(GenerationOutput):
    """An edited clip (extend, retake): a :class:`GenerationOutput` plus what was held.

    Attributes:
        source_video_latent: ``[1, 48, T, h, w]`` the clean latents of the source, in ``video_latent``'s frames
            (extend: the clip's last ``K`` frames then zeros; retake: the whole encoded clip).
        source_audio_latent: ``[1, A, 64]`` likewise for the audio.
        video_held: ``[T]`` bool, the latent frames of ``video_latent`` equal to the source's, bit for bit.
        audio_held: ``[A]`` bool, likewise for ``audio_latent``.
    """

    source_video_latent: torch.Tensor | None = None
    source_audio_latent: torch.Tensor | None = None
    video_held: torch.Tensor | None = None
    audio_held: torch.Tensor | None = None


def load_clip_source(path: str | Path, *, width: int, height: int, num_frames: int, has_audio: bool) -> ClipSource:
    """Read ``num_frames`` frames at ``width`` x ``height`` and the sound of the clip at ``path``."""
    from magihuman.pipeline.media import load_audio, read_clip_frames

    path = expand_path(path)
    frames = read_clip_frames(path, width=width, height=height, num_frames=num_frames)
    need = num_frames * HOP_LENGTH
    mono = load_audio(path, sample_rate=MODEL_SAMPLE_RATE) if has_audio else np.zeros(0, np.float32)
    if mono.shape[0] < need:
        mono = np.pad(mono, (0, need - mono.shape[0]))
    return ClipSource(frames, np.stack([mono, mono]).astype(np.float32), has_audio)


def encode_frames(pipe: MagiHumanPipeline, frames: np.ndarray) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` frames (``F = 4k + 1``) to the normalised Wan2.2 latent ``[1, 48, (F-1)/4 + 1, h, w]``
    float32: ``x / 255 * 2 - 1`` as the image path scales (architecture.md §9.1), posterior mean (§11.3)."""
    count, height, width, _ = frames.shape
    vae = pipe.video_vae
    pixels = torch.empty((1, 3, count, height, width), dtype=vae.dtype, device=pipe.device)
    for start in range(0, count, _FRAME_CHUNK):
        part = torch.from_numpy(np.ascontiguousarray(frames[start:start + _FRAME_CHUNK])).to(pipe.device)
        pixels[0, :, start:start + len(part)] = (part.permute(3, 0, 1, 2).float() / 255 * 2 - 1).to(vae.dtype)
    return vae.encode(pixels).float()


def encode_sound(pipe: MagiHumanPipeline, sound: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """``float32 [2, 2048 L]`` at 51.2 kHz to ``[1, L, 64]`` audio latents (a posterior sample, architecture.md
    §11.5), the noise drawn from ``generator``."""
    waveform = torch.from_numpy(np.ascontiguousarray(sound))[None].to(pipe.device)
    return pipe.audio_vae.encode(waveform, generator=generator).float()
