"""Classifier-free guidance rules (architecture.md §8.4).

* the video scale switches from ``video_guidance_scale`` (5.0) to ``video_guidance_scale_late`` (2.0) once
  the integer timestep is ``<= 500`` (architecture.md §8.4); the audio uses one scale throughout;
* super-resolution with ``sr_cfg_number = 2`` caps the scale of the first 13 latent frames at 2.0;
* the combination is ``v = v_u + g·(v_c - v_u)``; :func:`guided_velocity` runs the conditional and the
  negative-prompt pass (as two calls, or one batched call) and combines them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from magihuman.model.packing import pad_text_batch
from magihuman.sampling.config import SamplerConfig
from magihuman.sampling.records import Latents, TextConditioning

#: ``model(video [B, 48, T, h, w], audio [B, A, 64], text [B, Nt, C], **kwargs) -> (v_video, v_audio)``.
ModelFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def video_guidance_scale(config: SamplerConfig, timestep: int | torch.Tensor) -> float:
    """Video CFG scale at integer timestep t: high while ``t > switch`` (500), else late (architecture.md §8.4).

    With N = 32 the last five steps (t = 480, 416, 340, 249, 138) use the late scale 2.0; with N = 6 the
    last step (t = 499) does.
    """
    if int(timestep) > config.guidance_switch_timestep:
        return config.video_guidance_scale
    return config.video_guidance_scale_late


def video_guidance_per_frame(config: SamplerConfig, timestep: int, num_frames: int) -> float | torch.Tensor:
    """The video CFG scale, as a ``[1, 1, T, 1, 1]`` float32 tensor when the first-frames cap applies.

    Super-resolution with ``sr_cfg_number = 2`` (architecture.md §8.4): every latent frame gets 3.5, except frames
    ``< 13`` which get ``min(2.0, 3.5) = 2.0``; there is no timestep switch in SR.
    """
    scale = video_guidance_scale(config, timestep)
    if config.first_frames_guidance_cap is None:
        return scale
    frames, cap = config.first_frames_guidance_cap
    per_frame = torch.full((1, 1, num_frames, 1, 1), float(scale), dtype=torch.float32)
    per_frame[:, :, :frames] = min(float(cap), float(scale))
    return per_frame


def apply_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale·(cond - uncond)`` (architecture.md §8.4).

    Args:
        cond: velocity of the conditional call, float32, any shape.
        uncond: velocity of the negative-prompt call, same shape.
        scale: a float, or a tensor broadcastable to ``cond`` (e.g. ``[1, 1, T, 1, 1]`` per latent frame
            for the super-resolution "cfg trick", architecture.md §8.4).

    Returns:
        The guided velocity, shape of ``cond``.
    """
    return uncond + scale * (cond - uncond)


def guided_velocity(
    model: ModelFn, latents: Latents, text: TextConditioning, config: SamplerConfig, timestep: int,
    batch_cfg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The velocity one denoising step uses (architecture.md §8.4).

    With ``cfg_number = 1`` the conditional call's velocities. With ``cfg_number = 2`` the conditional call,
    then the call with ``text.negative`` (or both in one batch-2 call with ``batch_cfg``: the latents
    repeated, the two texts zero-padded to one length and ``text_lengths`` passed so the model keeps the
    samples apart), combined by :func:`apply_guidance` with the video scale of :func:`video_guidance_per_frame`
    and the audio scale of the config.

    Args:
        model: the velocity model (see :data:`ModelFn`).
        latents: the current state (:class:`~magihuman.sampling.records.Latents`).
        text: the conditioning; ``negative`` must be set when ``cfg_number == 2``.
        config: the sampler.
        timestep: the step's integer timestep in [0, 999] (selects the video scale only).
        batch_cfg: one batched call instead of two (cfg 2 only).

    Returns:
        ``(v_video [B, 48, T, h, w], v_audio [B, A, 64])`` float32.

    Raises:
        ValueError: if the model returns velocities whose shapes differ from the latents'.
    """
    video, audio = latents.video, latents.audio
    if config.cfg_number == 1:
        return _call_model(model, video, audio, text.prompt)
    if batch_cfg:
        both_text, lengths = pad_text_batch([text.prompt, text.negative.to(text.prompt.dtype)])
        both_video, both_audio = _call_model(model, torch.cat([video, video]), torch.cat([audio, audio]), both_text,
                                             text_lengths=lengths)
        (cond_video, uncond_video), (cond_audio, uncond_audio) = both_video.chunk(2), both_audio.chunk(2)
    else:
        cond_video, cond_audio = _call_model(model, video, audio, text.prompt)
        uncond_video, uncond_audio = _call_model(model, video, audio, text.negative)
    return (
        apply_guidance(cond_video, uncond_video,
                       _on(video_guidance_per_frame(config, timestep, video.shape[2]), video.device)),
        apply_guidance(cond_audio, uncond_audio, config.audio_guidance_scale),
    )


def _on(scale: float | torch.Tensor, device: torch.device) -> float | torch.Tensor:
    return scale.to(device) if isinstance(scale, torch.Tensor) else scale


def _call_model(
    model: ModelFn, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    v_video, v_audio = model(video, audio, text, **kwargs)
    if v_video.shape != video.shape or v_audio.shape != audio.shape:
        raise ValueError(
            f"the model returned velocities of shapes {tuple(v_video.shape)} and {tuple(v_audio.shape)}, "
            f"expected the latents' {tuple(video.shape)} and {tuple(audio.shape)}"
        )
    return v_video, v_audio
