"""Decoded video pixels to ``uint8`` frames (architecture.md §12.1)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["video_to_uint8"]


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Decoded video in [-1, 1] to ``uint8`` frames (architecture.md §12.1).

    Per value: ``x * 0.5 + 0.5``, clamp to ``[0, 1]``, ``* 255`` in float32, then a **truncating** cast
    to ``uint8`` (no rounding), exactly as the reference. Only batch item 0 is used. Work is done a few
    frames at a time so a 1080p clip does not need a second full float copy. NaN values (a broken
    decode) become 0 with a ``RuntimeWarning``.

    Args:
        video: ``torch.Tensor`` ``[B, 3, F, H, W]`` of any floating dtype (computed in float32), on any
            device; nominal range ``[-1, 1]``.

    Returns:
        ``np.ndarray`` ``uint8`` of shape ``[F, H, W, 3]`` (RGB, channels last), C-contiguous.

    Raises:
        ValueError: not a floating tensor of shape ``[B, 3, F, H, W]`` with ``B, F, H, W >= 1``.
    """
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video must be a torch.Tensor [B, 3, F, H, W], got {type(video).__name__}")
    if video.ndim != 5 or video.shape[1] != 3 or min(video.shape) < 1:
        raise ValueError(
            f"video must have shape [B, 3, F, H, W] with non-zero sizes, got {tuple(video.shape)}; "
            "add a batch axis with video[None] if you have [3, F, H, W]"
        )
    if not video.is_floating_point():
        raise ValueError(f"video must be a floating tensor in [-1, 1], got dtype {video.dtype}")
    clip = video[0].detach()  # [3, F, H, W]
    _, num_frames, height, width = clip.shape
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    saw_nan = False
    chunk = 8
    for start in range(0, num_frames, chunk):
        part = clip[:, start : start + chunk].to(device="cpu", dtype=torch.float32)
        part = (part * 0.5 + 0.5).clamp(0.0, 1.0)
        if torch.isnan(part).any():
            saw_nan = True
            part = torch.nan_to_num(part, nan=0.0)
        part = part.permute(1, 2, 3, 0) * 255.0  # [f, H, W, 3]
        out[start : start + chunk] = part.numpy().astype(np.uint8)  # truncation, as the reference
    if saw_nan:
        warnings.warn("video contains NaN values; they were written as 0 (black)", RuntimeWarning, stacklevel=2)
    return out
