"""Prompt sets for ``magihuman eval``: one JSON object per line.

Fields: ``prompt`` (required); ``id`` (default: the line number, ``"001"``...); ``image`` and ``audio``
(paths relative to the JSONL file's folder); ``dialogue`` (the spoken lines, a string or a list; default:
the lines of the prompt's ``Dialogue:`` paragraph); ``language`` (a name or code; default: the language
named in the first dialogue tag, ``<Speaker, Chinese>``); ``seed``, ``seconds``, ``width``, ``height``
(generation settings); ``toy`` (the toy attributes: marks a toy prompt, scored by the toy's own analyses);
``reference_video`` (the generator's own clip, toy sets only).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from magihuman.pipeline.errors import InputError

__all__ = ["REAL_PROMPTS", "PromptEntry", "dialogue_lines", "read_prompt_set"]

#: Our prompt set for the real models: 20 long prompts in the model's structure, in ten languages.
REAL_PROMPTS = Path(__file__).resolve().parent / "prompts" / "real.jsonl"

_DIALOGUE_LINE = re.compile(r'^<([^>]*)>:\s*"(.*)"\s*$', re.MULTILINE)
_KNOWN = {"id", "prompt", "image", "audio", "dialogue", "language", "seed", "seconds", "width", "height", "toy",
          "reference_video"}


@dataclass(frozen=True)
class PromptEntry:
    """One prompt of a set (module docstring for the fields); paths are absolute."""

    id: str
    prompt: str
    image: Path | None = None
    audio: Path | None = None
    dialogue: tuple[str, ...] = ()
    language: str | None = None
    seed: int | None = None
    seconds: float | None = None
    width: int | None = None
    height: int | None = None
    toy: dict | None = None
    reference_video: Path | None = None
    extra: dict = field(default_factory=dict)


def dialogue_lines(prompt: str) -> tuple[list[str], str | None]:
    """The quoted lines of the ``Dialogue:`` paragraph and the language of the first speaker tag.

    ``<Woman in red, Chinese>: "你 好"`` gives ``(["你 好"], "Chinese")``; a prompt without the paragraph
    gives ``([], None)``.
    """
    _, found, rest = prompt.partition("Dialogue:")
    if not found:
        return [], None
    paragraph = rest.split("Background Sound:")[0]
    matches = _DIALOGUE_LINE.findall(paragraph)
    language = matches[0][0].rsplit(",", 1)[1].strip() if matches and "," in matches[0][0] else None
    return [line.strip('"') for _, line in matches], language


def read_prompt_set(path: str | os.PathLike) -> list[PromptEntry]:
    """Read and check a prompt set.

    Raises:
        InputError: the file is missing or empty, a line is not a JSON object, lacks ``prompt``, has a
            field of the wrong type, a duplicate ``id``, or names an image/audio file that does not exist
            (the message gives the line number).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"prompt set not found: {str(path)!r}", field="prompts")
    entries, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where} is not valid JSON ({exc.msg})", field="prompts") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise InputError(f"{where}: each line must be an object with a non-empty \"prompt\" string",
                             field="prompts")
        entry = _entry(row, len(entries) + 1, path.parent, where)
        if entry.id in seen:
            raise InputError(f"{where}: duplicate id {entry.id!r}; ids name the clip files and must differ",
                             field="prompts")
        seen.add(entry.id)
        entries.append(entry)
    if not entries:
        raise InputError(f"prompt set {str(path)!r} holds no prompts", field="prompts")
    return entries


def _entry(row: dict, index: int, folder: Path, where: str) -> PromptEntry:
    parsed_lines, parsed_language = dialogue_lines(row["prompt"])
    dialogue = row.get("dialogue", parsed_lines)
    if isinstance(dialogue, str):
        dialogue = [dialogue]
    if not isinstance(dialogue, list) or not all(isinstance(d, str) for d in dialogue):
        raise InputError(f"{where}: \"dialogue\" must be a string or a list of strings", field="prompts")
    ident = str(row.get("id", f"{index:03d}"))
    if not re.fullmatch(r"[A-Za-z0-9._-]+", ident):
        raise InputError(f"{where}: id {ident!r} may hold only letters, digits, '.', '_' and '-'", field="prompts")
    files = {}
    for key in ("image", "audio", "reference_video"):
        value = row.get(key)
        if value in (None, ""):
            files[key] = None
            continue
        file = (folder / Path(value).expanduser()).absolute()
        if not file.is_file():
            raise InputError(f"{where}: {key} file not found: {str(file)!r}", field="prompts")
        files[key] = file
    numbers = {}
    for key, kind in (("seed", int), ("seconds", float), ("width", int), ("height", int)):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or (kind is int and int(value) != value) or value < 0):
            raise InputError(f"{where}: \"{key}\" must be a non-negative {kind.__name__}, got {value!r}",
                             field="prompts")
        numbers[key] = None if value is None else kind(value)
    toy = row.get("toy")
    if toy is not None and not isinstance(toy, dict):
        raise InputError(f"{where}: \"toy\" must be an object of toy attributes", field="prompts")
    return PromptEntry(ident, row["prompt"], files["image"], files["audio"], tuple(dialogue),
                       row.get("language") or parsed_language, numbers["seed"], numbers["seconds"],
                       numbers["width"], numbers["height"], toy, files["reference_video"],
                       {k: v for k, v in row.items() if k not in _KNOWN})
