"""Captions of toy clips in the model's prompt structure, and the parser that reads them back.

A caption has three paragraphs, as the prompts the model was trained on (architecture.md §13.4): one
sentence with the person, the wall and the quoted line with its voice; ``Dialogue:`` with one line
``<speaker, language>: "words"``; ``Background Sound:`` with the fixed no-sound text. The sentence's
word order varies with the seed so that a model learns the attributes rather than one template.
:func:`parse_caption` finds the attributes again in any caption of that shape (the prompt-adherence metric
compares a clip against them).
"""

from __future__ import annotations

import re

import numpy as np

from magihuman.toy.attributes import ToyAttributes
from magihuman.toy.palette import COLOURS, SKIN_TONES

__all__ = ["NO_BACKGROUND_SOUND", "make_caption", "parse_caption"]

NO_BACKGROUND_SOUND = "<No prominent background sound>"

#: One sentence states every attribute. It is kept short on purpose: the transformer finds a caption's colour
#: words by attention among all text tokens, and among the many tokens of the first recipe's mood, delivery and
#: camera sentences the toy model never learned to find them (docs/toy_world.md, "Why the captions are short").
_SENTENCES = (
    "A cartoon {gender} with {hair} hair and {skin} skin, wearing {a_shirt} shirt, in front of {a_wall} wall "
    "says \"{line}\" in a {voice} voice.",
    "In front of {a_wall} wall, a cartoon {gender} with {hair} hair and {skin} skin, wearing {a_shirt} shirt, "
    "says \"{line}\" in a {voice} voice.",
)

#: Sizes of the wording choices that earlier, longer captions drew after the first (mood, delivery, camera); the
#: draws are still made so that a seed gives the same speech and blinks as before the captions were shortened.
_RETIRED_CHOICES = (3, 2, 2)


def make_caption(attributes: ToyAttributes, rng: np.random.Generator) -> str:
    """The caption of a clip with ``attributes`` (wording chosen by ``rng``).

    Returns:
        Three paragraphs separated by blank lines: description, ``Dialogue:``, ``Background Sound:``; with the toy
        tokenizer every word and attribute phrase is one token.
    """
    fields = dict(gender=attributes.gender, hair=attributes.hair, skin=attributes.skin,
                  a_shirt=_with_article(attributes.shirt), a_wall=_with_article(f"plain {attributes.wall}"),
                  voice=attributes.voice, line=attributes.dialogue)
    sentence = str(rng.choice(_SENTENCES)).format(**fields)
    for count in _RETIRED_CHOICES:  # keep the draws after the caption (speech, blinks) those of earlier datasets
        rng.choice(count)
    speaker = f"{attributes.gender.capitalize()} in {attributes.shirt} shirt, English"
    return (sentence + f"\n\nDialogue:\n<{speaker}>: \"{attributes.dialogue}\"\n\n"
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
