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
   ``½‖x0 - sg(x0 - grad)‖²``; the video's and ``audio_loss_weight`` x the audio's add up;
4. optional GAN term: a linear head on the fake score's last-layer features (video and audio tokens
   pooled) separates noised real clips from noised generator samples; the generator gets
   ``gan_weight·softplus(-D(fake))``.

Result: ``OUTPUT/distill/`` in the official checkpoint layout (block linears bf16), which ``--preset
distill`` loads unchanged (``--transformer OUTPUT/distill`` or as ``ROOT/distill``).

Clean conditions (``first_frame_rate``, ``prefix_rate``, ``range_rate``; off by default): a sample may hold
latent positions of its cached clip clean, drawn as the trainer's objective draws them
(:func:`~magihuman.train.objective.clean_positions`: latent frame 0, a prefix of frames with the audio of the
same time, or everything outside a range). The student's sampler writes them before every call and into its
``x0``, as the pipeline's clean-condition sampler does (docs/long_clips.md); the re-noised inputs of both scores
hold them too; the fake score's loss and the distribution-matching gradient leave them out. So the student
learns the conditioned sampling that image-to-video, long-clip windows, extend and retake run.

Video-only clips (cached without sound) carry no audio target: for them the audio term of the
distribution-matching loss and of the fake score's loss has weight 0 (per sample, as the trainer's
objective does with ``audio_weight``), and the GAN term sees pure-noise audio for the real clip and the
generated one alike, so nothing trains the audio branch towards a noise target.

Randomness and processes: update ``u`` (each step: ``fake_steps`` fake-score updates, then one
generator update) draws a global batch of ``batch_size x processes`` captions from ``(seed, u)``
(:func:`~magihuman.train.trainer.global_batch`); the step ``k`` and the score noise level come from
``(seed, u)`` on every process, each sample's noises from ``(seed, u, sample)``. Each process takes its
slice and the gradients are averaged over the processes
(:func:`~magihuman.train.distributed.average_gradients`), so the result does not depend on the split
(up to float reduction order), and a resumed run draws what the uninterrupted run drew.

Checkpoints every ``checkpoint_every`` generator updates (:mod:`magihuman.train.checkpointing`, the last
``keep_checkpoints`` kept) hold the generator, the fake score, the GAN head, both AdamW states and the
step; running the same command again resumes from the latest, bit for bit on the same machine and
process count. ``distill_loss.csv`` has one row per generator update (:mod:`magihuman.train.metrics`).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from magihuman.model.packing import pad_text_batch
from magihuman.sampling.schedulers import flow_shift, renoise_step, shifted_schedule
from magihuman.train.cache import LatentSample, group_by_shape, load_negative, load_samples
from magihuman.train.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from magihuman.train.config import DistillConfig
from magihuman.train.distributed import average_gradients, rank_and_world
from magihuman.train.metrics import DISTILL_COLUMNS, LossLog
from magihuman.train.objective import ObjectiveSettings, clean_positions, derive_seed
from magihuman.train.trainer import global_batch, load_transformer, save_transformer


@dataclass
class DistillResult:
    """The student folder (the run folder when stopped early) and the logged losses (one per generator update)."""

    output: Path
    generator_losses: list[float]
    fake_losses: list[float]


