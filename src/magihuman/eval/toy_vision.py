"""What a toy clip shows, measured from its pixels: mouth opening per frame and the colour of each part.

Mouth: pixels within :data:`MOUTH_TOLERANCE` (sRGB distance) of the mouth colour inside the fixed mouth
region, divided by the mouth width: about the drawn mouth height in pixels (2 closed, 14 wide open).
Colours: the per-channel median of each part's fixed region over all frames, named by the nearest colour
of that part's palette.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magihuman.toy.drawing import HEIGHT, MOUTH_REGION, MOUTH_WIDTH, REGIONS, WIDTH
from magihuman.toy.palette import MOUTH_RGB, PART_PALETTES, nearest_colour

__all__ = ["MOUTH_TOLERANCE", "PartColour", "toy_mouth_opening", "part_colours", "check_toy_frames"]

#: Largest sRGB distance from the mouth colour that still counts as mouth (video compression blurs edges).
MOUTH_TOLERANCE = 50.0


@dataclass(frozen=True)
class PartColour:
    """A part's measured colour: the median ``rgb``, its nearest palette ``name`` and the ``distance`` to it."""

    rgb: tuple[int, int, int]
    name: str
    distance: float


def check_toy_frames(frames: np.ndarray) -> np.ndarray:
    """``frames`` as ``uint8 [F, 128, 128, 3]``, resized (Pillow, bilinear) when another size was generated.

    Raises:
        ValueError: not ``[F, H, W, 3]``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3] RGB, got shape {frames.shape}")
    if frames.shape[1:3] == (HEIGHT, WIDTH):
        return frames.astype(np.uint8, copy=False)
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f.astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BILINEAR))
                     for f in frames])


def toy_mouth_opening(frames: np.ndarray) -> np.ndarray:
    """``float32 [F]``: mouth-coloured pixels in the mouth region / mouth width (module docstring)."""
    frames = check_toy_frames(frames)
    x0, y0, x1, y1 = MOUTH_REGION
    crop = frames[:, y0:y1, x0:x1].astype(np.float32)
    distance = np.linalg.norm(crop - np.asarray(MOUTH_RGB, dtype=np.float32), axis=-1)
    return ((distance <= MOUTH_TOLERANCE).sum(axis=(1, 2)) / MOUTH_WIDTH).astype(np.float32)


def part_colours(frames: np.ndarray) -> dict[str, PartColour]:
    """``{"hair" | "shirt" | "wall": PartColour}`` of a toy clip (module docstring)."""
    frames = check_toy_frames(frames)
    found = {}
    for part, (x0, y0, x1, y1) in REGIONS.items():
        rgb = np.median(frames[:, y0:y1, x0:x1].reshape(-1, 3), axis=0)
        name, distance = nearest_colour(rgb, PART_PALETTES[part])
        found[part] = PartColour(tuple(int(round(v)) for v in rgb), name, distance)
    return found
