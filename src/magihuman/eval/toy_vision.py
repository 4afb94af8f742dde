"""What a toy clip shows, measured from its pixels: mouth opening per frame and the colour of each part.

Mouth: pixels within :data:`MOUTH_TOLERANCE` (sRGB distance) of the mouth colour inside the fixed mouth
region, divided by the mouth width: about the drawn mouth height in pixels (2 closed, 14 wide open).
Colours: the per-channel median of each part's fixed region over all frames, named by the nearest colour
of that part's palette.

Mouth activity (:func:`mouth_open_while_speaking`): the share of the speaking frames (loudness above
:data:`SPEAKING_SHARE` of the clip's largest) where the mouth reads open (above :data:`MOUTH_OPEN_PIXELS`). The
sync lag is the best of a correlation search; when the mouth hardly moves, that correlation is noise and its
best lag says nothing, which this share shows (docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magihuman.toy.drawing import HEIGHT, MOUTH_REGION, MOUTH_WIDTH, REGIONS, WIDTH
from magihuman.toy.palette import MOUTH_RGB, PART_PALETTES, nearest_colour

__all__ = ["MOUTH_TOLERANCE", "MOUTH_OPEN_PIXELS", "SPEAKING_SHARE", "PartColour", "toy_mouth_opening",
           "part_colours", "check_toy_frames", "mouth_open_while_speaking"]

#: Largest sRGB distance from the mouth colour that still counts as mouth (video compression blurs edges).
MOUTH_TOLERANCE = 50.0
#: Mouth opening (:func:`toy_mouth_opening`, pixels) above which the mouth counts as open; a closed mouth reads 2.
MOUTH_OPEN_PIXELS = 3.0
#: Loudness, as a share of the clip's largest frame loudness, above which a frame counts as speaking.
SPEAKING_SHARE = 0.3


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


def mouth_open_while_speaking(mouth: np.ndarray, loudness: np.ndarray, where: np.ndarray | None = None) -> float | None:
    """Share in [0, 1] of the speaking frames whose mouth reads open (module docstring).

    Args:
        mouth: ``[F]`` opening per frame (:func:`toy_mouth_opening`, pixels).
        loudness: ``[F]`` RMS loudness per frame (:func:`magihuman.eval.sync.frame_loudness`).
        where: optional ``[F]`` bool, only these frames are counted.

    Returns:
        The share, or None when no counted frame is speaking (a silent clip).

    Raises:
        ValueError: series of different lengths.
    """
    mouth, loudness = np.asarray(mouth, dtype=np.float64), np.asarray(loudness, dtype=np.float64)
    if mouth.shape != loudness.shape or (where is not None and np.shape(where) != mouth.shape):
        raise ValueError(f"mouth {mouth.shape}, loudness {loudness.shape} and where must have one length")
    peak = float(loudness.max()) if loudness.size else 0.0
    speaking = loudness > SPEAKING_SHARE * peak if peak > 0 else np.zeros(mouth.shape, dtype=bool)
    if where is not None:
        speaking &= np.asarray(where, dtype=bool)
    return float(np.mean(mouth[speaking] > MOUTH_OPEN_PIXELS)) if speaking.any() else None
