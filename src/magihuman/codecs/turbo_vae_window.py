"""Turbo-VAED decode arithmetic: the sliding-window plan (architecture.md §11.4) and the spatial tiling.

:func:`sliding_window_plan` is the pure chunk arithmetic of the reference's sliding-window decode;
:func:`decode_tiled` runs one decoder call in overlapping spatial tiles and cross-fades them (our own
memory bound for 1080p, not in the reference). Both are used by :class:`magihuman.codecs.turbo_vae.TurboVAE`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from magihuman.codecs.turbo_vae_config import _is_int

__all__ = ["WindowChunk", "WindowPlan", "sliding_window_plan", "decode_tiled"]


@dataclass(frozen=True)
class WindowChunk:
    """One decoder call of the sliding window.

    Attributes:
        start: First latent frame (inclusive) in the padded latent.
        stop: Last latent frame (exclusive) in the padded latent.
        is_first_chunk: Decoded in first-chunk mode.
        pixel_frames: Frames the decoder returns for it (``r*k - (r-1)`` first, else ``r*k``).
        keep_start: First returned frame that goes to the output (after the overlap trim).
        keep_stop: End of the kept frames (after the overlap trim and the removal of padding frames).
    """

    start: int
    stop: int
    is_first_chunk: bool
    pixel_frames: int
    keep_start: int
    keep_stop: int

    @property
    def latent_frames(self) -> int:
        """Latent frames in the call."""
        return self.stop - self.start

    @property
    def kept_frames(self) -> int:
        """Pixel frames that reach the output."""
        return self.keep_stop - self.keep_start


@dataclass(frozen=True)
class WindowPlan:
    """The whole sliding-window decode of ``num_latent_frames`` frames.

    Attributes:
        num_latent_frames: ``T`` of the input.
        padded_frames: ``T' = F + n*S`` (at least ``F``) after repeating the last frame.
        pad_frames: ``T' - T``.
        chunks: The decoder calls, in order.
        num_pixel_frames: Output frames, ``r*T - (r-1)`` (``4T - 3``).
    """

    num_latent_frames: int
    padded_frames: int
    pad_frames: int
    chunks: tuple[WindowChunk, ...]
    num_pixel_frames: int


def sliding_window_plan(
    num_latent_frames: int, first_chunk_size: int, step_size: int, *, temporal_ratio: int = 4
) -> WindowPlan:
    """Chunk arithmetic of the reference's sliding-window decode (architecture.md §11.4, §12.1).

    With ``F = first_chunk_size``, ``S = step_size``, ``r = temporal_ratio`` and an overlap of one
    latent frame (``r`` pixel frames):

    1. pad ``T`` by repeating the last frame up to ``T' = F + n*S >= T`` (at least ``F``);
    2. if ``T' == F``: one first-chunk call on ``[0, F)``;
    3. else a first-chunk call on ``[0, F+1)`` dropping its last ``r`` frames, then for ``i = F, F+S,
       ..., T'-S`` a call on ``[i-1, i+S+1)`` (the last one, ``i = T'-S``, on ``[i-1, T')``) dropping its
       first ``r`` frames and, unless it is the last, its last ``r`` frames;
    4. the trailing ``r * (T' - T)`` frames of the concatenation are removed (folded into the
       ``keep_stop`` of the last chunk(s) here, so chunks can be streamed).

    Args:
        num_latent_frames: ``T >= 1``.
        first_chunk_size: ``F >= 1`` (config ``first_chunk_size``).
        step_size: ``S >= 1`` (config ``step_size``).
        temporal_ratio: ``r >= 1`` (config ``temporal_compression_ratio``).

    Returns:
        The :class:`WindowPlan`; e.g. ``T = 17, F = S = 7``: chunks of 8/9/8 latent frames giving
        29/36/32 pixel frames and 65 output frames.

    Raises:
        ValueError: If an argument is not an integer >= 1.
    """
    for name, value in (
        ("num_latent_frames", num_latent_frames),
        ("first_chunk_size", first_chunk_size),
        ("step_size", step_size),
        ("temporal_ratio", temporal_ratio),
    ):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    t, f, s, r = num_latent_frames, first_chunk_size, step_size, temporal_ratio
    padded = f if t <= f else f + -(-(t - f) // s) * s
    # (start, stop, is_first, drop_front, drop_back) before the padding removal
    raw: list[tuple[int, int, bool, int, int]] = []
    if padded == f:
        raw.append((0, f, True, 0, 0))
    else:
        raw.append((0, f + 1, True, 0, r))
        for i in range(f, padded, s):
            last = i + s >= padded
            raw.append((i - 1, padded if last else i + s + 1, False, r, 0 if last else r))
    num_out = r * t - (r - 1)
    chunks, position = [], 0
    for start, stop, first, front, back in raw:
        produced = r * (stop - start) - ((r - 1) if first else 0)
        kept = produced - front - back
        kept_here = max(0, min(position + kept, num_out) - position)
        chunks.append(WindowChunk(start, stop, first, produced, front, front + kept_here))
        position += kept
    return WindowPlan(t, padded, padded - t, tuple(chunks), num_out)


def _check_tiling(tile_size: int | None, tile_overlap: int | None) -> int:
    """Validate the tiling arguments; returns the overlap to use (``tile_size // 3`` when ``None``)."""
    if tile_size is None:
        return 0
    if not _is_int(tile_size) or tile_size < 1:
        raise ValueError(f"tile_size must be None or an integer >= 1 (latent pixels), got {tile_size!r}")
    if tile_overlap is None:
        return tile_size // 3
    if not _is_int(tile_overlap) or not 0 <= tile_overlap < tile_size:
        raise ValueError(f"tile_overlap must be an integer in [0, tile_size={tile_size}), got {tile_overlap!r}")
    return tile_overlap


def _tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Evenly spaced tiles ``[a, b)`` of size ``tile`` covering ``[0, length)``, overlapping by >= ``overlap``."""
    if length <= tile:
        return [(0, length)]
    count = -(-(length - tile) // (tile - overlap)) + 1
    return [((k * (length - tile)) // (count - 1), (k * (length - tile)) // (count - 1) + tile) for k in range(count)]


def _band_ramp(band: int, device: torch.device) -> Tensor:
    """Weights rising from 0 to 1 across an overlap band of ``band`` pixels (see :func:`_tile_weights`)."""
    margin = band // 4
    length = band - 2 * margin
    ramp = (torch.arange(length, dtype=torch.float32, device=device) + 0.5) / length
    return torch.cat([torch.zeros(margin, device=device), ramp, torch.ones(margin, device=device)])


def _tile_weights(spans: list[tuple[int, int]], index: int, scale: int, device: torch.device) -> Tensor:
    """1-D blend weights (pixels) of tile ``index`` along one axis.

    In the band shared with a neighbour, the quarter next to this tile's border gets weight 0 (the
    decoder's receptive field crosses the border there: on random weights the error is still ~1e-2 at
    8 latent pixels from a border and reaches float noise at ~13), the middle half is a linear
    cross-fade ``(k + 0.5)/L``, and the quarter on the far side gets weight 1. The two tiles' weights
    over a band sum to one; elsewhere the weight is 1.
    """
    a, b = spans[index]
    weights = torch.ones((b - a) * scale, dtype=torch.float32, device=device)
    if index > 0:
        band = (spans[index - 1][1] - a) * scale
        if band > 0:
            weights[:band] = torch.minimum(weights[:band], _band_ramp(band, device))
    if index + 1 < len(spans):
        band = (b - spans[index + 1][0]) * scale
        if band > 0:
            weights[-band:] = torch.minimum(weights[-band:], _band_ramp(band, device).flip(0))
    return weights


def decode_tiled(
    decode: Callable[[Tensor], Tensor], z: Tensor, *, scale: int, tile_size: int, tile_overlap: int
) -> Tensor:
    """Decode ``z`` in evenly spaced, overlapping spatial tiles and blend them (see :func:`_tile_weights`).

    Args:
        decode: one decoder call, ``[B, C, T, h', w']`` -> ``[B, 3, T', scale*h', scale*w']`` (any float).
        z: latent window ``[B, C, T, h, w]``.
        scale: pixels per latent pixel of the decoder (16 when shipped).
        tile_size: largest tile side in latent pixels (``>= 1``).
        tile_overlap: minimum overlap of neighbouring tiles in latent pixels, ``0 <= overlap < tile_size``.

    Returns:
        ``[B, 3, T', scale*h, scale*w]`` float32: the weighted mean of the tiles.
    """
    h, w = z.shape[-2:]
    rows, cols = _tile_spans(h, tile_size, tile_overlap), _tile_spans(w, tile_size, tile_overlap)
    out = weight_sum = None
    for i, (r0, r1) in enumerate(rows):
        wy = _tile_weights(rows, i, scale, z.device)
        for j, (c0, c1) in enumerate(cols):
            tile = decode(z[..., r0:r1, c0:c1]).float()
            if out is None:
                b, c, t = tile.shape[:3]
                out = torch.zeros((b, c, t, h * scale, w * scale), dtype=torch.float32, device=z.device)
                weight_sum = torch.zeros((h * scale, w * scale), dtype=torch.float32, device=z.device)
            weight = wy[:, None] * _tile_weights(cols, j, scale, z.device)[None, :]
            ys, xs = slice(r0 * scale, r1 * scale), slice(c0 * scale, c1 * scale)
            out[..., ys, xs] += tile * weight
            weight_sum[ys, xs] += weight
            del tile
    return out.div_(weight_sum)
