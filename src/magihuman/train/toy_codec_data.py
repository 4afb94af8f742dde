"""The codec stages' training data: clips rendered on the fly and cropped for the Wan2.2 VAE, the Stable Audio
VAE and the Turbo decoder, with the L1 weights that make the eyes and mouth count (docs/toy_world.md,
"What the codecs keep"). :mod:`magihuman.train.toy_recipe` runs the stages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from magihuman.pipeline.loading import ROOT_LAYOUT
from magihuman.train.objective import derive_seed

if TYPE_CHECKING:
    from magihuman.train.toy_recipe import ToyRecipe

__all__ = ["audio_crop", "codec_clip", "face_weight_map", "latent_pool", "over_face", "turbo_window", "video_crop"]


def codec_clip(recipe: ToyRecipe, stream: int, step: int, index: int):
    """A clip rendered on the fly for a codec stage, its shirt drawn from ``recipe.codec_shirt_colours``."""
    from magihuman.toy.clip import make_clip

    return make_clip((recipe.seed, 1000 + stream, step, index), shirt_colours=tuple(recipe.codec_shirt_colours))


def face_weight_map(recipe: ToyRecipe, y0: int, x0: int, height: int, width: int,
                    mouth_weight: float | None = None) -> torch.Tensor:
    """``[1, 1, height, width]`` float32 L1 weights of a crop at ``(y0, x0)`` pixels of a 128x128 toy frame:
    ``recipe.face_weight`` inside :data:`~magihuman.toy.drawing.FACE_REGION` (the eyes and mouth), 1 elsewhere;
    with ``mouth_weight``, that weight inside :data:`~magihuman.toy.drawing.MOUTH_REGION` instead.

    The eyes and mouth are a small share of a frame, and a plain mean lets a small codec skip them, leaving the sync
    measure no mouth to find (docs/toy_world.md, "What the codecs keep").
    """
    from magihuman.toy.drawing import FACE_REGION, MOUTH_REGION

    weight = torch.ones(1, 1, height, width)
    boxes = [(FACE_REGION, recipe.face_weight)] + ([(MOUTH_REGION, mouth_weight)] if mouth_weight is not None else [])
    for (bx0, by0, bx1, by1), value in boxes:
        ys, xs = slice(max(by0 - y0, 0), max(by1 - y0, 0)), slice(max(bx0 - x0, 0), max(bx1 - x0, 0))
        weight[..., ys, xs] = value
    return weight


def over_face(rng: np.random.Generator, axis: int, size: int, extent: int, unit: int) -> int:
    """A random start (in ``unit``-pixel cells) along ``axis`` (0: x, 1: y) of a ``size``-cell crop within
    ``extent`` cells that holds all of :data:`~magihuman.toy.drawing.FACE_REGION`.

    Raises:
        ValueError: the crop is smaller than the face box.
    """
    from magihuman.toy.drawing import FACE_REGION

    def touched(a: int) -> tuple[int, int]:  # first and past-the-last cell the box touches along axis a
        return FACE_REGION[a] // unit, -(-FACE_REGION[a + 2] // unit)

    first, last = touched(axis)
    if last - first > size:
        need = max(b - a for a, b in map(touched, (0, 1))) * unit
        raise ValueError(f"a {size * unit}-pixel crop cannot hold the face box {FACE_REGION}; "
                         f"use {need} pixels or more")
    return int(rng.integers(max(0, last - size), min(first, extent - size) + 1))


def video_crop(recipe: ToyRecipe, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([3, F, P, P] float32 in [-1, 1], [1, 1, P, P] weights)``: a random crop of a freshly rendered clip and its
    :func:`face_weight_map`.

    Short crops (``video_crop``) until step ``video_long_from``, then crops of the whole clip's length
    (``video_long_crop``, smaller in space): the causal VAE carries a cache from chunk to chunk, and one trained
    only on 9-frame crops (3 latent frames) drifts after them: on whole clips its encoder's later latents
    decoded to the wrong colours (docs/toy_world.md, "Whole-length crops for the video VAE"), and the
    transformer learns whatever the encoder gives it."""
    face = step >= recipe.video_face_from and (step - recipe.video_face_from) % 2 == 1
    frames, size = (recipe.video_face_crop if face else recipe.video_long_crop if step >= recipe.video_long_from
                    else recipe.video_crop)
    clip = codec_clip(recipe, 1, step, index)
    rng = np.random.default_rng(derive_seed(recipe.seed, 11, step, index))
    total, height, width = clip.frames.shape[:3]
    t0 = int(rng.integers(0, total - frames + 1))
    if face:
        y0, x0 = (over_face(rng, axis, size, n, 1) for axis, n in ((1, height), (0, width)))
    else:
        y0, x0 = (int(rng.integers(0, n - size + 1)) for n in (height, width))
    crop = clip.frames[t0 : t0 + frames, y0 : y0 + size, x0 : x0 + size]
    pixels = torch.from_numpy(crop).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    return pixels, face_weight_map(recipe, y0, x0, size, size)


