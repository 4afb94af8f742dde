"""Captions of toy clips in the model's prompt structure, and the parser that reads them back.

A caption has three paragraphs, as the prompts the model was trained on (architecture.md §13.4): a
clinical description of the person, the setting, the delivery of the quoted line and a static camera;
``Dialogue:`` with one line ``<speaker, language>: "words"``; ``Background Sound:`` with the fixed
no-sound text. The wording varies with the seed among a few equivalent sentences so that a model learns
the attributes rather than one template. :func:`parse_caption` finds the attributes again in any caption
of that shape (the prompt-adherence metric compares a clip against them).
"""

from __future__ import annotations

import re

import numpy as np

from magihuman.toy.attributes import ToyAttributes
from magihuman.toy.palette import COLOURS, SKIN_TONES

__all__ = ["NO_BACKGROUND_SOUND", "make_caption", "parse_caption"]

NO_BACKGROUND_SOUND = "<No prominent background sound>"

_OPENINGS = (
    "A flat cartoon {gender} with {hair} hair and {skin} skin, wearing {a_shirt} shirt, faces the camera in "
    "front of {a_wall} wall.",
    "In front of {a_wall} wall, a flat cartoon {gender} with {hair} hair and {skin} skin, wearing {a_shirt} "
    "shirt, looks straight at the camera.",
)
_MOODS = (
    "The overall emotional state is calm and attentive.",
    "The expression is neutral and composed, with a steady gaze.",
    "The mood is relaxed and matter-of-fact.",
)
_DELIVERY = (
    "{pronoun} keeps the head and shoulders still, blinks now and then, and says, \"{line}\" in a {voice} "
    "voice, {pacing}.",
    "Holding the head level and the torso motionless, {pronoun_l} says, \"{line}\" in a {voice} voice, "
    "{pacing}, and the eyes blink occasionally.",
)
_PACING = {
    False: "one short syllable; the mouth opens for the word and closes after it",
    True: "one word at a time with short pauses; the mouth opens on each word and closes in every pause",
}
_CAMERA = (
    "The camera holds a static frontal medium close-up with flat, even lighting and no shadows; the wall "
    "stays uniform and motionless.",
    "A static, frontal medium close-up frames the head and shoulders under flat, even light; nothing in the "
    "background moves.",
)


def make_caption(attributes: ToyAttributes, rng: np.random.Generator) -> str:
    """The caption of a clip with ``attributes`` (wording chosen by ``rng``).

    Returns:
        Three paragraphs separated by blank lines: description, ``Dialogue:``, ``Background Sound:``.
    """
    pronoun = "She" if attributes.gender == "woman" else "He"
    fields = dict(gender=attributes.gender, hair=attributes.hair, skin=attributes.skin,
                  a_shirt=_with_article(attributes.shirt), a_wall=_with_article(f"plain {attributes.wall}"),
                  voice=attributes.voice, line=attributes.dialogue, pronoun=pronoun, pronoun_l=pronoun.lower(),
                  pacing=_PACING[len(attributes.words) > 1])
    parts = [str(rng.choice(options)).format(**fields) for options in (_OPENINGS, _MOODS, _DELIVERY, _CAMERA)]
    speaker = f"{attributes.gender.capitalize()} in {attributes.shirt} shirt, English"
    return (" ".join(parts) + f"\n\nDialogue:\n<{speaker}>: \"{attributes.dialogue}\"\n\n"
            f"Background Sound:\n{NO_BACKGROUND_SOUND}")


def _with_article(phrase: str) -> str:
    """``"an orange"``, ``"a blue"``."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


_COLOUR = "|".join(sorted((re.escape(c) for c in COLOURS), key=len, reverse=True))
_PATTERNS = {
    "hair": re.compile(rf"\b({_COLOUR}) hair\b"),
    "shirt": re.compile(rf"\b({_COLOUR}) shirt\b"),
    "wall": re.compile(rf"\b({_COLOUR}) wall\b"),
    "skin": re.compile(rf"\b({'|'.join(SKIN_TONES)}) skin\b"),
    "voice": re.compile(r"\b(low|high)(?:-pitched)? voice\b"),
    "gender": re.compile(r"\b(woman|man)\b"),
}
_DIALOGUE_LINE = re.compile(r'^<[^>]*>:\s*"(.*)"\s*$', re.MULTILINE)


def parse_caption(caption: str) -> dict[str, str | list[str] | None]:
    """The attributes a caption states (None where it states none).

    Returns:
        ``{"hair", "shirt", "wall", "skin", "voice", "gender": str | None, "words": list[str] | None}``;
        colours are the first match in the text, the words those of the first ``Dialogue:`` line.
    """
    found: dict[str, str | list[str] | None] = {}
    for name, pattern in _PATTERNS.items():
        match = pattern.search(caption.lower())
        found[name] = match.group(1) if match else None
    _, _, dialogue = caption.partition("Dialogue:")
    line = _DIALOGUE_LINE.search(dialogue)
    found["words"] = line.group(1).split() if line else None
    return found
