"""Word and character error rates with one text normaliser (jiwer does the alignment).

Chinese, Japanese and Korean are scored by characters (CER) after removing all spaces, since the model's
prompts put a space between every CJK character (architecture.md §13.4) and speech recognisers do not;
every other language by words (WER).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["CJK_LANGUAGES", "language_code", "uses_characters", "space_cjk", "normalise_text", "ErrorRate",
           "error_rate"]

#: Languages scored by character error rate.
CJK_LANGUAGES = ("zh", "ja", "ko")
_LANGUAGE_NAMES = {
    "english": "en", "chinese": "zh", "mandarin": "zh", "cantonese": "zh", "japanese": "ja", "korean": "ko",
    "german": "de", "french": "fr", "spanish": "es", "italian": "it", "portuguese": "pt", "russian": "ru",
}
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def language_code(language: str | None) -> str | None:
    """``"Chinese"``, ``"zh-CN"``, ``"zh"`` -> ``"zh"``; None stays None; unknown names are lower-cased."""
    if not language:
        return None
    lowered = language.strip().lower()
    return _LANGUAGE_NAMES.get(lowered, lowered.split("-")[0].split("_")[0])


def uses_characters(language: str | None, text: str = "") -> bool:
    """True for CJK languages, or (language unknown) a reference that contains CJK characters."""
    code = language_code(language)
    return code in CJK_LANGUAGES if code else bool(_CJK_CHAR.search(text))


def space_cjk(text: str) -> str:
    """One space between every two adjacent CJK characters (full-width punctuation included), as the model's
    prompts write them (architecture.md §13.4): ``"你好，世界"`` -> ``"你 好 ， 世 界"``. Everything else is
    left as it is.
    """
    out: list[str] = []
    for ch in text:
        if out and _is_wide(ch) and _is_wide(out[-1]):
            out.append(" ")
        out.append(ch)
    return "".join(out)


def _is_wide(ch: str) -> bool:
    return bool(_CJK_CHAR.match(ch)) or (unicodedata.east_asian_width(ch) in "FW" and not ch.isspace())


def normalise_text(text: str, *, characters: bool = False) -> str:
    """NFKC, lower case, punctuation and symbols removed, whitespace collapsed; ``characters``: no spaces.

    Apostrophes inside words are kept (``don't``); ellipses, quotes and dashes go.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    kept = []
    for i, ch in enumerate(text):
        category = unicodedata.category(ch)
        inner_apostrophe = ch == "'" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        kept.append(ch if inner_apostrophe or not category.startswith(("P", "S")) else " ")
    words = "".join(kept).split()
    return "".join(words) if characters else " ".join(words)


@dataclass(frozen=True)
class ErrorRate:
    """An error rate and its counts.

    Attributes:
        unit: ``"word"`` (WER) or ``"character"`` (CER).
        rate: (substitutions + deletions + insertions) / reference units; may exceed 1.
        reference, hypothesis: the normalised texts compared.
    """

    unit: str
    rate: float
    substitutions: int
    deletions: int
    insertions: int
    reference: str
    hypothesis: str


def error_rate(reference: str, hypothesis: str, *, language: str | None = None) -> ErrorRate:
    """WER (or CER for zh/ja/ko) of ``hypothesis`` against ``reference`` after :func:`normalise_text`.

    Raises:
        ValueError: the reference is empty after normalisation (nothing to score against).
    """
    import jiwer

    characters = uses_characters(language, reference)
    ref = normalise_text(reference, characters=characters)
    hyp = normalise_text(hypothesis, characters=characters)
    if not ref:
        raise ValueError(f"the reference {reference!r} is empty after normalisation; give the spoken line")
    if characters:
        ref_units, hyp_units = " ".join(ref), " ".join(hyp)
    else:
        ref_units, hyp_units = ref, hyp
    out = jiwer.process_words(ref_units, hyp_units if hyp_units else "")
    return ErrorRate("character" if characters else "word", float(out.wer), out.substitutions, out.deletions,
                     out.insertions, ref, hyp)
