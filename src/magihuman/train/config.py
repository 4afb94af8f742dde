"""The training configuration: one validated pydantic record per run, from a JSON/TOML file plus overrides.

Every field carries its meaning in ``description``; ``magihuman train lora --help-config`` prints them.
Values come, later ones winning, from the defaults, the ``--config`` file, then ``--set key=value``
overrides (dotted keys reach the nested ``lora`` block: ``--set lora.rank=32``).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Module-name patterns of the LoRA targets per group (``lora.targets``); matched against the names of the
#: block linears (``ExpertLinear``), e.g. ``block.layers.3.attention.linear_qkv``.
LORA_TARGET_GROUPS = {
    "attention": (r"attention\.linear_qkv", r"attention\.linear_proj"),
    "mlp": (r"mlp\.up_gate_proj", r"mlp\.down_proj"),
}


class ConfigError(ValueError):
    """A configuration that does not validate; the message names each bad field."""


class LoraSettings(BaseModel):
    """LoRA adapter settings (``lora`` block)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(32, ge=1, description="Rank r of each low-rank pair (A: r x in, B: out x r).")
    alpha: float = Field(32.0, gt=0, description="Scale numerator: the update is (alpha / rank) * B A.")
    targets: list[str] = Field(
        ["attention", "mlp"],
        description="Which block linears get adapters: group names 'attention' (linear_qkv, linear_proj) and "
        "'mlp' (up_gate_proj, down_proj), or regular expressions matched against module names "
        "(e.g. 'layers\\.(0|1)\\.attention\\.linear_qkv'). Sandwich layers get one pair per modality expert.",
    )
    layers: list[int] | None = Field(None, description="Only these layer indices (None: every layer).")
    fp8_base: bool = Field(False, description="Store the frozen base block linears in FP8 (e4m3, per-row scale) "
                           "as `--fp8` inference does; halves their memory. The adapters stay float32.")


