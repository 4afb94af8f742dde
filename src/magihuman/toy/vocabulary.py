"""The toy captions' vocabulary for the toy text encoder's tokenizer: the words to keep whole and the attribute
phrases that become one token each (the toy recipe's ``text_encoder`` stage, docs/toy_world.md)."""

from __future__ import annotations

from magihuman.toy.attributes import GENDERS, VOICES, WORDS
from magihuman.toy.palette import HAIR_COLOURS, HELD_OUT_SHIRT_COLOURS, SHIRT_COLOURS, SKIN_TONES, WALL_COLOURS

__all__ = ["toy_vocabulary", "toy_bare_words"]


def toy_vocabulary() -> list[str]:
    """Every word the toy captions use that the tokenizer should keep whole (colours, numbers, parts), then the
    attribute phrases ("pink hair", "high voice") that become one token each.

    The transformer sees text without positions (architecture.md §3.3: the text is not rotated) and relies on the
    encoder for context; a small random encoder gives almost none (docs/benchmarks.md, "text encoder check"),
    so "pink hair, black shirt" and "black hair, pink shirt" would be the same bag of words. One token per
    attribute phrase makes the bag say which part has which colour.
    """
    words = [*HAIR_COLOURS, *SHIRT_COLOURS, *HELD_OUT_SHIRT_COLOURS, *WALL_COLOURS, *WORDS, *VOICES, *GENDERS,
             *SKIN_TONES, "hair", "shirt", "wall", "skin", "Dialogue", "Background", "Sound", "pitched", "voice",
             "cartoon", "plain", "front", "wearing", "says", "English", "prominent"]
    phrases = [*(f"{c} hair" for c in HAIR_COLOURS), *(f"{c} shirt" for c in (*SHIRT_COLOURS, *HELD_OUT_SHIRT_COLOURS)),
               *(f"{c} wall" for c in WALL_COLOURS), *(f"{t} skin" for t in SKIN_TONES),
               *(f"{v} voice" for v in VOICES)]
    return list(dict.fromkeys(words + phrases))


def toy_bare_words() -> list[str]:
    """Caption words that also appear without a space before them (the quoted words, a line's first word), so
    the tokenizer keeps them whole there too (``bare_words`` of
    :func:`~magihuman.demo.random_codecs.save_random_text_encoder`)."""
    return [*WORDS, *(g.capitalize() for g in GENDERS), "In", "Dialogue", "Background", "English", "No"]
