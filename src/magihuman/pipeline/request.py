"""What to generate: :class:`GenerationRequest`, and the latent sizes it implies, :class:`LatentPlan`.

Size rules (architecture.md §13.2): pixel sides round down to multiples of 32 (the Wan2.2 spatial stride 16
times the DiT's 2x2 patch); generated audio has ``L_a = 25 s + 1`` latents; the video has
``T = (L_a - 1) // 4 + 1`` latent frames and ``F = 4 (T - 1) + 1`` pixel frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from magihuman.codecs import audio_vae, video_vae
from magihuman.codecs.audio_vae import LATENTS_PER_SECOND
from magihuman.model.packing import PATCH_H
from magihuman.pipeline.presets import (
    DEFAULT_HEIGHT,
    DEFAULT_PRESET,
    DEFAULT_SECONDS,
    DEFAULT_SEED,
    DEFAULT_WIDTH,
    get_preset,
)
from magihuman.pipeline.prompt_schedule import PromptCue, cue_from_value
from magihuman.sampling.config import SR_SAMPLER, SR_SAMPLER_CFG, SuperResolutionStage

#: Spatial stride of the Wan2.2 VAE times the DiT's 2x2 patch: pixel sizes round down to this (architecture.md §13.2).
SIZE_MULTIPLE = video_vae.SPATIAL_STRIDE * PATCH_H


def round_video_size(width: int, height: int) -> tuple[int, int]:
    """Effective pixel size: each side rounded down to a multiple of 32 (architecture.md §13.2).

    ``h_latent = H // 16 // 2 * 2`` and the rendered height is ``16 * h_latent``; e.g. 480x272 renders
    480x256.
    """
    return (width // SIZE_MULTIPLE) * SIZE_MULTIPLE, (height // SIZE_MULTIPLE) * SIZE_MULTIPLE


@dataclass(frozen=True)
class LatentPlan:
    """Latent and output sizes of one request (architecture.md §13.2).

    Attributes:
        width, height: effective pixel size (multiples of 32).
        audio_latents: L_a, audio latent frames (25 per second, +1 when generated).
        latent_frames: T = (L_a - 1) // 4 + 1.
    """

    width: int
    height: int
    audio_latents: int

    @property
    def latent_frames(self) -> int:
        """T = (L_a - 1) // 4 + 1 latent video frames (the audio latents line up with pixel frames)."""
        return video_vae.latent_frames_for(self.audio_latents)

    @property
    def pixel_frames(self) -> int:
        """F = 4 (T - 1) + 1 decoded frames."""
        return video_vae.pixel_frames(self.latent_frames)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the video latent."""
        return self.height // video_vae.SPATIAL_STRIDE, self.width // video_vae.SPATIAL_STRIDE

    @property
    def video_latent_shape(self) -> tuple[int, int, int, int, int]:
        """``(1, 48, T, h, w)`` of the video noise."""
        return (1, video_vae.LATENT_CHANNELS, self.latent_frames, *self.latent_size)

    @property
    def audio_latent_shape(self) -> tuple[int, int, int]:
        """``(1, L_a, 64)`` of the audio noise."""
        return (1, self.audio_latents, audio_vae.LATENT_CHANNELS)


def generated_audio_latents(seconds: float) -> int:
    """``L_a = seconds * 25 + 1`` for generated audio (architecture.md §13.2); fractional seconds round to 1/25 s."""
    return int(round(seconds * LATENTS_PER_SECOND)) + 1


class GenerationRequest(BaseModel):
    """What to generate. Checked by :meth:`validate_inputs` before any model runs.

    Attributes:
        prompt: the text prompt (150-200 words in the official three-paragraph format work best).
        image: optional first-frame image (image-to-video).
        audio: optional driving audio file (audio-to-video): its speech is kept in the output.
        seconds: clip length in seconds (> 0). Video has ``4*floor(25*s/4)+1`` frames at 25 fps.
        width, height: requested pixel size, rounded down to multiples of 32.
        seed: seed of every noise draw.
        preset: ``"distill"``, ``"base"``, ``"sr_540p"`` or ``"sr_1080p"`` (see :mod:`magihuman.pipeline.presets`).
        negative_prompt: the unconditional text for CFG (``None``: our default).
        sr_width, sr_height: output size of the super-resolution stage (SR presets only; default: the
            preset's 896x512 or 1920x1088), rounded down to multiples of 32.
        sr_cfg_number: SR guidance: 1 (the shipped SR examples, default) or 2 (negative pass, video 3.5
            with the first 13 latent frames capped at 2.0; architecture.md §8.4).
        window_seconds: long clips (docs/long_clips.md): generate in windows of this many seconds (None: one
            pass up to 10 s, windows of the preset's length beyond).
        overlap_frames: long clips: latent frames each window shares with the previous one, held clean
            (None: 2).
        prompt_schedule: long clips: later prompts, each taking over from its ``start`` seconds at the nearest
            window (:mod:`magihuman.pipeline.prompt_schedule`); ``(start, prompt)`` pairs are accepted. None:
            ``prompt`` throughout.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str
    image: Path | None = None
    audio: Path | None = None
    seconds: float = DEFAULT_SECONDS
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    seed: int = DEFAULT_SEED
    preset: str = DEFAULT_PRESET
    negative_prompt: str | None = None
    sr_width: int | None = None
    sr_height: int | None = None
    sr_cfg_number: int | None = None
    window_seconds: float | None = None
    overlap_frames: int | None = None
    prompt_schedule: list[PromptCue] | None = None

    @field_validator("image", "audio", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("prompt_schedule", mode="before")
    @classmethod
    def _pairs_are_cues(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [cue_from_value(item) for item in value] or None
        return value

    def validate_inputs(self, *, device: Any = None, runtime: Any = None) -> list[str]:
        """Check every value and file before any model loads (:func:`magihuman.pipeline.validation.validate_request`).

        Returns notices (rounding, short or long prompt, audio length). Raises ``InputError`` (a
        ``ValueError``; ``MissingInputError`` is also a ``FileNotFoundError``) naming the field and the fix.
        """
        from magihuman.pipeline.validation import validate_request

        return validate_request(self, device=device, runtime=runtime)

    def sr_stage(self) -> SuperResolutionStage | None:
        """The preset's SR stage with this request's SR size, or None."""
        stage = get_preset(self.preset).sr
        if stage is None:
            return None
        if self.sr_cfg_number is not None:
            stage = dataclasses.replace(stage, sampler=SR_SAMPLER_CFG if self.sr_cfg_number == 2 else SR_SAMPLER)
        if self.sr_width is not None:
            width, height = round_video_size(self.sr_width, self.sr_height)
            stage = dataclasses.replace(stage, width=width, height=height)
        return stage

    def plan(self) -> LatentPlan:
        """Latent sizes for generated audio (the driving-audio length replaces ``audio_latents`` later)."""
        width, height = round_video_size(self.width, self.height)
        return LatentPlan(width, height, generated_audio_latents(self.seconds))