def audio_crop(recipe: ToyRecipe, step: int, index: int) -> torch.Tensor:
    """``[2, 2048·n]`` float32 at 51.2 kHz: a random crop of a freshly synthesised voice."""
    from scipy.signal import resample_poly

    from magihuman.codecs.audio_vae import HOP_LENGTH, MODEL_SAMPLE_RATE

    clip = codec_clip(recipe, 2, step, index)
    wave = resample_poly(clip.audio, MODEL_SAMPLE_RATE // 100, clip.sample_rate // 100, axis=-1).astype(np.float32)
    length = recipe.audio_crop_latents * HOP_LENGTH
    rng = np.random.default_rng(derive_seed(recipe.seed, 21, step, index))
    start = int(rng.integers(0, wave.shape[-1] - length + 1))
    return torch.from_numpy(np.ascontiguousarray(wave[:, start : start + length]))


@torch.no_grad()
def latent_pool(work: Path, recipe: ToyRecipe) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(raw latent [48, T, h, w], pixels [3, F, H, W])`` of ``turbo_pool`` clips, encoded by the trained Wan VAE."""
    from magihuman.codecs.video_vae import VideoVAE

    vae = VideoVAE.from_official(work / "bundle" / ROOT_LAYOUT["video_vae"], dtype=torch.float32)
    pool = []
    for index in range(recipe.turbo_pool):
        frames = codec_clip(recipe, 3, 0, index).frames
        pixels = torch.from_numpy(frames).permute(3, 0, 1, 2).float()[None] / 127.5 - 1.0
        mu = vae.model.encode(pixels).latent_dist.mode()
        pool.append((mu[0], pixels[0]))
    return pool


def turbo_window(pool, recipe: ToyRecipe, step: int, *, stream: int = 31, mouth_weight: float | None = None,
                 first_chunk: bool = False, first_frame_weight: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """A batch of random decode windows (first-chunk or later, as the sliding-window decode calls them), their
    pixels and :func:`face_weight_map`: ``[turbo_batch, 48, n, c, c]`` raw latents with ``c = turbo_crop`` (the
    whole frame when 0) and ``n <= turbo_window`` latent frames; the decoder is convolutional, so spatial crops
    teach it the same map at a fraction of the cost of whole frames. ``stream`` seeds the draws (a phase of its own
    uses another); ``mouth_weight`` goes to :func:`face_weight_map`. ``first_chunk`` draws first-chunk windows only;
    ``first_frame_weight`` multiplies the weights of a first chunk's frame 0 (the weights are then
    ``[turbo_batch, 1, f, H, W]`` instead of ``[turbo_batch, 1, 1, H, W]``). The defaults draw exactly as before."""
    rng = np.random.default_rng(derive_seed(recipe.seed, stream, step))
    frames = min(latent.shape[1] for latent, _ in pool)
    first = first_chunk or bool(rng.integers(2)) or frames < 3
    n = int(rng.integers(1 if first else 2, min(frames - (0 if first else 1), recipe.turbo_window) + 1))
    windows, targets, weights = [], [], []
    for _ in range(recipe.turbo_batch):
        latent, pixels = pool[int(rng.integers(len(pool)))]
        a = 0 if first else int(rng.integers(1, frames - n + 1))
        span = slice(0, 4 * n - 3) if first else slice(4 * a - 3, 4 * (a + n) - 3)
        size = latent.shape[2] if recipe.turbo_crop == 0 else min(recipe.turbo_crop, latent.shape[2])
        if rng.random() < recipe.turbo_face_rate:
            y, x = (over_face(rng, axis, size, latent.shape[k], 16) for axis, k in ((1, 2), (0, 3)))
        else:
            y, x = (int(rng.integers(0, latent.shape[k] - size + 1)) for k in (2, 3))
        windows.append(latent[:, a : a + n, y : y + size, x : x + size])
        targets.append(pixels[:, span, 16 * y : 16 * (y + size), 16 * x : 16 * (x + size)])
        weights.append(face_weight_map(recipe, 16 * y, 16 * x, 16 * size, 16 * size, mouth_weight))
    weight = torch.stack(weights)
    if first and first_frame_weight is not None:
        per_frame = torch.ones(1, 1, 4 * n - 3, 1, 1)
        per_frame[:, :, 0] = first_frame_weight
        weight = weight * per_frame
    return torch.stack(windows), torch.stack(targets), weight, first
