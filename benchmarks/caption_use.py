"""Does a fresh toy transformer learn to read the wall colour from its caption?

Trains a fresh toy transformer (``toy_transformer_init``) on held-in clips of a latent cache, without clean
frames and without text dropout, and every ``--every`` steps compares the video flow-matching loss on 16 of the
clips with each clip's own caption against the same caption with only the wall phrase swapped to the next wall
colour (re-encoded). A model that reads the wall phrase has a clearly lower loss with its own caption; one that
does not has the same loss with both. docs/toy_world.md ("Why the captions are short") has the figures.

    python benchmarks/caption_use.py --work WORK --clips 48 --steps 400
    python benchmarks/caption_use.py --work WORK --captions current   # re-caption the clips with today's captions

``--captions cache`` uses the cache's captions; ``current`` rewrites each caption with
:func:`magihuman.toy.captions.make_caption` from the attributes it states, then encodes it with WORK's text encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from magihuman.codecs.text_encoder import TextEncoder
from magihuman.model.transformer import MagiHumanTransformer
from magihuman.toy.attributes import ToyAttributes
from magihuman.toy.captions import make_caption, parse_caption
from magihuman.toy.palette import WALL_COLOURS
from magihuman.train.cache import load_negative, load_samples
from magihuman.train.objective import ObjectiveSettings, flow_matching_loss, noise_batch
from magihuman.train.toy_recipe import ToyRecipe, toy_transformer_init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a toy work folder with bundle/ and cache/")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--captions", choices=("cache", "current"), default="cache")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = TextEncoder.from_official(args.work / "bundle" / "t5gemma-9b-9b-ul2")

    def caption_of(text: str) -> str:
        if args.captions == "cache":
            return text
        return make_caption(ToyAttributes.from_dict(parse_caption(text)), np.random.default_rng(len(text)))

    def encode(text: str) -> torch.Tensor:
        return encoder.encode(text)[0].squeeze(0).float()

    def wall_swapped(text: str) -> str:
        wall = parse_caption(text)["wall"]
        other = WALL_COLOURS[(WALL_COLOURS.index(wall) + 1) % len(WALL_COLOURS)]
        return text.replace(f"{wall} wall", f"{other} wall")

    groups: dict = {}
    for sample in load_samples(args.work / "cache"):
        if sample.audio_latent is not None:
            groups.setdefault(sample.shape_key, []).append(sample)
    clips = [dataclasses.replace(s, caption=caption_of(s.caption)) for s in max(groups.values(), key=len)]
    clips = [dataclasses.replace(s, text_embeds=encode(s.caption)) for s in clips[:args.clips]]
    probe = clips[:16]
    swapped = [dataclasses.replace(s, text_embeds=encode(wall_swapped(s.caption))) for s in probe]
    negative = load_negative(args.work / "cache")
    print(f"{len(clips)} clips, captions {args.captions}, {probe[0].text_embeds.shape[0]} tokens in the first")

    recipe = ToyRecipe()
    model = MagiHumanTransformer(**recipe.transformer)
    model.load_state_dict({k: v.float() for k, v in toy_transformer_init(recipe.transformer, 40).items()})
    model = model.float().train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    settings = ObjectiveSettings(first_frame_rate=0.0, text_dropout=0.0)

    def video_loss(samples) -> float:
        generators = [torch.Generator().manual_seed(10_000 + i) for i in range(len(samples))]
        return float(flow_matching_loss(model, noise_batch(samples, negative, settings, generators))[1]["video"])

    def measure() -> str:
        model.eval()
        with torch.no_grad():
            own, other = video_loss(probe), video_loss(swapped)
        model.train()
        return f"own {own:.4f} swapped wall {other:.4f}"

    print("step 0", measure(), flush=True)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(step))[:args.batch].tolist()
        generators = [torch.Generator().manual_seed(step * 100 + i) for i in order]
        loss, _ = flow_matching_loss(model, noise_batch([clips[i] for i in order], negative, settings, generators))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % args.every == 0:
            print(f"step {step} ({time.perf_counter() - start:.0f} s)", measure(), flush=True)


if __name__ == "__main__":
    main()
