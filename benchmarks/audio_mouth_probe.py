"""Does a toy transformer take the mouth from the voice? Read the mouth's motion off its clean-latent prediction.

    python benchmarks/audio_mouth_probe.py --work WORK --weights [LABEL=]ROOT/base/model.safetensors [--weights ...]
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
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from magihuman.codecs.video_vae import SPATIAL_STRIDE
from magihuman.model.transformer import MagiHumanTransformer
from magihuman.toy.drawing import MOUTH_REGION
from magihuman.train.cache import load_samples
from magihuman.train.toy_recipe import ToyRecipe


def mouth_cells() -> tuple[slice, slice]:
    """Rows and columns of the 16-pixel latent cells the toy's mouth box touches (rows 4-5, columns 3-4)."""
    x0, y0, x1, y1 = MOUTH_REGION
    return slice(y0 // SPATIAL_STRIDE, -(-y1 // SPATIAL_STRIDE)), slice(x0 // SPATIAL_STRIDE, -(-x1 // SPATIAL_STRIDE))


def motion(latent: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """``latent [48, T, h, w]`` -> the cells' deviation from their mean over latent frames 1..T-1, flattened."""
    cells = latent[:, 1:, rows, cols].float()
    return (cells - cells.mean(1, keepdim=True)).flatten()


def load_toy_transformer(weights: Path) -> MagiHumanTransformer:
    """A toy transformer in float32 with ``weights`` (a ``model.safetensors``; its shape from the
    ``magihuman_transformer.json`` beside it, else the recipe's); exits on a misfit."""
    config_file = weights.parent / "magihuman_transformer.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else ToyRecipe().transformer
    model = MagiHumanTransformer(**config)
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("rope.bands")]:
        raise SystemExit(f"{weights} does not fit the toy transformer: missing {missing}, unexpected {unexpected}")
    return model.float().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a toy work folder with cache/")
    parser.add_argument("--weights", type=Path, required=True, action="append",
                        help="transformer model.safetensors (repeat to compare; LABEL=FILE names it)")
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0, 0.9, 0.7])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--first-frame", action="store_true", help="hold latent frame 0 clean (image-to-video)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = [s for s in load_samples(args.work / "cache") if s.audio_latent is not None][: args.clips]
    rows, cols = mouth_cells()
    places = {"mouth": (rows, cols), "wall": (slice(0, 1), slice(0, 1))}
    print(f"{len(samples)} held-in clips; mouth cells rows {rows.start}-{rows.stop - 1}, "
          f"columns {cols.start}-{cols.stop - 1}")
    for spec in args.weights:
        label, _, file = str(spec).rpartition("=")
        model = load_toy_transformer(Path(file))
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
                    predictions[voice] = predicted = (video - sigma * velocity.float())[0]
                    for place, (r, c) in places.items():
                        true, pred = motion(x0[0], r, c), motion(predicted, r, c)
                        sums[voice, place] += torch.stack([(pred * true).sum(), pred.pow(2).sum(), true.pow(2).sum()])
                for place, (r, c) in places.items():
                    effect[place] += float((motion(predictions["own"], r, c)
                                            - motion(predictions["next"], r, c)).pow(2).sum())
            parts = []
            for voice in ("own", "next"):
                for place in places:
                    dot, pp, tt = sums[voice, place].tolist()
                    cosine, explained = dot / (pp * tt) ** 0.5, 1 - (pp - 2 * dot + tt) / tt
                    parts.append(f"{voice} voice {place}: cos {cosine:.3f} explained {explained:+.3f}")
            for place in places:
                parts.append(f"voice effect {place}: {effect[place] / float(sums['own', place][2]):.4f}")
            print(f"{label or file} sigma {sigma}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
