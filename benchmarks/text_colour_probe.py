"""Does a toy transformer take its colours from the caption? Read them off its clean-latent prediction.

    python benchmarks/text_colour_probe.py --work WORK [--weights FOLDER] [--sigma 1.0 0.97 0.9]

The sampler's first step is at sigma = 1, where the input is pure noise and only the text can say what to draw;
below it the noisy latent itself shows the wall, hair and shirt colours. For 24 held-in clips of WORK's cache this
feeds the model ``x = (1 - sigma) x0 + sigma eps`` with the clip's own caption and with the next clip's, forms the
predicted clean latent ``x - sigma v`` and names each part's colour by the nearest per-colour centroid of the true
latents at that part's cells (the wall's corner cells, the hair's crown, the shirt's bottom centre). A model that
reads the caption names the own caption's colours at sigma = 1 well above chance (1 in 6-7); one that reads only the
noisy input names the same colours with either caption below sigma = 1 and is at chance at 1.
docs/toy_world.md ("Why the colours came from the noise") has the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from magihuman.toy.captions import parse_caption
from magihuman.train.cache import load_samples
from magihuman.train.trainer import load_transformer

#: Latent cells ``(row, column)`` of the 8x8 latent grid that lie inside each part for every offset.
CELLS = {"wall": [(0, 0), (0, 7)], "hair": [(1, 3), (1, 4)], "shirt": [(7, 3), (7, 4)]}


def part_feature(latent: torch.Tensor, part: str) -> torch.Tensor:
    """``[48]``: the mean of ``latent [48, T, 8, 8]`` over latent frames 1.. and the part's cells."""
    return torch.stack([latent[:, 1:, y, x].mean(1) for y, x in CELLS[part]]).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a toy work folder with cache/ and runs/base/")
    parser.add_argument("--weights", type=Path, help="a transformer checkpoint folder (model.safetensors and its "
                        "magihuman_transformer.json; default WORK/runs/base/transformer)")
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0, 0.97, 0.9])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_transformer(args.weights or args.work / "runs" / "base" / "transformer").float().eval()
    samples = [s for s in load_samples(args.work / "cache") if s.audio_latent is not None]
    truth = [parse_caption(s.caption) for s in samples]
    centroids = {}
    for part in CELLS:
        groups: dict[str, list[torch.Tensor]] = {}
        for sample, colours in zip(samples, truth):
            groups.setdefault(colours[part], []).append(part_feature(sample.video_latent.float(), part))
        centroids[part] = {name: torch.stack(v).mean(0) for name, v in groups.items()}

    def name(latent: torch.Tensor, part: str) -> str:
        names = list(centroids[part])
        distances = torch.stack([(part_feature(latent, part) - centroids[part][n]).norm() for n in names])
        return names[int(distances.argmin())]

    probe = samples[: args.clips]
    named = {p: sum(name(s.video_latent.float(), p) == t[p] for s, t in zip(probe, truth)) for p in CELLS}
    print("true latents named right:", {p: f"{n}/{len(probe)}" for p, n in named.items()})
    for sigma in args.sigma:
        generator = torch.Generator().manual_seed(0)
        right = {"own": dict.fromkeys(CELLS, 0), "other": dict.fromkeys(CELLS, 0)}
        for i, sample in enumerate(probe):
            x0_video, x0_audio = sample.video_latent.float()[None], sample.audio_latent.float()[None]
            video = (1 - sigma) * x0_video + sigma * torch.randn(x0_video.shape, generator=generator)
            audio = (1 - sigma) * x0_audio + sigma * torch.randn(x0_audio.shape, generator=generator)
            for label, text in (("own", sample.text_embeds), ("other", probe[(i + 1) % len(probe)].text_embeds)):
                with torch.no_grad():
                    velocity, _ = model(video, audio, text.float()[None])
                predicted = (video - sigma * velocity.float())[0]
                for part in CELLS:
                    right[label][part] += name(predicted, part) == truth[i][part]
        print(f"sigma {sigma}: parts named as the own caption says, with the own caption "
              f"{ {p: f'{v}/{len(probe)}' for p, v in right['own'].items()} }, with the next clip's caption "
              f"{ {p: f'{v}/{len(probe)}' for p, v in right['other'].items()} }", flush=True)


if __name__ == "__main__":
    main()
