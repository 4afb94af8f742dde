"""The joint video/audio denoising loop (architecture.md §8.3, §8.4, §9.1, §9.2, §8.5) and the one noise draw.

One step k of :func:`denoise` (architecture.md §1.2):

1. hold the clean positions: TI2V writes the clean image latent over latent frame 0 (architecture.md §9.1); a
   :class:`~magihuman.sampling.conditioning.CleanCondition` writes any masked video frames and audio latents;
2. the guided velocity (:func:`magihuman.sampling.guidance.guided_velocity`): the conditional model call,
   and with ``cfg_number = 2`` the negative-prompt call, then ``v = v_u + g·(v_c - v_u)`` (architecture.md §8.4);
3. update both streams: FlowUniPC (base model) or predict-x0-then-renoise (distilled model)
   (architecture.md §8.2, §8.3); the audio stays untouched when it drives the video (architecture.md §9.2).

After the loop the clean positions are written once more. The model is timestep-free: t only selects the video
guidance scale (architecture.md §8.1, §8.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from magihuman.sampling.conditioning import CleanCondition
from magihuman.sampling.config import SamplerConfig
from magihuman.sampling.guidance import ModelFn, guided_velocity
from magihuman.sampling.records import Latents, TextConditioning
from magihuman.sampling.schedulers import (
    FlowUniPCScheduler,
    renoise_step,
    shifted_schedule,
)

#: ``callback(step_index, timestep, latents)`` after each update; ``latents`` is the loop's state (read only).
StepCallback = Callable[[int, int, Latents], None]


@torch.no_grad()
def denoise(
    model: ModelFn,
    latents: Latents,
    text: TextConditioning,
    *,
    config: SamplerConfig,
    image_latent: torch.Tensor | None = None,
    condition: CleanCondition | None = None,
    audio_fixed: bool = False,
    generator: torch.Generator | None = None,
    renoise_noise: Sequence[tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    callback: StepCallback | None = None,
    batch_cfg: bool = False,
) -> Latents:
    """Denoise a video latent and an audio latent jointly (architecture.md §8.2, §8.3, §8.4, §9.1, §9.2, §1.2).

    ``model(video_latent, audio_latent, text_embeds) -> (video_velocity, audio_velocity)`` may be any
    callable, e.g. ``MagiHumanTransformer``. With ``cfg_number = 2`` it is called twice per step, first with
    ``text.prompt`` then with ``text.negative``, on the same latents. With ``batch_cfg`` the two
    passes are one call instead: the latents repeated, the two texts zero-padded to one length
    (:func:`~magihuman.model.packing.pad_text_batch`) and ``model(video, audio, text, text_lengths=lengths)``,
    which must keep the samples apart (``MagiHumanTransformer`` does: own coordinates, attention over
    each sample's real tokens only). That is exact, unlike packing both into one attention, which
    would mix them (architecture.md §8.4); the velocities equal the two-pass ones up to the GEMMs' rounding
    for a different row count.

    Updates (architecture.md §8.3):

    * ``"unipc"``: one :class:`~magihuman.sampling.schedulers.FlowUniPCScheduler` for the video and one for the
      audio, fresh for this call.
    * ``"renoise"``: :func:`~magihuman.sampling.schedulers.renoise_step` with a fresh ε per stream and step.
      Draw order (architecture.md §8.5): per step the video ε, then the audio ε, at every step including the
      last (σ = 0, where ε is multiplied by 0): 2·N draws of :func:`draw_noise`. ``renoise_noise``
      replaces the draws (e.g. to replay recorded noise).

    Audio-driven video (``audio_fixed=True``, architecture.md §9.2): ``latents.audio`` is then the clean audio
    latent, returned bit-identical. **Deviation from the reference:** its distilled (re-noise) loop ignores
    the flag and re-noises the given audio; here the audio stays fixed in both updates so that the given
    audio really drives the video. The audio ε is **still drawn** every step and discarded, so the draw
    sequence keeps the reference's order (video ε, audio ε per step, which it follows regardless of A2V,
    architecture.md §8.3) and every video ε is the one the same generator gives with ``audio_fixed=False``.

    Args:
        model: callable as above (an ``nn.Module`` or any function).
        latents: the initial state: video ``[B, 48, T, h, w]`` and audio ``[B, A, 64]`` float32 noise
            (normalised latent spaces; the audio is the clean driving audio if ``audio_fixed``).
        text: prompt embedding ``[B, Nt, C]`` and, required when ``cfg_number == 2``, the negative one.
        config: a :class:`~magihuman.sampling.config.SamplerConfig` (e.g. ``BASE_SAMPLER``, ``DISTILL_SAMPLER``).
        image_latent: TI2V clean image latent ``[B, 48, 1, h, w]`` float32; written into latent frame 0 before
            every step (both CFG calls see it) and once after the loop (architecture.md §9.1). The same as
            ``condition=CleanCondition.first_frame(image_latent, T)``.
        condition: clean latent positions (:class:`~magihuman.sampling.conditioning.CleanCondition`): the masked
            video frames and audio latents are written over the state before every step and once after the
            loop, as the image latent is (extend, retake, windowed long clips; docs/long_clips.md).
        audio_fixed: keep the audio latent fixed (audio-to-video).
        generator: source of the re-noise ε (``"renoise"`` only).
        renoise_noise: ``"renoise"`` only: N pairs ``(video_eps, audio_eps)`` used instead of drawing;
            ``audio_eps`` may be None when ``audio_fixed``.
        callback: ``callback(step_index, timestep, latents)`` after each update (progress, cancellation:
            an exception it raises stops the loop and propagates); read the latents only.
        batch_cfg: with ``cfg_number = 2``, run the conditional and the negative pass as one batched
            call (speed: one pass over the weights per step; memory: twice the activations).

    Returns:
        The final :class:`~magihuman.sampling.records.Latents`, float32, shapes of the inputs; new tensors
        (the inputs are not modified).

    Raises:
        TypeError: if ``model`` is not callable, ``config`` is not a ``SamplerConfig`` or ``latents`` /
            ``text`` are not the records.
        ValueError: for inconsistent batch sizes, a missing negative embedding with ``cfg_number == 2``, a bad
            ``image_latent``, both ``image_latent`` and ``condition``, a ``condition`` that does not fit the latents
            (or holds audio while ``audio_fixed``), or ``renoise_noise`` of the wrong length / shapes / with
            ``"unipc"``; also
            if the model returns velocities whose shapes differ from the latents'.
    """
    _check_inputs(model, latents, text, config, image_latent)
    condition = _clean_condition(latents, image_latent, condition, audio_fixed)
    sigmas, timesteps = shifted_schedule(config.num_steps, config.shift)
    update = _make_update(config, sigmas, latents, audio_fixed, generator, renoise_noise)

    state = latents.clone()
    for k, t in enumerate(timesteps.tolist()):
        state = _hold_clean(state, condition)
        v_video, v_audio = guided_velocity(model, state, text, config, t, batch_cfg)
        state = update(k, state, v_video, v_audio)
        if callback is not None:
            callback(k, t, state)
    return _hold_clean(state, condition)


def draw_noise(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """One float32 standard-normal draw of ``shape`` on the generator's device (the CPU when ``generator``
    is None, then torch's global CPU generator), moved to ``device``.

    Every random draw of a request goes through here, so a seeded CPU generator gives the same numbers
    on every device (architecture.md §8.5 lists the draw order).
    """
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=source).to(device)


def _clean_condition(latents: Latents, image_latent: torch.Tensor | None, condition: CleanCondition | None,
                     audio_fixed: bool) -> CleanCondition | None:
    """The one condition of a run: the image latent as frame 0 (architecture.md §9.1) or the given one, checked."""
    if image_latent is not None:
        if condition is not None:
            raise ValueError("pass image_latent or condition, not both (CleanCondition.first_frame holds an image)")
        condition = CleanCondition.first_frame(image_latent, latents.video.shape[2])
    if condition is not None:
        if not isinstance(condition, CleanCondition):
            raise TypeError(f"condition must be a CleanCondition, got {type(condition).__name__}")
        condition.check(latents, audio_fixed=audio_fixed)
    return condition


def _hold_clean(state: Latents, condition: CleanCondition | None) -> Latents:
    """The state with the clean positions written over (architecture.md §9.1); the state itself without a condition."""
    return state if condition is None else condition.apply(state)


class _UniPCUpdate:
    """One FlowUniPC scheduler per stream (architecture.md §8.2); none for a fixed audio."""

    def __init__(self, config: SamplerConfig, device: torch.device, audio_fixed: bool):
        self.video = self._scheduler(config, device)
        self.audio = None if audio_fixed else self._scheduler(config, device)

    @staticmethod
    def _scheduler(config: SamplerConfig, device: torch.device) -> FlowUniPCScheduler:
        scheduler = FlowUniPCScheduler(shift=config.shift)
        scheduler.set_timesteps(config.num_steps, device=device)
        return scheduler

    def __call__(self, k: int, state: Latents, v_video: torch.Tensor, v_audio: torch.Tensor) -> Latents:
        video = self.video.step(v_video, state.video)
        audio = state.audio if self.audio is None else self.audio.step(v_audio, state.audio)
        return Latents(video, audio)


class _RenoiseUpdate:
    """Distilled re-noise step, video then audio, each with its own ε (architecture.md §8.3)."""

    def __init__(self, sigmas, audio_fixed, generator, renoise_noise):
        self.sigmas = sigmas
        self.audio_fixed = audio_fixed
        self.generator = generator
        self.renoise_noise = renoise_noise

    def __call__(self, k: int, state: Latents, v_video: torch.Tensor, v_audio: torch.Tensor) -> Latents:
        eps_video, eps_audio = self._noise(k, state.video, state.audio)
        video = renoise_step(state.video, v_video, self.sigmas[k], self.sigmas[k + 1], eps_video)
        audio = state.audio
        if not self.audio_fixed:
            audio = renoise_step(audio, v_audio, self.sigmas[k], self.sigmas[k + 1], eps_audio)
        return Latents(video, audio)

    def _noise(self, k, video, audio):
        if self.renoise_noise is not None:
            eps_video, eps_audio = self.renoise_noise[k]
            return eps_video.to(video.device), None if eps_audio is None else eps_audio.to(audio.device)
        # video first, then audio (architecture.md §8.5)
        eps_video = draw_noise(video.shape, self.generator, video.device)
        eps_audio = draw_noise(audio.shape, self.generator, audio.device)  # drawn even when the audio is fixed
        return eps_video, eps_audio


def _make_update(config, sigmas, latents: Latents, audio_fixed, generator, renoise_noise):
    if config.update == "unipc":
        if renoise_noise is not None:
            raise ValueError('renoise_noise is only used by update="renoise", but the config uses "unipc"')
        return _UniPCUpdate(config, latents.video.device, audio_fixed)
    if renoise_noise is not None:
        _check_renoise_noise(renoise_noise, config.num_steps, latents, audio_fixed)
    return _RenoiseUpdate(sigmas, audio_fixed, generator, renoise_noise)


def _check_renoise_noise(renoise_noise, num_steps, latents: Latents, audio_fixed) -> None:
    if len(renoise_noise) != num_steps:
        raise ValueError(f"renoise_noise has {len(renoise_noise)} entries, expected one per step ({num_steps})")
    video_shape, audio_shape = tuple(latents.video.shape), tuple(latents.audio.shape)
    for k, (eps_video, eps_audio) in enumerate(renoise_noise):
        if tuple(eps_video.shape) != video_shape:
            raise ValueError(f"renoise_noise[{k}] video eps has shape {tuple(eps_video.shape)}, expected {video_shape}")
        if eps_audio is None and audio_fixed:
            continue
        if eps_audio is None or tuple(eps_audio.shape) != audio_shape:
            got = None if eps_audio is None else tuple(eps_audio.shape)
            raise ValueError(f"renoise_noise[{k}] audio eps has shape {got}, expected {audio_shape}")


def _check_inputs(model, latents, text, config, image_latent) -> None:
    """Types and batch/shape consistency before the first model call (the records check ranks and dtypes)."""
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a SamplerConfig, got {type(config).__name__}")
    if not isinstance(latents, Latents):
        raise TypeError(f"latents must be a Latents record (video, audio), got {type(latents).__name__}")
    if not isinstance(text, TextConditioning):
        raise TypeError(f"text must be a TextConditioning record (prompt, negative), got {type(text).__name__}")
    if config.cfg_number == 2 and text.negative is None:
        raise ValueError("cfg_number=2 needs text.negative (the negative-prompt embedding) for the unconditional pass")
    if text.batch_size != latents.batch_size:
        raise ValueError(f"text.prompt has batch size {text.batch_size}, latents.video has {latents.batch_size}")
    if image_latent is not None:
        _check_image_latent(image_latent, latents.video)


def _check_image_latent(image_latent: torch.Tensor, video: torch.Tensor) -> None:
    batch, channels, _, height, width = video.shape
    expected = (batch, channels, 1, height, width)
    if tuple(image_latent.shape) != expected:
        raise ValueError(f"image_latent has shape {tuple(image_latent.shape)}, expected {expected} [B, 48, 1, h, w]")
    if image_latent.dtype != torch.float32:
        raise ValueError(f"image_latent must be float32, got {image_latent.dtype}")
