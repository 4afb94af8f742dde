"""What do a toy bundle's codecs keep? The ceiling the transformer can reach on each toy metric.

    python benchmarks/codec_ceiling.py --root WORK/bundle [--clips 8] [--first-frame] [--json OUT.json]
    python benchmarks/codec_ceiling.py --video-checkpoint WORK/runs/video_vae/checkpoints/step-N/trainable.safetensors \
        --audio-checkpoint WORK/runs/audio_vae/checkpoints/step-N/trainable.safetensors --width 16 --audio-width 12

The transformer generates latents; the video and audio codecs turn them into the MP4 the eval kit scores. A
codec that loses the mouth or the pitch caps the sync and pitch metrics no matter how well the transformer
learns. For toy clips no training stream draws (seed ``(7, 9999, i)``), this encodes the real video with the
bundle's Wan2.2 VAE (posterior mean) and decodes it with the Turbo decoder and with the Wan decoder, and
round-trips the voice through the Stable Audio VAE, then scores the results with the eval kit's toy measures
(with training checkpoints instead of a bundle: the Wan decoder only, and only the codecs given):

* video: part colours right (:func:`magihuman.eval.toy_vision.part_colours`), frames where any mouth pixel
  is found, the correlation of the decoded mouth opening with the drawn one
  (:func:`magihuman.eval.toy_vision.toy_mouth_opening`), PSNR;
* audio: voice pitch and spoken word count kept (:func:`magihuman.eval.toy_speech.analyse_toy_speech`),
  and the fundamentals before and after;
* with ``--first-frame`` (first-frame clips, ``--root``): frame 0's PSNR as decoded, after the MP4 writer's H.264
  round trip (what ``magihuman eval`` scores), the drawn frame's own round trip, and the share of frame 0's squared
  error that lies on the drawing's edges (pixels within one of a colour change): the ceiling of the first-frame
  target.

docs/benchmarks.md ("Toy codec ceiling") has the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from magihuman.eval.fidelity import psnr
from magihuman.eval.toy_speech import analyse_toy_speech
from magihuman.eval.toy_vision import part_colours, toy_mouth_opening
from magihuman.toy.clip import make_clip

PARTS = ("hair", "shirt", "wall")


def _mp4_round_trip(frames: np.ndarray) -> np.ndarray:
    """``uint8 [F, H, W, 3]`` through the pipeline's MP4 writer and the eval kit's reader."""
    import tempfile

    from magihuman.eval.clips import read_clip
    from magihuman.pipeline.media.mp4 import write_mp4

    with tempfile.TemporaryDirectory() as folder:
        path = write_mp4(Path(folder) / "clip.mp4", frames, fps=25)
        return read_clip(path).frames


def _first_frame_scores(clip, frames: np.ndarray) -> dict:
    """Frame 0 as decoded and after an H.264 round trip, and the share of its squared error on the edges."""
    from scipy.ndimage import binary_dilation

    drawn = clip.frames[0]
    change = np.zeros(drawn.shape[:2], bool)
    change[:-1] |= np.any(drawn[1:] != drawn[:-1], -1)
    change[:, :-1] |= np.any(drawn[:, 1:] != drawn[:, :-1], -1)
    edges = binary_dilation(change)
    error = ((frames[0].astype(np.float64) - drawn) ** 2).sum(-1)
    return {"psnr_db": psnr(frames[0], drawn), "mp4_psnr_db": psnr(_mp4_round_trip(frames)[0], drawn),
            "edge_error_share": float(error[edges].sum() / error.sum())}


def _uint8(video: torch.Tensor) -> np.ndarray:
    """``[1, 3, F, H, W]`` in [-1, 1] -> ``uint8 [F, H, W, 3]``."""
    return ((video[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()


def _video_scores(clip, frames: np.ndarray) -> dict:
    found = part_colours(frames)
    drawn, seen = toy_mouth_opening(clip.frames), toy_mouth_opening(frames)
    correlation = float(np.corrcoef(drawn, seen)[0, 1]) if seen.std() > 0 else float("nan")
    mse = np.mean((frames.astype(np.float64) - clip.frames) ** 2)
    return {"colours_right": sum(found[p].name == getattr(clip.attributes, p) for p in PARTS),
            "mouth_frames_pct": 100.0 * float(np.mean(seen > 0)), "mouth_correlation": correlation,
            "psnr_db": float(10 * np.log10(255**2 / mse))}


def _load_codecs(args) -> tuple[dict, object, object]:
    """``({decoder name: decode(latent)}, encode(pixels) or None, audio AutoencoderOobleck or None)``."""
    from safetensors.torch import load_file

    from magihuman.codecs.audio_vae import AudioVAE, build_audio_vae
    from magihuman.codecs.turbo_vae import TurboVAE
    from magihuman.codecs.video_vae import VideoVAE, wan22_vae_config
    from magihuman.demo.random_codecs import sao_model_config

    if args.root is not None:
        vae = VideoVAE.from_official(args.root / "Wan2.2-TI2V-5B", dtype=torch.float32)
        turbo = TurboVAE.from_official(args.root / "turbo_vae", dtype=torch.float32)
        audio = AudioVAE.from_official(args.root / "stable-audio-open-1.0", dtype=torch.float32).model
        return {"turbo": turbo.decode, "wan": vae.decode}, vae.encode, audio
    decoders, encode, audio = {}, None, None
    if args.video_checkpoint is not None:
        from diffusers import AutoencoderKLWan

        model = AutoencoderKLWan(**wan22_vae_config(args.width, args.width, 48)).eval()
        model.load_state_dict(load_file(str(args.video_checkpoint)))
        encode = lambda pixels: model.encode(pixels).latent_dist.mode()  # noqa: E731 (raw latents both ways)
        decoders["wan"] = lambda latent: model.decode(latent).sample
    if args.audio_checkpoint is not None:
        audio = build_audio_vae(sao_model_config(args.audio_width)).eval()
        audio.load_state_dict(load_file(str(args.audio_checkpoint)))
    return decoders, encode, audio


def _by_skin(rows: list[dict], decoder: str) -> dict:
    """Per skin tone, one decoder's clips, clips with a mouth found and mean mouth frames: a codec can lose the face
    on one tone while the means look fair (docs/toy_world.md)."""
    out = {}
    for skin in sorted({r["skin"] for r in rows}):
        scores = [r[decoder] for r in rows if r["skin"] == skin]
        out[skin] = {"clips": len(scores), "clips_with_a_mouth": sum(s["mouth_frames_pct"] > 0 for s in scores),
                     "mouth_frames_pct": float(np.mean([s["mouth_frames_pct"] for s in scores]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="a checkpoint root (WORK/bundle)")
    parser.add_argument("--video-checkpoint", type=Path, help="instead of --root: a video_vae run's "
                        "trainable.safetensors")
    parser.add_argument("--audio-checkpoint", type=Path, help="instead of --root: an audio_vae run's "
                        "trainable.safetensors")
    parser.add_argument("--width", type=int, default=16, help="the video checkpoint's base width (the recipe's)")
    parser.add_argument("--audio-width", type=int, default=12, help="the audio checkpoint's width (the recipe's)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the per-clip figures here")
    parser.add_argument("--first-frame", action="store_true", help="first-frame clips, and frame 0's fidelity "
                        "(with --root)")
    parser.add_argument("--held-out-shirt", action="store_true", help="clips with the shirt colours the base never "
                        "saw (the LoRA's, HELD_OUT_SHIRT_COLOURS): can the codecs carry them?")
    args = parser.parse_args()
    if (args.root is None) == (args.video_checkpoint is None and args.audio_checkpoint is None):
        parser.error("give --root, or one or both of --video-checkpoint and --audio-checkpoint")
    if args.first_frame and args.root is None:
        parser.error("--first-frame needs --root (the Turbo decoder)")
    torch.set_num_threads(args.threads)
    from scipy.signal import resample_poly

    from magihuman.codecs.audio_vae import MODEL_SAMPLE_RATE

    decoders, encode, audio_vae = _load_codecs(args)
    from magihuman.toy.palette import HELD_OUT_SHIRT_COLOURS

    shirts = {"shirt_colours": HELD_OUT_SHIRT_COLOURS} if args.held_out_shirt else {}
    rows = []
    for index in range(args.clips):
        clip = make_clip((7, 9999, index), variant="i2v" if args.first_frame else None, **shirts)
        row: dict = {"clip": index, "skin": clip.attributes.skin}
        if args.first_frame:
            row["drawn_mp4_psnr_db"] = psnr(_mp4_round_trip(clip.frames)[0], clip.frames[0])
        with torch.no_grad():
            if encode is not None:
                pixels = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float()[None] / 127.5 - 1.0
                latent = encode(pixels)
                for name, decode in decoders.items():
                    frames = _uint8(decode(latent))
                    row[name] = _video_scores(clip, frames)
                    if args.first_frame:
                        row[name]["first_frame"] = _first_frame_scores(clip, frames)
            if audio_vae is not None:
                wave = resample_poly(clip.audio, MODEL_SAMPLE_RATE // 100, clip.sample_rate // 100, axis=-1)
                wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
                round_trip = audio_vae.decode(audio_vae.encode(wave).latent_dist.mode()).sample
                before = analyse_toy_speech(wave[0].numpy(), MODEL_SAMPLE_RATE)
                after = analyse_toy_speech(round_trip[0, :, : wave.shape[-1]].numpy(), MODEL_SAMPLE_RATE)
                row["audio"] = {"pitch_kept": before.pitch == after.pitch, "words_kept": before.words == after.words,
                                "f0_hz": [round(before.f0_hz, 1), round(after.f0_hz, 1)],
                                "words": [before.words, after.words]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary: dict = {"clips": len(rows)}
    for name in decoders:
        scores = [r[name] for r in rows]
        correlations = [s["mouth_correlation"] for s in scores if np.isfinite(s["mouth_correlation"])]
        summary[name] = {
            "colours_right_pct": 100.0 * sum(s["colours_right"] for s in scores) / (3 * len(rows)),
            "mouth_frames_pct": float(np.mean([s["mouth_frames_pct"] for s in scores])),
            "median_mouth_correlation": float(np.median(correlations)) if correlations else None,
            "median_psnr_db": float(np.median([s["psnr_db"] for s in scores])),
            "by_skin": _by_skin(rows, name)}
        if args.first_frame:
            summary[name]["first_frame_median"] = {
                key: float(np.median([s["first_frame"][key] for s in scores]))
                for key in ("psnr_db", "mp4_psnr_db", "edge_error_share")}
    if args.first_frame:
        summary["drawn_mp4_median_psnr_db"] = float(np.median([r["drawn_mp4_psnr_db"] for r in rows]))
    if audio_vae is not None:
        summary["audio"] = {"pitch_kept_pct": 100.0 * float(np.mean([r["audio"]["pitch_kept"] for r in rows])),
                            "words_kept_pct": 100.0 * float(np.mean([r["audio"]["words_kept"] for r in rows]))}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
