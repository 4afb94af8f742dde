"""Named colours of the toy world, per part, and the fixed colours of the face.

Every part (hair, shirt, wall) has at least six colours a caption can name; :func:`nearest_colour`
reads a measured RGB back as a name, so the same table serves the generator and the prompt-adherence
metric. The mouth and eye colours never occur in a palette, so the mouth can be found by its colour.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COLOURS", "HAIR_COLOURS", "SHIRT_COLOURS", "WALL_COLOURS", "SKIN_TONES", "HELD_OUT_SHIRT_COLOURS",
    "PART_PALETTES", "MOUTH_RGB", "EYE_WHITE_RGB", "PUPIL_RGB", "EYELID_RGB", "colour_distance", "nearest_colour",
]

#: Caption name -> sRGB (uint8) of every colour a part may take.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "red": (205, 35, 35),
    "orange": (240, 130, 20),
    "yellow": (245, 215, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "purple": (130, 50, 170),
    "pink": (245, 140, 190),
    "brown": (120, 70, 30),
    "blonde": (225, 190, 90),
    "teal": (20, 140, 140),
    "cyan": (70, 215, 245),
}

#: Colours drawn at random per part (the caption names them).
HAIR_COLOURS = ("black", "brown", "blonde", "red", "grey", "white", "blue", "pink")
SHIRT_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
WALL_COLOURS = ("yellow", "green", "blue", "grey", "pink", "orange", "teal", "white")
#: Shirt colours never drawn by default: kept for an attribute the base model has not seen (a LoRA's target).
HELD_OUT_SHIRT_COLOURS = ("cyan",)
#: Skin tone name -> sRGB.
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "light": (245, 208, 175), "tan": (214, 160, 112), "dark": (140, 95, 65),
}

#: Part -> every colour name a measurement of that part is classified against.
PART_PALETTES: dict[str, tuple[str, ...]] = {
    "hair": HAIR_COLOURS,
    "shirt": SHIRT_COLOURS + HELD_OUT_SHIRT_COLOURS,
    "wall": WALL_COLOURS,
}

#: Inside of the mouth: a dark red far from every palette colour and skin tone.
MOUTH_RGB = (95, 10, 40)
EYE_WHITE_RGB = (250, 250, 250)
PUPIL_RGB = (20, 20, 60)
EYELID_RGB = (35, 25, 20)


def colour_distance(a, b) -> float:
    """Euclidean distance between two sRGB triples (0-255 per channel)."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def nearest_colour(rgb, names: tuple[str, ...] | None = None) -> tuple[str, float]:
    """The palette name closest to ``rgb`` (Euclidean in sRGB) and its distance.

    Args:
        rgb: three numbers, 0-255.
        names: candidate names (default: all of :data:`COLOURS`).

    Raises:
        KeyError: a name that is not in :data:`COLOURS`.
    """
    names = tuple(COLOURS) if names is None else names
    distances = [colour_distance(rgb, COLOURS[name]) for name in names]
    best = int(np.argmin(distances))
    return names[best], distances[best]
