"""The DMD-2 distiller as a run: bitwise resume, video-only clips, two gloo processes (127.0.0.1)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from magihuman.demo.random_weights import random_transformer
from magihuman.train.checkpointing import CHECKPOINTS_DIR
from magihuman.train.config import DistillConfig
from magihuman.train.distill import Distiller
from magihuman.train.distributed import free_port, init_explicit

from .helpers import TRAIN_TINY_CONFIG, latent_dataset
from conftest import spawned_rank

SMALL = dict(TRAIN_TINY_CONFIG, hidden_size=64, head_dim=16)


def _distiller(output: Path, batch_size: int = 2, samples=None, **fields) -> Distiller:
    """A width-64 teacher, 2 student steps, one fake-score update per generator update, GAN term on."""
    settings = dict(cache=output, teacher=output, output=output, steps=4, batch_size=batch_size, fake_steps=1,
                    student_steps=2, generator_lr=1e-3, fake_lr=1e-3, mixed_precision="fp32", gan_weight=0.1,
                    checkpoint_every=2, keep_checkpoints=1)
    return Distiller(DistillConfig(**dict(settings, **fields)), teacher=random_transformer(SMALL, seed=5),
                     samples=samples if samples is not None else latent_dataset(5, seed=8),
                     negative=torch.randn(4, 32, generator=torch.Generator().manual_seed(3)))


def _state(distiller: Distiller) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in distiller._trained().items()}


def test_resume_is_bitwise(tmp_path):
    """Stopped after step 2 of 4 and run again: the generator, fake score, GAN head, both AdamW states and
    the loss log equal the uninterrupted run's bit for bit (bf16 autocast, GAN term on)."""
    straight = _distiller(tmp_path / "a", mixed_precision="bf16", tensorboard=True)
    result = straight.train()
    first = _distiller(tmp_path / "b", mixed_precision="bf16")
    assert first.train(stop_after=2).output == tmp_path / "b"
    resumed = _distiller(tmp_path / "b", mixed_precision="bf16")
    resumed_result = resumed.train()
    assert resumed_result.output == tmp_path / "b" / "distill"
    assert (resumed_result.output / "model.safetensors").is_file()
    a, b = _state(straight), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for opt_a, opt_b in ((straight.opt_g, resumed.opt_g), (straight.opt_f, resumed.opt_f)):
        for p, q in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
            assert torch.equal(opt_a.state[p]["exp_avg_sq"], opt_b.state[q]["exp_avg_sq"])
    assert result.generator_losses == resumed_result.generator_losses and len(result.generator_losses) == 4
    assert result.fake_losses == resumed_result.fake_losses
    rows = list(csv.DictReader((tmp_path / "b" / "distill_loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [p.name for p in (tmp_path / "b" / CHECKPOINTS_DIR).iterdir()] == ["step-0000004"]  # keep_checkpoints=1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("distill/generator_loss")] == pytest.approx(result.generator_losses)


def _audio_head_grads(distiller: Distiller, update: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the audio output projection (it only feeds the audio velocity) after one fake-score
    update and one generator update."""
    distiller.fake_update(*distiller._batch(update))
    fake_grad = distiller.fake.final_linear_audio.weight.grad.clone()
    distiller.generator_update(*distiller._batch(update + 1))
    return fake_grad, distiller.generator.final_linear_audio.weight.grad.clone()


def test_video_only_clips_do_not_train_the_audio_branch(tmp_path):
    """Clips without sound: the audio terms of the fake-score loss and of the DMD gradient are masked, and
    the GAN term sees pure-noise audio, so the audio output projections get exactly zero gradient (with
    sound they get a non-zero one)."""
    silent = [replace(s, audio_latent=None) for s in latent_dataset(4, seed=8)]
    for grad in _audio_head_grads(_distiller(tmp_path / "silent", samples=silent), 0):
        assert torch.count_nonzero(grad) == 0
    for grad in _audio_head_grads(_distiller(tmp_path / "sound"), 0):
        assert grad.abs().max() > 1e-6
    # the video branch still trains on silent clips
    distiller = _distiller(tmp_path / "silent2", samples=silent)
    distiller.generator_update(*distiller._batch(0))
    assert distiller.generator.final_linear_video.weight.grad.abs().max() > 1e-6


def test_audio_loss_weight_scales_the_audio_term_of_the_generator_loss(tmp_path):
    """Without the GAN term the generator's audio output projection is trained by the audio DMD term alone: its
    gradient is ``audio_loss_weight`` times the weight-1 gradient (0 at weight 0), while the video projection's
    gradient does not move."""
    grads = {}
    for weight in (0.0, 1.0, 3.0):
        distiller = _distiller(tmp_path / str(weight), gan_weight=0.0, audio_loss_weight=weight,
                                max_grad_norm=None)
        distiller.generator_update(*distiller._batch(0))
        grads[weight] = (distiller.generator.final_linear_audio.weight.grad.clone(),
                         distiller.generator.final_linear_video.weight.grad.clone())
    assert torch.count_nonzero(grads[0.0][0]) == 0
    assert grads[1.0][0].abs().max() > 1e-6
    torch.testing.assert_close(grads[3.0][0], 3 * grads[1.0][0], rtol=1e-4, atol=1e-8)
    for weight in (0.0, 3.0):
        torch.testing.assert_close(grads[weight][1], grads[1.0][1], rtol=1e-4, atol=1e-8)


def _gradients(distiller: Distiller) -> dict[str, torch.Tensor]:
    """The gradients left by the last updates: the generator's, and the fake score's (from its update)."""
    return {f"{prefix}.{name}": param.grad.clone() for prefix, module in
            (("generator", distiller.generator), ("fake", distiller.fake)) for name, param in module.named_parameters()}


def _worker(rank: int, port: int, output: str) -> None:
    torch.set_num_threads(1)
    init_explicit(rank, 2, port)
    with spawned_rank():
        distiller = _distiller(Path(output), batch_size=1, steps=1)
        distiller.train()
        if rank == 0:
            torch.save((_state(distiller), _gradients(distiller)), Path(output) / "state.pt")


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Worst per-tensor relative L2 difference."""
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


def test_two_gloo_processes_match_one(tmp_path):
    """Global batch 2, one step (a fake-score update, then a generator update, GAN term on): 2 processes
    of 1 caption each vs 1 process of 2. Figures (this machine): the averaged gradients of the generator
    and of the fake score agree to 7.0e-7 (worst per-tensor relative L2; reduction and text-padding order
    only), the weights after AdamW to 2.1e-6 (largest absolute 1.6e-5 against updates of 1e-3: AdamW's
    first step, lr x g / (|g| + eps), magnifies the rounding of gradient elements near eps), the logged
    losses to 1.3e-7."""
    single = _distiller(tmp_path / "one", steps=1)
    single_result = single.train()
    mp.spawn(_worker, args=(free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    state, gradients = torch.load(tmp_path / "two" / "state.pt")
    assert _worst(gradients, _gradients(single)) < 1e-5
    assert _worst(state, _state(single)) < 1e-4
    row = next(csv.DictReader((tmp_path / "two" / "distill_loss.csv").open()))
    assert float(row["generator_loss"]) == pytest.approx(single_result.generator_losses[0], rel=1e-5)
    assert float(row["fake_loss"]) == pytest.approx(single_result.fake_losses[0], rel=1e-5)


def test_an_fp32_run_scores_with_a_float32_copy_of_the_teacher_and_leaves_the_teacher_alone(tmp_path):
    from magihuman.model.layers import ExpertLinear

    def block_dtypes(model):
        return {m.weight.dtype for m in model.modules() if isinstance(m, ExpertLinear)}

    for precision, want in (("fp32", {torch.float32}), ("bf16", {torch.bfloat16})):
        teacher = random_transformer(SMALL, seed=5).restore_official_dtypes()
        distiller = Distiller(DistillConfig(cache=tmp_path, teacher=tmp_path, output=tmp_path / precision, steps=1,
                                            batch_size=2, mixed_precision=precision),
                              teacher=teacher, samples=latent_dataset(2, seed=8), negative=torch.randn(4, 32))
        assert block_dtypes(distiller.real) == want, precision
        assert block_dtypes(teacher) == {torch.bfloat16}