class TrainConfig(BaseModel):
    """One training run (``magihuman train lora`` / ``finetune``)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["lora", "finetune"] = Field("lora", description="Train LoRA adapters or every weight.")
    cache: Path = Field(..., description="Latent cache folder written by `magihuman train prepare`.")
    base: Path = Field(..., description="Transformer checkpoint folder to start from (e.g. ROOT/base).")
    output: Path = Field(..., description="Run folder: checkpoints/, loss.csv, loss.png, validation/, the result.")
    root: Path | None = Field(None, description="Checkpoint root with the VAEs, for validation MP4s (None: no MP4s).")
    steps: int = Field(1000, ge=1, description="Optimiser steps.")
    batch_size: int = Field(1, ge=1, description="Samples per process per micro-step (one bucket per batch).")
    grad_accum: int = Field(1, ge=1, description="Micro-steps accumulated per optimiser step.")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW peak learning rate.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps, then constant.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(1.0, description="Clip the global gradient norm (None: no clipping).")
    shift: float = Field(5.0, gt=0, description="Flow time shift of the sigma distribution (the sampler's 5.0).")
    first_frame_rate: float = Field(0.5, ge=0, le=1, description="Share of samples trained as image-to-video: "
                                    "latent frame 0 is the clean latent and carries no loss (inference overwrites it).")
    text_dropout: float = Field(0.1, ge=0, le=1, description="Share of samples whose text is replaced by the "
                                "negative prompt (the unconditional branch CFG uses).")
    audio_loss_weight: float = Field(1.0, ge=0, description="Weight of the audio velocity loss next to the video's.")
    prefix_rate: float = Field(0.0, ge=0, le=1, description="Share of samples with a clean prefix of latent frames "
                               "and the matching audio (continuation / long-clip windows); no loss there.")
    range_rate: float = Field(0.0, ge=0, le=1, description="Share of samples clean everywhere except a random range "
                              "of latent frames and the matching audio (retakes).")
    terminal_rate: float = Field(0.0, ge=0, le=1, description="Share of samples at sigma = 1 (pure noise in), where "
                                 "only the text says what to draw: the sampler's first step.")
    audio_condition_rate: float = Field(0.0, ge=0, le=1, description="Share of samples trained as audio-driven: "
                                        "every audio latent is clean and carries no loss (a driving track).")
    video_region: tuple[int, int, int, int] | None = Field(
        None, description="A box (x0, y0, x1, y1) in pixels of the bucket's frames whose video loss counts "
        "video_region_weight times (every latent cell of 16x16 pixels it touches), e.g. a face or mouth that is a "
        "small share of the frame; None: every cell counts once.")
    video_region_weight: float = Field(1.0, gt=0, description="Weight of the video_region's latent cells.")
    extra_video_regions: list[tuple[int, int, int, int, float]] = Field(
        default_factory=list, description="More weighted boxes, each (x0, y0, x1, y1, weight) in pixels like "
        "video_region; where boxes share a latent cell their weights multiply (e.g. the mouth and the hair).")
    mixed_precision: Literal["bf16", "fp32"] = Field(
        "bf16", description="bf16: block GEMMs in bf16 (autocast) over float32 master weights, as inference "
        "computes; fp32: all float32.")
    gradient_checkpointing: bool = Field(False, description="Recompute each transformer layer in the backward pass.")
    ema_decay: float | None = Field(None, ge=0, lt=1, description="Keep an EMA of the trained weights (None: off).")
    seed: int = Field(0, description="Seed of the data order, sigmas, noises and dropouts (each step re-derives it).")
    checkpoint_every: int = Field(500, ge=1, description="Save a resumable checkpoint every N steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Resumable checkpoints kept (oldest removed first).")
    validation_every: int | None = Field(None, ge=1, description="Write validation MP4s every N steps (None: off).")
    validation_samples: int = Field(2, ge=1, description="Cached captions sampled at each validation.")
    validation_preset: Literal["base", "distill"] = Field("base", description="Sampler of the validation MP4s.")
    tensorboard: bool = Field(False, description="Also log to TensorBoard (needs the `tensorboard` extra).")
    sharding: Literal["auto", "ddp", "fsdp2"] = Field(
        "auto", description="How several processes (torchrun) hold the model: 'ddp' replicates it and averages "
        "the gradients; 'fsdp2' shards the float32 weights, gradients and AdamW state over the processes "
        "(mode 'finetune' only); 'auto': ddp for lora, fsdp2 for finetune. One process: neither.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (mode 'lora').")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.video_region is not None and not _is_box(*self.video_region):
            raise ValueError(f"video_region must be (x0, y0, x1, y1) pixels with 0 <= x0 < x1 and 0 <= y0 < y1, "
                             f"got {self.video_region}")
        for x0, y0, x1, y1, weight in self.extra_video_regions:
            if not (_is_box(x0, y0, x1, y1) and weight > 0):
                raise ValueError(f"each of extra_video_regions must be (x0, y0, x1, y1, weight) with pixels "
                                 f"0 <= x0 < x1, 0 <= y0 < y1 and weight > 0, got {(x0, y0, x1, y1, weight)}")
        if self.mode == "finetune" and self.lora.fp8_base:
            raise ValueError("lora.fp8_base only applies to mode 'lora' (full fine-tuning trains every weight)")
        if self.mode == "lora" and self.sharding == "fsdp2":
            raise ValueError("sharding 'fsdp2' is for mode 'finetune'; LoRA replicates its frozen base "
                             "(use sharding 'ddp' or 'auto')")
        return self


def _is_box(x0: int, y0: int, x1: int, y1: int) -> bool:
    """A pixel box ``(x0, y0, x1, y1)`` (end exclusive) with ``0 <= x0 < x1`` and ``0 <= y0 < y1``."""
    return 0 <= x0 < x1 and 0 <= y0 < y1


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None, *, model: type[BaseModel] | None = None) -> TrainConfig:
    """Defaults, then the file (``.json`` or ``.toml``), then ``overrides``, then ``key=value`` strings.

    ``model`` picks the record (default :class:`TrainConfig`; :class:`DistillConfig` for distillation).

    Raises:
        ConfigError: an unreadable file, a malformed ``--set``, or fields that do not validate (all listed).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the training config {path}: {exc}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            _assign(data, key, value)
    for item in sets or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set learning_rate=5e-5")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        _assign(data, key.strip(), value)
    try:
        return (model or TrainConfig).model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid training config: {problems}") from None


