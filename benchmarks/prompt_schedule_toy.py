"""A prompt schedule on a trained toy bundle: does the dialogue change where the schedule says, and only there?

    python benchmarks/prompt_schedule_toy.py --root WORK/bundle --out /tmp/schedule --index 0 [--cue 10]
    python benchmarks/prompt_schedule_toy.py --summary /tmp/schedule

For held-out caption ``--index`` (prompt A) a second prompt B is the same caption with the dialogue of the next
held-out caption whose word count differs. Two ``--seconds`` clips in 2 s windows, same seed: A throughout, and A
with the cue ``(--cue, B)``. Per piece (each window's new frames, between joins) the toy's word count and pitch
(:func:`magihuman.eval.toy_speech.analyse_toy_speech`) and part colours; for the scheduled clip also
:func:`magihuman.eval.seams.seam_report`, and whether the windows before the cue are the plain run's latents bit
for bit. Writes ``DIR/dN/schedule.json``; ``--summary`` adds up every ``dN``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from magihuman.eval.seams import seam_frames, seam_report
from magihuman.eval.toy_speech import analyse_toy_speech
from magihuman.pipeline.prompt_schedule import PromptCue, window_prompt_indices
from magihuman.pipeline.windows import decoder_chunks, plan_windows, window_latent_frames
from magihuman.toy.captions import parse_caption
from magihuman.toy.dataset import held_out_clips

SIZE, WINDOW, OVERLAP = 128, 2.0, 2


def second_prompt(index: int) -> tuple[str, str]:
    """``(A, B)``: held-out caption ``index`` and the same caption with another caption's dialogue of another
    word count."""
    clips = held_out_clips(0, 100)
    first = clips[index].caption
    words = parse_caption(first)["words"]
    for k in range(1, 100):
        other = parse_caption(clips[(index + k) % 100].caption)["words"]
        if len(other) != len(words):
            return first, first.replace(f'"{" ".join(words)}"', f'"{" ".join(other)}"')
    raise ValueError("no held-out caption has another word count")


def pieces(clip, pipe, cues: list[PromptCue]) -> tuple[list[dict], list[int], list[int], int]:
    """Per window: its new frames' word count, pitch and colours; the prompt index of each window; the seams; the
    first latent frame the cue's window generates (the clip's length without a cue)."""
    from magihuman.eval.toy_vision import part_colours

    plan = plan_windows(clip.video_latent.shape[2], clip.audio_latent.shape[1], window_frames=window_latent_frames(
        WINDOW), overlap=OVERLAP, decode_chunks=decoder_chunks(pipe.video_decoder))
    seams = seam_frames(plan.joins)
    edges = [0, *seams, clip.frames.shape[0]]
    samples = clip.audio.shape[-1] / clip.frames.shape[0]
    found = []
    for a, b in zip(edges[:-1], edges[1:]):
        speech = analyse_toy_speech(clip.audio[:, int(a * samples):int(b * samples)], clip.sample_rate)
        colours = {part: c.name for part, c in part_colours(clip.frames[a:b]).items()}
        found.append({"frames": [a, b], "words": speech.words, "pitch": speech.pitch, **colours})
    which = window_prompt_indices(plan, cues)[0]
    switch = plan.joins[which.index(1) - 1] if 1 in which else plan.latent_frames
    return found, which, seams, switch


def run(root: Path, out: Path, index: int, cue: float, seconds: float) -> dict:
    import torch

    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline
    from magihuman.runtime.options import RuntimeOptions

    pipe = MagiHumanPipeline.from_official(root, preset="distill", runtime=RuntimeOptions(fp32=True))
    first, later = second_prompt(index)
    cues = [PromptCue(start=cue, prompt=later)]
    common = dict(seconds=seconds, width=SIZE, height=SIZE, seed=index, window_seconds=WINDOW, overlap_frames=OVERLAP)
    plain = pipe(first, **common)
    scheduled = pipe(first, prompt_schedule=cues, **common)
    plain_pieces = pieces(plain, pipe, [])[0]
    sched_pieces, which, seams, held = pieces(scheduled, pipe, cues)
    report = seam_report(scheduled.frames, scheduled.audio, scheduled.sample_rate, seams).to_dict()
    result = {
        "index": index, "cue_s": cue, "words": [len(parse_caption(p)["words"]) for p in (first, later)],
        "prompt_per_window": which, "plain": plain_pieces, "scheduled": sched_pieces,
        "before_cue_bitwise": bool(torch.equal(plain.video_latent[:, :, :held], scheduled.video_latent[:, :, :held])),
        "seams": {k: report[k] for k in ("seam_difference", "boundary_difference_p95", "boundary_difference_max",
                                         "colours_constant", "gaps", "clicks", "seam_pause_s",
                                         "longest_pause_inside_s", "sync_offset_frames", "sync_correlation")},
    }
    out.mkdir(parents=True, exist_ok=True)
    scheduled.save(out / "scheduled.mp4", overwrite=True)
    (out / "schedule.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def summary(folder: Path) -> dict:
    """Pieces whose word count matches A / B, before and after the cue, for both clips; colours, seams."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("d*/schedule.json"))]
    counts = {f"{clip}_{part}_{want}": 0 for clip in ("plain", "scheduled") for part in ("before", "after")
              for want in ("A", "B")}
    totals = {"before": 0, "after": 0}
    for r in runs:
        for k, prompt in enumerate(r["prompt_per_window"][1:], start=1):  # window 0 is A in both: not counted
            part = "after" if prompt else "before"
            totals[part] += 1
            for clip in ("plain", "scheduled"):
                words = r[clip][k]["words"]
                counts[f"{clip}_{part}_A"] += words == r["words"][0]
                counts[f"{clip}_{part}_B"] += words == r["words"][1]
    pitch_kept = sum(all(p["pitch"] == r["scheduled"][0]["pitch"] for p in r["scheduled"] if p["pitch"]) for r in runs)
    above = sum(sum(d > r["seams"]["boundary_difference_p95"] for d in r["seams"]["seam_difference"]) for r in runs)
    lags = [r["seams"]["sync_offset_frames"] for r in runs if r["seams"]["sync_offset_frames"] == r["seams"][
        "sync_offset_frames"]]  # NaN: no mouth to measure
    return {"captions": len(runs), "pieces": totals, **counts,
            "before_cue_bitwise": sum(r["before_cue_bitwise"] for r in runs),
            "plain_colours_constant": sum(_constant(r["plain"]) for r in runs),
            "scheduled_colours_constant": sum(_constant(r["scheduled"]) for r in runs), "pitch_constant": pitch_kept,
            "seams": sum(len(r["seams"]["seam_difference"]) for r in runs), "seams_above_boundary_p95": above,
            "gaps": sum(r["seams"]["gaps"] for r in runs), "clicks": sum(r["seams"]["clicks"] for r in runs),
            "sync_clips": len(lags), "median_sync_offset_frames": float(np.median(lags)) if lags else None,
            "median_sync_correlation": float(np.nanmedian([r["seams"]["sync_correlation"] for r in runs]))}


def _constant(pieces: list[dict]) -> bool:
    """Whether hair, shirt and wall read the same colour in every piece."""
    return all(p.get(part) == pieces[0].get(part) for p in pieces for part in ("hair", "shirt", "wall"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, help="a trained toy bundle (e.g. src/magihuman/demo/toy_bundle)")
    parser.add_argument("--out", type=Path, help="results go to OUT/dINDEX")
    parser.add_argument("--index", type=int, default=0, help="held-out caption 0..99")
    parser.add_argument("--cue", type=float, default=10.0, help="seconds at which the second prompt takes over")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--summary", type=Path, help="add up every dN/schedule.json under this folder instead")
    args = parser.parse_args(argv)
    if args.summary is not None:
        print(json.dumps(summary(args.summary), indent=2))
        return 0
    if args.root is None or args.out is None:
        parser.error("--root and --out are needed (or --summary DIR)")
    result = run(args.root, args.out / f"d{args.index}", args.index, args.cue, args.seconds)
    print(json.dumps({k: result[k] for k in ("index", "words", "prompt_per_window", "before_cue_bitwise")}))
    for clip in ("plain", "scheduled"):
        print(clip, [p["words"] for p in result[clip]], [p["hair"] for p in result[clip]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
