"""Extend: continue an existing clip from its last frames and sound (ours; docs/long_clips.md).

1. check the request and plan it (:meth:`~magihuman.pipeline.clip_requests.ExtendRequest.plan`);
2. read the clip (:func:`~magihuman.pipeline.clip_source.load_clip_source`) and encode its last
   ``4(K - 1) + 1`` frames (``K`` latent frames, the first one a true first-frame latent) and the matching
   ``4(K - 1) + 1`` audio latents (encoded with some context before them);
3. generate the continuation with those latents held clean, window by window when it is longer than one
   window (:func:`~magihuman.pipeline.long_generation.denoise_windows`);
4. decode the generated sequence; its first ``4(K - 1) + 1`` frames re-create the clip's last ones. The output
   is the clip's frames followed by the new ones, the clip's last ``fade_frames`` frames faded into their
   re-creation (:func:`~magihuman.pipeline.long_decode.crossfade_frames`), so the codec's round-trip
   difference is not one jump at the join; its sound is the clip's up to its last frame, cross-faded over
   20 ms into the decoded continuation.

The input file is only read; the result goes to a new file (:meth:`GenerationOutput.save` never replaces a file
unless asked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from magihuman.codecs.audio_vae import HOP_LENGTH, OUTPUT_SAMPLE_RATE, resample_to_output_rate
from magihuman.pipeline import stages
from magihuman.pipeline.clip_requests import ExtendRequest
from magihuman.pipeline.clip_source import ClipEditOutput, encode_frames, encode_sound, load_clip_source
from magihuman.pipeline.long_decode import AUDIO_MARGIN, crossfade_frames, crossfade_splice, decode_audio_span
from magihuman.pipeline.long_generation import denoise_windows, empty_latents
from magihuman.pipeline.presets import FPS
from magihuman.pipeline.progress import StageTimer, StepEndCallback, StepReporter
from magihuman.pipeline.windows import decoder_chunks

if TYPE_CHECKING:
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

__all__ = ["extend_clip"]


def extend_clip(pipe: MagiHumanPipeline, request: ExtendRequest, *, progress: bool = False, decode: bool = True,
                callback_on_step_end: StepEndCallback | None = None) -> ClipEditOutput:
    """Continue ``request.clip`` by ``request.seconds`` (module docstring).

    Args:
        pipe: a pipeline loaded for ``request.preset``.
        request: the extend request (checked here before any model runs).
        progress, decode, callback_on_step_end: as for :meth:`MagiHumanPipeline.__call__`.

    Returns:
        :class:`~magihuman.pipeline.clip_source.ClipEditOutput`: ``N + 4n`` frames (the clip's ``N``, then ``4n``
        new), the sound, the generated sequence's latents (the clip's last ``K`` latent frames, held, then the
        new ones) and what was held.

    Raises:
        InputError: a bad request, before any model runs.
        GenerationInterrupted: when ``pipe.interrupt`` was set.
    """
    plan = request.plan(decode_chunks=decoder_chunks(pipe.video_decoder))
    timer = StageTimer(progress, pipe.device)
    generator = torch.Generator("cpu").manual_seed(request.seed)
    windows, prefix, pixels = plan.windows, plan.prefix_frames, plan.prefix_pixel_frames
    count = plan.clip_frames
    with torch.inference_mode():
        with timer.stage("read clip"):
            source = load_clip_source(request.clip, width=plan.width, height=plan.height, num_frames=count,
                                      has_audio=plan.has_audio)
        with timer.stage("text encode"), pipe._lend("text_encoder"):
            text = stages.encode_text(pipe, request, None)
        joined = empty_latents(windows, (plan.height // 16, plan.width // 16), pipe.device)
        with timer.stage("clip encode"), pipe._lend("video_vae", "audio_vae"):
            joined.video[:, :, :prefix] = encode_frames(pipe, source.frames[count - pixels:])
            joined.audio[:, :pixels] = _tail_audio(pipe, source.sound, count, pixels, generator)
        held_video, held_audio = joined.video.clone(), joined.audio.clone()
        reporter = StepReporter(pipe, callback_on_step_end, len(windows.windows) * pipe.preset.sampler.num_steps)
        latents = denoise_windows(pipe, windows, text, joined, generator=generator, reporter=reporter, timer=timer)
        if decode:
            frames, waveform = _decode(pipe, latents, source, pixels, plan.fade_frames, timer)
        else:
            frames, waveform = stages.empty_outputs(latents.video)
    video_mask = torch.arange(windows.latent_frames) < prefix
    audio_mask = torch.arange(windows.audio_latents) < pixels
    return ClipEditOutput(frames, waveform, FPS, OUTPUT_SAMPLE_RATE, timer.timings, plan.notices,
                          video_latent=latents.video.cpu(), audio_latent=latents.audio.cpu(),
                          source_video_latent=held_video.cpu(), source_audio_latent=held_audio.cpu(),
                          video_held=video_mask, audio_held=audio_mask)


def _tail_audio(pipe: MagiHumanPipeline, sound: np.ndarray, count: int, pixels: int,
                generator: torch.Generator) -> torch.Tensor:
    """The audio latents of the clip's last ``pixels`` frames ``[1, pixels, 64]``, encoded with up to
    ``AUDIO_MARGIN`` latents of context before them (the encoder's windows stay latent-aligned)."""
    first = max(0, count - pixels - AUDIO_MARGIN)
    latents = encode_sound(pipe, sound[:, first * HOP_LENGTH:count * HOP_LENGTH], generator)
    return latents[:, -pixels:]


def _decode(pipe: MagiHumanPipeline, latents, source, pixels: int, fade: int, timer: StageTimer):
    """The clip's frames (its last ``fade`` faded into their re-creation) then the new ones; the clip's sound
    cross-faded into the decoded continuation."""
    count = source.frames.shape[0]
    with timer.stage("video decode"), pipe._lend("video_decoder"):
        decoded = stages.decode_video(pipe, latents.video, crossfade=True)
    frames = np.concatenate([source.frames, decoded[pixels:]])
    # decoded frame i re-creates clip frame count - pixels + i; only the clip's last `fade` frames change
    tail = slice(count - fade, count)
    frames[tail] = crossfade_frames(source.frames[tail], decoded[pixels - fade:pixels], fade, fade, fade)
    with timer.stage("audio decode"), pipe._lend("audio_vae"):
        decoded = decode_audio_span(pipe, latents.audio, pixels - 1, latents.audio.shape[1])
    join, total = count * HOP_LENGTH, (count - 1) * HOP_LENGTH + decoded.shape[1]
    kept = np.zeros((2, total), np.float32)
    kept[:, :join] = source.sound[:, :join]
    new = np.zeros_like(kept)
    new[:, (count - 1) * HOP_LENGTH:] = decoded  # decoded latent `pixels - 1` is the clip's last frame
    return frames, resample_to_output_rate(crossfade_splice(kept, new, join, total))