def _assign(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def describe_fields(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """One ``name (default): description`` line per field, nested blocks flattened with dots."""
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += describe_fields(annotation, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        lines.append(f"{prefix}{name} ({default}): {field.description}")
    return lines


class DistillConfig(BaseModel):
    """One DMD-2 distillation run (``magihuman train distill``; :mod:`magihuman.train.distill`)."""

    model_config = ConfigDict(extra="forbid")

    cache: Path = Field(..., description="Latent cache (captions; clean latents for the GAN term).")
    teacher: Path = Field(..., description="The base transformer folder (frozen real score; initialises both "
                          "the generator and the fake score).")
    output: Path = Field(..., description="Run folder; the student is written to OUTPUT/distill in the "
                         "official layout.")
    steps: int = Field(1000, ge=1, description="Generator updates.")
    batch_size: int = Field(1, ge=1, description="Captions per process per update (global batch: batch_size x "
                            "processes).")
    fake_steps: int = Field(5, ge=1, description="Fake-score updates per generator update (two time-scale rule).")
    generator_lr: float = Field(2e-6, gt=0, description="AdamW learning rate of the generator.")
    fake_lr: float = Field(2e-6, gt=0, description="AdamW learning rate of the fake score (and the GAN head).")
    betas: tuple[float, float] = Field((0.0, 0.999), description="AdamW betas of both optimisers.")
    max_grad_norm: float | None = Field(10.0, description="Gradient-norm clip of each update (None: off).")
    student_steps: int = Field(8, ge=1, description="Steps of the distilled sampler (8: the shipped `distill` preset).")
    shift: float = Field(5.0, gt=0, description="Flow time shift of the student's sigmas and of the score "
                         "noise levels.")
    video_guidance_scale: float = Field(5.0, description="Real-score video CFG while t > 500 (the base sampler's).")
    video_guidance_scale_late: float = Field(2.0, description="Real-score video CFG once t <= 500.")
    audio_guidance_scale: float = Field(5.0, description="Real-score audio CFG.")
    score_sigma_range: tuple[float, float] = Field((0.02, 0.98), description="Noise levels at which the scores "
                                                   "compare the generator's samples (shifted-uniform, clamped).")
    audio_loss_weight: float = Field(1.0, ge=0, description="Weight of the audio term of the generator's "
                                     "distribution-matching loss next to the video's (as TrainConfig's).")
    gan_weight: float = Field(0.0, ge=0, description="Weight of the GAN term on fake-score features (0: off; "
                              "DMD-2 uses ~1e-3 with real clips from the cache).")
    first_frame_rate: float = Field(0.0, ge=0, le=1, description="Share of samples distilled as image-to-video: "
                                    "latent frame 0 of the cached clip is held clean in the student's sampler and "
                                    "in both scores' inputs, and gets no distribution-matching gradient.")
    prefix_rate: float = Field(0.0, ge=0, le=1, description="Share of samples with a clean prefix of latent frames "
                               "and the matching audio held the same way (long-clip windows, extend).")
    range_rate: float = Field(0.0, ge=0, le=1, description="Share of samples clean everywhere except a random range "
                              "of latent frames and the matching audio (retakes).")
    mixed_precision: Literal["bf16", "fp32"] = Field("bf16", description="As TrainConfig.mixed_precision.")
    seed: int = Field(0, description="Seed of every draw (re-derived per update).")
    checkpoint_every: int = Field(500, ge=1, description="Save a resumable checkpoint (generator, fake score, "
                                  "GAN head, both optimisers) every N generator updates (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Resumable checkpoints kept (oldest removed first).")
    tensorboard: bool = Field(False, description="Also log to TensorBoard (needs the `tensorboard` extra).")
