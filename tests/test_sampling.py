"""Denoising loop: golden replay of the distilled sampler, CFG rules, TI2V overwrite, A2V, noise order."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from magihuman.sampling.config import BASE_SAMPLER, DISTILL_SAMPLER
from magihuman.sampling.guidance import apply_guidance, video_guidance_scale
from magihuman.sampling.loop import denoise
from magihuman.sampling.records import Latents, TextConditioning
from magihuman.sampling.schedulers import FlowUniPCScheduler, shifted_schedule

from conftest import golden_case

GOLDEN_STEPS = 8
GOLDEN_NOISE_SEED = 3001  # case.json "noise.seed": initial audio, initial video, then 2 eps per step
VIDEO_SHAPE = (1, 48, 3, 4, 6)
AUDIO_SHAPE = (1, 9, 64)


@pytest.fixture(scope="module")
def golden():
    return load_file(golden_case("sampler_distill") / "sampler.safetensors")


class RecordingModel:
    """Returns preset velocities call by call and keeps copies of what it was given."""

    def __init__(self, velocities):
        self.velocities = list(velocities)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, video, audio, text):
        self.calls.append((video.clone(), audio.clone(), text))
        v_video, v_audio = self.velocities[len(self.calls) - 1]
        return v_video.clone(), v_audio.clone()


def _replay(golden, run, **kwargs):
    model = RecordingModel(zip(golden[f"{run}.cond_v_video"], golden[f"{run}.cond_v_audio"]))
    steps = []
    out = denoise(
        model,
        Latents(golden["initial_video_noise"], golden["initial_audio_noise"]),
        TextConditioning(golden["context"]),
        config=DISTILL_SAMPLER,
        image_latent=golden["image_latent"] if run == "ti2v" else None,
        callback=lambda k, t, latents: steps.append((k, t, latents.video.clone(), latents.audio.clone())),
        **kwargs,
    )
    return model, steps, out.video, out.audio


def _recorded_noise(golden):
    return list(zip(golden["renoise_video"], golden["renoise_audio"]))


# ----------------------------------------------------------------------------------------- golden replay


@pytest.mark.parametrize("run", ["t2v", "ti2v"])
def test_golden_distill_replay_is_bit_exact(golden, run):
    model, steps, video, audio = _replay(golden, run, renoise_noise=_recorded_noise(golden))
    assert [(k, t) for k, t, _, _ in steps] == list(enumerate(golden["timesteps"].tolist()))
    for k, _, step_video, step_audio in steps:
        assert torch.equal(step_video, golden[f"{run}.step_video_latent"][k]), f"video step {k}"
        assert torch.equal(step_audio, golden[f"{run}.step_audio_latent"][k]), f"audio step {k}"
    assert torch.equal(video, golden[f"{run}.final_video_latent"])
    assert torch.equal(audio, golden[f"{run}.final_audio_latent"])


@pytest.mark.parametrize("run", ["t2v", "ti2v"])
def test_golden_distill_model_inputs(golden, run):
    model, _, video, _ = _replay(golden, run, renoise_noise=_recorded_noise(golden))
    assert len(model.calls) == GOLDEN_STEPS  # cfg 1: one call per step
    for k, (seen_video, seen_audio, text) in enumerate(model.calls):
        expected_video = golden["initial_video_noise"] if k == 0 else golden[f"{run}.step_video_latent"][k - 1]
        expected_audio = golden["initial_audio_noise"] if k == 0 else golden[f"{run}.step_audio_latent"][k - 1]
        assert torch.equal(seen_audio, expected_audio)
        assert text is golden["context"]
        if run == "ti2v":
            assert torch.equal(seen_video[:, :, :1], golden["image_latent"]), f"frame 0 at call {k}"
            assert torch.equal(seen_video[:, :, 1:], expected_video[:, :, 1:])
        else:
            assert torch.equal(seen_video, expected_video)
    if run == "ti2v":
        assert torch.equal(video[:, :, :1], golden["image_latent"])


@pytest.mark.parametrize("run", ["t2v", "ti2v"])
def test_golden_distill_with_seeded_generator_draws_the_recorded_noise(golden, run):
    """Seed 3001: initial audio, initial video, then video eps / audio eps per step (case.json "noise")."""
    gen = torch.Generator("cpu").manual_seed(GOLDEN_NOISE_SEED)
    assert torch.equal(torch.randn(AUDIO_SHAPE, generator=gen), golden["initial_audio_noise"])
    assert torch.equal(torch.randn(VIDEO_SHAPE, generator=gen), golden["initial_video_noise"])
    _, _, video, audio = _replay(golden, run, generator=gen)
    assert torch.equal(video, golden[f"{run}.final_video_latent"])
    assert torch.equal(audio, golden[f"{run}.final_audio_latent"])


def test_inputs_are_not_modified(golden):
    before = golden["initial_video_noise"].clone()
    _replay(golden, "ti2v", renoise_noise=_recorded_noise(golden))
    assert torch.equal(golden["initial_video_noise"], before)


# ----------------------------------------------------------------------------------------- CFG rules


class TextKeyedModel:
    """Velocity depends on which text it is given; logs the order of calls."""

    def __init__(self, texts: dict[str, torch.Tensor], velocities: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.texts, self.velocities, self.log = texts, velocities, []

    def __call__(self, video, audio, text):
        name = next(key for key, value in self.texts.items() if value is text)
        self.log.append(name)
        return self.velocities[name]


def _small_latents(seed=0, frames=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 48, frames, 2, 2, generator=gen), torch.randn(1, 5, 64, generator=gen)


def _text_pair():
    return torch.zeros(1, 4, 8), torch.ones(1, 6, 8)


def test_cfg2_unipc_guidance_scales_and_call_order(monkeypatch):
    video, audio = _small_latents()
    text, negative = _text_pair()
    gen = torch.Generator().manual_seed(5)
    cond = (torch.randn(video.shape, generator=gen), torch.randn(audio.shape, generator=gen))
    uncond = (torch.randn(video.shape, generator=gen), torch.randn(audio.shape, generator=gen))
    model = TextKeyedModel({"cond": text, "uncond": negative}, {"cond": cond, "uncond": uncond})

    handed = []  # velocities handed to the schedulers, video (5-d) and audio (3-d)
    original_step = FlowUniPCScheduler.step

    def spy(self, velocity, sample):
        handed.append(velocity.clone())
        return original_step(self, velocity, sample)

    monkeypatch.setattr(FlowUniPCScheduler, "step", spy)
    denoise(model, Latents(video, audio), TextConditioning(text, negative), config=BASE_SAMPLER)

    assert model.log == ["cond", "uncond"] * 32
    timesteps = shifted_schedule(32)[1].tolist()
    video_v = [v for v in handed if v.ndim == 5]
    audio_v = [v for v in handed if v.ndim == 3]
    assert len(video_v) == len(audio_v) == 32
    late = [t for t in timesteps if t <= 500]
    assert late == [480, 416, 340, 249, 138]
    for t, v in zip(timesteps, video_v):
        scale = 5.0 if t > 500 else 2.0
        assert torch.equal(v, uncond[0] + scale * (cond[0] - uncond[0])), f"video at t={t}"
    for v in audio_v:
        assert torch.equal(v, uncond[1] + 5.0 * (cond[1] - uncond[1]))


class BatchAwareModel:
    """Velocities that depend on the true text of each batch row; records every call's batch and lengths."""

    def __init__(self):
        self.calls = []

    def __call__(self, video, audio, text, text_lengths=None):
        lengths = text_lengths or (text.shape[1],) * text.shape[0]
        self.calls.append((video.shape[0], tuple(lengths)))
        rows = [text[i, :n].sum() + n for i, n in enumerate(lengths)]  # padding must not count
        scale = torch.stack(rows).view(-1, 1, 1, 1, 1)
        return video * 0.1 * scale, audio * 0.01 * scale.view(-1, 1, 1)


