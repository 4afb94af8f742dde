"""Does a toy video VAE keep the colours over a whole clip? Encode and decode whole 49-frame toy clips.

    python benchmarks/video_vae_drift.py WORK/runs/video_vae/checkpoints/step-0004500/trainable.safetensors
    python benchmarks/video_vae_drift.py WORK/bundle/Wan2.2-TI2V-5B/Wan2.2_VAE.pth

The Wan2.2 VAE is causal: it carries a feature cache from one 4-frame chunk to the next, so a VAE trained only on
short crops may drift after them. For 6 clips no training stream draws (seed ``(7, 9999, i)``), the script reads
the hair, shirt and wall colour back (:func:`magihuman.eval.toy_vision.part_colours`) in each 12-frame stretch of
the decoded clip (posterior mean, no clamp before the uint8 cast other than [-1, 1]) and the PSNR of the clip.
docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from magihuman.eval.toy_vision import part_colours
from magihuman.toy.clip import make_clip

STRETCH = 12


def load_vae(path: Path, width: int):
    """An ``AutoencoderKLWan`` of the toy width from a training checkpoint or a bundle's ``Wan2.2_VAE.pth``."""
    if path.suffix == ".pth":
        from magihuman.codecs.video_vae import VideoVAE

        return VideoVAE.from_official(path.parent, dtype=torch.float32).model
    from diffusers import AutoencoderKLWan
    from safetensors.torch import load_file

    from magihuman.codecs.video_vae import wan22_vae_config

    model = AutoencoderKLWan(**wan22_vae_config(width, width, 48))
    model.load_state_dict(load_file(str(path)))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="trainable.safetensors of a video_vae run, or Wan2.2_VAE.pth")
    parser.add_argument("--width", type=int, default=8, help="the VAE's base width (the toy recipe's 8)")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_vae(args.checkpoint, args.width).eval()
    right = total = 0
    psnrs = []
    for index in range(args.clips):
        clip = make_clip((7, 9999, index))
        pixels = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float()[None] / 127.5 - 1.0
        with torch.no_grad():
            decoded = model.decode(model.encode(pixels).latent_dist.mode()).sample
        frames = ((decoded[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        psnrs.append(10 * np.log10(255**2 / np.mean((frames.astype(np.float64) - clip.frames) ** 2)))
        row = []
        for start in range(0, len(frames), STRETCH):
            found = part_colours(frames[start : start + STRETCH])
            row.append(sum(found[p].name == getattr(clip.attributes, p) for p in ("hair", "shirt", "wall")))
        right += sum(row)
        total += 3 * len(row)
        print(f"clip {index}: parts right per {STRETCH}-frame stretch {row}, PSNR {psnrs[-1]:.1f} dB", flush=True)
    print(f"right {right}/{total}, median PSNR {np.median(psnrs):.1f} dB")


if __name__ == "__main__":
    main()
