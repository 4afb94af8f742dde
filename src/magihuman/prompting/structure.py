"""The three-part prompt the model was tuned on: checks, and the repairs that need no language model.

An enhanced prompt is three paragraphs (architecture.md §13.4; the original repository's README, "Prompt
Guidance", and its ``prompts/enhanced_prompt_design.md``; docs/prompting.md):

1. the **main body**: one English paragraph of 150-200 words; speech is quoted inline where it is spoken;
2. ``Dialogue:`` then one line per utterance, ``<speaker description, language>: "words"``;
3. ``Background Sound:`` then one line, ``<the most prominent background sound>``, or
   :data:`NO_BACKGROUND_SOUND`.

CJK text (Chinese, Japanese, Korean) is written with one space between adjacent characters, everywhere
("你 好"; punctuation is not spaced: "子，还"), as the original's examples show.

:func:`check_structure` lists what is wrong; :func:`repair` fixes what is mechanical (formatting, a missing
``Background Sound:`` part, CJK spacing, quotes) and says what is left. Words of the main body are counted
without the quoted speech, whose length is the user's (:func:`count_body_words`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DIALOGUE_HEADER", "BACKGROUND_HEADER", "NO_BACKGROUND_SOUND", "BODY_WORDS", "BODY_WORDS_ACCEPTED",
    "Problem", "Repaired", "DialogueLine", "check_structure", "repair", "apply_cjk_spacing", "count_body_words",
    "parse_dialogue_line",
]

DIALOGUE_HEADER = "Dialogue:"
BACKGROUND_HEADER = "Background Sound:"
#: The fixed text for "no background sound" (the original's README and design document; its shipped
#: ``example/assets/prompt.txt`` ends with ``<No prominent background sound effects>``, also accepted).
NO_BACKGROUND_SOUND = "<No prominent background sound>"
#: Main-body length the model was tuned on, in words without the quoted speech (original README).
BODY_WORDS = (150, 200)
#: Outside this range an answer is refused (too short to help, or rambling); inside it but outside
#: :data:`BODY_WORDS` it is kept with a note. Our choice.
BODY_WORDS_ACCEPTED = (100, 300)

Kind = Literal["repairable", "unrepairable", "advisory"]

# CJK letters: Han (with extensions and compatibility forms), the iteration marks, kana, Hangul.
_CJK = (r"\u3005-\u3007\u3040-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
        r"\u1100-\u11ff\u3130-\u318f\uac00-\ud7af\U00020000-\U0003134f")
_CJK_PAIR = re.compile(rf"(?<=[{_CJK}])[ \t]*(?=[{_CJK}])")
_CJK_BAD = re.compile(rf"[{_CJK}](?:[{_CJK}]|[ \t]{{2,}}[{_CJK}]|\t[{_CJK}])")
# A header line: the part's name (markdown decoration allowed), then a colon and maybe the first line, or nothing.
_HEADER = re.compile(r"^[\s*#_]*(dialogues?|background\s+sounds?)[\s*_]*(?::[\s*_]*(.*)|$)", re.IGNORECASE)
_QUOTED = re.compile(r'"[^"]*"')
_LINE = re.compile(r'^<(?P<who>[^<>]+),\s*(?P<lang>[^,<>]+?)\s*>\s*:\s*(?P<rest>.*)$')
_BARE_LINE = re.compile(r'^(?P<who>[^<>:"]+),\s*(?P<lang>[^,<>:"]+?)\s*:\s*(?P<rest>".*)$')
_FENCE = re.compile(r"^```[\w-]*\s*$")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LABEL = re.compile(r"^[\s*#]*(enhanced\s+prompt(\s+output)?|prompt)\s*[*]*:?[\s*]*$", re.IGNORECASE)
_CURLY = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"'})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a prompt's structure.

    Attributes:
        code: a short machine name (``"no_dialogue"``, ``"cjk_spacing"``, ``"body_length"``, ...).
        message: what is wrong, for a person.
        kind: ``"repairable"`` (:func:`repair` fixes it), ``"unrepairable"`` (only a new answer helps) or
            ``"advisory"`` (kept, with a note).
    """

    code: str
    message: str
    kind: Kind


