"""The stages of one generation, as named units that :class:`~magihuman.pipeline.magihuman_pipeline.MagiHumanPipeline`
composes (architecture.md §1.2).

Each stage takes the pipeline (its components, device and switches) and typed records
(:mod:`magihuman.sampling.records`) and returns the next record:

1. :func:`encode_text`: prompt (+ negative prompt for CFG) -> :class:`TextConditioning`;
2. :func:`prepare_latents`: audio noise (or :func:`load_driving_audio`), then video noise -> :class:`Latents`;
3. :func:`encode_image`: the first-frame latent (image-to-video, architecture.md §9.1);
4. :func:`denoise_latents`: the preset's sampler;
5. :func:`super_resolve_latents`: the SR presets' refinement (architecture.md §10.1);
6. :func:`decode_video` and :func:`decode_audio` (architecture.md §12.1, §12.2).

Timing, progress and lending offloaded components to the device are the pipeline's business, not the
stages'.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from magihuman.codecs import video_vae
from magihuman.codecs.audio_vae import (
    LATENTS_PER_SECOND,
    MODEL_SAMPLE_RATE,
    resample_to_output_rate,
)
from magihuman.pipeline.media import load_audio, preprocess_image, video_to_uint8
from magihuman.pipeline.progress import check_interrupt
from magihuman.pipeline.request import GenerationRequest, LatentPlan
from magihuman.sampling.conditioning import CleanCondition
from magihuman.sampling.config import SuperResolutionStage
from magihuman.sampling.loop import StepCallback, denoise, draw_noise
from magihuman.sampling.records import DrivingAudio, Latents, TextConditioning
from magihuman.sampling.super_resolution import super_resolve

if TYPE_CHECKING:
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline


def total_steps(pipe: MagiHumanPipeline, sr_stage: SuperResolutionStage | None) -> int:
    """Denoising steps of a request over all its stages (base sampler, plus the SR sampler if any)."""
    return pipe.preset.sampler.num_steps + (sr_stage.sampler.num_steps if sr_stage is not None else 0)


def encode_text(pipe: MagiHumanPipeline, request: GenerationRequest,
                sr_stage: SuperResolutionStage | None) -> TextConditioning:
    """Stage 1: prompt embeddings ``[1, Nt, C]`` float32 on the pipeline's device, and the negative-prompt
    ones (the request's or the pipeline's default) when the base or the SR sampler uses CFG (architecture.md
    §11.2, §8.4)."""
    prompt, _ = pipe.text_encoder.encode(request.prompt)
    negative = None
    if pipe.preset.sampler.cfg_number == 2 or (sr_stage is not None and sr_stage.sampler.cfg_number == 2):
        negative, _ = pipe.text_encoder.encode(request.negative_prompt or pipe.negative_prompt)
        negative = negative.to(pipe.device)
    return TextConditioning(prompt.to(pipe.device), negative)


def prepare_latents(pipe: MagiHumanPipeline, request: GenerationRequest,
                    generator: torch.Generator) -> tuple[Latents, DrivingAudio | None, LatentPlan]:
    """Stage 2: the initial latents, drawn from the request's seeded CPU generator (architecture.md §13.2, §8.5).

    First the audio: noise ``[1, L_a, 64]``, or with a driving track its encoded latents
    (:func:`load_driving_audio`, whose length ``L_a`` then sets the video length); then the video noise
    ``[1, 48, T, h, w]``.

    Returns:
        ``(latents, driving audio or None, the plan with the final L_a)``.

    Raises:
        ValueError: for a driving audio file shorter than one audio latent.
    """
    plan = request.plan()
    driving = None
    if request.audio is None:
        audio = draw_noise(plan.audio_latent_shape, generator, pipe.device)
    else:
        driving = load_driving_audio(pipe, request.audio, request.seconds, generator)
        audio = driving.latent
        plan = dataclasses.replace(plan, audio_latents=audio.shape[1])
    video = draw_noise(plan.video_latent_shape, generator, pipe.device)
    return Latents(video, audio), driving, plan


def load_driving_audio(pipe: MagiHumanPipeline, path: str | Path, seconds: float,
                       generator: torch.Generator) -> DrivingAudio:
    """A driving audio track (architecture.md §9.2): decoded to mono 51.2 kHz, cut to ``seconds``, duplicated to
    stereo and encoded with a posterior sample (e.g. 100 latents for 4 s); the output keeps the given track
    itself, resampled 441/512 to 44.1 kHz.

    Raises:
        ValueError: if the file holds less than 1/25 s of sound.
    """
    mono = load_audio(path, sample_rate=MODEL_SAMPLE_RATE, max_seconds=seconds)
    hop = MODEL_SAMPLE_RATE // LATENTS_PER_SECOND
    if mono.shape[0] < hop:
        raise ValueError(f"the audio file {path} holds less than 1/{LATENTS_PER_SECOND} s of sound")
    stereo = torch.from_numpy(np.stack([mono, mono]))[None].to(pipe.device)
    latent = pipe.audio_vae.encode(stereo, generator=generator).float()
    return DrivingAudio(latent, resample_to_output_rate(np.stack([mono, mono])))


def encode_image(pipe: MagiHumanPipeline, image: str | Path, width: int, height: int) -> torch.Tensor:
    """Stage 3: the first-frame latent ``[1, 48, 1, h, w]`` float32 at ``width`` x ``height`` (architecture.md §9.1,
    8.2): centre crop, Lanczos resize, Wan2.2 encode (posterior mean, normalised)."""
    pixels = preprocess_image(image, width, height)
    return pipe.video_vae.encode(pixels[:, :, None].to(pipe.device)).float()


def denoise_latents(pipe: MagiHumanPipeline, latents: Latents, text: TextConditioning, *,
                    image_latent: torch.Tensor | None, audio_fixed: bool, generator: torch.Generator,
                    callback: StepCallback | None = None, condition: CleanCondition | None = None) -> Latents:
    """Stage 4: the preset's sampler over the initial latents (:func:`~magihuman.sampling.loop.denoise`);
    ``audio_fixed`` keeps a driving track's latents as they are (architecture.md §9.2); ``condition`` holds clean
    latent positions (long clips, extend, retake; docs/long_clips.md)."""
    return denoise(pipe.transformer, latents, text, config=pipe.preset.sampler, image_latent=image_latent,
                   condition=condition, audio_fixed=audio_fixed, generator=generator, callback=callback,
                   batch_cfg=pipe.batch_cfg)


def super_resolve_latents(pipe: MagiHumanPipeline, stage: SuperResolutionStage, latents: Latents,
                          text: TextConditioning, *, image_latent: torch.Tensor | None,
                          generator: torch.Generator, callback: StepCallback | None = None) -> Latents:
    """Stage 5 (SR presets): upsample, re-noise and refine the video with the SR DiT; the audio stays the
    base stage's (:func:`~magihuman.sampling.super_resolution.super_resolve`, architecture.md §10.1)."""
    return super_resolve(pipe.sr_transformer, latents, text, stage=stage, generator=generator,
                         image_latent=image_latent, callback=callback, batch_cfg=pipe.batch_cfg)


