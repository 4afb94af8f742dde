"""Decoding long latents piece by piece, and joining decoded pieces with kept media (ours; docs/long_clips.md).

* Video: the joined latents of a long clip go through the existing decoders unchanged. The Turbo-VAED
  decode is already a sliding window over latent time (architecture.md §11.4), so a 60 s clip costs the
  memory of one decode window plus the ``uint8`` frames (:func:`magihuman.pipeline.stages.decode_video`).
* Audio: the Stable Audio Open decoder (architecture.md §11.5) is a stack of convolutions whose output at
  one latent depends on about ten latents either side (its ``7``-tap input convolution, then residual units
  of dilations 1, 3, 9 after each upsampling). :func:`decode_audio_span` decodes a span of latents with
  :data:`AUDIO_MARGIN` latents of context on each side and keeps the span's samples, so a long track is
  decoded in pieces (:func:`decode_audio_long`) whose joins equal the one-pass decode up to float rounding.
* Splicing (extend, retake): :func:`crossfade_splice` writes new audio into a kept track with short linear
  cross-fades, placed on the kept side of each join; :func:`crossfade_frames` does the same for pictures over a
  few frames. The decoded frames on the kept side re-create the clip's own from the same held latents, so the
  fade shows one content throughout and spreads the codec's round-trip difference over several frames instead
  of one jump at the join (docs/long_clips.md, "Joins in pixels").

Waveforms here are ``float32 [2, samples]`` at the VAE's 51.2 kHz (architecture.md §12.2); the output
track is resampled once, whole, by :func:`magihuman.codecs.audio_vae.resample_to_output_rate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from magihuman.codecs.audio_vae import HOP_LENGTH, LATENTS_PER_SECOND, resample_to_output_rate

if TYPE_CHECKING:
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

__all__ = ["AUDIO_MARGIN", "AUDIO_CHUNK", "CROSSFADE_SAMPLES", "decode_audio_span", "decode_audio_long",
           "crossfade_splice", "crossfade_frames"]

#: Latents of context decoded on each side of a span (more than the decoder's reach of about ten).
AUDIO_MARGIN = 24
#: Latents decoded per piece of a long track (10 s).
AUDIO_CHUNK = 10 * LATENTS_PER_SECOND
#: Length of the linear cross-fades of a splice, samples at 51.2 kHz (20 ms).
CROSSFADE_SAMPLES = 1024


def decode_audio_span(pipe: MagiHumanPipeline, latent: torch.Tensor, start: int, stop: int,
                      margin: int = AUDIO_MARGIN) -> np.ndarray:
    """Audio latents ``[start, stop)`` of ``latent`` ``[1, A, 64]`` decoded with ``margin`` latents of context.

    Returns:
        ``float32 [2, 2048 * (stop - start)]`` at 51.2 kHz.

    Raises:
        ValueError: for an empty or out-of-range span.
    """
    length = latent.shape[1]
    if not 0 <= start < stop <= length:
        raise ValueError(f"audio span [{start}, {stop}) is empty or outside the {length} latents")
    first, last = max(0, start - margin), min(length, stop + margin)
    waveform = pipe.audio_vae.decode(latent[:, first:last].float())[0].float().cpu().numpy()
    offset = (start - first) * HOP_LENGTH
    return waveform[:, offset:offset + (stop - start) * HOP_LENGTH]


def decode_audio_long(pipe: MagiHumanPipeline, latent: torch.Tensor, chunk: int = AUDIO_CHUNK,
                      margin: int = AUDIO_MARGIN) -> np.ndarray:
    """A whole audio latent ``[1, A, 64]`` decoded in pieces of ``chunk`` latents and resampled to 44.1 kHz
    (architecture.md §12.2); one pass when ``A <= chunk``.

    Returns:
        ``float32 [2, 1764 * A]`` at 44.1 kHz, as :func:`magihuman.pipeline.stages.decode_audio`.
    """
    length = latent.shape[1]
    pieces = [decode_audio_span(pipe, latent, start, min(length, start + chunk), margin)
              for start in range(0, length, chunk)]
    return resample_to_output_rate(np.concatenate(pieces, axis=1))


def crossfade_splice(kept: np.ndarray, new: np.ndarray, start: int, stop: int,
                     fade: int = CROSSFADE_SAMPLES) -> np.ndarray:
    """``kept`` with samples ``[start, stop)`` taken from ``new`` (both ``[channels, samples]``, one rate).

    ``new`` must also hold the ``fade`` samples before ``start`` and after ``stop`` where the track has them
    (it is the full-length candidate: only its samples around the span are read); over those the track fades
    linearly from ``kept`` to ``new`` and back, so the span itself is exactly ``new``.

    Returns:
        A new ``float32`` array of ``kept``'s shape.

    Raises:
        ValueError: shapes that differ, or a span outside the track.
    """
    if kept.shape != new.shape:
        raise ValueError(f"kept audio {kept.shape} and new audio {new.shape} differ in shape")
    total = kept.shape[-1]
    if not 0 <= start <= stop <= total:
        raise ValueError(f"span [{start}, {stop}) is outside the {total} samples")
    out = kept.astype(np.float32, copy=True)
    out[..., start:stop] = new[..., start:stop]
    before, after = min(fade, start), min(fade, total - stop)
    _fade(out, kept, new, slice(start - before, start), rising=True)
    _fade(out, kept, new, slice(stop, stop + after), rising=False)
    return out


def crossfade_frames(kept: np.ndarray, new: np.ndarray, start: int, stop: int, fade: int) -> np.ndarray:
    """``kept`` frames with ``[start, stop)`` taken from ``new``, faded over up to ``fade`` frames each side.

    The picture counterpart of :func:`crossfade_splice`: over the ``fade`` frames before ``start`` and after
    ``stop`` (where the clip has them) the frames blend linearly from ``kept`` to ``new`` and back, end points
    excluded, so frame ``start - k`` is ``(1 - w) kept + w new`` with ``w = 1 - k / (fade + 1)``. Only the faded
    frames are converted to float; every other frame is copied as it is.

    Args:
        kept, new: ``uint8 [F, H, W, 3]`` of one shape; ``new`` is read only in ``[start - fade, stop + fade)``.
        start, stop: the span taken from ``new``, frames.
        fade: frames of each fade, ``>= 0`` (0: a hard cut).

    Returns:
        A new ``uint8`` array of ``kept``'s shape.

    Raises:
        ValueError: shapes that differ, a span outside the clip, or a negative ``fade``.
    """
    if kept.shape != new.shape:
        raise ValueError(f"kept frames {kept.shape} and new frames {new.shape} differ in shape")
    total = kept.shape[0]
    if not 0 <= start <= stop <= total or fade < 0:
        raise ValueError(f"span [{start}, {stop}) must lie in the {total} frames and fade >= 0, got fade {fade}")
    out = kept.copy()
    out[start:stop] = new[start:stop]
    for where, rising in ((slice(max(0, start - fade), start), True), (slice(stop, min(total, stop + fade)), False)):
        length = where.stop - where.start
        if length > 0:
            ramp = _ramp(length, rising).reshape(-1, *([1] * (kept.ndim - 1)))
            mixed = kept[where].astype(np.float32) * (1 - ramp) + new[where].astype(np.float32) * ramp
            out[where] = np.clip(np.rint(mixed), 0, 255).astype(kept.dtype)
    return out


def _ramp(length: int, rising: bool) -> np.ndarray:
    """``float32 [length]``: the weights of ``new`` across a fade of ``length`` steps, end points excluded."""
    ramp = np.linspace(0.0, 1.0, length + 2, dtype=np.float32)[1:-1]
    return ramp if rising else ramp[::-1]


def _fade(out: np.ndarray, kept: np.ndarray, new: np.ndarray, where: slice, *, rising: bool) -> None:
    """``out[where]`` = a linear blend from ``kept`` to ``new`` (``rising``) or back, end points excluded."""
    length = where.stop - where.start
    if length <= 0:
        return
    ramp = _ramp(length, rising)
    out[..., where] = kept[..., where] * (1 - ramp) + new[..., where] * ramp