@dataclass(frozen=True)
class Repaired:
    """What :func:`repair` made of a text.

    Attributes:
        text: the repaired prompt (the canonical three paragraphs when the parts were found).
        fixes: the repairs made, for a person.
        remaining: the problems of ``text``: unrepairable ones, and advisory notes.
    """

    text: str
    fixes: tuple[str, ...] = ()
    remaining: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing unrepairable is left (advisory notes may be)."""
        return not any(p.kind == "unrepairable" for p in self.remaining)


@dataclass(frozen=True)
class DialogueLine:
    """``<speaker, language>: "words"``: one utterance of the ``Dialogue:`` part."""

    speaker: str
    language: str
    words: str

    def __str__(self) -> str:
        return f'<{self.speaker}, {self.language}>: "{self.words}"'


@dataclass
class _Parts:
    """A text split into its parts, with the problems found on the way."""

    body: list[str] = field(default_factory=list)
    dialogue: list[str] | None = None
    background: list[str] | None = None
    problems: list[Problem] = field(default_factory=list)

    def add(self, code: str, message: str, kind: Kind) -> None:
        self.problems.append(Problem(code, message, kind))


# ------------------------------------------------------------------------------------------ helpers
def apply_cjk_spacing(text: str) -> str:
    """One space between every two adjacent CJK characters; other text and punctuation unchanged.

    ``"有的人在一起，还带着"`` becomes ``"有 的 人 在 一 起，还 带 着"`` (full-width punctuation is not a
    character here); runs of spaces or tabs between two CJK characters become one space; line breaks stay.
    Source: the CJK spacing rule of the original's ``prompts/enhanced_prompt_design.md`` and its examples.
    """
    return _CJK_PAIR.sub(" ", text)


def count_body_words(body: str) -> int:
    """Whitespace-separated words of a main body without its quoted speech (``"..."``, straight quotes)."""
    return len(_QUOTED.sub(" ", body.translate(_CURLY)).split())


def parse_dialogue_line(line: str) -> DialogueLine | None:
    """The parts of a ``<speaker, language>: "words"`` line (curly quotes accepted), or None."""
    match = _LINE.match(line.strip().translate(_CURLY))
    if match is None:
        return None
    rest = match["rest"].strip()
    if len(rest) < 2 or not (rest.startswith('"') and rest.endswith('"')):
        return None
    return DialogueLine(match["who"].strip(), match["lang"].strip(), rest[1:-1].strip())


def _unwrap_csv(text: str) -> str | None:
    """The inner text of a CSV-quoted prompt (``"..."`` with ``""`` inside, as the shipped example), or None."""
    if len(text) > 2 and text[0] == text[-1] == '"' and '""' in text:
        inner = text[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return None


# ------------------------------------------------------------------------------------------ parsing
def _clean(text: str, parts: _Parts) -> list[str]:
    """The answer's lines without reasoning blocks, code fences, a leading label or CSV quoting."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _THINK.search(text):
        text = _THINK.sub("", text)
        parts.add("reasoning", "the answer holds a <think> block", "repairable")
    text = text.strip()
    unwrapped = _unwrap_csv(text)
    if unwrapped is not None:
        text = unwrapped.strip()
        parts.add("csv_quoting", 'the prompt is wrapped in CSV quoting (outer quotes, doubled "")', "repairable")
    lines = [line.rstrip() for line in text.split("\n")]
    if any(_FENCE.match(line.strip()) for line in lines):
        lines = [line for line in lines if not _FENCE.match(line.strip())]
        parts.add("fence", "the answer is wrapped in a code fence", "repairable")
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and _LABEL.match(lines[0]):
        lines.pop(0)
        parts.add("label", "the answer starts with a label line", "repairable")
    return lines


def _split(text: str) -> _Parts:
    """Main body, dialogue and background lines of ``text``, and the problems of their order and headers."""
    parts = _Parts()
    order: list[str] = []
    current = parts.body
    for line in _clean(text, parts):
        match = _HEADER.match(line)
        if match is None:
            current.append(line)
            continue
        name = "dialogue" if match[1].lower().startswith("dialogue") else "background"
        if getattr(parts, name) is not None:
            parts.add("duplicate_part", f"the {name} part appears twice", "unrepairable")
        canonical = DIALOGUE_HEADER if name == "dialogue" else BACKGROUND_HEADER
        if line.strip() != canonical:
            parts.add("header", f"the header {line.strip()[:40]!r} is not written {canonical!r}", "repairable")
        current = []
        setattr(parts, name, current)
        order.append(name)
        first = (match[2] or "").strip(" \t*_")
        if first:
            current.append(first)
    if order[:2] == ["background", "dialogue"]:
        parts.add("order", "the Background Sound part comes before the Dialogue part", "repairable")
    return parts


def _check_body(parts: _Parts) -> str:
    paragraphs = [p for p in "\n".join(parts.body).split("\n\n") if p.strip()]
    body = " ".join(" ".join(p.split()) for p in paragraphs)
    if not body:
        parts.add("no_body", "there is no main body before the Dialogue part", "unrepairable")
        return body
    if len(paragraphs) > 1:
        parts.add("body_paragraphs", f"the main body has {len(paragraphs)} paragraphs, not one", "repairable")
    words = count_body_words(body)
    low, high = BODY_WORDS_ACCEPTED
    if not low <= words <= high:
        parts.add("body_words", f"the main body has {words} words (without the quoted speech); at least {low} and "
                                f"at most {high} are accepted, {BODY_WORDS[0]}-{BODY_WORDS[1]} wanted", "unrepairable")
    elif not BODY_WORDS[0] <= words <= BODY_WORDS[1]:
        parts.add("body_length", f"the main body has {words} words (without the quoted speech); the model was tuned "
                                 f"on {BODY_WORDS[0]}-{BODY_WORDS[1]}", "advisory")
    return body