def test_batched_cfg_is_one_call_per_step_and_equals_two_passes():
    """issue 5: with batch_cfg the conditional and negative passes are one call of batch 2 (text zero-padded,
    true lengths passed along), and the guided result equals the two-pass loop."""
    video, audio = _small_latents()
    gen = torch.Generator().manual_seed(2)
    text, negative = torch.randn(1, 4, 8, generator=gen), torch.randn(1, 6, 8, generator=gen)
    config = dataclasses.replace(BASE_SAMPLER, num_steps=4)
    two_pass, batched = BatchAwareModel(), BatchAwareModel()
    latents, conditioning = Latents(video, audio), TextConditioning(text, negative)
    want = denoise(two_pass, latents, conditioning, config=config)
    got = denoise(batched, latents, conditioning, config=config, batch_cfg=True)
    assert two_pass.calls == [(1, (4,)), (1, (6,))] * 4
    assert batched.calls == [(2, (4, 6))] * 4
    assert torch.equal(got.video, want.video) and torch.equal(got.audio, want.audio)
    one = BatchAwareModel()  # cfg 1 ignores batch_cfg
    denoise(one, latents, conditioning, config=dataclasses.replace(config, cfg_number=1), batch_cfg=True)
    assert one.calls == [(1, (4,))] * 4