def decode_video(pipe: MagiHumanPipeline, video_latent: torch.Tensor, *, crossfade: bool = False) -> np.ndarray:
    """Stage 6: ``[1, 48, T, h, w]`` -> ``uint8 [4T-3, 16h, 16w, 3]`` (architecture.md §12.1).

    The Turbo decoder's sliding windows are converted to uint8 one by one on the CPU into one
    preallocated array, so the float video (12 bytes per pixel: 3.1 GB for 125 frames at 1920x1088,
    computed) is never held whole and the frames are held once. ``pipe.decode_tile`` (latent pixels)
    adds spatial tiling. ``crossfade`` fades the Turbo decoder's chunk borders instead of the reference's hard cut
    (:meth:`~magihuman.codecs.turbo_vae.TurboVAE.decode_chunks`; the windowed, extend and retake paths use it);
    a decoder without chunks ignores it.

    Raises:
        GenerationInterrupted: when ``pipe.interrupt`` is set between two windows.
        RuntimeError: if the decoder yields another number of frames than ``4T - 3``.
    """
    check_interrupt(pipe, "before the video decode")
    if not hasattr(pipe.video_decoder, "decode_chunks"):
        return video_to_uint8(pipe.video_decoder.decode(video_latent))
    _, _, t, h, w = video_latent.shape
    stride = video_vae.SPATIAL_STRIDE
    frames = np.empty((video_vae.pixel_frames(t), stride * h, stride * w, 3), dtype=np.uint8)  # filled window by window
    start = 0
    for chunk in pipe.video_decoder.decode_chunks(video_latent, output_device="cpu", tile_size=pipe.decode_tile,
                                                      crossfade=crossfade):
        pixels = video_to_uint8(chunk)
        frames[start:start + len(pixels)] = pixels
        start += len(pixels)
        if start < len(frames):
            check_interrupt(pipe, f"between video decode windows ({start}/{len(frames)} frames)")
    if start != len(frames):
        raise RuntimeError(f"the video decoder produced {start} frames, expected {len(frames)}")
    return frames


def decode_audio(pipe: MagiHumanPipeline, audio_latent: torch.Tensor) -> np.ndarray:
    """Stage 7: ``[1, A, 64]`` latent -> ``float32 [2, 1764*A]`` at 44.1 kHz (architecture.md §12.2)."""
    waveform = pipe.audio_vae.decode(audio_latent.float())[0]
    return resample_to_output_rate(waveform.float().cpu().numpy())


def empty_outputs(video_latent: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """No decode (the non-output ranks of a sequence-parallel run, architecture.md §6.4): ``uint8 [0, 16h, 16w, 3]``
    frames and a ``float32 [2, 0]`` waveform."""
    stride = video_vae.SPATIAL_STRIDE
    frames = np.zeros((0, stride * video_latent.shape[3], stride * video_latent.shape[4], 3), dtype=np.uint8)
    return frames, np.zeros((2, 0), dtype=np.float32)
