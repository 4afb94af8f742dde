"""``magihuman eval`` behind the command line: generate and score a prompt set, score MP4s, compare runs.

A run folder holds ``report.json`` (settings, per-clip scores, aggregates), ``report.html`` and, for
``run``, ``clips/<id>.mp4``. Files are written atomically; an existing run folder is never reused
unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magihuman.eval.asr import Transcriber
from magihuman.eval.clips import read_clip
from magihuman.eval.performance import MemorySampler
from magihuman.eval.prompt_set import PromptEntry
from magihuman.eval.scoring import aggregate, score_clip

__all__ = ["REPORT_JSON", "REPORT_HTML", "prepare_run_folder", "run_prompt_set", "score_folder", "load_report",
           "write_report", "compare_reports"]

REPORT_JSON, REPORT_HTML = "report.json", "report.html"
_DEFAULT_SIZE = {"seconds": None, "width": None, "height": None}


def prepare_run_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Create ``out`` (or accept an empty one).

    Raises:
        FileExistsError: ``out`` already holds a report and ``overwrite`` is False.
        NotADirectoryError: ``out`` is a file.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; give a folder")
    if (out / REPORT_JSON).exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} already holds a report; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_prompt_set(entries: list[PromptEntry], pipe: Any, out: Path, *, transcriber: Transcriber | None = None,
                   face=None, defaults: dict | None = None, overwrite: bool = False,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Generate every prompt with ``pipe`` into ``out/clips/<id>.mp4`` and score it.

    Args:
        entries: the prompt set.
        pipe: a loaded :class:`~magihuman.pipeline.magihuman_pipeline.MagiHumanPipeline` (or any callable
            returning a ``GenerationOutput``).
        defaults: ``seconds``/``width``/``height``/``seed`` for prompts that do not set them (None: the
            pipeline's defaults).

    Returns:
        The per-clip scores (each with ``"video"``, the MP4's path relative to ``out``).
    """
    (out / "clips").mkdir(exist_ok=True)
    scores = []
    for number, entry in enumerate(entries, start=1):
        settings = {k: v for k, v in (defaults or {}).items() if v is not None}
        settings.update({k: getattr(entry, k) for k in ("seconds", "width", "height", "seed")
                         if getattr(entry, k) is not None})
        with MemorySampler() as sampler:
            output = pipe(entry.prompt, image=entry.image, audio=entry.audio, **settings)
        performance = sampler.performance(output.timings).__dict__
        video = out / "clips" / f"{entry.id}.mp4"
        output.save(video, overwrite=overwrite)
        score = score_clip(read_clip(video), entry, transcriber=transcriber, face=face, performance=performance)
        score["video"] = f"clips/{entry.id}.mp4"
        scores.append(score)
        log(f"[{number}/{len(entries)}] {entry.id}: {performance['wall_s']:.1f} s")
    return scores


def score_folder(entries: list[PromptEntry], clips: Path, *, transcriber: Transcriber | None = None,
                 face=None, log: Callable[[str], None] = print) -> list[dict]:
    """Score existing ``clips/<id>.mp4`` files against their prompts.

    Raises:
        FileNotFoundError: a prompt's clip is missing (the message lists up to five missing ids).
    """
    missing = [e.id for e in entries if not (clips / f"{e.id}.mp4").is_file()]
    if missing:
        raise FileNotFoundError(f"no clip for {len(missing)} prompt(s) in {str(clips)!r}: "
                                f"{', '.join(m + '.mp4' for m in missing[:5])}; clips are named <id>.mp4")
    scores = []
    for number, entry in enumerate(entries, start=1):
        video = clips / f"{entry.id}.mp4"
        score = score_clip(read_clip(video), entry, transcriber=transcriber, face=face)
        score["video"] = str(video.absolute())
        scores.append(score)
        log(f"[{number}/{len(entries)}] {entry.id}")
    return scores


def write_report(out: Path, scores: list[dict], settings: dict) -> dict:
    """Write ``report.json`` and ``report.html`` into ``out`` (atomically each); return the report."""
    from magihuman.eval.report import run_html

    report = _clean({"kind": "run", "settings": settings, "aggregate": aggregate(scores), "clips": scores})
    _atomic_write(out / REPORT_JSON, json.dumps(report, indent=1, allow_nan=False) + "\n")
    _atomic_write(out / REPORT_HTML, run_html(report))
    return report


def load_report(run: str | os.PathLike) -> dict:
    """The ``report.json`` of a run folder (or the file itself).

    Raises:
        FileNotFoundError: no report there.
        ValueError: the file is not a run report.
    """
    path = Path(run).expanduser()
    path = path / REPORT_JSON if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no {REPORT_JSON} in {str(path.parent)!r}; give a folder made by `magihuman eval`")
    report = json.loads(path.read_text())
    if report.get("kind") != "run":
        raise ValueError(f"{str(path)!r} is not the report of one run (kind {report.get('kind')!r})")
    report["source"] = str(path.parent)
    return report


def compare_reports(a: dict, b: dict, out: Path) -> dict:
    """Write the side-by-side comparison of two run reports into ``out``; return it."""
    from magihuman.eval.report import comparison_html

    rows = {}
    for key in sorted(set(a["aggregate"]) | set(b["aggregate"])):
        va, vb = a["aggregate"].get(key), b["aggregate"].get(key)
        if isinstance(va, (int, float)) or isinstance(vb, (int, float)):
            delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
            rows[key] = {"a": va, "b": vb, "b_minus_a": delta}
    comparison = {"kind": "comparison", "a": a["source"], "b": b["source"], "metrics": rows,
                  "runs": {"a": a, "b": b}}
    comparison = _clean(comparison)
    _atomic_write(out / REPORT_JSON, json.dumps(comparison, indent=1, allow_nan=False) + "\n")
    _atomic_write(out / REPORT_HTML, comparison_html(comparison))
    return comparison


def _clean(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, paths strings, numpy scalars Python numbers, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a hidden temp file beside ``path`` (mode 0666 less the umask), then rename it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
