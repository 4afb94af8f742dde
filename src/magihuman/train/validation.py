"""Validation samples during training: a few cached captions sampled with the model as it trains.

Each validation runs the shipped sampler (``base``: 32 FlowUniPC steps with CFG against the negative
prompt; ``distill``: 8 re-noise steps) from a fixed seed, so successive validations differ only by the
weights. With a checkpoint root the latents are decoded as ``magihuman generate`` decodes them, by the
Turbo-VAED decoder when the root has ``turbo_vae/`` (the default decoder, architecture.md §12.1) and by
the Wan2.2 VAE's own decoder otherwise, the sound by the Stable Audio VAE, and written as
``validation/step-NNNNNNN_<clip>.mp4``; without a root the latents are written as ``.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from magihuman.model.checkpoint import write_atomic
from magihuman.sampling.config import BASE_SAMPLER, DISTILL_SAMPLER, SamplerConfig
from magihuman.sampling.loop import denoise, draw_noise
from magihuman.sampling.records import Latents, TextConditioning
from magihuman.train.cache import LatentSample

#: Seed of the validation noise (the same at every validation).
VALIDATION_SEED = 1234


@torch.no_grad()
def sample_like(model, sample: LatentSample, negative: torch.Tensor | None, *, preset: str | SamplerConfig,
                seed: int = VALIDATION_SEED,
                image_latent: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate latents of ``sample``'s shapes from its caption's text states.

    Draw order as the pipeline: audio noise, then video noise, then the re-noise draws (pipeline.md 12).

    Args:
        model: a transformer (eval mode is the caller's business).
        sample: gives the text and the latent shapes.
        negative: ``[Nn, C]`` negative-prompt states (``base`` needs them).
        preset: ``"base"``, ``"distill"`` or a :class:`~magihuman.sampling.loop.SamplerConfig`.
        seed: noise seed.
        image_latent: ``[1, 48, 1, h, w]`` first frame for image-to-video, or None.

    Returns:
        ``(video [1, 48, T, h, w], audio [1, A, 64])`` float32 on the CPU.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    audio_frames = 4 * (sample.video_latent.shape[1] - 1) + 1
    audio = draw_noise((1, audio_frames, 64), generator, device)
    video = draw_noise((1, *sample.video_latent.shape), generator, device)
    config = preset if isinstance(preset, SamplerConfig) else BASE_SAMPLER if preset == "base" else DISTILL_SAMPLER
    text = sample.text_embeds[None].float().to(device)
    neg = negative[None].float().to(device) if negative is not None and config.cfg_number == 2 else None
    out = denoise(model, Latents(video, audio), TextConditioning(text, neg), config=config, generator=generator,
                  image_latent=None if image_latent is None else image_latent.to(device))
    return out.video.cpu(), out.audio.cpu()


class Validator:
    """Writes the validation outputs of a step.

    Args:
        folder: the run folder (outputs go to ``folder/validation``).
        samples: the cached samples to imitate (their captions and shapes).
        negative: negative-prompt states.
        preset: sampler, ``"base"`` or ``"distill"``.
        root: checkpoint root with ``stable-audio-open-1.0/`` and ``turbo_vae/`` or ``Wan2.2-TI2V-5B/`` for
            MP4s, or None.
    """

    def __init__(self, folder: Path, samples: list[LatentSample], negative: torch.Tensor, *, preset: str,
                 root: Path | None):
        self.folder = Path(folder) / "validation"
        self.samples, self.negative, self.preset = samples, negative, preset
        self.decoders = _Decoders(Path(root)) if root is not None else None

    def run(self, model, step: int, *, write: bool = True) -> list[Path]:
        """Sample every validation caption with ``model`` and write the files of ``step``.

        ``write=False`` only samples: the other processes of an FSDP2 run take part in the sharded
        forwards while rank 0 writes.
        """
        written = []
        for sample in self.samples:
            video, audio = sample_like(model, sample, self.negative, preset=self.preset)
            if not write:
                continue
            self.folder.mkdir(parents=True, exist_ok=True)
            stem = f"step-{step:07d}_{sample.clip_id}"
            if self.decoders is None:
                path = self.folder / f"{stem}.safetensors"
                write_atomic(path, lambda tmp, v=video, a=audio: save_file({"video_latent": v, "audio_latent": a},
                                                                           str(tmp)))
            else:
                path = self.decoders.write_mp4(video, audio, self.folder / f"{stem}.mp4")
            written.append(path)
        return written


class _Decoders:
    """The video decoder ``generate`` would use (Turbo-VAED when ``root/turbo_vae`` exists, else the Wan2.2
    VAE's) and the Stable Audio VAE decoder, float32 on the CPU (validation is small)."""

    def __init__(self, root: Path):
        from magihuman.codecs.audio_vae import AudioVAE
        from magihuman.pipeline.loading import ROOT_LAYOUT

        if (root / ROOT_LAYOUT["turbo_vae"]).is_dir():
            from magihuman.codecs.turbo_vae import TurboVAE

            self.video_decoder = TurboVAE.from_official(root / ROOT_LAYOUT["turbo_vae"], dtype=torch.float32)
        else:
            from magihuman.codecs.video_vae import VideoVAE

            self.video_decoder = VideoVAE.from_official(root / ROOT_LAYOUT["video_vae"], dtype=torch.float32)
        self.audio_vae = AudioVAE.from_official(root / ROOT_LAYOUT["audio_vae"])

    def write_mp4(self, video: torch.Tensor, audio: torch.Tensor, path: Path) -> Path:
        from magihuman.codecs.audio_vae import OUTPUT_SAMPLE_RATE, resample_to_output_rate
        from magihuman.pipeline.media import video_to_uint8, write_mp4

        frames = video_to_uint8(self.video_decoder.decode(video))
        waveform = resample_to_output_rate(self.audio_vae.decode(audio)[0].numpy())
        return write_mp4(path, frames, fps=25, audio=waveform, sample_rate=OUTPUT_SAMPLE_RATE, overwrite=True)
