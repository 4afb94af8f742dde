"""Retake: regenerate a time range of an existing clip; every latent outside it is kept bit for bit (ours;
docs/long_clips.md).

1. check the request and plan it (:meth:`~magihuman.pipeline.clip_requests.RetakeRequest.plan`): the range
   ``[f0, f1)`` in frames, the latent frames ``t0 .. t1`` whose pixel frames meet it, and one window of the
   preset's length around them (the whole clip when it is shorter);
2. read the clip and encode all of it: ``N' = 4((N-1)//4) + 1`` frames to ``T'`` latent frames, the sound to
   ``N'`` audio latents (silence when the clip has none);
3. denoise the window from fresh noise with every position outside the range held clean
   (:class:`~magihuman.sampling.conditioning.CleanCondition`): target ``video`` regenerates latent frames
   ``t0 .. t1`` and keeps the whole audio fixed; ``audio`` regenerates audio latents ``f0 .. f1 - 1`` and holds
   every video frame; ``both`` does both. A window that starts inside the clip (latent frame ``s >= 1``) holds at
   its first position the clip's pixel frame ``4s`` encoded alone, as the VAE encodes a first frame (as the
   windows of a long clip do, :func:`~magihuman.pipeline.long_generation.first_frame_latent`);
4. write the window back into the clip's latents: outside the regenerated positions they equal the
   encoded clip exactly;
5. output: the clip's own frames, with the frames of ``t0 .. t1`` replaced by the decode of the edited
   latents and ``fade_frames`` frames on each side faded from the clip's own into their decode from the held
   latents (:func:`~magihuman.pipeline.long_decode.crossfade_frames`); the clip's own sound, with the samples
   of ``f0 .. f1 - 1`` replaced by their decode and 20 ms cross-fades on the kept side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from magihuman.codecs.audio_vae import HOP_LENGTH, OUTPUT_SAMPLE_RATE, resample_to_output_rate
from magihuman.codecs.video_vae import TEMPORAL_STRIDE
from magihuman.pipeline import stages
from magihuman.pipeline.clip_requests import RetakePlan, RetakeRequest
from magihuman.pipeline.clip_source import ClipEditOutput, encode_frames, encode_sound, load_clip_source
from magihuman.pipeline.long_decode import crossfade_frames, crossfade_splice, decode_audio_span
from magihuman.pipeline.presets import FPS
from magihuman.pipeline.progress import StageTimer, StepEndCallback, StepReporter
from magihuman.sampling.conditioning import CleanCondition
from magihuman.sampling.loop import draw_noise
from magihuman.sampling.records import Latents

if TYPE_CHECKING:
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

__all__ = ["retake_clip", "held_masks"]


def held_masks(plan: RetakePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of the whole clip kept clean: ``([T'] bool, [N'] bool)``, True outside what the target
    regenerates (module docstring, step 3)."""
    video = torch.ones(plan.latent_frames, dtype=torch.bool)
    audio = torch.ones(plan.encoded_frames, dtype=torch.bool)
    if plan.target != "audio":
        video[plan.first_latent:plan.last_latent + 1] = False
    if plan.target != "video":
        audio[plan.first_frame:plan.end_frame] = False
    return video, audio


def retake_clip(pipe: MagiHumanPipeline, request: RetakeRequest, *, progress: bool = False, decode: bool = True,
                callback_on_step_end: StepEndCallback | None = None) -> ClipEditOutput:
    """Regenerate ``[request.start, request.end)`` of ``request.clip`` (module docstring).

    Args:
        pipe: a pipeline loaded for ``request.preset``.
        request: the retake request (checked here before any model runs).
        progress, decode, callback_on_step_end: as for :meth:`MagiHumanPipeline.__call__`.

    Returns:
        :class:`~magihuman.pipeline.clip_source.ClipEditOutput` with the clip's ``N`` frames, its sound (None for a
        silent clip retaken in video only), the edited latents of the whole clip, the encoded clip's latents and
        the held masks.

    Raises:
        InputError: a bad request, before any model runs.
        GenerationInterrupted: when ``pipe.interrupt`` was set.
    """
    plan = request.plan()
    timer = StageTimer(progress, pipe.device)
    generator = torch.Generator("cpu").manual_seed(request.seed)
    video_held, audio_held = held_masks(plan)
    with torch.inference_mode():
        with timer.stage("read clip"):
            source = load_clip_source(request.clip, width=plan.width, height=plan.height,
                                      num_frames=plan.clip_frames, has_audio=plan.has_audio)
        with timer.stage("text encode"), pipe._lend("text_encoder"):
            text = stages.encode_text(pipe, request, None)
        with timer.stage("clip encode"), pipe._lend("video_vae", "audio_vae"):
            clean = Latents(encode_frames(pipe, source.frames[:plan.encoded_frames]),
                            encode_sound(pipe, source.sound[:, :plan.encoded_frames * HOP_LENGTH], generator))
            first = None
            if plan.window_start > 0 and bool(video_held[plan.window_start]):
                pixel = TEMPORAL_STRIDE * plan.window_start
                first = encode_frames(pipe, source.frames[pixel:pixel + 1])
        edited = _denoise_window(pipe, plan, text, clean, (video_held, audio_held), generator, callback_on_step_end,
                                 timer, first)
        if decode:
            frames, waveform = _decode(pipe, plan, source, edited, timer)
        else:
            frames, waveform = stages.empty_outputs(edited.video)
    return ClipEditOutput(frames, waveform, FPS, OUTPUT_SAMPLE_RATE, timer.timings, plan.notices,
                          video_latent=edited.video.cpu(), audio_latent=edited.audio.cpu(),
                          source_video_latent=clean.video.cpu(), source_audio_latent=clean.audio.cpu(),
                          video_held=video_held, audio_held=audio_held)


