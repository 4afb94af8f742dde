"""DMD-2 with clean conditions: held positions are the cached latents wherever a model sees them, and carry no loss."""

from __future__ import annotations

import pytest
import torch

from .helpers import latent_dataset
from .test_distill_runs import _distiller

BIG = 1e3


def _record_inputs(distiller, model_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every ``(video, audio)`` the named model (generator, fake or real) is called with from now on."""
    seen = []
    getattr(distiller, model_name).register_forward_pre_hook(
        lambda module, args: seen.append((args[0].detach().clone(), args[1].detach().clone())))
    return seen


def _perturb_fake_at(distiller, where: str) -> None:
    """Add ``BIG`` to the fake score's velocity at the held positions (``"held"``) or the generated ones
    (``"free"``) of whatever batch it is called on (the batch is found by its video input's shape)."""
    original = distiller._velocity

    def velocity(model, video, audio, text, lengths):
        v_video, v_audio = original(model, video, audio, text, lengths)
        if model is distiller.fake:
            batch = distiller._current
            held_v, held_a = batch.video_clean.expand_as(v_video), batch.audio_clean.expand_as(v_audio)
            if where == "free":
                held_v, held_a = ~held_v, ~held_a
            v_video, v_audio = v_video + BIG * held_v, v_audio + BIG * held_a
        return v_video, v_audio

    distiller._velocity = velocity


@pytest.mark.parametrize("rates", [dict(prefix_rate=1.0), dict(range_rate=1.0), dict(first_frame_rate=1.0)])
def test_held_positions_are_the_cached_latents_in_every_model_input_and_in_x0(tmp_path, rates):
    distiller = _distiller(tmp_path, gan_weight=0.0, student_steps=3, **rates)
    batch, _ = distiller._batch(7)
    assert batch.video_clean.any() and not batch.video_clean.all()
    if "first_frame_rate" in rates:
        assert batch.video_clean[:, 0, 0].all() and not batch.video_clean[:, 0, 1:].any()
        assert not batch.audio_clean.any()
    else:
        assert batch.audio_clean.any()
    inputs = {name: _record_inputs(distiller, name) for name in ("generator", "fake", "real")}
    x0_video, x0_audio = distiller.generate(batch, 2, grad=False)
    video_held, audio_held = batch.video_clean.expand_as(batch.video0), batch.audio_clean.expand_as(batch.audio0)
    assert torch.equal(x0_video[video_held], batch.video0[video_held])
    assert torch.equal(x0_audio[audio_held], batch.audio0[audio_held])
    assert not torch.equal(x0_video[~video_held], batch.video0[~video_held])
    assert len(inputs["generator"]) == 3  # two sampler steps to sigma_2, then the x0 prediction
    distiller._current = batch
    distiller.generator_update(batch, torch.Generator().manual_seed(1))
    assert len(inputs["fake"]) == 1 and len(inputs["real"]) == 2  # the fake score once, the teacher with CFG
    for name, calls in inputs.items():
        for video, audio in calls:
            assert torch.equal(video[video_held], batch.video0[video_held]), name
            assert torch.equal(audio[audio_held], batch.audio0[audio_held]), name
            assert not torch.equal(video[~video_held], batch.video0[~video_held]), name  # noisy elsewhere


@pytest.mark.parametrize("update", ["fake_update", "generator_update"])
def test_held_positions_carry_no_loss(tmp_path, update):
    """A fake-score velocity off by 1000 at the held positions leaves both losses unchanged bit for bit; the same
    error at the generated positions changes them."""
    losses = {}
    for where in (None, "held", "free"):
        distiller = _distiller(tmp_path / str(where), gan_weight=0.0, prefix_rate=0.5, range_rate=0.5)
        batch, shared = distiller._batch(3)
        distiller._current = batch
        if where is not None:
            _perturb_fake_at(distiller, where)
        losses[where] = getattr(distiller, update)(batch, shared)
    assert losses["held"] == losses[None]
    assert abs(losses["free"] - losses[None]) > 1.0


def test_conditions_off_by_default_and_a_conditioned_run_trains(tmp_path):
    plain = _distiller(tmp_path / "plain")
    batch, _ = plain._batch(0)
    assert plain.conditions is None and batch.video_clean is None
    result = _distiller(tmp_path / "held", first_frame_rate=0.3, prefix_rate=0.3, range_rate=0.2).train()
    assert len(result.generator_losses) == 4
    assert all(map(torch.isfinite, torch.tensor(result.generator_losses + result.fake_losses)))


def test_the_student_samples_the_cached_audio_length(tmp_path):
    """A 2 s toy clip caches 13 latent frames and 51 audio latents (25/s plus one), not 4 (13 - 1) + 1 = 49: the
    student samples the cached length, the one the pipeline generates, and the GAN term and clean audio fit it."""
    samples = latent_dataset(4, frames=2, audio=7, seed=8)
    distiller = _distiller(tmp_path, samples=samples, prefix_rate=0.5)  # GAN term on
    batch, _ = distiller._batch(0)
    x0_video, x0_audio = distiller.generate(batch, 1, grad=False)
    assert x0_audio.shape == (2, 7, 64) and x0_video.shape[2] == 2
    result = distiller.train()
    assert all(map(torch.isfinite, torch.tensor(result.generator_losses + result.fake_losses)))
