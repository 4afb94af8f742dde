"""Latent super-resolution (architecture.md §10.1): upsample, re-noise, SR loop, presets, demo end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magihuman.model.transformer import SR1080_LOCAL_ATTN_LAYERS
from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline
from magihuman.pipeline.presets import PRESETS, preset_for_sr_size
from magihuman.pipeline.request import GenerationRequest
from magihuman.sampling.config import SR_SAMPLER, SR_SAMPLER_CFG, SamplerConfig, SuperResolutionStage
from magihuman.sampling.guidance import video_guidance_per_frame
from magihuman.sampling.records import Latents, TextConditioning
from magihuman.sampling.super_resolution import (
    corrupt_audio,
    renoise_latent,
    sr1080_local_attn_layers,
    super_resolve,
    upsample_latent,
)


def test_sr_latent_sizes():
    """architecture.md §10.1: 896x512 -> 32x56; 1920x1088 -> 68x120."""
    assert PRESETS["sr_540p"].sr.latent_size == (32, 56)
    assert PRESETS["sr_1080p"].sr.latent_size == (68, 120)
    assert PRESETS["sr_1080p"].sr.local_attention and not PRESETS["sr_540p"].sr.local_attention
    assert sr1080_local_attn_layers(40) == SR1080_LOCAL_ATTN_LAYERS


def test_trilinear_upsample_align_corners_true():
    """architecture.md §10.1: time unchanged; corners kept exactly; midpoints averaged (align_corners=True)."""
    latent = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(1, 1, 2, 2, 3)
    up = upsample_latent(latent, (3, 5))
    assert up.shape == (1, 1, 2, 3, 5)
    assert torch.equal(up[..., 0, 0], latent[..., 0, 0]) and torch.equal(up[..., -1, -1], latent[..., -1, -1])
    assert torch.allclose(up[0, 0, 0, 1, 0], (latent[0, 0, 0, 0, 0] + latent[0, 0, 0, 1, 0]) / 2)
    assert torch.allclose(up[0, 0, 0, 0, 1], (latent[0, 0, 0, 0, 0] + latent[0, 0, 0, 0, 1]) / 2)
    assert torch.equal(up[:, :, 1], upsample_latent(latent[:, :, 1:], (3, 5))[:, :, 0])  # no mixing over time
    other = upsample_latent(latent, (3, 5), align_corners=False)
    assert not torch.equal(other, up)


def test_renoise_and_audio_corruption_constants():
    """architecture.md §10.2, §10.1: 0.8389104 x + 0.5442696 eps at index 220; audio 0.7 eps + 0.3 a."""
    x, eps = torch.ones(4), torch.full((4,), 2.0)
    assert torch.allclose(renoise_latent(x, eps), torch.full((4,), 0.8389104008674622 + 2 * 0.5442695617675781))
    assert torch.equal(renoise_latent(x, eps, index=0), x)
    assert torch.allclose(corrupt_audio(torch.ones(3), torch.zeros(3)), torch.full((3,), 0.3))


def test_sr_guidance_cfg_trick():
    """architecture.md §8.4: SR cfg 2 uses 3.5 on every frame but frames < 13 at 2.0, at every timestep."""
    for t in (999, 555):
        scale = video_guidance_per_frame(SR_SAMPLER_CFG, t, 20)
        assert scale.shape == (1, 1, 20, 1, 1)
        assert torch.all(scale[:, :, :13] == 2.0) and torch.all(scale[:, :, 13:] == 3.5)
    assert video_guidance_per_frame(SR_SAMPLER, 999, 20) == 5.0  # unused with cfg 1
    with pytest.raises(ValueError, match="first_frames_guidance_cap"):
        SamplerConfig(num_steps=5, cfg_number=2, update="unipc", first_frames_guidance_cap=(-1, 2.0))


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, video, audio, text, **kwargs):
        self.calls.append((video.clone(), audio.clone(), kwargs))
        return torch.zeros_like(video), torch.ones_like(audio)


def test_super_resolve_draws_and_inputs():
    """Draw order (architecture.md §8.5): re-noise eps, then the audio-corruption eps; v1 coordinates; audio fixed."""
    stage = SuperResolutionStage("540p_sr", 128, 64)
    video, audio, text = torch.randn(1, 48, 3, 2, 2), torch.randn(1, 9, 64), torch.randn(1, 4, 32)
    model = Recorder()
    result = super_resolve(model, Latents(video, audio), TextConditioning(text), stage=stage,
                           generator=torch.Generator().manual_seed(3))
    out = result.video
    assert result.audio is audio  # the SR loop's audio is discarded: the base audio is the final one
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(1, 48, 3, 4, 8, generator=g)
    eps_audio = torch.randn(1, 9, 64, generator=g)
    first_video, first_audio, kwargs = model.calls[0]
    assert torch.allclose(first_video, renoise_latent(upsample_latent(video, (4, 8)), eps))
    assert torch.equal(first_audio, corrupt_audio(audio, eps_audio))
    assert all(torch.equal(c[1], first_audio) for c in model.calls)  # fixed for every step
    assert kwargs == {"coords_style": "v1", "frame_receptive_field": 11}
    assert len(model.calls) == 5 and out.shape == (1, 48, 3, 4, 8)
    # zero velocity: UniPC converges to x0 = x_t, i.e. the re-noised start
    assert torch.allclose(out, first_video, atol=1e-5)


def test_preset_selection_from_sr_size():
    assert preset_for_sr_size("distill", None, None) == "distill"
    assert preset_for_sr_size("distill", 896, 512) == "sr_540p"
    assert preset_for_sr_size("base", 1920, 1088) == "sr_1080p"
    assert preset_for_sr_size("sr_1080p", 896, 512) == "sr_1080p"
    with pytest.raises(ValueError, match="both"):
        preset_for_sr_size("base", 896, None)
    with pytest.raises(ValueError, match="no super-resolution"):
        GenerationRequest(prompt="a b c", preset="distill", sr_width=896, sr_height=512).validate_inputs()
    request = GenerationRequest(prompt="a b c", preset="sr_540p", sr_width=650, sr_height=300)
    assert any("rounded down to 640x288" in n for n in request.validate_inputs())
    assert request.sr_stage().width == 640 and request.sr_stage().checkpoint == "540p_sr"


@pytest.fixture(scope="module")
def sr_pipe(demo_root):
    return MagiHumanPipeline.from_official(demo_root, preset="sr_540p")


def test_sr_pipeline_on_demo_bundle(sr_pipe, examples_dir):
    """Base 64x64 -> SR 128x96 (TI2V): output at the SR size, frame 0 = the image encoded at the SR size,
    audio = the base audio (SR audio discarded)."""
    steps = []
    out = sr_pipe("A man talks to the camera.", image=examples_dir / "image.png", seconds=0.4, width=64,
                  height=64, sr_width=128, sr_height=96, seed=3,
                  callback_on_step_end=lambda pipe, k, t, kw: steps.append(
                      (k, kw["stage"], kw["num_steps"], kw["total_steps"], kw["completed_steps"])))
    # callback_on_step_end: every step of both stages, 32 base + 5 SR
    assert steps == ([(k, "denoise", 32, 37, k + 1) for k in range(32)]
                     + [(k, "super_resolution", 5, 37, 33 + k) for k in range(5)])
    assert out.frames.shape == (9, 96, 128, 3)
    assert out.video_latent.shape == (1, 48, 3, 6, 8)
    from magihuman.pipeline.media import preprocess_image

    image_latent = sr_pipe.video_vae.encode(preprocess_image(examples_dir / "image.png", 128, 96)[:, :, None])
    assert torch.equal(out.video_latent[:, :, :1], image_latent.float())
    assert {"super-resolution", "image encode (SR)"} <= set(out.timings)
    base_only = MagiHumanPipeline(sr_pipe.transformer, sr_pipe.text_encoder, sr_pipe.video_vae,
                                  sr_pipe.audio_vae, preset="base")
    reference = base_only("A man talks to the camera.", image=examples_dir / "image.png", seconds=0.4, width=64,
                          height=64, seed=3)
    assert np.array_equal(out.audio, reference.audio)  # the base stage's audio is the final audio


def test_sr_1080p_loads_local_attention(demo_root):
    pipe = MagiHumanPipeline.from_official(demo_root, preset="sr_1080p")
    assert tuple(pipe.sr_transformer.config.local_attn_layers) == sr1080_local_attn_layers(6) == (0, 1, 2, 4, 5)
    assert tuple(pipe.transformer.config.local_attn_layers) == ()


def test_sr_cfg_number_two_runs_the_negative_pass(sr_pipe):
    """architecture.md §8.4: sr_cfg_number 2 adds a negative call per SR step and uses the first-frames cap."""
    request = GenerationRequest(prompt="A man talks.", preset="sr_540p", sr_cfg_number=2, seconds=0.4,
                                width=64, height=64, sr_width=128, sr_height=96)
    assert request.sr_stage().sampler is SR_SAMPLER_CFG
    calls = []
    original = sr_pipe.sr_transformer

    def counting(video, audio, text, **kwargs):
        calls.append((video.shape[0], text.shape[1], kwargs.get("text_lengths")))
        return original(video, audio, text, **kwargs)

    sr_pipe.sr_transformer = counting
    try:
        out = sr_pipe(request)
        assert len(calls) == 5 and len(set(calls)) == 1  # batched CFG: one (cond, negative) call per step
        assert calls[0][0] == 2 and calls[0][1] == max(calls[0][2]) and len(set(calls[0][2])) == 2
        calls.clear()
        sr_pipe.batch_cfg = False
        sr_pipe(request)
    finally:
        sr_pipe.sr_transformer, sr_pipe.batch_cfg = original, True
    assert len(calls) == 10 and len(set(calls[0::2])) == 1  # (cond, negative) x 5 steps
    assert out.frames.shape == (9, 96, 128, 3)
    with pytest.raises(ValueError, match="sr_cfg_number"):
        GenerationRequest(prompt="a b", preset="distill", sr_cfg_number=2).validate_inputs()


def test_tiled_decode_through_the_pipeline(sr_pipe):
    """--decode-tile-size: the Turbo decode in overlapping spatial tiles gives the same frame count and size,
    close to the untiled frames (seams blended)."""
    whole = sr_pipe("A man talks.", seconds=0.4, width=64, height=64, sr_width=256, sr_height=128, seed=1)
    sr_pipe.decode_tile = 8
    try:
        tiled = sr_pipe("A man talks.", seconds=0.4, width=64, height=64, sr_width=256, sr_height=128, seed=1)
    finally:
        sr_pipe.decode_tile = None
    assert tiled.frames.shape == whole.frames.shape == (9, 128, 256, 3)
    assert torch.equal(tiled.video_latent, whole.video_latent)
    difference = np.abs(tiled.frames.astype(int) - whole.frames.astype(int)).mean()
    other_seed = sr_pipe("A man talks.", seconds=0.4, width=64, height=64, sr_width=256, sr_height=128, seed=2)
    unrelated = np.abs(other_seed.frames.astype(int) - whole.frames.astype(int)).mean()
    # tiling is active (frames change at the seams) but keeps the content: tile 8 is far below the
    # decoder's ~13-pixel receptive field, so seams are visible; tolerances per tile size are in test_turbo_vae.py
    assert 0 < difference < 0.3 * unrelated
