"""Every metric of one clip (:func:`score_clip`) and the aggregates of a run (:func:`aggregate`).

A toy prompt (one with ``toy`` attributes) is scored by the toy's own analyses against what its caption
says: colour of each part, voice pitch, spoken word count, and sync with the mouth measured from the
drawing. Any other prompt is scored for intelligibility (WER/CER through the speech recogniser) and sync
with the mouth from the face-landmark model when one is given. First-frame fidelity is scored whenever
the prompt has an image; speed and memory whenever the clip was generated in this run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from magihuman.eval.asr import Transcriber
from magihuman.eval.clips import ClipMedia
from magihuman.eval.fidelity import first_frame_fidelity
from magihuman.eval.prompt_set import PromptEntry
from magihuman.eval.sync import frame_loudness, measure_sync
from magihuman.eval.text import error_rate
from magihuman.eval.toy_speech import analyse_toy_speech
from magihuman.eval.toy_vision import mouth_open_while_speaking, part_colours, toy_mouth_opening
from magihuman.toy.captions import parse_caption

__all__ = ["score_clip", "aggregate"]


def score_clip(media: ClipMedia, entry: PromptEntry, *, transcriber: Transcriber | None = None,
               face=None, performance: dict | None = None) -> dict[str, Any]:
    """All metrics of one clip (JSON-ready dict; a metric that does not apply is None).

    Args:
        media: the decoded clip.
        entry: its prompt.
        transcriber: speech recogniser for non-toy prompts (None: intelligibility not scored).
        face: a :class:`~magihuman.eval.face_mesh.FaceMeshMouth` for non-toy prompts (None: no sync).
        performance: the generation's :class:`~magihuman.eval.performance.RunPerformance` as a dict.

    Returns:
        ``{"id", "toy", "intelligibility", "sync", "first_frame", "performance", "notes"}``.
    """
    notes: list[str] = []
    score: dict[str, Any] = {"id": entry.id, "toy": None, "intelligibility": None, "sync": None,
                             "first_frame": None, "performance": performance, "notes": notes}
    loudness = frame_loudness(media.audio, len(media.frames), fps=media.fps, sample_rate=media.sample_rate) \
        if media.audio.size else None
    if entry.toy is not None:
        score["toy"] = _toy_scores(media, entry)
        mouth, backend = toy_mouth_opening(media.frames), "toy drawing"
    elif face is not None:
        mouth, backend = face.mouth_opening(media.frames), "mediapipe face mesh"
    else:
        mouth, backend = None, None
        notes.append("sync not measured: no mouth measure for real faces (install the eval-face extra)")
    if mouth is not None and loudness is not None:
        result = measure_sync(mouth, loudness, fps=media.fps)
        score["sync"] = {**result.__dict__, "mouth_backend": backend}
        if entry.toy is not None:
            score["toy"]["mouth_open_while_speaking"] = mouth_open_while_speaking(mouth, loudness)
    elif loudness is None:
        notes.append("sync not measured: the clip has no audio")
    if entry.toy is None and entry.dialogue and transcriber is not None and media.audio.size:
        hypothesis = transcriber.transcribe(media.audio, media.sample_rate, entry.language)
        rate = error_rate(" ".join(entry.dialogue), hypothesis, language=entry.language)
        score["intelligibility"] = {**rate.__dict__, "transcript": hypothesis}
    if entry.image is not None:
        score["first_frame"] = first_frame_fidelity(entry.image, media.frames[0])
    return score


def _toy_scores(media: ClipMedia, entry: PromptEntry) -> dict[str, Any]:
    """Colour, pitch and word count against what the caption states."""
    expected = parse_caption(entry.prompt)
    measured = part_colours(media.frames)
    colours = {}
    for part, colour in measured.items():
        colours[part] = {"expected": expected[part], "measured": colour.name, "rgb": list(colour.rgb),
                         "distance": colour.distance, "correct": colour.name == expected[part]}
    speech = analyse_toy_speech(media.audio, media.sample_rate) if media.audio.size else None
    words_expected = len(expected["words"] or ())
    return {
        "colours": colours,
        "colour_accuracy": float(np.mean([c["correct"] for c in colours.values()])),
        "pitch_expected": expected["voice"],
        "pitch": speech.pitch if speech else None,
        "f0_hz": speech.f0_hz if speech else None,
        "pitch_correct": bool(speech and speech.pitch == expected["voice"]),
        "words_expected": words_expected,
        "words": speech.words if speech else 0,
        "word_count_exact": bool(speech and speech.words == words_expected),
        "skin_expected": expected["skin"],
    }


def _values(scores: list[dict], *path: str) -> list[float]:
    """The finite numbers at ``path`` in each score (missing or None skipped; booleans as 0/1)."""
    out = []
    for score in scores:
        value: Any = score
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out.append(float(value))
    return out


def _summary(values: list[float], how: str, scale: float = 1.0) -> float | None:
    if not values:
        return None
    return float({"mean": np.mean, "median": np.median, "max": np.max}[how](values) * scale)


def aggregate(scores: list[dict]) -> dict[str, Any]:
    """Run-level figures (None where no clip had the metric); see docs/evaluation.md for each definition."""
    toy = [s for s in scores if s.get("toy")]
    part_hits = [c["correct"] for s in toy for c in s["toy"]["colours"].values()]
    parts = sorted({p for s in toy for p in s["toy"]["colours"]})
    offsets = _values(scores, "sync", "offset_frames")
    units = {s["intelligibility"]["unit"] for s in scores if s.get("intelligibility")}
    stages = sorted({k for s in scores for k in ((s.get("performance") or {}).get("stage_s") or {})})
    return {
        "clips": len(scores),
        "toy_clips": len(toy),
        "colour_accuracy_pct": _summary([float(h) for h in part_hits], "mean", 100.0),
        "colour_accuracy_pct_by_part": {
            p: _summary([float(s["toy"]["colours"][p]["correct"]) for s in toy if p in s["toy"]["colours"]],
                        "mean", 100.0) for p in parts},
        "pitch_accuracy_pct": _summary(_values(toy, "toy", "pitch_correct"), "mean", 100.0),
        "word_count_exact_pct": _summary(_values(toy, "toy", "word_count_exact"), "mean", 100.0),
        "mouth_open_while_speaking_pct": _summary(_values(toy, "toy", "mouth_open_while_speaking"), "mean", 100.0),
        "sync_clips": len(offsets),
        "sync_median_offset_frames": _summary(offsets, "median"),
        "sync_median_abs_offset_frames": _summary([abs(v) for v in offsets], "median"),
        "sync_median_offset_ms": _summary(_values(scores, "sync", "offset_ms"), "median"),
        "sync_within_1_frame_pct": _summary([float(abs(v) <= 1) for v in offsets], "mean", 100.0),
        "sync_median_correlation": _summary(_values(scores, "sync", "correlation"), "median"),
        "sync_median_confidence": _summary(_values(scores, "sync", "confidence"), "median"),
        "first_frame_clips": len(_values(scores, "first_frame", "psnr_db")),
        "first_frame_median_psnr_db": _summary(_values(scores, "first_frame", "psnr_db"), "median"),
        "first_frame_mean_ssim": _summary(_values(scores, "first_frame", "ssim"), "mean"),
        **{f"mean_{'cer' if unit == 'character' else 'wer'}": _summary(
            [s["intelligibility"]["rate"] for s in scores
             if s.get("intelligibility") and s["intelligibility"]["unit"] == unit], "mean") for unit in units},
        "mean_wall_s": _summary(_values(scores, "performance", "wall_s"), "mean"),
        "mean_stage_s": {k: _summary(_values(scores, "performance", "stage_s", k), "mean") for k in stages},
        "peak_rss_bytes": _summary(_values(scores, "performance", "peak_rss_bytes"), "max"),
        "peak_cuda_bytes": _summary(_values(scores, "performance", "peak_cuda_bytes"), "max"),
        "toy_by_skin": _toy_by_skin(toy),
    }


def _toy_by_skin(toy: list[dict]) -> dict[str, dict[str, Any]]:
    """Per skin tone the caption states: clips, colour accuracy, clips with a sync figure (a mouth that moved) and
    mouth activity. A codec or model that loses the face on one skin tone shows here first (docs/evaluation.md)."""
    out = {}
    for skin in sorted({s["toy"].get("skin_expected") for s in toy} - {None}):
        group = [s for s in toy if s["toy"].get("skin_expected") == skin]
        out[skin] = {
            "clips": len(group),
            "colour_accuracy_pct": _summary(_values(group, "toy", "colour_accuracy"), "mean", 100.0),
            "sync_clips": len(_values(group, "sync", "offset_frames")),
            "mouth_open_while_speaking_pct": _summary(_values(group, "toy", "mouth_open_while_speaking"), "mean",
                                                      100.0),
        }
    return out
