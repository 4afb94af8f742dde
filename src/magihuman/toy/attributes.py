"""What one toy clip shows and says: :class:`ToyAttributes`, drawn at random by :func:`sample_attributes`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from magihuman.toy.palette import COLOURS, HAIR_COLOURS, SHIRT_COLOURS, SKIN_TONES, WALL_COLOURS, colour_distance

__all__ = ["WORDS", "VOICES", "GENDERS", "MAX_WORDS", "ToyAttributes", "sample_attributes"]

#: One-syllable words the person can say (one syllable each, so a word is one voiced segment).
WORDS = ("one", "two", "three", "four", "five", "six", "eight", "nine", "ten", "yes", "no", "hi", "stop", "go")
#: Voice names: the fundamental is low (110 Hz) or high (230 Hz): `magihuman.toy.voice.VOICE_F0`.
VOICES = ("low", "high")
GENDERS = ("woman", "man")
MAX_WORDS = 6
#: Smallest sRGB distance between any two of hair, shirt, wall and skin in one clip (so parts stay distinct).
MIN_PART_CONTRAST = 60.0


@dataclass(frozen=True)
class ToyAttributes:
    """The visible and audible facts of a clip; a caption states all of them except the offset.

    Attributes:
        gender: ``"woman"`` (long hair) or ``"man"`` (short hair).
        hair, shirt, wall: colour names from :mod:`magihuman.toy.palette`.
        skin: skin tone name (``light``, ``tan``, ``dark``).
        voice: ``"low"`` or ``"high"`` fundamental.
        words: the spoken words, 1 to :data:`MAX_WORDS`, one syllable each.
        offset: ``(dx, dy)`` pixels the person is shifted from the centre (non-zero only in first-frame
            clips, where the image, not the caption, carries it).
    """

    gender: str
    hair: str
    shirt: str
    wall: str
    skin: str
    voice: str
    words: tuple[str, ...]
    offset: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        checks = (("gender", self.gender, GENDERS), ("voice", self.voice, VOICES), ("skin", self.skin, SKIN_TONES))
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        for part in ("hair", "shirt", "wall"):
            if getattr(self, part) not in COLOURS:
                raise ValueError(f"{part} colour {getattr(self, part)!r} is not in the palette ({', '.join(COLOURS)})")
        if not 1 <= len(self.words) <= MAX_WORDS or any(w not in WORDS for w in self.words):
            raise ValueError(f"words must be 1-{MAX_WORDS} of {', '.join(WORDS)}, got {self.words!r}")

    @property
    def dialogue(self) -> str:
        """The spoken line: the words separated by single spaces."""
        return " ".join(self.words)

    def to_dict(self) -> dict:
        """JSON-ready dict (lists instead of tuples)."""
        data = asdict(self)
        data["words"], data["offset"] = list(self.words), list(self.offset)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ToyAttributes:
        """Inverse of :meth:`to_dict`. Raises ``ValueError``/``TypeError`` for a bad record."""
        fields = dict(data)
        fields["words"] = tuple(fields["words"])
        fields["offset"] = tuple(fields.get("offset", (0, 0)))
        return cls(**fields)


def sample_attributes(rng: np.random.Generator, *, max_offset: tuple[int, int] = (0, 0),
                      shirt_colours: tuple[str, ...] = SHIRT_COLOURS) -> ToyAttributes:
    """Draw one clip's attributes.

    Colours are redrawn until hair, shirt, wall and skin differ pairwise by at least
    :data:`MIN_PART_CONTRAST` (sRGB distance), so every part stays visible.

    Args:
        rng: the clip's generator (its state advances).
        max_offset: largest ``(|dx|, |dy|)`` shift of the person in pixels (first-frame clips).
        shirt_colours: the shirt colours to draw from (e.g. only a held-out colour for a LoRA's data).
    """
    gender = str(rng.choice(GENDERS))
    voice = str(rng.choice(VOICES))
    skin = str(rng.choice(list(SKIN_TONES)))
    while True:
        hair, shirt, wall = (str(rng.choice(names)) for names in (HAIR_COLOURS, shirt_colours, WALL_COLOURS))
        rgbs = [COLOURS[hair], COLOURS[shirt], COLOURS[wall], SKIN_TONES[skin]]
        if all(colour_distance(a, b) >= MIN_PART_CONTRAST for i, a in enumerate(rgbs) for b in rgbs[i + 1:]):
            break
    count = int(rng.integers(1, MAX_WORDS + 1))
    words = tuple(str(w) for w in rng.choice(WORDS, size=count))
    dx = int(rng.integers(-max_offset[0], max_offset[0] + 1))
    dy = int(rng.integers(-max_offset[1], max_offset[1] + 1))
    return ToyAttributes(gender, hair, shirt, wall, skin, voice, words, (dx, dy))