def test_batched_cfg_with_the_tiny_transformer():
    """The real model: batched and two-pass CFG agree to bf16 GEMM rounding (the rows' GEMMs run in another M)."""
    from magihuman.demo.random_weights import random_transformer

    model = random_transformer()
    gen = torch.Generator().manual_seed(4)
    video, audio = torch.randn(1, 48, 3, 4, 4, generator=gen), torch.randn(1, 9, 64, generator=gen)
    text, negative = torch.randn(1, 5, 32, generator=gen), torch.randn(1, 8, 32, generator=gen)
    config = dataclasses.replace(BASE_SAMPLER, num_steps=3)
    latents, conditioning = Latents(video, audio), TextConditioning(text, negative)
    want = denoise(model, latents, conditioning, config=config)
    got = denoise(model, latents, conditioning, config=config, batch_cfg=True)
    for g, w in ((got.video, want.video), (got.audio, want.audio)):
        assert float((g - w).norm() / w.norm()) < 1e-2


def test_video_guidance_scale_switch():
    assert video_guidance_scale(BASE_SAMPLER, 501) == 5.0
    assert video_guidance_scale(BASE_SAMPLER, 500) == 2.0
    assert video_guidance_scale(BASE_SAMPLER, torch.tensor(499)) == 2.0  # last step of N = 6
    assert video_guidance_scale(BASE_SAMPLER, 999) == 5.0


def test_apply_guidance_with_per_frame_scale():
    cond, uncond = torch.full((1, 2, 3, 1, 1), 3.0), torch.full((1, 2, 3, 1, 1), 1.0)
    assert torch.equal(apply_guidance(cond, uncond, 5.0), torch.full_like(cond, 11.0))
    scale = torch.tensor([2.0, 2.0, 3.5]).view(1, 1, 3, 1, 1)
    out = apply_guidance(cond, uncond, scale)
    assert out[0, :, :, 0, 0].tolist() == [[5.0, 5.0, 8.0]] * 2


def test_cfg1_calls_the_model_once_per_step_with_the_prompt():
    video, audio = _small_latents()
    text, negative = _text_pair()
    model = TextKeyedModel(
        {"cond": text, "uncond": negative}, {"cond": (torch.zeros_like(video), torch.zeros_like(audio))}
    )
    denoise(model, Latents(video, audio), TextConditioning(text, negative), config=DISTILL_SAMPLER,
            generator=torch.Generator().manual_seed(0))
    assert model.log == ["cond"] * 8


# ----------------------------------------------------------------------------------------- validation


def test_sampler_config_presets():
    assert (BASE_SAMPLER.num_steps, BASE_SAMPLER.cfg_number, BASE_SAMPLER.update) == (32, 2, "unipc")
    assert (DISTILL_SAMPLER.num_steps, DISTILL_SAMPLER.cfg_number, DISTILL_SAMPLER.update) == (8, 1, "renoise")
    for preset in (BASE_SAMPLER, DISTILL_SAMPLER):
        assert preset.shift == 5.0 and preset.audio_guidance_scale == 5.0
        assert (preset.video_guidance_scale, preset.video_guidance_scale_late) == (5.0, 2.0)
        assert preset.guidance_switch_timestep == 500
    with pytest.raises(dataclasses.FrozenInstanceError):
        BASE_SAMPLER.num_steps = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"cfg_number": 3}, "cfg_number"),
        ({"cfg_number": 0}, "cfg_number"),
        ({"cfg_number": 2.0}, "cfg_number"),
        ({"num_steps": 0}, "num_steps"),
        ({"shift": -1.0}, "shift"),
        ({"update": "euler"}, "update"),
        ({"video_guidance_scale": float("nan")}, "video_guidance_scale"),
    ],
)
def test_sampler_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(BASE_SAMPLER, **changes)