def _check_dialogue(parts: _Parts) -> list[DialogueLine]:
    if parts.dialogue is None:
        parts.add("no_dialogue", f"there is no {DIALOGUE_HEADER!r} part", "unrepairable")
        return []
    lines: list[DialogueLine] = []
    for raw in (line.strip() for line in parts.dialogue if line.strip()):
        text = raw.translate(_CURLY)
        parsed = parse_dialogue_line(text)
        if parsed is None:
            bare = _BARE_LINE.match(text) or _LINE.match(text)
            rest = bare["rest"].strip().strip('"').strip() if bare else ""
            if not rest:
                parts.add("dialogue_line", f"dialogue line {raw[:60]!r} is not <speaker, language>: \"words\"",
                          "unrepairable")
                continue
            parsed = DialogueLine(bare["who"].strip(), bare["lang"].strip(), rest)
        if str(parsed) != raw:
            parts.add("dialogue_format", f"dialogue line {raw[:60]!r} is not written exactly as "
                                         "<speaker, language>: \"words\"", "repairable")
        lines.append(parsed)
    if not lines and not any(p.code == "dialogue_line" for p in parts.problems):
        parts.add("empty_dialogue", f"the {DIALOGUE_HEADER!r} part has no lines", "unrepairable")
    return lines


def _check_background(parts: _Parts) -> str:
    lines = [line.strip() for line in parts.background or () if line.strip()]
    if parts.background is None:
        parts.add("no_background", f"there is no {BACKGROUND_HEADER!r} part (added as {NO_BACKGROUND_SOUND})",
                  "repairable")
        return NO_BACKGROUND_SOUND
    if not lines:
        parts.add("empty_background", f"the {BACKGROUND_HEADER!r} part is empty", "repairable")
        return NO_BACKGROUND_SOUND
    if len(lines) > 1:
        parts.add("background_lines", f"the {BACKGROUND_HEADER!r} part has {len(lines)} lines; only the first is "
                                      "kept (one prominent sound)", "repairable")
    sound = lines[0].strip("<> ").strip()
    if f"<{sound}>" != lines[0]:
        parts.add("background_format", f"the background sound {lines[0][:60]!r} is not written as <sound>",
                  "repairable")
    return f"<{sound}>" if sound else NO_BACKGROUND_SOUND


def _analyse(text: str) -> tuple[str, list[Problem]]:
    """The canonical text of ``text``'s parts and every problem of ``text``."""
    parts = _split(text)
    body = _check_body(parts)
    dialogue = _check_dialogue(parts)
    background = _check_background(parts)
    lines = "\n".join(map(str, dialogue))
    canonical = f"{body}\n\n{DIALOGUE_HEADER}\n{lines}\n\n{BACKGROUND_HEADER}\n{background}"
    spaced = apply_cjk_spacing(canonical)
    if _CJK_BAD.search(text):
        parts.add("cjk_spacing", "CJK characters are not separated by single spaces", "repairable")
    for line in dialogue:
        if apply_cjk_spacing(line.words) not in apply_cjk_spacing(body):
            parts.add("dialogue_not_inline", f'the line "{line.words[:40]}" is not quoted in the main body',
                      "advisory")
    return spaced, parts.problems


# ------------------------------------------------------------------------------------------ public
def check_structure(text: str) -> list[Problem]:
    """Every structural problem of a prompt (an empty list: it has the three parts, well formed).

    Checks, in order: the parts and their headers (``Dialogue:`` then ``Background Sound:``), the main body
    (one paragraph, :data:`BODY_WORDS_ACCEPTED` words, :data:`BODY_WORDS` wanted), each dialogue line
    (``<speaker, language>: "words"``), the background part (one ``<sound>`` line), CJK spacing, and whether
    each dialogue line is also quoted in the main body (the original says speech appears exactly twice).

    Returns:
        :class:`Problem` records; see their ``kind`` for what :func:`repair` can do.
    """
    return _analyse(text)[1]


def repair(text: str) -> Repaired:
    """Fix what needs no language model and report what is left.

    Repairs: reasoning blocks, code fences, a leading label line and CSV quoting removed; headers written
    ``Dialogue:`` / ``Background Sound:``; parts put in order; the main body joined into one paragraph;
    dialogue lines written ``<speaker, language>: "words"``; a missing or empty background part set to
    :data:`NO_BACKGROUND_SOUND`, extra background lines dropped; CJK spacing applied everywhere.

    Returns:
        :class:`Repaired`: the canonical three paragraphs when the parts were found (else ``text``
        unchanged), the repairs made, and the problems left (``ok`` is False when one is unrepairable).
    """
    canonical, problems = _analyse(text)
    if any(p.kind == "unrepairable" for p in problems):
        return Repaired(text, (), tuple(p for p in problems if p.kind != "repairable"))
    fixes = tuple(p.message for p in problems if p.kind == "repairable")
    remaining = tuple(check_structure(canonical))
    return Repaired(canonical, fixes, remaining)
