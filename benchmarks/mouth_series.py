"""Does the toy's mouth move while it speaks? Mouth opening against loudness, frame by frame, for folders of MP4s.

    python benchmarks/mouth_series.py student=EVAL_OUT/clips reference=WORK/data/held_out [--round-trip ROOT]
        [--limit 20] [--show 4] [--json OUT.json]

The eval kit's sync figure (:func:`magihuman.eval.sync.measure_sync`) is the lag of the best correlation between
the mouth opening and the loudness. When the mouth hardly moves, that correlation is noise and its best lag
can land anywhere in the search, often at its edge. This looks at the series themselves: the eval kit's
:func:`magihuman.eval.toy_vision.mouth_open_while_speaking` (the share of speaking frames whose mouth reads
open), split into the first 9 frames (latent frames 0-2) and the rest, plus the kit's sync figures.

``--round-trip ROOT`` adds, for the folder labelled ``reference``, its clips encoded by ROOT's Wan2.2 VAE and
decoded by the Turbo and the Wan decoders (sound kept): what the codecs leave of the mouth. ``--show N``
prints the first N clips' series as digits (mouth pixels, loudness in tenths of the clip's largest).
docs/benchmarks.md ("Why the sync figures are low") has the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from magihuman.eval.clips import read_clip
from magihuman.eval.sync import frame_loudness, measure_sync
from magihuman.eval.toy_vision import mouth_open_while_speaking, toy_mouth_opening

EARLY = 9  # frames of latent frames 0-2


def _series(frames: np.ndarray, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    mouth = toy_mouth_opening(frames)
    return mouth, frame_loudness(audio, len(frames), fps=25.0, sample_rate=sample_rate)


def _figures(mouth: np.ndarray, loudness: np.ndarray) -> dict:
    early = np.arange(mouth.size) < EARLY
    share = {part: mouth_open_while_speaking(mouth, loudness, where) for part, where in (("early", early),
                                                                                         ("late", ~early))}
    sync = measure_sync(mouth, loudness)
    return {"open_while_speaking_early": share["early"], "open_while_speaking_late": share["late"],
            "sync_offset_frames": sync.offset_frames, "sync_correlation": sync.correlation}


def _digits(values: np.ndarray, scale: float) -> str:
    return "".join(str(min(9, int(v * scale))) for v in values)


def _round_trips(root: Path, paths: list[Path]) -> dict[str, list[tuple[str, np.ndarray, np.ndarray, int]]]:
    import torch

    from magihuman.codecs.turbo_vae import TurboVAE
    from magihuman.codecs.video_vae import VideoVAE
    from magihuman.pipeline.media import video_to_uint8

    vae = VideoVAE.from_official(root / "Wan2.2-TI2V-5B", dtype=torch.float32)
    turbo = TurboVAE.from_official(root / "turbo_vae", dtype=torch.float32)
    out: dict[str, list] = {"round trip, Turbo": [], "round trip, Wan": []}
    for path in paths:
        clip = read_clip(path)
        usable = 4 * ((len(clip.frames) - 1) // 4) + 1
        pixels = torch.from_numpy(clip.frames[:usable]).permute(3, 0, 1, 2).float()[None] / 127.5 - 1.0
        with torch.no_grad():
            latent = vae.encode(pixels)
            for label, decode in (("round trip, Turbo", turbo.decode), ("round trip, Wan", vae.decode)):
                out[label].append((path.stem, video_to_uint8(decode(latent)), clip.audio, clip.sample_rate))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="LABEL=FOLDER of MP4s (an eval run's clips/, or held_out/)")
    parser.add_argument("--round-trip", type=Path, help="a checkpoint root: add the 'reference' clips through its "
                        "video codecs")
    parser.add_argument("--limit", type=int, default=20, help="clips per folder, in name order")
    parser.add_argument("--show", type=int, default=0, help="print this many clips' series")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sets: dict[str, list] = {}
    for item in args.folders:
        label, _, folder = item.partition("=")
        if not folder:
            parser.error(f"give LABEL=FOLDER, got {item!r}")
        paths = sorted(Path(folder).glob("*.mp4"))[: args.limit]
        if not paths:
            parser.error(f"no MP4 in {folder}")
        clips = [(p.stem, read_clip(p)) for p in paths]
        sets[label] = [(name, c.frames, c.audio, c.sample_rate) for name, c in clips]
        if label == "reference" and args.round_trip is not None:
            sets.update(_round_trips(args.round_trip, paths))
    summary = {}
    for label, clips in sets.items():
        rows = []
        for index, (name, frames, audio, rate) in enumerate(clips):
            mouth, loudness = _series(frames, audio, rate)
            rows.append({"clip": name, **_figures(mouth, loudness)})
            if index < args.show:
                print(f"{label} {name}\n  mouth {_digits(mouth, 1.0)}\n  loud  "
                      f"{_digits(loudness, 9.0 / max(float(loudness.max()), 1e-9))}")
        values = {key: [r[key] for r in rows if r[key] is not None and np.isfinite(r[key])] for key in rows[0]
                  if key != "clip"}
        summary[label] = {"clips": len(rows),
                          **{f"mean_{k}": float(np.mean(v)) if v else None for k, v in values.items()
                             if k.startswith("open")},
                          "median_sync_offset_frames": float(np.median(values["sync_offset_frames"]))
                          if values["sync_offset_frames"] else None,
                          "median_sync_correlation": float(np.median(values["sync_correlation"]))
                          if values["sync_correlation"] else None,
                          "per_clip": rows}
        s = summary[label]
        print(f"{label}: {len(rows)} clips; mouth open while speaking: frames 0-{EARLY - 1} "
              f"{s['mean_open_while_speaking_early']:.2f}, later {s['mean_open_while_speaking_late']:.2f}; "
              f"sync median lag {s['median_sync_offset_frames']}, correlation {s['median_sync_correlation']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
