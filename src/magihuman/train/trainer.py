"""The training loop of ``magihuman train finetune`` and ``magihuman train lora``.

One optimiser step ``s`` (of ``config.steps``):

1. for each of ``grad_accum`` micro-steps ``m``: global batch ``k = s·grad_accum + m`` is
   :func:`global_batch` (``batch_size x world`` samples of one bucket, drawn from ``(seed, k)``); this
   process takes its slice, noises it (:func:`~magihuman.train.objective.noise_batch`, one generator per
   sample) and back-propagates ``loss / grad_accum`` (DDP or FSDP2 average the gradients over processes);
2. clip the global gradient norm, set the learning rate (linear warm-up, then constant), AdamW step,
   EMA update;
3. log the loss (averaged over processes) to ``loss.csv``; every ``checkpoint_every`` steps write a
   resumable checkpoint and ``loss.png``; every ``validation_every`` steps write validation samples.

Precision: the trained weights are float32 (master weights); ``mixed_precision="bf16"`` runs the block
GEMMs in bf16 under autocast, as inference computes them. LoRA keeps the frozen base in its official
dtypes (bf16 block linears, or FP8 with ``lora.fp8_base``) and trains float32 adapters; with
``mixed_precision="fp32"`` the frozen base is float32 too (a base trained and sampled in float32, as the toy
world's).

Several processes (``config.sharding``, :mod:`magihuman.train.distributed`): LoRA replicates the model
(DDP); full fine-tuning shards the float32 weights, gradients and AdamW state (FSDP2), the block linears
gathered in bf16 under ``mixed_precision="bf16"``. Checkpoints and the result hold full tensors (gathered
to rank 0), so a run resumes at any process count.

Result: ``finetune`` writes ``transformer/`` in the official checkpoint layout (block linears bf16, the
EMA weights when EMA is on); ``lora`` writes ``lora.safetensors`` (:mod:`magihuman.train.lora`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch import nn

from magihuman.model.transformer import MagiHumanTransformer
from magihuman.pipeline.loading import TRANSFORMER_CONFIG_FILE, transformer_config
from magihuman.train.cache import LatentSample, group_by_shape, load_negative, load_samples
from magihuman.train.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from magihuman.train.config import TrainConfig
from magihuman.train.distributed import data_parallel_mode, gather_full, local_like, rank_and_world, shard_for_training
from magihuman.train.metrics import LossLog
from magihuman.train.objective import ObjectiveSettings, derive_seed, flow_matching_loss, noise_batch, sample_generator


def global_batch(groups: dict[tuple, list[int]], seed: int, batch_index: int, size: int) -> list[int]:
    """Sample indices of global batch ``batch_index``: a bucket picked in proportion to its size, then
    ``size`` of its samples (without replacement when it has that many). A pure function of its inputs."""
    generator = torch.Generator().manual_seed(derive_seed(seed, 0, batch_index))
    keys = list(groups)
    weights = torch.tensor([len(groups[k]) for k in keys], dtype=torch.float64)
    members = groups[keys[int(torch.multinomial(weights, 1, generator=generator))]]
    if size <= len(members):
        picks = torch.randperm(len(members), generator=generator)[:size]
    else:
        picks = torch.randint(len(members), (size,), generator=generator)
    return [members[int(i)] for i in picks]


def load_transformer(folder: str | Path, device: str | torch.device = "cpu") -> MagiHumanTransformer:
    """A transformer checkpoint folder with its optional ``magihuman_transformer.json`` config."""
    return MagiHumanTransformer.from_official(folder, device=device, progress=False, **transformer_config(folder))


def save_transformer(model: MagiHumanTransformer, folder: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (or ``state``) in the official layout, block linears bf16 and the rest float32,
    plus its config file when it is not the 15B default; loadable by ``MagiHumanTransformer.from_official``."""
    from magihuman.model.checkpoint import save_official_checkpoint

    state = dict(state if state is not None else model.state_dict())
    for key, tensor in state.items():
        want = torch.bfloat16 if MagiHumanTransformer.is_block_linear(key) else torch.float32
        state[key] = tensor.detach().to("cpu", want)
    save_official_checkpoint(state, folder, max_shard_bytes=5 << 30)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}
    (Path(folder) / TRANSFORMER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return Path(folder)


def enable_gradient_checkpointing(model: MagiHumanTransformer) -> None:
    """Recompute every transformer layer in the backward pass (state-dict keys unchanged)."""
    for layer in model.block.layers:
        if getattr(layer, "_magihuman_checkpointed", False):
            continue
        plain = layer.forward
        layer.forward = functools.partial(torch.utils.checkpoint.checkpoint, plain, use_reentrant=False)
        layer._magihuman_checkpointed = True


@dataclass
class TrainResult:
    """What a run produced: the final step, the result path, and the logged losses."""

    step: int
    output: Path
    losses: list[float]


class Trainer:
    """Runs one configured training (see the module docstring).

    Args:
        config: the validated run configuration.
        model: the transformer to train (None: loaded from ``config.base``).
        samples: the dataset (None: read from ``config.cache``); ``negative`` likewise.
        device: where the model computes.

    Raises:
        CacheError: an unusable cache. ValueError: samples whose shapes do not fit the model.
    """

    def __init__(self, config: TrainConfig, *, model: MagiHumanTransformer | None = None,
                 samples: list[LatentSample] | None = None, negative: torch.Tensor | None = None,
                 device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.samples = samples if samples is not None else load_samples(config.cache)
        self.negative = negative if negative is not None else load_negative(config.cache)
        self.groups = group_by_shape(self.samples)
        self.rank, self.world = rank_and_world()
        self.parallel = data_parallel_mode(config.sharding, config.mode, self.world)
        self.model = model if model is not None else load_transformer(config.base)
        self._setup_model()
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=config.learning_rate, betas=config.betas,
                                           eps=config.adam_eps, weight_decay=config.weight_decay)
        self.ema = {n: p.detach().clone() for n, p in self.params.items()} if config.ema_decay is not None else None
        self.step = 0
        self.objective = ObjectiveSettings(config.shift, config.first_frame_rate, config.text_dropout,
                                           config.audio_loss_weight, config.prefix_rate, config.range_rate,
                                           config.terminal_rate, config.video_region, config.video_region_weight,
                                           config.audio_condition_rate,
                                           tuple(config.extra_video_regions))

    # ------------------------------------------------------------------------------------ setup
    def _setup_model(self) -> None:
        config = self.config
        if config.mode == "lora":
            from magihuman.train.lora import add_lora

            self.model.requires_grad_(False)
            if config.mixed_precision == "fp32" and not config.lora.fp8_base:
                self.model.float()  # all float32, as asked (bf16 GEMMs are slow on CPUs without bf16 units)
            if config.lora.fp8_base:
                from magihuman.runtime.fp8 import enable_fp8_weights

                enable_fp8_weights(self.model)
            with torch.random.fork_rng(devices=[]):  # the adapters' random init: a function of the seed
                torch.manual_seed(derive_seed(config.seed, 3))
                add_lora(self.model, config.lora)
        else:
            self.model.requires_grad_(True)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        if self.parallel == "fsdp2":  # float32 unit by unit, each shard moved to the device
            shard_for_training(self.model, mixed_precision=config.mixed_precision, device=self.device)
        elif config.mode == "finetune":
            self.model.float().to(self.device)
        else:
            self.model.to(self.device)
        self.model.train()
        self.wrapped = self.model
        if self.parallel == "ddp":
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ------------------------------------------------------------------------------------ loop
    def train(self, *, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (resuming from the run folder's latest checkpoint if any).

        Args:
            stop_after: stop once this step is done (and checkpointed), as an interruption would.

        Returns:
            The :class:`TrainResult`.
        """
        config, run = self.config, Path(self.config.output)
        if self.rank == 0:
            run.mkdir(parents=True, exist_ok=True)
        self._resume(run)
        log = LossLog(run, resume_step=self.step, tensorboard=config.tensorboard) if self.rank == 0 else None
        # under FSDP2 every process runs the validation forwards (rank 0 writes the files)
        sampling = self.rank == 0 or self.parallel == "fsdp2"
        validator = self._validator(run) if config.validation_every and sampling else None
        last = min(config.steps, stop_after) if stop_after is not None else config.steps
        start = time.perf_counter()
        while self.step < last:
            values = self._train_step()
            self.step += 1
            if log is not None:
                log.append(self.step, dict(values, seconds=time.perf_counter() - start))
            if self.step % config.checkpoint_every == 0 or self.step == last:
                self._save(run)
                if log is not None:
                    log.plot()
            if validator is not None and (self.step % config.validation_every == 0 or self.step == config.steps):
                self._validate(validator)
        output = self._finish(run) if self.step == config.steps else run
        losses = [float(r["loss"]) for r in log.read()] if log is not None else []
        if log is not None:
            log.close()
        return TrainResult(self.step, output, losses)

    def _train_step(self) -> dict[str, float]:
        config = self.config
        torch.manual_seed(derive_seed(config.seed, 2, self.step))  # any draw outside the per-sample generators
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3, dtype=torch.float64)
        for micro in range(config.grad_accum):
            k = self.step * config.grad_accum + micro
            size = config.batch_size * self.world
            indices = global_batch(self.groups, config.seed, k, size)
            mine = range(self.rank * config.batch_size, (self.rank + 1) * config.batch_size)
            batch = noise_batch([self.samples[indices[j]] for j in mine], self.negative, self.objective,
                                [sample_generator(config.seed, k, j) for j in mine]).to(self.device)
            sync = micro == config.grad_accum - 1 or self.world == 1
            with self._no_sync(not sync), self._autocast():
                loss, parts = flow_matching_loss(self.wrapped, batch)
                (loss / config.grad_accum).backward()
            totals += torch.tensor([float(loss.detach()), parts["video"], parts["audio"]], dtype=torch.float64)
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), config.max_grad_norm)
        lr = config.learning_rate * min(1.0, (self.step + 1) / config.warmup_steps) if config.warmup_steps else \
            config.learning_rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self._update_ema()
        totals /= config.grad_accum
        if self.world > 1:
            dist.all_reduce(totals)
            totals /= self.world
        return {"loss": float(totals[0]), "video_loss": float(totals[1]), "audio_loss": float(totals[2]),
                "learning_rate": lr}

    def _no_sync(self, skip: bool):
        """DDP skips the all-reduce of accumulation micro-steps; FSDP2 reduce-scatters every micro-step
        (sharded gradients accumulate, no unsharded gradient is kept)."""
        return self.wrapped.no_sync() if skip and self.parallel == "ddp" else contextlib.nullcontext()

    def _autocast(self):
        if self.config.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.config.ema_decay
        for name, param in self.params.items():
            self.ema[name].mul_(decay).add_(param.detach(), alpha=1 - decay)

    # ------------------------------------------------------------------------------------ state
    def _save(self, run: Path) -> None:
        """Full tensors gathered to rank 0 (a collective under FSDP2), written there."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        keep = self.rank == 0
        trainable = gather_full(self.params, keep=keep)
        # keyed by parameter name, full tensors on the CPU on rank 0: loadable at any process count
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        ema = gather_full(self.ema, keep=keep) if self.ema is not None else None
        if keep:
            extra = {"config": self.config.model_dump(mode="json"), "world_size": self.world,
                     "parallel": self.parallel}
            save_checkpoint(run, self.step, trainable, optimizer_state, ema, extra, keep=self.config.keep_checkpoints)
        if self.world > 1:
            dist.barrier()

    def _resume(self, run: Path) -> None:
        found = latest_checkpoint(run)
        if found is None:
            return
        step, trainable, optimizer_state, ema, _ = load_checkpoint(found)
        missing = sorted(set(self.params) - set(trainable))
        if missing or set(trainable) - set(self.params):
            example = (missing or sorted(trainable))[:3]
            raise ValueError(f"{found} does not match this run's trainable weights (e.g. {example}); "
                             "resume with the same mode and LoRA settings, or use a new output folder")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, optimizer_state,
                                 options=StateDictOptions(full_state_dict=True))
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(local_like(trainable[name], param))
        if self.ema is not None and ema is not None:
            self.ema = {k: local_like(ema[k], param) for k, param in self.params.items()}
        self.step = step

    def _validator(self, run: Path):
        from magihuman.train.validation import Validator

        return Validator(run, self.samples[: self.config.validation_samples], self.negative,
                         preset=self.config.validation_preset, root=self.config.root if self.rank == 0 else None)

    def _validate(self, validator) -> None:
        self.model.eval()
        try:
            validator.run(self.model, self.step, write=self.rank == 0)
        finally:
            self.model.train()

    def _finish(self, run: Path) -> Path:
        """Write the result (rank 0) and return its path."""
        if self.config.mode == "lora":
            from magihuman.train.lora import save_lora

            target = run / "lora.safetensors"
            if self.rank == 0:
                weights = self.ema if self.ema is not None else None
                save_lora(self.model, target, weights=weights)
        else:
            target = run / "transformer"
            ema = self.ema or {}  # the EMA replaces the weights it tracks; gathered (a collective under FSDP2)
            state = gather_full({k: v for k, v in self.model.state_dict().items() if k not in ema}, keep=self.rank == 0)
            state.update(gather_full(ema, keep=self.rank == 0))
            if self.rank == 0:
                save_transformer(self.model, target, state)
        if self.world > 1:
            dist.barrier()
        return target
