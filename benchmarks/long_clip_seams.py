"""Seam figures of long clips, extend and retake on a trained toy bundle (issue: longer clips).

    python benchmarks/long_clip_seams.py --root WORK/bundle --out /tmp/seams [--preset distill] [--seconds 20]
    python benchmarks/long_clip_seams.py --root WORK/bundle --out /tmp/readme --caption "$P" --seed 42 --only-long

1. a ``--seconds`` clip of a held-out caption in windows of ``--window-seconds`` (the toy model's training
   length, 2 s, by default) with 2 latent frames of overlap (``--overlap-frames``);
2. the first 2 s of it extended by 2 s;
3. a retake of 0.8-1.4 s of that 2 s clip (video and audio).

For each: :func:`magihuman.eval.seams.seam_report` at the joins; for extend and retake also the largest
frame-to-frame difference over each join's picture fade (``--fade-frames``, the pipeline's default when not
given; 0 for the hard cut), and for the retake whether every held latent equals the encoded clip bit for bit.
Writes the MP4s and ``seams.json`` into ``--out`` and prints a summary. ``--only-long`` runs the first part
alone; ``benchmarks/long_clip_summary.py`` adds up the ``seams.json`` of several captions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from magihuman.eval.seams import frame_differences, seam_frames, seam_report
from magihuman.pipeline.presets import DEFAULT_FADE_FRAMES
from magihuman.pipeline.windows import decoder_chunks, plan_windows, window_latent_frames
from magihuman.toy.captions import parse_caption
from magihuman.toy.dataset import held_out_clips

SIZE = 128


def _windowed(pipe, caption: str, seconds: float, window: float, seed: int, out: Path, overlap: int = 2) -> dict:
    start = time.perf_counter()
    clip = pipe(caption, seconds=seconds, width=SIZE, height=SIZE, seed=seed, window_seconds=window,
                overlap_frames=overlap)
    wall = time.perf_counter() - start
    clip.save(out / "long.mp4", overwrite=True)
    latents, audio_latents = clip.video_latent.shape[2], clip.audio_latent.shape[1]
    plan = plan_windows(latents, audio_latents, window_frames=window_latent_frames(window), overlap=overlap,
                        decode_chunks=decoder_chunks(pipe.video_decoder))  # the plan the pipeline ran
    report = seam_report(clip.frames, clip.audio, clip.sample_rate, seam_frames(plan.joins)).to_dict()
    return {"seconds": clip.duration, "windows": len(plan.windows), "overlap_frames": overlap,
            "wall_s": round(wall, 1), **report}


def _fade_steps(frames: np.ndarray, seams: list[int], fade: int = DEFAULT_FADE_FRAMES) -> list[float]:
    """Per seam, the largest difference between consecutive frames from ``fade`` frames before it to ``fade``
    after it (the fade, the join and the frames beside them); the same window whatever ``--fade-frames`` is, so
    a hard cut and a fade are measured alike."""
    diffs = frame_differences(frames)
    return [float(diffs[max(0, s - 1 - fade) : s + fade].max()) for s in seams]


def _extend(pipe, caption: str, source: Path, seconds: float, window: float, seed: int, out: Path,
            fade: dict) -> dict:
    clip = pipe.extend(source, caption, seconds=seconds, width=SIZE, height=SIZE, seed=seed, window_seconds=window,
                       **fade)
    clip.save(out / "extended.mp4", overwrite=True)
    seams = [_frames_of(source)]
    report = seam_report(clip.frames, clip.audio, clip.sample_rate, seams).to_dict()
    return {"seconds": clip.frames.shape[0] / clip.fps, "fade_max_difference": _fade_steps(clip.frames, seams),
            **report}


def _retake(pipe, caption: str, source: Path, start: float, end: float, seed: int, out: Path, fade: dict) -> dict:
    clip = pipe.retake(source, caption, start=start, end=end, target="both", width=SIZE, height=SIZE, seed=seed,
                       **fade)
    clip.save(out / "retaken.mp4", overwrite=True)
    video_same = bool((clip.video_latent[:, :, clip.video_held] == clip.source_video_latent[:, :, clip.video_held])
                      .all())
    audio_same = bool((clip.audio_latent[:, clip.audio_held] == clip.source_audio_latent[:, clip.audio_held]).all())
    changed = (~clip.video_held).nonzero().flatten().tolist()
    first, last = changed[0], changed[-1]
    seams = [s for s in (4 * first - 3, 4 * last + 1) if 1 <= s < clip.frames.shape[0]]
    report = seam_report(clip.frames, clip.audio, clip.sample_rate, seams).to_dict()
    return {"held_video_bitwise": video_same, "held_audio_bitwise": audio_same,
            "regenerated_latent_frames": [first, last], "fade_max_difference": _fade_steps(clip.frames, seams),
            **report}


def _frames_of(path: Path) -> int:
    from magihuman.eval.clips import read_clip

    return read_clip(path).frames.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="trained toy checkpoint root")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="distill")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--window-seconds", type=float, default=2.0)
    parser.add_argument("--index", type=int, default=0, help="which held-out caption")
    parser.add_argument("--caption", help="a toy caption of your own instead of a held-out one (e.g. the README's)")
    parser.add_argument("--seed", type=int, help="the windowed clip's seed (default: --index); the 2 s clip, its "
                        "extension and its retake take the next three")
    parser.add_argument("--overlap-frames", type=int, default=2, help="the windowed clip: latent frames each window "
                        "shares with the one before (default 2, the pipeline's)")
    parser.add_argument("--fade-frames", type=int, help="extend and retake: frames of each picture fade (default: "
                        "the pipeline's; 0: a hard cut)")
    parser.add_argument("--skip-long", action="store_true", help="only the extend and the retake")
    parser.add_argument("--only-long", action="store_true", help="only the windowed clip")
    args = parser.parse_args()
    if args.skip_long and args.only_long:
        parser.error("--skip-long and --only-long leave nothing to run: pass at most one")
    fade = {} if args.fade_frames is None else {"fade_frames": args.fade_frames}
    if args.seed is None:
        args.seed = args.index
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

    args.out.mkdir(parents=True, exist_ok=True)
    if args.caption is None:
        held_out = held_out_clips(0, args.index + 1)[args.index]
        caption, attributes = held_out.caption, held_out.attributes.to_dict()
    else:
        caption, attributes = args.caption, parse_caption(args.caption)
    from magihuman.runtime.options import RuntimeOptions

    pipe = MagiHumanPipeline.from_official(args.root, preset=args.preset, runtime=RuntimeOptions(fp32=True))
    results = {"index": None if args.caption else args.index, "seed": args.seed, "caption": caption,
               "attributes": attributes,
               "preset": args.preset, "fade_frames": args.fade_frames}
    if not args.skip_long:
        results["long"] = _windowed(pipe, caption, args.seconds, args.window_seconds, args.seed, args.out,
                                    args.overlap_frames)
    if not args.only_long:
        _edits(pipe, caption, args, fade, results)
    (args.out / "seams.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    _print(results)


def _edits(pipe, caption: str, args: argparse.Namespace, fade: dict, results: dict) -> None:
    """The 2 s clip, its extension and its retake, into ``results``."""
    short = pipe(caption, seconds=2.0, width=SIZE, height=SIZE, seed=args.seed + 1)
    short.save(args.out / "short.mp4", overwrite=True)
    results["extend"] = _extend(pipe, caption, args.out / "short.mp4", 2.0, args.window_seconds, args.seed + 2,
                                args.out, fade)
    results["retake"] = _retake(pipe, caption, args.out / "short.mp4", 0.8, 1.4, args.seed + 3, args.out, fade)


def _print(results: dict) -> None:
    for name in [n for n in ("long", "extend", "retake") if n in results]:
        r = results[name]
        print(f"{name}: seam diff {np.round(r['seam_difference'], 2).tolist()} vs inside mean "
              f"{r['inside_difference_mean']:.2f} p95 {r['inside_difference_p95']:.2f} "
              f"max {r['inside_difference_max']:.2f}, across latent-frame boundaries p95 "
              f"{r['boundary_difference_p95']:.2f} max {r['boundary_difference_max']:.2f}; above the two pieces' p95 "
              f"{sum(d > q for d, q in zip(r['seam_difference'], r['pieces_difference_p95']))} and max "
              f"{sum(d > q for d, q in zip(r['seam_difference'], r['pieces_difference_max']))}; "
              f"colours constant {r['colours_constant']}; gaps {r['gaps']} "
              f"(silences to an end {sum(r['seam_pause_open'])}) clicks {r['clicks']}; "
              f"sync lag {r['sync_offset_frames']} r {r['sync_correlation']:.2f}"
              + (f"; largest step over the fades {np.round(r['fade_max_difference'], 2).tolist()}"
                 if "fade_max_difference" in r else ""))
    if "retake" in results:
        print(f"retake held latents bitwise: video {results['retake']['held_video_bitwise']}, "
              f"audio {results['retake']['held_audio_bitwise']}")


if __name__ == "__main__":
    main()
