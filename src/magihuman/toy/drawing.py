"""The toy person, drawn with Pillow on a 128x128 canvas, and the fixed regions the metrics measure.

Layers, back to front: wall, long hair (women), shirt, neck, head, hair cap, eyes (open or blinking),
mouth. No anti-aliasing: every pixel has one palette colour, so colours can be read back exactly. The
person may be shifted by ``offset`` pixels (first-frame clips); the measurement regions stay inside
their part for every shift up to :data:`MAX_OFFSET`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from magihuman.toy.attributes import ToyAttributes
from magihuman.toy.palette import COLOURS, EYE_WHITE_RGB, EYELID_RGB, MOUTH_RGB, PUPIL_RGB, SKIN_TONES

__all__ = ["WIDTH", "HEIGHT", "MAX_OFFSET", "MOUTH_WIDTH", "MOUTH_MAX_HEIGHT", "REGIONS", "MOUTH_REGION",
           "HAIR_CAP_REGION", "SHIRT_REGION", "FACE_REGION", "mouth_height", "draw_frame"]

#: Canvas size: multiples of 32, as the pipeline renders (architecture.md §13.2).
WIDTH = HEIGHT = 128
#: Largest ``(|dx|, |dy|)`` shift of the person in a first-frame clip.
MAX_OFFSET = (4, 3)
MOUTH_WIDTH = 20
#: Mouth height in pixels when fully open; closed it is a 2-pixel line.
MOUTH_MAX_HEIGHT = 14
_MOUTH_CLOSED = 2
_CENTRE_X, _MOUTH_Y = 64, 78
_EYE_XS, _EYE_HALF_WIDTH, _EYE_TOP = (54, 74), 5, 54

#: Part -> ``(x0, y0, x1, y1)`` box (exclusive ends) that lies inside that part for every allowed offset.
REGIONS: dict[str, tuple[int, int, int, int]] = {
    "wall": (2, 2, 16, 14),
    "hair": (60, 27, 69, 33),
    "shirt": (52, 114, 77, 126),
}
#: Box that holds the mouth for every allowed offset and opening (and nothing else of mouth colour).
MOUTH_REGION = (_CENTRE_X - MOUTH_WIDTH // 2 - MAX_OFFSET[0] - 2, _MOUTH_Y - MOUTH_MAX_HEIGHT // 2 - MAX_OFFSET[1] - 2,
                _CENTRE_X + MOUTH_WIDTH // 2 + MAX_OFFSET[0] + 2, _MOUTH_Y + MOUTH_MAX_HEIGHT // 2 + MAX_OFFSET[1] + 2)
#: Box that holds the hair cap (both hair styles draw it) for every allowed offset: latent cells 2-5 of rows 1-2.
HAIR_CAP_REGION = (38 - MAX_OFFSET[0], 20 - MAX_OFFSET[1], 90 + MAX_OFFSET[0] + 1, 43 + MAX_OFFSET[1] + 1)
#: Box that holds the shirt (an ellipse cut by the frame's bottom edge) for every allowed offset: the two bottom rows
#: of latent cells.
SHIRT_REGION = (18 - MAX_OFFSET[0], 100 - MAX_OFFSET[1], 110 + MAX_OFFSET[0] + 1, HEIGHT)
#: Box that holds both eyes and the mouth for every allowed offset and opening: the details a codec must keep.
FACE_REGION = (_EYE_XS[0] - _EYE_HALF_WIDTH - MAX_OFFSET[0], _EYE_TOP - MAX_OFFSET[1],
               _EYE_XS[1] + _EYE_HALF_WIDTH + 1 + MAX_OFFSET[0], MOUTH_REGION[3])


def mouth_height(opening: float) -> int:
    """Drawn mouth height in pixels for an opening in [0, 1] (2 closed, :data:`MOUTH_MAX_HEIGHT` open)."""
    return _MOUTH_CLOSED + int(round(float(np.clip(opening, 0.0, 1.0)) * (MOUTH_MAX_HEIGHT - _MOUTH_CLOSED)))


def draw_frame(attributes: ToyAttributes, opening: float, eyes_open: bool) -> np.ndarray:
    """One frame of the person.

    Args:
        attributes: colours, gender (hair style) and ``offset``.
        opening: mouth opening in [0, 1] (clipped).
        eyes_open: False draws closed eyelids (a blink).

    Returns:
        ``uint8 [HEIGHT, WIDTH, 3]`` RGB.
    """
    dx, dy = attributes.offset
    image = Image.new("RGB", (WIDTH, HEIGHT), COLOURS[attributes.wall])
    draw = ImageDraw.Draw(image)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return x0 + dx, y0 + dy, x1 + dx, y1 + dy

    hair, skin = COLOURS[attributes.hair], SKIN_TONES[attributes.skin]
    if attributes.gender == "woman":
        draw.rounded_rectangle(box(34, 22, 94, 100), radius=18, fill=hair)
    draw.ellipse(box(18, 100, 110, 170), fill=COLOURS[attributes.shirt])
    draw.rectangle(box(56, 84, 72, 104), fill=skin)
    draw.ellipse(box(40, 30, 88, 94), fill=skin)
    draw.pieslice(box(38, 20, 90, 66), 180, 360, fill=hair)
    for eye_x in _EYE_XS:
        if eyes_open:
            white = box(eye_x - _EYE_HALF_WIDTH, _EYE_TOP, eye_x + _EYE_HALF_WIDTH, _EYE_TOP + 8)
            draw.ellipse(white, fill=EYE_WHITE_RGB)
            draw.ellipse(box(eye_x - 2, 56, eye_x + 2, 60), fill=PUPIL_RGB)
        else:
            draw.rectangle(box(eye_x - 5, 57, eye_x + 5, 58), fill=EYELID_RGB)
    height = mouth_height(opening)
    top = _MOUTH_Y - height // 2
    half = MOUTH_WIDTH // 2
    if height <= _MOUTH_CLOSED:
        draw.rectangle(box(_CENTRE_X - half, top, _CENTRE_X + half - 1, top + height - 1), fill=MOUTH_RGB)
    else:
        draw.ellipse(box(_CENTRE_X - half, top, _CENTRE_X + half - 1, top + height - 1), fill=MOUTH_RGB)
    return np.asarray(image, dtype=np.uint8)
