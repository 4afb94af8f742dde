"""``magihuman train distill``: DMD-2 (Yin et al. 2024, "Improved Distribution Matching Distillation").

Three transformers, all started from the base model (the teacher):

* the **real score**: the frozen teacher with classifier-free guidance at the base sampler's scales
  (video 5.0 while ``t > 500``, then 2.0; audio 5.0; pipeline.md 5), against the negative prompt;
* the **fake score**: trained online with the flow-matching loss (:mod:`magihuman.train.objective`'s
  target ``ε - x0``) on the generator's current samples, so it tracks the generator's distribution;
* the **generator** (the student): run as the distilled sampler (:func:`~magihuman.sampling.schedulers.renoise_step`
  on the ``student_steps`` = 8 shifted sigmas of the ``distill`` preset, pipeline.md 4.5).

One generator update (after ``fake_steps`` fake-score updates, the two time-scale rule):

1. backward simulation: a step index ``k`` in ``0..7`` is drawn; the current generator runs the sampler
   without gradient from noise down to ``σ_k``, then predicts ``x0 = x - σ_k·v_G(x)`` with gradient (so
   the student trains on the inputs it meets at sampling time);
2. ``x0`` is re-noised at a random level ``σ`` (``x_σ = (1 - σ)·x0 + σ·ε``) and both scores predict the
   clean sample, ``x0_real = x_σ - σ·v_real`` and ``x0_fake = x_σ - σ·v_fake``;
3. the distribution-matching gradient ``(x0_fake - x0_real) / mean|x0 - x0_real|`` (the normalisation:
   per sample and modality) is applied to ``x0`` through the surrogate loss
   ``½‖x0 - sg(x0 - grad)‖²``; both modalities add up;
4. optional GAN term: a linear head on the fake score's last-layer features (video and audio tokens
   pooled) separates noised real clips from noised generator samples; the generator gets
   ``gan_weight·softplus(-D(fake))``.

Result: ``OUTPUT/distill/`` in the official checkpoint layout (block linears bf16), which ``--preset
distill`` loads unchanged (``--transformer OUTPUT/distill`` or as ``ROOT/distill``).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from magihuman.model.packing import pad_text_batch
from magihuman.sampling.schedulers import flow_shift, renoise_step, shifted_schedule
from magihuman.train.cache import LatentSample, group_by_shape, load_negative, load_samples
from magihuman.train.config import DistillConfig
from magihuman.train.objective import derive_seed
from magihuman.train.trainer import global_batch, load_transformer, save_transformer


@dataclass
class DistillResult:
    """The student folder and the logged losses (one entry per generator update)."""

    output: Path
    generator_losses: list[float]
    fake_losses: list[float]


class _Batch:
    """Captions of one update: padded text, lengths, and the clean latents (GAN term)."""

    def __init__(self, samples: list[LatentSample], negative: torch.Tensor, device: torch.device):
        self.text, self.lengths = pad_text_batch([s.text_embeds[None].float() for s in samples])
        self.negative, self.neg_lengths = pad_text_batch([negative[None].float()] * len(samples))
        self.text, self.negative = self.text.to(device), self.negative.to(device)
        self.video0 = torch.stack([s.video_latent.float() for s in samples]).to(device)
        self.audio_shape = (len(samples), 4 * (samples[0].video_latent.shape[1] - 1) + 1, 64)
        real_audio = [s.audio_latent for s in samples]
        self.audio0 = torch.stack(real_audio).float().to(device) if all(a is not None for a in real_audio) else None


class Distiller:
    """Runs one DMD-2 distillation (see the module docstring).

    Args:
        config: the run's :class:`~magihuman.train.config.DistillConfig`.
        teacher: the base transformer (None: loaded from ``config.teacher``); it is not modified.
        samples, negative: the cache's captions/latents and negative prompt (None: read from ``config.cache``).
        device: where everything computes.
    """

    def __init__(self, config: DistillConfig, *, teacher: nn.Module | None = None,
                 samples: list[LatentSample] | None = None, negative: torch.Tensor | None = None,
                 device: str | torch.device = "cpu"):
        self.config, self.device = config, torch.device(device)
        self.samples = samples if samples is not None else load_samples(config.cache)
        self.negative = negative if negative is not None else load_negative(config.cache)
        self.groups = group_by_shape(self.samples)
        teacher = teacher if teacher is not None else load_transformer(config.teacher)
        self.real = teacher.to(self.device).eval().requires_grad_(False)
        self.generator = copy.deepcopy(teacher).float().requires_grad_(True).train()
        self.fake = copy.deepcopy(teacher).float().requires_grad_(True).train()
        self.head = nn.Linear(teacher.config.hidden_size, 1).to(self.device)
        fake_params = list(self.fake.parameters()) + list(self.head.parameters())
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), lr=config.generator_lr, betas=config.betas)
        self.opt_f = torch.optim.AdamW(fake_params, lr=config.fake_lr, betas=config.betas)
        self.sigmas = shifted_schedule(config.student_steps, config.shift)[0]

    # ------------------------------------------------------------------------------------ pieces
    def _autocast(self):
        if self.config.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _velocity(self, model, video, audio, text, lengths):
        v_video, v_audio = model(video, audio, text, text_lengths=lengths)
        return v_video.float(), v_audio.float()

    def _draw(self, shape, generator):
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def generate(self, batch: _Batch, k: int, generator: torch.Generator, *, grad: bool):
        """Backward simulation: the student sampler from noise to ``σ_k`` (no grad), then its x0 at ``σ_k``.

        Returns:
            ``(x0_video, x0_audio)`` float32, with gradient to the generator when ``grad``.
        """
        video = self._draw(batch.video0.shape, generator)
        audio = self._draw(batch.audio_shape, generator)
        with torch.no_grad(), self._autocast():
            for j in range(k):
                v_video, v_audio = self._velocity(self.generator, video, audio, batch.text, batch.lengths)
                eps_video, eps_audio = self._draw(video.shape, generator), self._draw(audio.shape, generator)
                video = renoise_step(video, v_video, self.sigmas[j], self.sigmas[j + 1], eps_video)
                audio = renoise_step(audio, v_audio, self.sigmas[j], self.sigmas[j + 1], eps_audio)
        with torch.set_grad_enabled(grad), self._autocast():
            v_video, v_audio = self._velocity(self.generator, video, audio, batch.text, batch.lengths)
        sigma = self.sigmas[k].to(self.device)
        return video - sigma * v_video, audio - sigma * v_audio

    def _score_sigma(self, generator: torch.Generator) -> torch.Tensor:
        low, high = self.config.score_sigma_range
        u = torch.rand((), generator=generator, dtype=torch.float64)
        return torch.tensor(float(flow_shift(u, self.config.shift)), dtype=torch.float32).clamp(low, high)

    def _real_velocity(self, video, audio, batch: _Batch, sigma: float):
        """The teacher's CFG velocity at noise level ``sigma`` (video scale switches at t = 500)."""
        cfg = self.config
        with torch.no_grad(), self._autocast():
            cond = self._velocity(self.real, video, audio, batch.text, batch.lengths)
            uncond = self._velocity(self.real, video, audio, batch.negative, batch.neg_lengths)
        video_scale = cfg.video_guidance_scale if int(1000 * sigma) > 500 else cfg.video_guidance_scale_late
        return (uncond[0] + video_scale * (cond[0] - uncond[0]),
                uncond[1] + cfg.audio_guidance_scale * (cond[1] - uncond[1]))

    def _features(self, video, audio, batch: _Batch) -> torch.Tensor:
        """The fake score's last-layer residual stream, pooled over the video and audio tokens: ``[B, hidden]``."""
        captured = {}
        handle = self.fake.block.layers[-1].register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
        try:
            with self._autocast():
                self.fake(video, audio, batch.text, text_lengths=batch.lengths)
        finally:
            handle.remove()
        _, _, t, h, w = video.shape
        media_tokens = t * (h // 2) * (w // 2) + audio.shape[1]
        return captured["x"][:, :media_tokens].float().mean(dim=1)

    # ------------------------------------------------------------------------------------ updates
    def fake_update(self, batch: _Batch, generator: torch.Generator) -> float:
        """One fake-score step: flow matching on the generator's samples (+ the GAN discriminator loss)."""
        k = int(torch.randint(self.config.student_steps, (), generator=generator))
        x0_video, x0_audio = (x.detach() for x in self.generate(batch, k, generator, grad=False))
        sigma = self._score_sigma(generator)
        eps_video, eps_audio = self._draw(x0_video.shape, generator), self._draw(x0_audio.shape, generator)
        video, audio = (1 - sigma) * x0_video + sigma * eps_video, (1 - sigma) * x0_audio + sigma * eps_audio
        with self._autocast():
            v_video, v_audio = self._velocity(self.fake, video, audio, batch.text, batch.lengths)
        loss = F.mse_loss(v_video, eps_video - x0_video) + F.mse_loss(v_audio, eps_audio - x0_audio)
        if self.config.gan_weight > 0 and batch.audio0 is not None:
            real_video = (1 - sigma) * batch.video0 + sigma * eps_video
            real_audio = (1 - sigma) * batch.audio0 + sigma * eps_audio
            d_real = self.head(self._features(real_video, real_audio, batch))
            d_fake = self.head(self._features(video, audio, batch))
            loss = loss + self.config.gan_weight * (F.softplus(-d_real).mean() + F.softplus(d_fake).mean())
        self.opt_f.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(list(self.fake.parameters()) + list(self.head.parameters()))
        self.opt_f.step()
        return float(loss.detach())

    def generator_update(self, batch: _Batch, generator: torch.Generator) -> float:
        """One generator step: the distribution-matching gradient on both modalities (+ the GAN term)."""
        k = int(torch.randint(self.config.student_steps, (), generator=generator))
        x0_video, x0_audio = self.generate(batch, k, generator, grad=True)
        sigma = self._score_sigma(generator)
        eps_video, eps_audio = self._draw(x0_video.shape, generator), self._draw(x0_audio.shape, generator)
        video = (1 - sigma) * x0_video.detach() + sigma * eps_video
        audio = (1 - sigma) * x0_audio.detach() + sigma * eps_audio
        real = self._real_velocity(video, audio, batch, float(sigma))
        with torch.no_grad(), self._autocast():
            fake = self._velocity(self.fake, video, audio, batch.text, batch.lengths)
        loss = x0_video.new_zeros(())
        for x0, noisy, v_real, v_fake in ((x0_video, video, real[0], fake[0]), (x0_audio, audio, real[1], fake[1])):
            pred_real, pred_fake = noisy - sigma * v_real, noisy - sigma * v_fake
            dims = tuple(range(1, x0.ndim))
            normaliser = (x0.detach() - pred_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
            grad = (pred_fake - pred_real) / normaliser
            loss = loss + 0.5 * F.mse_loss(x0, (x0 - grad).detach())
        if self.config.gan_weight > 0:
            self.fake.requires_grad_(False)
            try:
                gen_video = (1 - sigma) * x0_video + sigma * eps_video
                gen_audio = (1 - sigma) * x0_audio + sigma * eps_audio
                logits = self.head(self._features(gen_video, gen_audio, batch))
                loss = loss + self.config.gan_weight * F.softplus(-logits).mean()
            finally:
                self.fake.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(list(self.generator.parameters()))
        self.opt_g.step()
        self.head.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _clip(self, params) -> None:
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)

    # ------------------------------------------------------------------------------------ loop
    def _batch(self, index: int) -> _Batch:
        picks = global_batch(self.groups, self.config.seed, index, self.config.batch_size)
        return _Batch([self.samples[i] for i in picks], self.negative, self.device)

    def train(self) -> DistillResult:
        """Run ``config.steps`` generator updates; write ``distill_loss.csv`` and ``OUTPUT/distill``."""
        cfg, run = self.config, Path(self.config.output)
        run.mkdir(parents=True, exist_ok=True)
        generator_losses, fake_losses = [], []
        start = time.perf_counter()
        with (run / "distill_loss.csv").open("w", newline="") as handle:
            log = csv.writer(handle)
            log.writerow(["step", "generator_loss", "fake_loss", "seconds"])
            for step in range(cfg.steps):
                fake = 0.0
                for i in range(cfg.fake_steps):
                    rng = torch.Generator().manual_seed(derive_seed(cfg.seed, 4, step, i))
                    fake += self.fake_update(self._batch(step * (cfg.fake_steps + 1) + i), rng) / cfg.fake_steps
                rng = torch.Generator().manual_seed(derive_seed(cfg.seed, 5, step))
                gen = self.generator_update(self._batch(step * (cfg.fake_steps + 1) + cfg.fake_steps), rng)
                generator_losses.append(gen)
                fake_losses.append(fake)
                log.writerow([step + 1, f"{gen:.8g}", f"{fake:.8g}", f"{time.perf_counter() - start:.3f}"])
        output = save_transformer(self.generator, run / "distill")
        return DistillResult(output, generator_losses, fake_losses)