def _denoise_window(pipe, plan: RetakePlan, text, clean: Latents, held, generator, callback, timer,
                    first: torch.Tensor | None) -> Latents:
    """The window around the range denoised with everything held but the target (steps 3-4; ``first``: the
    window's first frame encoded alone, held at its first position); the whole clip's latents with the window's
    regenerated positions written back."""
    start, stop = plan.window_start, plan.window_start + plan.window_frames
    audio_start, audio_stop = plan.window_audio
    video_held, audio_held = held[0][start:stop], held[1][audio_start:audio_stop]
    clean_video, clean_audio = clean.video[:, :, start:stop], clean.audio[:, audio_start:audio_stop]
    if first is not None:
        clean_video = torch.cat([first, clean_video[:, :, 1:]], dim=2)
    audio_fixed = plan.target == "video"
    audio = clean_audio.clone() if audio_fixed else draw_noise(clean_audio.shape, generator, pipe.device)
    video = draw_noise(clean_video.shape, generator, pipe.device)
    condition = CleanCondition(clean_video, video_held.to(pipe.device),
                               None if audio_fixed else clean_audio, None if audio_fixed else audio_held)
    steps = pipe.preset.sampler.num_steps
    reporter = StepReporter(pipe, callback, steps)
    with timer.stage("denoise", total=steps) as bar, pipe._lend("transformer"):
        out = stages.denoise_latents(pipe, Latents(video, audio), text, image_latent=None, condition=condition,
                                     audio_fixed=audio_fixed, generator=generator,
                                     callback=reporter.for_stage("denoise", steps, bar))
    edited = clean.clone()
    edited.video[:, :, start:stop] = torch.where(video_held[None, None, :, None, None].to(out.video.device),
                                                 edited.video[:, :, start:stop], out.video)
    edited.audio[:, audio_start:audio_stop] = out.audio
    return edited


def _decode(pipe, plan: RetakePlan, source, edited: Latents, timer: StageTimer):
    """The clip's frames and sound with the regenerated span replaced (step 5)."""
    frames = source.frames
    if plan.target != "audio":
        with timer.stage("video decode"), pipe._lend("video_decoder"):
            decoded = stages.decode_video(pipe, edited.video, crossfade=True)
        first, end = plan.pixel_span
        # the decode covers the N' encoded frames; only the span and its fades change
        near = slice(max(0, first - plan.fade_frames), min(decoded.shape[0], end + plan.fade_frames))
        frames = frames.copy()
        frames[near] = crossfade_frames(frames[near], decoded[near], first - near.start, end - near.start,
                                        plan.fade_frames)
    if plan.target == "video":
        sound = source.sound if plan.has_audio else None
    else:
        first, end = plan.first_frame, plan.end_frame
        lo, hi = max(0, first - 1), min(plan.encoded_frames, end + 1)  # one latent (2048 >= fade) each side
        with timer.stage("audio decode"), pipe._lend("audio_vae"):
            decoded = decode_audio_span(pipe, edited.audio, lo, hi)
        new = source.sound.copy()
        new[:, lo * HOP_LENGTH:hi * HOP_LENGTH] = decoded
        sound = crossfade_splice(source.sound, new, first * HOP_LENGTH, end * HOP_LENGTH)
    return frames, None if sound is None else resample_to_output_rate(sound)