def test_missing_negative_embeds_raise_before_any_call():
    video, audio = _small_latents()
    model = RecordingModel([])
    with pytest.raises(ValueError, match="text.negative"):
        denoise(model, Latents(video, audio), TextConditioning(torch.zeros(1, 4, 8)), config=BASE_SAMPLER)
    assert model.calls == []


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_latent": torch.zeros(1, 48, 1, 2, 3)}, "image_latent"),
        ({"image_latent": torch.zeros(1, 48, 2, 2, 2)}, "image_latent"),
        ({"audio": torch.zeros(2, 5, 64)}, "latents.audio has batch size 2"),
        ({"text": torch.zeros(2, 4, 8)}, "text.prompt has batch size 2"),
        ({"negative": torch.zeros(2, 4, 8)}, "text.negative has batch size 2"),
        ({"video": torch.zeros(1, 48, 2, 2)}, "latents.video must be a 5-d tensor"),
        ({"audio": torch.zeros(1, 5)}, "latents.audio must be a 3-d tensor"),
        ({"video": torch.zeros(1, 48, 3, 2, 2, dtype=torch.float64)}, "float32"),
        ({"renoise_noise": []}, "renoise_noise"),
    ],
)
def test_shape_validation(changes, message):
    video, audio = _small_latents()
    parts = {"video": video, "audio": audio, "text": torch.zeros(1, 4, 8), "negative": None}
    changes = dict(changes)
    options = {key: changes.pop(key) for key in ("image_latent", "renoise_noise") if key in changes}
    parts.update(changes)
    model = RecordingModel([])
    with pytest.raises(ValueError, match=message):
        denoise(model, Latents(parts["video"], parts["audio"]), TextConditioning(parts["text"], parts["negative"]),
                config=DISTILL_SAMPLER, **options)
    assert model.calls == []


def test_loose_tensors_are_refused_with_the_record_named():
    video, audio = _small_latents()
    text = TextConditioning(torch.zeros(1, 4, 8))
    with pytest.raises(TypeError, match="Latents record"):
        denoise(RecordingModel([]), (video, audio), text, config=DISTILL_SAMPLER)
    with pytest.raises(TypeError, match="TextConditioning record"):
        denoise(RecordingModel([]), Latents(video, audio), text.prompt, config=DISTILL_SAMPLER)


def test_renoise_noise_with_unipc_is_rejected():
    video, audio = _small_latents()
    with pytest.raises(ValueError, match="renoise_noise"):
        denoise(
            RecordingModel([]), Latents(video, audio), TextConditioning(torch.zeros(1, 4, 8)),
            config=dataclasses.replace(BASE_SAMPLER, cfg_number=1), renoise_noise=[(video, audio)] * 32,
        )


def test_model_returning_wrong_shape_is_reported():
    video, audio = _small_latents()
    model = RecordingModel([(torch.zeros(1, 48, 3, 2, 1), torch.zeros_like(audio))])
    with pytest.raises(ValueError, match="velocities"):
        denoise(model, Latents(video, audio), TextConditioning(torch.zeros(1, 4, 8)), config=DISTILL_SAMPLER)


# ----------------------------------------------------------------------------------------- A2V, noise


