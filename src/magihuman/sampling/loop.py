"""Classifier-free guidance and the joint video/audio denoising loop (pipeline.md 4.5, 5, 7.1, 7.2, 12).

One step k of :func:`denoise` (pipeline.md 14 step 5):

1. TI2V: overwrite latent frame 0 with the clean image latent (pipeline.md 7.1 step 5, pitfall 20);
2. conditional model call; with ``cfg_number = 2`` a second call with the negative-prompt embedding
   (or both in one batched call, ``batch_cfg``), then ``v = v_u + g·(v_c - v_u)`` (pipeline.md 5);
3. update both streams: FlowUniPC (base model) or predict-x0-then-renoise (distilled model)
   (pipeline.md 4.4, 4.5); the audio stays untouched when it drives the video (pipeline.md 7.2).

After the loop frame 0 is overwritten once more. The model is timestep-free: t only selects the video
guidance scale (pitfall 1, 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from magihuman.model.packing import pad_text_batch
from magihuman.sampling.schedulers import DEFAULT_SHIFT, FlowUniPCScheduler, renoise_step, shifted_schedule

# Valid classifier-free-guidance modes: 1 = conditional pass only, 2 = conditional + negative pass
# (pipeline.md 5; anything else is a ValueError there too).
CFG_NUMBERS = (1, 2)
# Latent updates: the FlowUniPC multistep solver (base model) or the distilled re-noise step.
UPDATES = ("unipc", "renoise")
# Base-stage guidance (pipeline.md 1.2 `video_txt_guidance_scale` / `audio_txt_guidance_scale`, 5): the
# video uses 5.0 while t > 500 and a hard-coded 2.0 afterwards (pitfall 5); the audio uses 5.0 throughout.
VIDEO_GUIDANCE_SCALE = 5.0
VIDEO_GUIDANCE_SCALE_LATE = 2.0
GUIDANCE_SWITCH_TIMESTEP = 500
AUDIO_GUIDANCE_SCALE = 5.0

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How to run the denoising loop (pipeline.md 1.2 EvaluationConfig, 4.4, 4.5, 5).

    Attributes:
        num_steps: denoising steps N (>= 1).
        shift: flow time shift of the σ schedule (> 0).
        cfg_number: 1 (one conditional call per step) or 2 (conditional, then negative-prompt call).
        video_guidance_scale: video CFG scale while ``t > guidance_switch_timestep`` (cfg 2 only).
        video_guidance_scale_late: video CFG scale once ``t <= guidance_switch_timestep``.
        guidance_switch_timestep: the switch point (500, on integer timesteps in [0, 999]).
        audio_guidance_scale: audio CFG scale at every step (cfg 2 only).
        update: ``"unipc"`` (FlowUniPC, one scheduler per stream) or ``"renoise"`` (distilled step).
        first_frames_guidance_cap: ``(frames, cap)``: latent frames with index ``< frames`` use
            ``min(cap, video scale)`` (the super-resolution "cfg trick", pipeline.md 5: ``(13, 2.0)``);
            None (the base stage) applies one scale to every frame.

    Raises:
        ValueError: from ``__post_init__`` for an invalid value (e.g. ``cfg_number`` not in {1, 2}).
    """

    num_steps: int
    shift: float = DEFAULT_SHIFT
    cfg_number: int
    video_guidance_scale: float = VIDEO_GUIDANCE_SCALE
    video_guidance_scale_late: float = VIDEO_GUIDANCE_SCALE_LATE
    guidance_switch_timestep: int = GUIDANCE_SWITCH_TIMESTEP
    audio_guidance_scale: float = AUDIO_GUIDANCE_SCALE
    update: str
    first_frames_guidance_cap: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.num_steps) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {self.num_steps!r}")
        if not _is_number(self.shift) or self.shift <= 0:
            raise ValueError(f"shift must be a positive finite number, got {self.shift!r}")
        if self.cfg_number not in CFG_NUMBERS or not _is_int(self.cfg_number):
            raise ValueError(
                f"cfg_number must be 1 (conditional only) or 2 (conditional + negative prompt), got {self.cfg_number!r}"
            )
        for name in ("video_guidance_scale", "video_guidance_scale_late", "audio_guidance_scale"):
            if not _is_number(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not _is_int(self.guidance_switch_timestep):
            raise ValueError(f"guidance_switch_timestep must be an integer, got {self.guidance_switch_timestep!r}")
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {self.update!r}")
        cap = self.first_frames_guidance_cap
        if cap is not None and (len(cap) != 2 or not _is_int(cap[0]) or cap[0] < 0 or not _is_number(cap[1])):
            raise ValueError(f"first_frames_guidance_cap must be (frames >= 0, finite cap), got {cap!r}")


# The `base` example: 32 FlowUniPC steps with two-pass CFG (pipeline.md 1.3, 4.5 "base & cfg 2").
BASE_SAMPLER = SamplerConfig(num_steps=32, cfg_number=2, update="unipc")
# The `distill` example: 8 re-noise steps, conditional pass only (pipeline.md 1.3, 4.5 "base & cfg 1";
# the sampler_distill golden case).
DISTILL_SAMPLER = SamplerConfig(num_steps=8, cfg_number=1, update="renoise")
# Super-resolution stage as the shipped SR examples run it: 5 FlowUniPC steps, shift 5, conditional pass only
# (pipeline.md 1.3 `sr_cfg_number` 1, 8 step 6).
SR_SAMPLER = SamplerConfig(num_steps=5, cfg_number=1, update="unipc")
# Super-resolution with CFG (`sr_cfg_number` 2, the config default): video 3.5 at every step (no timestep
# switch), capped at 2.0 on latent frames < 13 (the "cfg trick"); audio guidance is computed by the reference
# but its result is discarded (pipeline.md 5, 8).
SR_SAMPLER_CFG = SamplerConfig(num_steps=5, cfg_number=2, update="unipc", video_guidance_scale=3.5,
                               guidance_switch_timestep=-1, first_frames_guidance_cap=(13, 2.0))


def video_guidance_scale(config: SamplerConfig, timestep: int | torch.Tensor) -> float:
    """Video CFG scale at integer timestep t: high while ``t > switch`` (500), else late (pipeline.md 5).

    With N = 32 the last five steps (t = 480, 416, 340, 249, 138) use the late scale 2.0; with N = 6 the
    last step (t = 499) does.
    """
    if int(timestep) > config.guidance_switch_timestep:
        return config.video_guidance_scale
    return config.video_guidance_scale_late


def video_guidance_per_frame(config: SamplerConfig, timestep: int, num_frames: int) -> float | torch.Tensor:
    """The video CFG scale, as a ``[1, 1, T, 1, 1]`` float32 tensor when the first-frames cap applies.

    Super-resolution with ``sr_cfg_number = 2`` (pipeline.md 5): every latent frame gets 3.5, except frames
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
    """Classifier-free guidance ``uncond + scale·(cond - uncond)`` (pipeline.md 5).

    Args:
        cond: velocity of the conditional call, float32, any shape.
        uncond: velocity of the negative-prompt call, same shape.
        scale: a float, or a tensor broadcastable to ``cond`` (e.g. ``[1, 1, T, 1, 1]`` per latent frame
            for the super-resolution "cfg trick", pipeline.md 5).

    Returns:
        The guided velocity, shape of ``cond``.
    """
    return uncond + scale * (cond - uncond)


@torch.no_grad()
def denoise(
    model: ModelFn,
    video_noise: torch.Tensor,
    audio_noise: torch.Tensor,
    text_embeds: torch.Tensor,
    negative_text_embeds: torch.Tensor | None = None,
    *,
    config: SamplerConfig,
    image_latent: torch.Tensor | None = None,
    audio_fixed: bool = False,
    generator: torch.Generator | None = None,
    renoise_noise: Sequence[tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    callback: StepCallback | None = None,
    batch_cfg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise a video latent and an audio latent jointly (pipeline.md 4.4, 4.5, 5, 7.1 step 5, 7.2, 14).

    ``model(video_latent, audio_latent, text_embeds) -> (video_velocity, audio_velocity)`` may be any
    callable, e.g. ``MagiHumanTransformer``. With ``cfg_number = 2`` it is called twice per step, first with
    ``text_embeds`` then with ``negative_text_embeds``, on the same latents. With ``batch_cfg`` the two
    passes are one call instead: the latents repeated, the two texts zero-padded to one length
    (:func:`~magihuman.model.packing.pad_text_batch`) and ``model(video, audio, text, text_lengths=lengths)``,
    which must keep the samples apart (``MagiHumanTransformer`` does: own coordinates, attention over
    each sample's real tokens only). That is exact, unlike packing both into one attention, which
    would mix them (pipeline.md 5); the velocities equal the two-pass ones up to the GEMMs' rounding
    for a different row count.

    Updates (pipeline.md 4.5 "which update is used"):

    * ``"unipc"``: one :class:`~magihuman.sampling.schedulers.FlowUniPCScheduler` for the video and one for the
      audio, fresh for this call.
    * ``"renoise"``: :func:`~magihuman.sampling.schedulers.renoise_step` with a fresh ε per stream and step.
      Draw order (pipeline.md 12): per step the video ε, then the audio ε, at every step including the
      last (σ = 0, where ε is multiplied by 0): 2·N draws of
      ``torch.randn(shape, generator=generator, dtype=torch.float32)`` on the generator's device (the CPU
      when ``generator`` is None, which then uses torch's global CPU generator), moved to the latent's
      device. ``renoise_noise`` replaces the draws (e.g. to replay recorded noise).

    Audio-driven video (``audio_fixed=True``, pipeline.md 7.2): ``audio_noise`` is then the clean audio
    latent, returned bit-identical. **Deviation from the reference:** its distilled (re-noise) loop ignores
    the flag and re-noises the given audio; here the audio stays fixed in both updates so that the given
    audio really drives the video. The audio ε is **still drawn** every step and discarded, so the draw
    sequence keeps the reference's order (video ε, audio ε per step, which it follows regardless of A2V,
    pipeline.md 4.5) and every video ε is the one the same generator gives with ``audio_fixed=False``.

    Args:
        model: callable as above (an ``nn.Module`` or any function).
        video_noise: initial video latent ``[B, 48, T, h, w]`` float32 (normalised Wan2.2 space).
        audio_noise: initial audio latent ``[B, A, 64]`` float32 (the clean driving audio if ``audio_fixed``).
        text_embeds: prompt embedding ``[B, Nt, C]``.
        negative_text_embeds: negative-prompt embedding ``[B, Nn, C]``; required when ``cfg_number == 2``,
            unused otherwise.
        config: a :class:`SamplerConfig` (e.g. :data:`BASE_SAMPLER` or :data:`DISTILL_SAMPLER`).
        image_latent: TI2V clean image latent ``[B, 48, 1, h, w]`` float32; written into latent frame 0 before
            every step (both CFG calls see it) and once after the loop (pipeline.md 7.1 step 5).
        audio_fixed: keep the audio latent fixed (audio-to-video).
        generator: source of the re-noise ε (``"renoise"`` only).
        renoise_noise: ``"renoise"`` only: N pairs ``(video_eps, audio_eps)`` used instead of drawing;
            ``audio_eps`` may be None when ``audio_fixed``.
        callback: ``callback(step_index, timestep, video_latent, audio_latent)`` after each update (e.g. a
            progress bar); the latents are the loop's state, read them only.
        batch_cfg: with ``cfg_number = 2``, run the conditional and the negative pass as one batched
            call (speed: one pass over the weights per step; memory: twice the activations).

    Returns:
        ``(video_latent, audio_latent)``, float32, shapes of the inputs; new tensors (inputs are not modified).

    Raises:
        TypeError: if ``model`` is not callable or ``config`` is not a :class:`SamplerConfig`.
        ValueError: for inconsistent shapes, non-float32 latents, a missing negative embedding with
            ``cfg_number == 2``, or ``renoise_noise`` of the wrong length / shapes / with ``"unipc"``; also
            if the model returns velocities whose shapes differ from the latents'.
    """
    _check_inputs(model, video_noise, audio_noise, text_embeds, negative_text_embeds, config, image_latent)
    sigmas, timesteps = shifted_schedule(config.num_steps, config.shift)
    update = _make_update(config, sigmas, video_noise, audio_noise, audio_fixed, generator, renoise_noise)

    video, audio = video_noise.clone(), audio_noise.clone()
    for k, t in enumerate(timesteps.tolist()):
        video = _overwrite_first_frame(video, image_latent)
        v_video, v_audio = _guided_velocity(model, video, audio, text_embeds, negative_text_embeds, config, t,
                                            batch_cfg)
        video, audio = update(k, video, audio, v_video, v_audio)
        if callback is not None:
            callback(k, t, video, audio)
    return _overwrite_first_frame(video, image_latent), audio


def _guided_velocity(
    model: ModelFn,
    video: torch.Tensor,
    audio: torch.Tensor,
    text_embeds: torch.Tensor,
    negative_text_embeds: torch.Tensor | None,
    config: SamplerConfig,
    timestep: int,
    batch_cfg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional call, then (cfg 2) the negative call and the guidance combination (pipeline.md 5)."""
    if config.cfg_number == 1:
        return _call_model(model, video, audio, text_embeds)
    if batch_cfg:
        text, lengths = pad_text_batch([text_embeds, negative_text_embeds.to(text_embeds.dtype)])
        both_video, both_audio = _call_model(model, torch.cat([video, video]), torch.cat([audio, audio]), text,
                                             text_lengths=lengths)
        (cond_video, uncond_video), (cond_audio, uncond_audio) = both_video.chunk(2), both_audio.chunk(2)
    else:
        cond_video, cond_audio = _call_model(model, video, audio, text_embeds)
        uncond_video, uncond_audio = _call_model(model, video, audio, negative_text_embeds)
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


def _overwrite_first_frame(video: torch.Tensor, image_latent: torch.Tensor | None) -> torch.Tensor:
    """TI2V conditioning: a copy of ``video`` with latent frame 0 replaced (pipeline.md 7.1 step 5)."""
    if image_latent is None:
        return video
    video = video.clone()
    video[:, :, :1] = image_latent.to(video.device)
    return video


class _UniPCUpdate:
    """One FlowUniPC scheduler per stream (pipeline.md 4.4, pitfall 30); none for a fixed audio."""

    def __init__(self, config: SamplerConfig, device: torch.device, audio_fixed: bool):
        self.video = self._scheduler(config, device)
        self.audio = None if audio_fixed else self._scheduler(config, device)

    @staticmethod
    def _scheduler(config: SamplerConfig, device: torch.device) -> FlowUniPCScheduler:
        scheduler = FlowUniPCScheduler(shift=config.shift)
        scheduler.set_timesteps(config.num_steps, device=device)
        return scheduler

    def __call__(self, k, video, audio, v_video, v_audio):
        video = self.video.step(v_video, video)
        if self.audio is not None:
            audio = self.audio.step(v_audio, audio)
        return video, audio


class _RenoiseUpdate:
    """Distilled re-noise step, video then audio, each with its own ε (pipeline.md 4.5)."""

    def __init__(self, sigmas, audio_fixed, generator, renoise_noise):
        self.sigmas = sigmas
        self.audio_fixed = audio_fixed
        self.generator = generator
        self.renoise_noise = renoise_noise

    def __call__(self, k, video, audio, v_video, v_audio):
        eps_video, eps_audio = self._noise(k, video, audio)
        video = renoise_step(video, v_video, self.sigmas[k], self.sigmas[k + 1], eps_video)
        if not self.audio_fixed:
            audio = renoise_step(audio, v_audio, self.sigmas[k], self.sigmas[k + 1], eps_audio)
        return video, audio

    def _noise(self, k, video, audio):
        if self.renoise_noise is not None:
            eps_video, eps_audio = self.renoise_noise[k]
            return eps_video.to(video.device), None if eps_audio is None else eps_audio.to(audio.device)
        eps_video = draw_noise(video.shape, self.generator, video.device)  # video first, then audio (pipeline.md 12)
        eps_audio = draw_noise(audio.shape, self.generator, audio.device)  # drawn even when the audio is fixed
        return eps_video, eps_audio


def draw_noise(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """One float32 standard-normal draw of ``shape`` on the generator's device (the CPU when ``generator``
    is None, then torch's global CPU generator), moved to ``device``.

    Every random draw of a request goes through here, so a seeded CPU generator gives the same numbers
    on every device (pipeline.md 12 lists the draw order).
    """
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=source).to(device)


def _make_update(config, sigmas, video_noise, audio_noise, audio_fixed, generator, renoise_noise):
    if config.update == "unipc":
        if renoise_noise is not None:
            raise ValueError('renoise_noise is only used by update="renoise", but the config uses "unipc"')
        return _UniPCUpdate(config, video_noise.device, audio_fixed)
    if renoise_noise is not None:
        _check_renoise_noise(renoise_noise, config.num_steps, video_noise, audio_noise, audio_fixed)
    return _RenoiseUpdate(sigmas, audio_fixed, generator, renoise_noise)


def _check_renoise_noise(renoise_noise, num_steps, video_noise, audio_noise, audio_fixed) -> None:
    if len(renoise_noise) != num_steps:
        raise ValueError(f"renoise_noise has {len(renoise_noise)} entries, expected one per step ({num_steps})")
    for k, (eps_video, eps_audio) in enumerate(renoise_noise):
        if eps_video.shape != video_noise.shape:
            raise ValueError(
                f"renoise_noise[{k}] video eps has shape {tuple(eps_video.shape)}, expected {tuple(video_noise.shape)}"
            )
        if eps_audio is None and audio_fixed:
            continue
        if eps_audio is None or eps_audio.shape != audio_noise.shape:
            got = None if eps_audio is None else tuple(eps_audio.shape)
            raise ValueError(f"renoise_noise[{k}] audio eps has shape {got}, expected {tuple(audio_noise.shape)}")


def _check_inputs(model, video, audio, text, negative, config, image_latent) -> None:
    """Validate types, ranks, dtypes and batch/shape consistency before the first model call."""
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a SamplerConfig, got {type(config).__name__}")
    _check_rank("video_noise", video, 5, "[B, 48, T, h, w]")
    _check_rank("audio_noise", audio, 3, "[B, A, 64]")
    _check_rank("text_embeds", text, 3, "[B, Nt, C]")
    for name, tensor in (("video_noise", video), ("audio_noise", audio)):
        if tensor.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {tensor.dtype}")
    if config.cfg_number == 2:
        if negative is None:
            raise ValueError("cfg_number=2 needs negative_text_embeds for the unconditional pass")
        _check_rank("negative_text_embeds", negative, 3, "[B, Nn, C]")
    batch = video.shape[0]
    batches = {"audio_noise": audio.shape[0], "text_embeds": text.shape[0]}
    if config.cfg_number == 2:
        batches["negative_text_embeds"] = negative.shape[0]
    for name, size in batches.items():
        if size != batch:
            raise ValueError(f"{name} has batch size {size}, video_noise has {batch}")
    if image_latent is not None:
        _check_image_latent(image_latent, video)


def _check_image_latent(image_latent: torch.Tensor, video: torch.Tensor) -> None:
    batch, channels, _, height, width = video.shape
    expected = (batch, channels, 1, height, width)
    if tuple(image_latent.shape) != expected:
        raise ValueError(f"image_latent has shape {tuple(image_latent.shape)}, expected {expected} [B, 48, 1, h, w]")
    if image_latent.dtype != torch.float32:
        raise ValueError(f"image_latent must be float32, got {image_latent.dtype}")


def _check_rank(name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != ndim:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a {ndim}-d tensor {layout}, got {got}")

