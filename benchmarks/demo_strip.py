"""Write the README's frame strip: one generated toy clip, every few frames side by side, with the mouth
opening and the voice loudness measured on the result drawn under it.

    python benchmarks/demo_strip.py --root WORK/bundle --out docs/images/toy_demo.png

The caption is a held-out one (no training clip has its attributes and words together); the PNG is made by this script
from the pipeline's output, nothing is drawn by hand. The README's strip is ``--index 6``: of the text-to-video
held-out captions whose three colours the shipped student drew right in its 100-caption eval (seed = index,
as ``magihuman eval run``), the first with a measured mouth (index 6 for the w4 to w13 and w15 to w17 students; 4
for the w14 student).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from magihuman.eval.toy_vision import toy_mouth_opening
from magihuman.toy.dataset import held_out_clips
from magihuman.toy.voice import frame_loudness


def strip(frames: np.ndarray, audio: np.ndarray, sample_rate: int, every: int = 6) -> Image.Image:
    """``uint8 [F, H, W, 3]`` frames and ``float [2, S]`` audio -> one PNG-ready image."""
    picks = frames[::every]
    height, width = frames.shape[1:3]
    canvas = Image.new("RGB", (width * len(picks), height + 60), "white")
    for i, frame in enumerate(picks):
        canvas.paste(Image.fromarray(frame), (i * width, 0))
    mouth = np.asarray(toy_mouth_opening(frames), dtype=np.float64)
    loud = frame_loudness(audio.mean(0), len(frames), fps=25, sample_rate=sample_rate)
    draw = ImageDraw.Draw(canvas)
    for series, colour in ((mouth, (200, 40, 60)), (loud, (30, 90, 200))):
        scaled = (series - series.min()) / (np.ptp(series) + 1e-9)
        xs = np.linspace(0, canvas.width - 1, len(series))
        points = [(float(x), height + 55 - 50 * float(v)) for x, v in zip(xs, scaled)]
        draw.line(points, fill=colour, width=2)
    draw.text((4, height + 2), "red: mouth opening, blue: voice loudness (measured on the output)", fill=(0, 0, 0))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="toy checkpoint root (magihuman toy train)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/toy_demo.png"))
    parser.add_argument("--preset", default="distill")
    parser.add_argument("--index", type=int, default=0, help="which held-out caption")
    args = parser.parse_args()
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

    clip = held_out_clips(0, args.index + 1)[args.index]
    from magihuman.runtime.options import RuntimeOptions

    if clip.image is not None:
        raise SystemExit(f"held-out caption {args.index} is a first-frame clip; pick a text-to-video one")
    pipe = MagiHumanPipeline.from_official(args.root, preset=args.preset, runtime=RuntimeOptions(fp32=True))
    out = pipe(clip.caption, seconds=2.0, width=128, height=128, seed=args.index)
    image = strip(out.frames, out.audio, out.sample_rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}: {clip.caption[:80]}...")


if __name__ == "__main__":
    main()
