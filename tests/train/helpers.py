"""Shared builders for the training tests: tiny clips on disk and tiny in-memory latent datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from magihuman.train.cache import LatentSample, write_cache_header, write_negative, write_sample

#: Transformer config of the training tests: 2 layers at width 256 (wider than a 192-d video token, so a
#: layer can carry the noisy latent through) with the 15B structure (a sandwich
#: layer with per-modality experts, a gelu7 and a swiglu7 layer, GQA with gates).
TRAIN_TINY_CONFIG = dict(
    num_layers=2, hidden_size=256, head_dim=32, num_query_groups=2, video_in_channels=192,
    audio_in_channels=64, text_in_channels=32, mm_layers=(0,), gelu7_layers=(0,),
)


def write_clip(path: Path, *, frames: int = 13, size: tuple[int, int] = (80, 64), sound: bool = True,
               seed: int = 0) -> Path:
    """An MP4 of moving colour blocks (25 fps) with an optional 440 Hz-ish tone."""
    from magihuman.pipeline.media import write_mp4

    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 255, size=(height // 8, width // 8, 3), dtype=np.uint8)
    video = np.stack([np.roll(np.kron(base, np.ones((8, 8, 1), np.uint8)), k, axis=1) for k in range(frames)])
    audio = None
    if sound:
        t = np.arange(int(44100 * (frames / 25 + 0.2))) / 44100
        tone = 0.3 * np.sin(2 * np.pi * (300 + 100 * seed) * t).astype(np.float32)
        audio = np.stack([tone, tone])
    return write_mp4(path, video, fps=25, audio=audio, sample_rate=44100, crf=18, preset="ultrafast")


def latent_dataset(count: int, *, frames: int = 2, size: tuple[int, int] = (4, 4), audio: int = 5,
                   text_tokens: int = 6, text_dim: int = 32, seed: int = 0) -> list[LatentSample]:
    """``count`` distinct random clips in latent form (what a cache holds), captions ``clip i``.

    Text lengths differ per clip (``text_tokens + i``) so that batches exercise the ragged text path.
    """
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(count):
        video = torch.randn(48, frames, *size, generator=generator)
        sound = torch.randn(audio, 64, generator=generator)
        text = torch.randn(text_tokens + i % 3, text_dim, generator=generator)
        samples.append(LatentSample(f"clip{i}", f"clip {i}", video, sound, text))
    return samples


def write_latent_cache(folder: Path, samples: list[LatentSample], *, root: str = "/codecs",
                       negative: float = 0.0) -> Path:
    """A cache folder holding ``samples`` in one ``64x64_0.32s`` bucket (the layout ``magihuman train prepare``
    writes), its header naming codec root ``root`` and its negative-prompt states all ``negative``."""
    write_cache_header(folder, {"root": root, "buckets": ["64x64_0.32s"], "seed": 0, "video_only": False})
    for sample in samples:
        write_sample(folder, sample, "64x64_0.32s")
    write_negative(folder, torch.full((3, 32), negative))
    return folder
