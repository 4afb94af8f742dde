"""Sampler settings as plain data: :class:`SamplerConfig`, the named samplers and the SR recipe record.

Imports no torch, so presets, the CLI's ``--help`` and a server's request parser can read them cheaply.
The code that runs them lives in :mod:`magihuman.sampling.loop` (the denoising loop),
:mod:`magihuman.sampling.guidance` (the CFG rules), :mod:`magihuman.sampling.schedulers` (the updates)
and :mod:`magihuman.sampling.super_resolution` (upsample and re-noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Flow time shift s of the base and SR stages (architecture.md §8.1 `shift`).
DEFAULT_SHIFT = 5.0
#: DDPM index at which the SR stage re-noises (architecture.md §10.1 `noise_value`).
SR_NOISE_INDEX = 220

#: Valid classifier-free-guidance modes: 1 = conditional pass only, 2 = conditional + negative pass
#: (architecture.md §8.4; anything else is a ValueError there too).
CFG_NUMBERS = (1, 2)
#: Latent updates: the FlowUniPC multistep solver (base model) or the distilled re-noise step.
UPDATES = ("unipc", "renoise")
#: Base-stage guidance (architecture.md §8.4 `video_txt_guidance_scale` / `audio_txt_guidance_scale`): the
#: video uses 5.0 while t > 500 and a hard-coded 2.0 afterwards (architecture.md §8.4); the audio uses 5.0 throughout.
VIDEO_GUIDANCE_SCALE = 5.0
VIDEO_GUIDANCE_SCALE_LATE = 2.0
GUIDANCE_SWITCH_TIMESTEP = 500
AUDIO_GUIDANCE_SCALE = 5.0
#: SR guidance with ``sr_cfg_number = 2`` (architecture.md §8.4, §10.1): video 3.5 at every step, capped at 2.0 on the
#: first 13 latent frames (the "cfg trick").
SR_VIDEO_GUIDANCE_SCALE = 3.5
SR_FIRST_FRAMES_GUIDANCE_CAP = (13, 2.0)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How to run the denoising loop (architecture.md §13.3, §8.2, §8.3, §8.4).

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
            ``min(cap, video scale)`` (the super-resolution "cfg trick", architecture.md §8.4: ``(13, 2.0)``);
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


# The `base` example: 32 FlowUniPC steps with two-pass CFG (architecture.md §13.1, §8.3).
BASE_SAMPLER = SamplerConfig(num_steps=32, cfg_number=2, update="unipc")
# The `distill` example: 8 re-noise steps, conditional pass only (architecture.md §13.1, §8.3;
# the sampler_distill golden case).
DISTILL_SAMPLER = SamplerConfig(num_steps=8, cfg_number=1, update="renoise")
# Super-resolution stage as the shipped SR examples run it: 5 FlowUniPC steps, shift 5, conditional pass only
# (architecture.md §13.1 (`sr_cfg_number` 1), §10.1).
SR_SAMPLER = SamplerConfig(num_steps=5, cfg_number=1, update="unipc")
# Super-resolution with CFG (`sr_cfg_number` 2, the config default): video 3.5 at every step (no timestep
# switch), capped at 2.0 on latent frames < 13 (the "cfg trick"); audio guidance is computed by the reference
# but its result is discarded (architecture.md §8.4, §10.1).
SR_SAMPLER_CFG = SamplerConfig(num_steps=5, cfg_number=2, update="unipc", video_guidance_scale=SR_VIDEO_GUIDANCE_SCALE,
                               guidance_switch_timestep=-1, first_frames_guidance_cap=SR_FIRST_FRAMES_GUIDANCE_CAP)


@dataclass(frozen=True)
class SuperResolutionStage:
    """One SR recipe (architecture.md §10.1); data only, run by :func:`magihuman.sampling.super_resolution.super_resolve`.

    Attributes:
        checkpoint: sub-folder of the checkpoint root (``540p_sr``, ``1080p_sr``).
        width, height: SR pixel size (multiples of 32; 896x512 and 1920x1088 in the official examples).
        sampler: the SR loop's sampler (:data:`SR_SAMPLER` as in the shipped examples, or
            :data:`SR_SAMPLER_CFG`).
        local_attention: use the 1080p recipe's local-attention layers (``SR2_1080``).
        noise_index: ZeroSNR table index of the re-noise (220).
        align_corners: upsampling corner alignment (True = the reference).
    """

    checkpoint: str
    width: int
    height: int
    sampler: SamplerConfig = SR_SAMPLER
    local_attention: bool = False
    noise_index: int = SR_NOISE_INDEX
    align_corners: bool = True

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h_s, w_s) = (H // 16 // 2 * 2, W // 16 // 2 * 2) (architecture.md §10.1): the Wan2.2 spatial
        stride, then even for the DiT's 2x2 patch."""
        from magihuman.codecs.video_vae import (
            SPATIAL_STRIDE,  # local: keeps this module torch-free
        )
        from magihuman.model.packing import PATCH_H, PATCH_W

        return (self.height // SPATIAL_STRIDE // PATCH_H * PATCH_H,
                self.width // SPATIAL_STRIDE // PATCH_W * PATCH_W)
