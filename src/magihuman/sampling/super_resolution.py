"""Latent super-resolution: upsample the base latent, partly re-noise it, refine with the SR DiT (architecture.md §10.1).

1. Trilinear upsample of the final base video latent over (T, h, w) to the SR latent size, time unchanged,
   ``align_corners=True`` in float32 as the reference does (architecture.md §10.1). The MLX port of the
   reference switched to ``align_corners=False`` to fix ghosting (GAIR-NLP/daVinci-MagiHuman PR #42; architecture.md §10.1); that is available as
   an option but is **not** the default, because the SR checkpoints were trained against the reference.
2. Re-noise with the ZeroSNR DDPM pair at index 220: ``0.8389104*x + 0.5442696*eps`` (architecture.md §10.2, §10.1).
3. The SR model's audio input is ``0.7*eps_a + 0.3*audio_base``, fixed for all steps; its output is
   discarded and the base audio is the final audio (architecture.md §10.1).
4. Five FlowUniPC steps of the SR DiT from sigma 0.9998 (the timestep-free model infers the level), with v1
   coordinates (architecture.md §10.1, §3.2); the 1080p recipe uses local attention (architecture.md §2.2, §6.2).
5. Image-to-video: the image is re-encoded at the SR size and overwrites latent frame 0 (architecture.md §10.1).

Draw order (architecture.md §8.5): after the base stage's draws, the re-noise eps ``[1, 48, T, h_s, w_s]``, then the
audio-corruption eps ``[1, L_a, 64]``, from the same generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from magihuman.model.transformer import MagiHumanTransformer, sr1080_local_attn_layers  # noqa: F401 (re-exported)
from magihuman.sampling.config import SR_NOISE_INDEX, SuperResolutionStage
from magihuman.sampling.loop import StepCallback, denoise, draw_noise
from magihuman.sampling.records import Latents, TextConditioning
from magihuman.sampling.schedulers import zero_snr_signal_noise

#: Weight of the noise in the SR model's audio input (architecture.md §10.1 ``sr_audio_noise_scale``).
SR_AUDIO_NOISE_SCALE = 0.7
#: The reference's local-attention half-width in latent frames (architecture.md §6.2 ``frame_receptive_field``).
FRAME_RECEPTIVE_FIELD = 11


def upsample_latent(latent: torch.Tensor, size: tuple[int, int], *, align_corners: bool = True) -> torch.Tensor:
    """Trilinear upsample of ``[B, C, T, h, w]`` to ``[B, C, T, h_s, w_s]`` in float32 (architecture.md §10.1)."""
    return F.interpolate(latent.float(), size=(latent.shape[2], *size), mode="trilinear", align_corners=align_corners)


def renoise_latent(latent: torch.Tensor, noise: torch.Tensor, index: int = SR_NOISE_INDEX) -> torch.Tensor:
    """``a*x + sqrt(1 - a^2)*eps`` with the ZeroSNR signal coefficient at ``index`` (architecture.md §10.2, §10.1)."""
    if index == 0:
        return latent
    signal, noise_coefficient = zero_snr_signal_noise(index)
    return latent * signal + noise * noise_coefficient


def corrupt_audio(audio: torch.Tensor, noise: torch.Tensor, scale: float = SR_AUDIO_NOISE_SCALE) -> torch.Tensor:
    """The SR model's fixed audio input ``scale*eps + (1 - scale)*audio`` (architecture.md §10.1)."""
    return scale * noise + (1 - scale) * audio


def super_resolve(
    model: MagiHumanTransformer,
    latents: Latents,
    text: TextConditioning,
    *,
    stage: SuperResolutionStage,
    generator: torch.Generator,
    image_latent: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    batch_cfg: bool = False,
) -> Latents:
    """Refine a base video latent at the SR size (architecture.md §10.1).

    Args:
        model: the SR DiT (loaded with the local-attention layers for the 1080p recipe).
        latents: the final base stage: video ``[1, 48, T, h, w]`` float32 (frame 0 already restored) and
            audio ``[1, L_a, 64]`` (only corrupted into the SR model's input).
        text: the prompt (and negative) embeddings of the base stage.
        stage: the SR recipe (:class:`~magihuman.sampling.config.SuperResolutionStage`).
        generator: the request's generator, after the base stage's draws.
        image_latent: image-to-video: the image encoded at the SR size, ``[1, 48, 1, h_s, w_s]``.
        callback: per-step callback, as in :func:`~magihuman.sampling.loop.denoise` (its latents hold the SR
            model's corrupted audio input, not the final audio).
        batch_cfg: with ``sr_cfg_number = 2``, one batched call per step for both CFG passes
            (:func:`~magihuman.sampling.loop.denoise`).

    Returns:
        :class:`~magihuman.sampling.records.Latents` with the SR video ``[1, 48, T, h_s, w_s]`` float32 and
        the base audio ``latents.audio`` itself: the SR loop's audio output is discarded (architecture.md §10.1.5).
    """
    upsampled = upsample_latent(latents.video, stage.latent_size, align_corners=stage.align_corners)
    eps = draw_noise(upsampled.shape, generator, upsampled.device)
    eps_audio = draw_noise(latents.audio.shape, generator, latents.audio.device)
    start = Latents(renoise_latent(upsampled, eps, stage.noise_index), corrupt_audio(latents.audio.float(), eps_audio))

    def sr_model(video: torch.Tensor, audio: torch.Tensor, text_embeds: torch.Tensor, **kwargs):
        return model(video, audio, text_embeds, coords_style="v1", frame_receptive_field=FRAME_RECEPTIVE_FIELD,
                     **kwargs)

    refined = denoise(sr_model, start, text, config=stage.sampler, image_latent=image_latent, audio_fixed=True,
                      callback=callback, batch_cfg=batch_cfg)
    return Latents(refined.video, latents.audio)
