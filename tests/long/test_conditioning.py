"""Clean-condition masks in the sampler: exactly the masked positions are written, at every step and in the
result; the first-frame case is the image-to-video loop bit for bit; the time convention."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from magihuman.sampling.conditioning import (
    CleanCondition,
    frame_span,
    latent_frame_of,
    latent_frames_touching,
    prefix_audio_latents,
)
from magihuman.sampling.config import BASE_SAMPLER, DISTILL_SAMPLER
from magihuman.sampling.loop import denoise
from magihuman.sampling.records import Latents, TextConditioning

from conftest import golden_case

VIDEO, AUDIO = (1, 48, 5, 2, 4), (1, 17, 64)


class Recorder:
    """A velocity model that returns seeded random velocities and keeps copies of its inputs."""

    def __init__(self, seed: int = 5):
        self.generator = torch.Generator().manual_seed(seed)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, video, audio, text, **kwargs):
        self.calls.append((video.clone(), audio.clone()))
        return (torch.randn(video.shape, generator=self.generator),
                torch.randn(audio.shape, generator=self.generator))


class Replay(Recorder):
    """Returns recorded velocities call by call and keeps copies of its inputs."""

    def __init__(self, velocities):
        super().__init__()
        self.velocities = iter(velocities)

    def __call__(self, video, audio, text, **kwargs):
        self.calls.append((video.clone(), audio.clone()))
        v_video, v_audio = next(self.velocities)
        return v_video.clone(), v_audio.clone()


def _condition(seed: int = 9) -> CleanCondition:
    g = torch.Generator().manual_seed(seed)
    video_mask = torch.tensor([True, False, True, False, False])
    audio_mask = torch.zeros(AUDIO[1], dtype=torch.bool)
    audio_mask[[0, 1, 2, 9, 16]] = True
    return CleanCondition(torch.randn(VIDEO, generator=g), video_mask, torch.randn(AUDIO, generator=g), audio_mask)


@pytest.mark.parametrize("config", [DISTILL_SAMPLER, dataclasses.replace(BASE_SAMPLER, num_steps=4, cfg_number=1)],
                         ids=["renoise", "unipc"])
def test_masks_overwrite_exactly_the_masked_positions_at_every_step(config):
    g = torch.Generator().manual_seed(1)
    start = Latents(torch.randn(VIDEO, generator=g), torch.randn(AUDIO, generator=g))
    condition = _condition()
    model, states = Recorder(), []
    out = denoise(model, start, TextConditioning(torch.randn(1, 3, 8)), config=config, condition=condition,
                  generator=torch.Generator().manual_seed(2),
                  callback=lambda k, t, latents: states.append(latents.clone()))
    vm, am = condition.video_mask, condition.audio_mask
    assert len(model.calls) == config.num_steps
    for k, (video, audio) in enumerate(model.calls):
        before = start if k == 0 else states[k - 1]  # the state the step started from
        assert torch.equal(video[:, :, vm], condition.video[:, :, vm]), f"held video at call {k}"
        assert torch.equal(audio[:, am], condition.audio[:, am]), f"held audio at call {k}"
        assert torch.equal(video[:, :, ~vm], before.video[:, :, ~vm]), f"free video at call {k}"
        assert torch.equal(audio[:, ~am], before.audio[:, ~am]), f"free audio at call {k}"
    # the result: held positions clean, the rest the last update's values, which moved away from the start
    assert torch.equal(out.video[:, :, vm], condition.video[:, :, vm])
    assert torch.equal(out.audio[:, am], condition.audio[:, am])
    assert torch.equal(out.video[:, :, ~vm], states[-1].video[:, :, ~vm])
    assert torch.equal(out.audio[:, ~am], states[-1].audio[:, ~am])
    assert not torch.equal(out.video[:, :, ~vm], start.video[:, :, ~vm])
    # the scheduler still updates held positions between steps (architecture.md §9.1): the state after a step
    # differs there from the clean values
    assert not torch.equal(states[0].video[:, :, vm], condition.video[:, :, vm])


@pytest.fixture(scope="module")
def golden():
    return load_file(golden_case("sampler_distill") / "sampler.safetensors")


def test_first_frame_condition_is_the_image_to_video_loop_bit_for_bit(golden):
    """architecture.md §9.1: the image latent through ``image_latent`` and through ``CleanCondition.first_frame``
    give the golden TI2V result exactly."""
    noise = list(zip(golden["renoise_video"], golden["renoise_audio"]))
    start = Latents(golden["initial_video_noise"], golden["initial_audio_noise"])
    image = golden["image_latent"]

    def run(**kwargs):
        model = Replay(zip(golden["ti2v.cond_v_video"], golden["ti2v.cond_v_audio"]))
        return model, denoise(model, start, TextConditioning(golden["context"]), config=DISTILL_SAMPLER,
                              renoise_noise=noise, **kwargs)

    plain_model, plain = run(image_latent=image)
    held_model, held = run(condition=CleanCondition.first_frame(image, start.video.shape[2]))
    assert torch.equal(plain.video, golden["ti2v.final_video_latent"])
    assert torch.equal(held.video, plain.video) and torch.equal(held.audio, plain.audio)
    for (pv, pa), (hv, ha) in zip(plain_model.calls, held_model.calls):
        assert torch.equal(pv, hv) and torch.equal(pa, ha)


def test_prefix_condition_follows_the_convention():
    video = torch.randn(1, 48, 3, 2, 2)
    audio = torch.randn(1, prefix_audio_latents(3), 64)
    condition = CleanCondition.prefix(video, audio, num_frames=5, audio_latents=17)
    assert condition.video_mask.tolist() == [True, True, True, False, False]
    assert condition.audio_mask.tolist() == [True] * 9 + [False] * 8  # 4(P - 1) + 1 = 9 audio latents
    assert torch.equal(condition.video[:, :, :3], video) and torch.equal(condition.audio[:, :9], audio)
    assert (condition.held_video_frames, condition.held_audio_latents) == (3, 9)
    with pytest.raises(ValueError, match="9 audio latents"):
        CleanCondition.prefix(video, audio[:, :8], num_frames=5, audio_latents=17)
    with pytest.raises(ValueError, match="does not fit"):
        CleanCondition.prefix(video, None, num_frames=2, audio_latents=5)


def test_time_convention():
    """Video latent t covers pixel frames 4t-3..4t (frame 0 alone); audio latent i lines up with pixel frame i."""
    assert [frame_span(t) for t in range(4)] == [(0, 0), (1, 4), (5, 8), (9, 12)]
    assert [latent_frame_of(p) for p in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert list(latent_frames_touching(10, 16)) == [3, 4]  # frames 10..15: latent 3 (9-12) and 4 (13-16)
    assert list(latent_frames_touching(0, 1)) == [0]
    assert [prefix_audio_latents(p) for p in range(4)] == [0, 1, 5, 9]
    for t in range(1, 6):  # every pixel frame of a latent frame maps back to it
        first, last = frame_span(t)
        assert {latent_frame_of(p) for p in range(first, last + 1)} == {t}


def test_bad_conditions_are_refused_before_the_first_call():
    start = Latents(torch.zeros(VIDEO), torch.zeros(AUDIO))
    text = TextConditioning(torch.zeros(1, 3, 8))
    model = Recorder()
    image = torch.zeros(1, 48, 1, 2, 4)
    condition = _condition()
    with pytest.raises(ValueError, match="not both"):
        denoise(model, start, text, config=DISTILL_SAMPLER, image_latent=image, condition=condition)
    with pytest.raises(ValueError, match="audio is fixed"):
        denoise(model, start, text, config=DISTILL_SAMPLER, condition=condition, audio_fixed=True)
    short = Latents(torch.zeros(1, 48, 4, 2, 4), torch.zeros(AUDIO))
    with pytest.raises(ValueError, match="condition video has shape"):
        denoise(model, short, text, config=DISTILL_SAMPLER, condition=condition)
    with pytest.raises(ValueError, match="both video and video_mask"):
        CleanCondition(video=torch.zeros(VIDEO))
    with pytest.raises(ValueError, match="5 positions"):
        CleanCondition(torch.zeros(VIDEO), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        CleanCondition(torch.zeros(VIDEO), torch.zeros(5))
    assert model.calls == []