class VideoOnlyModel(nn.Module):
    """A real nn.Module whose velocities depend on the inputs (video velocity ignores the audio)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, video, audio, text):
        return self.scale * video + 0.1, 0.5 * audio - 0.2 * text.mean()


@pytest.mark.parametrize("config", [DISTILL_SAMPLER, dataclasses.replace(BASE_SAMPLER, num_steps=6)])
def test_audio_fixed_keeps_audio_bit_identical(config):
    video, audio = _small_latents()
    text, negative = _text_pair()
    seen_audio = []
    model = VideoOnlyModel()

    def recording(v, a, t):
        seen_audio.append(a.clone())
        return model(v, a, t)

    gen = torch.Generator().manual_seed(9)
    out = denoise(recording, Latents(video, audio), TextConditioning(text, negative), config=config, audio_fixed=True,
                  generator=gen)
    out_video, out_audio = out.video, out.audio
    assert torch.equal(out_audio, audio) and out_audio is not audio
    assert all(torch.equal(a, audio) for a in seen_audio)
    assert len(seen_audio) == config.num_steps * config.cfg_number
    assert not out_video.requires_grad  # runs under no_grad with a parametrised module


def test_audio_fixed_renoise_keeps_the_video_noise_stream():
    """Decision: the audio eps is still drawn when the audio is fixed, so the video sees the same eps."""
    video, audio = _small_latents()
    text, _ = _text_pair()
    model = VideoOnlyModel()
    free_gen = torch.Generator().manual_seed(4)
    latents, conditioning = Latents(video, audio), TextConditioning(text)
    free_video = denoise(model, latents, conditioning, config=DISTILL_SAMPLER, generator=free_gen).video
    gen = torch.Generator().manual_seed(4)
    fixed_video = denoise(model, latents, conditioning, config=DISTILL_SAMPLER, audio_fixed=True, generator=gen).video
    assert torch.equal(fixed_video, free_video)
    expected_state = torch.Generator().manual_seed(4)
    for _ in range(DISTILL_SAMPLER.num_steps):
        torch.randn(video.shape, generator=expected_state)
        torch.randn(audio.shape, generator=expected_state)
    assert torch.equal(gen.get_state(), expected_state.get_state())  # exactly 2N draws


def test_renoise_draw_order_video_then_audio_per_step():
    video, audio = _small_latents()
    text, _ = _text_pair()
    model = VideoOnlyModel()
    gen = torch.Generator().manual_seed(77)
    drawn = [
        (torch.randn(video.shape, generator=gen), torch.randn(audio.shape, generator=gen))
        for _ in range(DISTILL_SAMPLER.num_steps)
    ]
    latents, conditioning = Latents(video, audio), TextConditioning(text)
    replayed = denoise(model, latents, conditioning, config=DISTILL_SAMPLER, renoise_noise=drawn)
    first = denoise(model, latents, conditioning, config=DISTILL_SAMPLER, generator=torch.Generator().manual_seed(77))
    second = denoise(model, latents, conditioning, config=DISTILL_SAMPLER, generator=torch.Generator().manual_seed(77))
    for name in ("video", "audio"):
        a, b, c = (getattr(out, name) for out in (replayed, first, second))
        assert torch.equal(a, b) and torch.equal(b, c)
    audio_first_gen = torch.Generator().manual_seed(77)  # the other order gives other eps and latents
    audio_first = []
    for _ in range(DISTILL_SAMPLER.num_steps):
        eps_audio = torch.randn(audio.shape, generator=audio_first_gen)
        audio_first.append((torch.randn(video.shape, generator=audio_first_gen), eps_audio))
    other = denoise(model, latents, conditioning, config=DISTILL_SAMPLER, renoise_noise=audio_first)
    assert not torch.equal(other.video, first.video) and not torch.equal(other.audio, first.audio)


def test_callback_and_ti2v_with_unipc():
    video, audio = _small_latents(frames=4)
    text, negative = _text_pair()
    image = torch.randn(1, 48, 1, 2, 2)
    seen = []
    model = VideoOnlyModel()

    def recording(v, a, t):
        seen.append(v[:, :, :1].clone())
        return model(v, a, t)

    calls = []
    config = dataclasses.replace(BASE_SAMPLER, num_steps=6)
    out_video = denoise(
        recording, Latents(video, audio), TextConditioning(text, negative), config=config, image_latent=image,
        callback=lambda k, t, latents: calls.append((k, t)),
    ).video
    assert calls == list(enumerate([999, 961, 908, 833, 713, 499]))
    assert len(seen) == 12 and all(torch.equal(frame, image) for frame in seen)  # cond and uncond passes
    assert torch.equal(out_video[:, :, :1], image)