class _Batch:
    """This process's slice of one update's global batch: padded text, clean latents, which samples have
    sound, the positions held clean, and one noise generator per sample."""

    def __init__(self, samples: list[LatentSample], negative: torch.Tensor, device: torch.device,
                 generators: list[torch.Generator], conditions: ObjectiveSettings | None = None):
        self.device, self.generators = device, generators
        self.text, self.lengths = pad_text_batch([s.text_embeds[None].float() for s in samples])
        self.negative, self.neg_lengths = pad_text_batch([negative[None].float()] * len(samples))
        self.text, self.negative = self.text.to(device), self.negative.to(device)
        self.video0 = torch.stack([s.video_latent.float() for s in samples]).to(device)
        # the cached clips' audio length (a batch is one shape bucket); 4 (T - 1) + 1 for video-only clips
        first_audio = samples[0].audio_latent
        frames = first_audio.shape[0] if first_audio is not None else 4 * (samples[0].video_latent.shape[1] - 1) + 1
        self.audio_shape = (len(samples), frames, 64)
        self.audio0 = torch.stack([s.audio_latent.float() if s.audio_latent is not None else torch.zeros(frames, 64)
                                   for s in samples]).to(device)
        #: ``[B]`` float32: 1 for a clip with sound, 0 for a video-only clip (its audio has no target)
        self.has_audio = torch.tensor([float(s.audio_latent is not None) for s in samples], device=device)
        #: ``[B, 1, T, 1, 1]`` and ``[B, A, 1]`` bool: positions held at the clean latents (None: none)
        self.video_clean = self.audio_clean = None
        if conditions is not None:
            masks = [clean_positions(self.video0.shape[2], frames, conditions,
                                     torch.rand((), generator=g).item() < conditions.first_frame_rate, g)
                     for g in generators]
            self.video_clean = torch.stack([m[0] for m in masks]).view(len(samples), 1, -1, 1, 1).to(device)
            self.audio_clean = torch.stack([m[1] for m in masks]).view(len(samples), -1, 1).to(device)
            self.audio_clean = self.audio_clean & (self.has_audio.view(-1, 1, 1) > 0)  # no track: nothing to hold

    def hold(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(video, audio)`` with the held positions replaced by the clean latents (unchanged without conditions)."""
        if self.video_clean is None:
            return video, audio
        return (torch.where(self.video_clean, self.video0, video), torch.where(self.audio_clean, self.audio0, audio))

    def free(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``[B, 1, T, 1, 1]`` and ``[B, A, 1]`` float32 weights, 1 where the sampler generates and 0 where it holds;
        ``(None, None)`` without conditions (every position counts)."""
        if self.video_clean is None:
            return None, None
        return (~self.video_clean).float(), (~self.audio_clean).float()

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """``[B, *shape]`` standard normal float32, each sample's from its own generator."""
        return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in self.generators]
                           ).to(self.device)

    def silent_as_noise(self, audio: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``audio`` with the video-only samples' rows replaced by the pure noise ``eps`` (GAN inputs)."""
        keep = self.has_audio.view(-1, 1, 1)
        return keep * audio + (1 - keep) * eps


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]``: mean squared difference of each sample; with a 0/1 ``weight`` (broadcast to ``a``) the mean over
    the positions it keeps."""
    if weight is None:
        return (a - b).pow(2).flatten(1).mean(1)
    weight = weight.expand_as(a)
    return ((a - b).pow(2) * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)


class Distiller:
    """Runs one DMD-2 distillation (see the module docstring).

    Args:
        config: the run's :class:`~magihuman.train.config.DistillConfig`.
        teacher: the base transformer (None: loaded from ``config.teacher``); it is not modified.
        samples, negative: the cache's captions/latents and negative prompt (None: read from ``config.cache``).
        device: where everything computes (``cuda:LOCAL_RANK`` under torchrun).
    """

    def __init__(self, config: DistillConfig, *, teacher: nn.Module | None = None,
                 samples: list[LatentSample] | None = None, negative: torch.Tensor | None = None,
                 device: str | torch.device = "cpu"):
        self.config, self.device = config, torch.device(device)
        self.rank, self.world = rank_and_world()
        self.samples = samples if samples is not None else load_samples(config.cache)
        self.negative = negative if negative is not None else load_negative(config.cache)
        self.groups = group_by_shape(self.samples)
        if teacher is None:
            teacher = load_transformer(config.teacher)
        elif config.mixed_precision == "fp32":  # a caller's teacher is not modified: cast a copy
            teacher = copy.deepcopy(teacher)
        if config.mixed_precision == "fp32":  # all float32, as asked
            teacher = teacher.float()
        self.real = teacher.to(self.device).eval().requires_grad_(False)
        self.generator = copy.deepcopy(teacher).float().requires_grad_(True).train()
        self.fake = copy.deepcopy(teacher).float().requires_grad_(True).train()
        with torch.random.fork_rng(devices=[]):  # the same head on every process and every run of a seed
            torch.manual_seed(derive_seed(config.seed, 7))
            self.head = nn.Linear(teacher.config.hidden_size, 1).to(self.device)
        self.fake_params = list(self.fake.parameters()) + list(self.head.parameters())
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), lr=config.generator_lr, betas=config.betas)
        self.opt_f = torch.optim.AdamW(self.fake_params, lr=config.fake_lr, betas=config.betas)
        self.sigmas = shifted_schedule(config.student_steps, config.shift)[0]
        self.conditions = None
        if config.first_frame_rate > 0 or config.prefix_rate > 0 or config.range_rate > 0:
            self.conditions = ObjectiveSettings(first_frame_rate=config.first_frame_rate,
                                                prefix_rate=config.prefix_rate, range_rate=config.range_rate)
        self.step = 0

    # ------------------------------------------------------------------------------------ pieces
    def _autocast(self):
        if self.config.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _velocity(self, model, video, audio, text, lengths):
        v_video, v_audio = model(video, audio, text, text_lengths=lengths)
        return v_video.float(), v_audio.float()

    def generate(self, batch: _Batch, k: int, *, grad: bool):
        """Backward simulation: the student sampler from noise to ``σ_k`` (no grad), then its x0 at ``σ_k``.

        Returns:
            ``(x0_video, x0_audio)`` float32, with gradient to the generator when ``grad``.
        """
        video = batch.noise(tuple(batch.video0.shape[1:]))
        audio = batch.noise(batch.audio_shape[1:])
        with torch.no_grad(), self._autocast():
            for j in range(k):
                video, audio = batch.hold(video, audio)
                v_video, v_audio = self._velocity(self.generator, video, audio, batch.text, batch.lengths)
                eps_video, eps_audio = batch.noise(tuple(video.shape[1:])), batch.noise(tuple(audio.shape[1:]))
                video = renoise_step(video, v_video, self.sigmas[j], self.sigmas[j + 1], eps_video)
                audio = renoise_step(audio, v_audio, self.sigmas[j], self.sigmas[j + 1], eps_audio)
        video, audio = batch.hold(video, audio)
        with torch.set_grad_enabled(grad), self._autocast():
            v_video, v_audio = self._velocity(self.generator, video, audio, batch.text, batch.lengths)
        sigma = self.sigmas[k].to(self.device)
        return batch.hold(video - sigma * v_video, audio - sigma * v_audio)

    def _score_sigma(self, generator: torch.Generator) -> torch.Tensor:
        low, high = self.config.score_sigma_range
        u = torch.rand((), generator=generator, dtype=torch.float64)
        return torch.tensor(float(flow_shift(u, self.config.shift)), dtype=torch.float32).clamp(low, high)

    def _renoise(self, batch: _Batch, x0_video, x0_audio, generator: torch.Generator):
        """The score noise level ``σ`` (a shared draw), then each sample's ``ε``: ``(σ, ε_video, ε_audio)``."""
        sigma = self._score_sigma(generator)
        return sigma, batch.noise(tuple(x0_video.shape[1:])), batch.noise(tuple(x0_audio.shape[1:]))

    @staticmethod
    def _noised(batch: _Batch, x0_video, x0_audio, sigma, eps_video, eps_audio):
        """``x_σ = (1 - σ)·x0 + σ·ε`` per modality, with the held positions clean (as the scores meet them)."""
        return batch.hold((1 - sigma) * x0_video + sigma * eps_video, (1 - sigma) * x0_audio + sigma * eps_audio)

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
        """One fake-score step: flow matching on the generator's samples (+ the GAN discriminator loss).

        ``generator`` draws what all processes share (the step ``k``, the noise level); returns this
        process's loss.
        """
        k = int(torch.randint(self.config.student_steps, (), generator=generator))
        x0_video, x0_audio = (x.detach() for x in self.generate(batch, k, grad=False))
        sigma, eps_video, eps_audio = self._renoise(batch, x0_video, x0_audio, generator)
        video, audio = self._noised(batch, x0_video, x0_audio, sigma, eps_video, eps_audio)
        with self._autocast():
            v_video, v_audio = self._velocity(self.fake, video, audio, batch.text, batch.lengths)
        free_video, free_audio = batch.free()
        loss = (_per_sample_mse(v_video, eps_video - x0_video, free_video)
                + batch.has_audio * _per_sample_mse(v_audio, eps_audio - x0_audio, free_audio)).mean()
        if self.config.gan_weight > 0:
            real_video, real_audio = self._noised(batch, batch.video0, batch.audio0, sigma, eps_video, eps_audio)
            real_audio = batch.silent_as_noise(real_audio, eps_audio)
            d_real = self.head(self._features(real_video, real_audio, batch))
            d_fake = self.head(self._features(video, batch.silent_as_noise(audio, eps_audio), batch))
            loss = loss + self.config.gan_weight * (F.softplus(-d_real).mean() + F.softplus(d_fake).mean())
        self.opt_f.zero_grad(set_to_none=True)
        loss.backward()
        self._step(self.opt_f, self.fake_params)
        return float(loss.detach())

    def generator_update(self, batch: _Batch, generator: torch.Generator) -> float:
        """One generator step: the distribution-matching gradient on both modalities (+ the GAN term);
        returns this process's loss."""
        k = int(torch.randint(self.config.student_steps, (), generator=generator))
        x0_video, x0_audio = self.generate(batch, k, grad=True)
        sigma, eps_video, eps_audio = self._renoise(batch, x0_video, x0_audio, generator)
        video, audio = self._noised(batch, x0_video.detach(), x0_audio.detach(), sigma, eps_video, eps_audio)
        real = self._real_velocity(video, audio, batch, float(sigma))
        with torch.no_grad(), self._autocast():
            fake = self._velocity(self.fake, video, audio, batch.text, batch.lengths)
        per_sample = x0_video.new_zeros(len(batch.has_audio))
        free = batch.free()
        audio_weight = batch.has_audio * self.config.audio_loss_weight
        for x0, noisy, v_real, v_fake, weight, keep in ((x0_video, video, real[0], fake[0], 1.0, free[0]),
                                                        (x0_audio, audio, real[1], fake[1], audio_weight, free[1])):
            pred_real, pred_fake = noisy - sigma * v_real, noisy - sigma * v_fake
            dims = tuple(range(1, x0.ndim))
            error = (x0.detach() - pred_real).abs()
            if keep is None:
                normaliser = error.mean(dim=dims, keepdim=True)
                grad = (pred_fake - pred_real) / normaliser.clamp_min(1e-6)
            else:  # over the generated positions only; the held ones get no gradient
                kept = keep.expand_as(x0)
                normaliser = (error * kept).sum(dim=dims, keepdim=True) / kept.sum(dim=dims, keepdim=True).clamp_min(1)
                grad = (pred_fake - pred_real) * kept / normaliser.clamp_min(1e-6)
            per_sample = per_sample + weight * 0.5 * _per_sample_mse(x0, (x0 - grad).detach(), keep)
        loss = per_sample.mean()
        if self.config.gan_weight > 0:
            self.fake.requires_grad_(False)
            try:
                gen_video, gen_audio = self._noised(batch, x0_video, x0_audio, sigma, eps_video, eps_audio)
                gen_audio = batch.silent_as_noise(gen_audio, eps_audio)
                logits = self.head(self._features(gen_video, gen_audio, batch))
                loss = loss + self.config.gan_weight * F.softplus(-logits).mean()
            finally:
                self.fake.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self._step(self.opt_g, list(self.generator.parameters()))
        self.head.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        """Average the gradients over the processes, clip, step."""
        average_gradients(params)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        optimizer.step()

    # ------------------------------------------------------------------------------------ loop
    def _batch(self, update: int) -> tuple[_Batch, torch.Generator]:
        """This process's slice of global batch ``update`` and the generator of the shared draws."""
        size = self.config.batch_size
        picks = global_batch(self.groups, self.config.seed, update, size * self.world)
        mine = range(self.rank * size, (self.rank + 1) * size)
        generators = [torch.Generator().manual_seed(derive_seed(self.config.seed, 5, update, j)) for j in mine]
        batch = _Batch([self.samples[picks[j]] for j in mine], self.negative, self.device, generators,
                       self.conditions)
        return batch, torch.Generator().manual_seed(derive_seed(self.config.seed, 4, update))

    def _update_step(self) -> tuple[float, float]:
        """One step: ``fake_steps`` fake-score updates, one generator update; the losses averaged over
        the processes ``(generator, fake)``."""
        cfg, per_step = self.config, self.config.fake_steps + 1
        fake = sum(self.fake_update(*self._batch(self.step * per_step + i)) for i in range(cfg.fake_steps))
        gen = self.generator_update(*self._batch(self.step * per_step + cfg.fake_steps))
        losses = torch.tensor([gen, fake / cfg.fake_steps], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(losses)
            losses /= self.world
        return float(losses[0]), float(losses[1])

    def train(self, *, stop_after: int | None = None) -> DistillResult:
        """Run to ``config.steps`` generator updates, resuming from the run folder's latest checkpoint;
        write ``distill_loss.csv``, checkpoints and (at the last step) ``OUTPUT/distill``.

        Args:
            stop_after: stop once this step is done (and checkpointed), as an interruption would.
        """
        cfg, run = self.config, Path(self.config.output)
        if self.rank == 0:
            run.mkdir(parents=True, exist_ok=True)
        self._resume(run)
        log = LossLog(run, resume_step=self.step, tensorboard=cfg.tensorboard, name="distill_loss",
                      columns=DISTILL_COLUMNS, tag="distill") if self.rank == 0 else None
        last = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
        start = time.perf_counter()
        while self.step < last:
            gen, fake = self._update_step()
            self.step += 1
            if log is not None:
                log.append(self.step, {"generator_loss": gen, "fake_loss": fake,
                                       "seconds": time.perf_counter() - start})
            if self.step % cfg.checkpoint_every == 0 or self.step == last:
                self._save(run)
                if log is not None:
                    log.plot()
        output = run
        if self.step == cfg.steps:
            output = run / "distill"
            if self.rank == 0:
                save_transformer(self.generator, output)
            if self.world > 1:
                dist.barrier()
        rows = log.read() if log is not None else []
        if log is not None:
            log.close()
        return DistillResult(output, [float(r["generator_loss"]) for r in rows], [float(r["fake_loss"]) for r in rows])

    # ------------------------------------------------------------------------------------ state
    def _trained(self) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": param for prefix, module in
                (("generator", self.generator), ("fake", self.fake), ("head", self.head))
                for name, param in module.named_parameters()}

    def _save(self, run: Path) -> None:
        if self.rank == 0:
            extra = {"config": self.config.model_dump(mode="json"), "world_size": self.world}
            optimizers = {"generator": self.opt_g.state_dict(), "fake": self.opt_f.state_dict()}
            save_checkpoint(run, self.step, self._trained(), optimizers, None, extra, keep=self.config.keep_checkpoints)
        if self.world > 1:
            dist.barrier()

    def _resume(self, run: Path) -> None:
        found = latest_checkpoint(run)
        if found is None:
            return
        step, trained, optimizers, _, _ = load_checkpoint(found)
        params = self._trained()
        if set(trained) != set(params) or not {"generator", "fake"} <= set(optimizers):
            example = sorted(set(params) ^ set(trained))[:3]
            raise ValueError(f"{found} is not a checkpoint of this distillation (e.g. {example}); "
                             "resume with the same teacher, or use a new output folder")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(trained[name])
        self.opt_g.load_state_dict(optimizers["generator"])
        self.opt_f.load_state_dict(optimizers["fake"])
        self.step = step
