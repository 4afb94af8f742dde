"""Does a toy transformer take the mouth from the voice? Read the mouth's motion off its clean-latent prediction.

    python benchmarks/audio_mouth_probe.py --work WORK --weights [LABEL=]ROOT/base [--weights ...]
        [--sigma 1.0 0.9 0.7] [--first-frame]

The toy's mouth opens with the loudness of its voice, so given the clean voice (audio-driven generation: the
sampler holds the track clean) a model that links the two can say when the mouth is open even where the video is
pure noise. For held-in clips of WORK's cache this feeds the model the noisy video ``(1 - sigma) x0 + sigma eps``,
the clip's own caption and a clean audio track: the clip's own, or the next clip's (same length). It forms the
predicted clean latent ``x - sigma v`` and compares its motion at the mouth's 4 latent cells (``MOUTH_REGION``:
each latent frame's deviation from the clip's mean over latent frames 1..T-1) with the true latent's motion there:
the cosine between the two (1: the same motion, 0: none of it) and the share of the true motion's energy
explained (``1 - |pred - true|^2 / |true|^2``). With the own voice a model that uses it scores above the next
clip's voice; one that ignores the voice scores the same with both. The voice effect is how much the predicted
motion changes between the two voices, ``|pred_own - pred_next|^2``, against the true motion's energy. The same
figures at a wall corner cell, where nothing moves but the codec's own drift over time, show what a cell that has
nothing to do with the voice gives. ``--first-frame`` holds latent frame 0 clean as image-to-video does, leaving
the motion as the main unknown. docs/toy_world.md ("Sync and the RoPE bands") has the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from magihuman.toy.drawing import MOUTH_REGION
from magihuman.train.cache import load_samples
from magihuman.train.objective import region_weights
from magihuman.train.trainer import load_transformer


def motion(latent: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``latent [48, T, h, w]`` -> the deviation of the ``cells`` (``[h, w]`` bool) from their mean over latent
    frames 1..T-1, flattened."""
    values = latent[:, 1:, cells].float()
    return (values - values.mean(1, keepdim=True)).flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a toy work folder with cache/")
    parser.add_argument("--weights", type=Path, required=True, action="append",
                        help="a transformer checkpoint folder (repeat to compare; LABEL=FOLDER names it)")
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0, 0.9, 0.7])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--first-frame", action="store_true", help="hold latent frame 0 clean (image-to-video)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = [s for s in load_samples(args.work / "cache") if s.audio_latent is not None][: args.clips]
    grid = samples[0].video_latent.shape[-2:]
    places = {place: region_weights(grid, box, 2.0)[0, 0] > 1  # the latent cells each pixel box touches
              for place, box in (("mouth", MOUTH_REGION), ("wall", (0, 0, 1, 1)))}
    print(f"{len(samples)} held-in clips; mouth cells (row, column) {places['mouth'].nonzero().tolist()}")
    for spec in args.weights:
        label, _, folder = str(spec).rpartition("=")
        model = load_transformer(folder).float().eval()
        for sigma in args.sigma:
            generator = torch.Generator().manual_seed(0)
            sums = {(v, p): torch.zeros(3) for v in ("own", "next") for p in places}
            effect = dict.fromkeys(places, 0.0)
            for i, sample in enumerate(samples):
                x0 = sample.video_latent.float()[None]
                video = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=generator)
                if args.first_frame:
                    video[:, :, 0] = x0[:, :, 0]
                other = samples[(i + 1) % len(samples)].audio_latent
                predictions = {}
                for voice, audio in (("own", sample.audio_latent), ("next", other)):
                    with torch.no_grad():
                        velocity, _ = model(video, audio.float()[None], sample.text_embeds.float()[None])
                    predicted = (video - sigma * velocity.float())[0]
                    for place, cells in places.items():
                        true, pred = motion(x0[0], cells), motion(predicted, cells)
                        predictions[voice, place] = pred
                        sums[voice, place] += torch.stack([(pred * true).sum(), pred.pow(2).sum(), true.pow(2).sum()])
                for place in places:
                    effect[place] += float((predictions["own", place] - predictions["next", place]).pow(2).sum())
            parts = []
            for voice in ("own", "next"):
                for place in places:
                    dot, pp, tt = sums[voice, place].tolist()
                    cosine, explained = dot / (pp * tt) ** 0.5, 1 - (pp - 2 * dot + tt) / tt
                    parts.append(f"{voice} voice {place}: cos {cosine:.3f} explained {explained:+.3f}")
            for place in places:
                parts.append(f"voice effect {place}: {effect[place] / float(sums['own', place][2]):.4f}")
            print(f"{label or folder} sigma {sigma}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
