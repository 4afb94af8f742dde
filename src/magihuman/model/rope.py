"""The Fourier position table and its rotate-half application to q and k (architecture.md §3.3).

* ``B = head_dim / 8`` bands per axis, ``band_k = 1 / 10000**(k/B)`` (not the usual ``2k/d``);
* per axis a in (t, h, w): ``angle = ((coord - centre) * scale) * band``, with
  ``scale = (ref - 1)/(size - 1)`` (1 when ref == size == 1), centre ``(size-1)/2`` for h and w and
  0 for t;
* table ``[N, 6B]`` = ``sin(t), sin(h), sin(w), cos(t), cos(h), cos(w)``;
* rotation pairs dims ``i`` and ``i + 3B`` on the first ``6B`` dims of every head; the rest are
  untouched (dims 96..127 for the 15B model).
"""

from __future__ import annotations

import torch
from torch import nn

ROPE_BASE = 10000.0


def default_bands(num_bands: int) -> torch.Tensor:
    """``1 / 10000**(k/B)`` for k = 0..B-1, float32, computed as the reference does (architecture.md §3.3)."""
    exponent = torch.arange(num_bands, dtype=torch.float32) / num_bands
    return 1.0 / (ROPE_BASE**exponent)


def axis_scales(coords: torch.Tensor) -> torch.Tensor:
    """Per-row, per-axis scale ``(ref - 1) / (size - 1)``, forced to 1 where ref == size == 1.

    Args:
        coords: ``[N, 9]`` float32 coordinate rows (architecture.md §3.2).

    Returns:
        ``[N, 3]`` float32.

    Raises:
        ValueError: where a size is 1 but its reference is not (a division by zero; the reference
            fails an assertion there, e.g. v1 coordinates with a single text token, architecture.md §3.3).
    """
    size, ref = coords[:, 3:6], coords[:, 6:9]
    degenerate = (size == 1) & (ref == 1)
    bad = (size == 1) & (ref != 1)
    if bool(bad.any()):
        axis = "thw"[int(bad.nonzero()[0, 1])]
        raise ValueError(
            f"a grid of size 1 along axis {axis!r} has reference size {float(ref[bad][0])}: its RoPE scale "
            "would divide by zero. With coords_style='v1' (super-resolution) the text needs at least 2 "
            "tokens; use coords_style='v2' or a longer prompt."
        )
    scale = (ref - 1) / (size - 1)
    return torch.where(degenerate, torch.ones_like(scale), scale)


class FourierTable(nn.Module):
    """``adapter.rope``: coordinates to the ``[N, 6B]`` sin/cos table (architecture.md §3.3).

    ``bands`` is a persistent buffer: the checkpoint's value wins over the formula (architecture.md §7.2).
    """

    def __init__(self, head_dim: int):
        super().__init__()
        if head_dim % 8:
            raise ValueError(f"head_dim must be a multiple of 8 for the 3-axis Fourier table, got {head_dim}")
        self.register_buffer("bands", default_bands(head_dim // 8), persistent=True)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Args: coords ``[N, 9]`` float32. Returns ``[N, 6B]`` float32 (sin columns first)."""
        coords = coords.float()
        size = coords[:, 3:6]
        centre = (size - 1) / 2
        centre[:, 0] = 0.0  # time is not centred
        position = (coords[:, 0:3] - centre) * axis_scales(coords)
        angle = position[:, :, None] * self.bands.float()[None, None, :]  # [N, 3, B]
        angle = angle.reshape(coords.shape[0], -1)
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first ``6B`` dims of each head, in float32 (architecture.md §3.3).

    ``x'[i] = x[i]*cos[i] - x[i+3B]*sin[i]`` and ``x'[i+3B] = x[i+3B]*cos[i] + x[i]*sin[i]`` for
    i < 3B, computed as ``x*[cos, cos] + rot(x)*[sin, sin]`` with ``rot(x) = [-x[3B:6B], x[:3B]]``.

    Args:
        x: ``[B, N, H, D]`` float32 queries or keys.
        table: ``[N, 6B]`` float32 from :class:`FourierTable`, or ``[B, N, 6B]`` with one table per
            sample (a batch of samples with different text lengths).

    Returns:
        ``[B, N, H, D]`` float32.
    """
    half = table.shape[-1] // 2
    sin, cos = table[..., None, :half], table[..., None, half:]
    rotated, passthrough = x[..., : 2 * half], x[..., 2 * half :]
    rot = torch.cat([-rotated[..., half:], rotated[..., :half]], dim=-1)
    out = rotated * torch.cat([cos, cos], dim=-1) + rot * torch.cat([sin, sin], dim=-1)
    return torch.cat([out, passthrough], dim=-1)
