"""The training memory estimator counts what the real modules hold (checked on the tiny model)."""

from __future__ import annotations

import copy

from magihuman.demo.random_weights import random_transformer
from magihuman.runtime.fp8 import enable_fp8_weights
from magihuman.train.config import LoraSettings
from magihuman.train.lora import add_lora
from magihuman.train.memory import (
    clip_tokens,
    estimate_distill,
    estimate_finetune,
    estimate_lora,
    lora_parameter_count,
    weight_bytes,
)

from .helpers import TRAIN_TINY_CONFIG


def _bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_counts_match_the_modules():
    model = random_transformer(TRAIN_TINY_CONFIG)
    assert weight_bytes(TRAIN_TINY_CONFIG) == _bytes(model)
    assert weight_bytes(TRAIN_TINY_CONFIG, fp8=True) == _bytes(enable_fp8_weights(copy.deepcopy(model)))
    add_lora(model, LoraSettings(rank=4, alpha=4))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameter_count(TRAIN_TINY_CONFIG, rank=4) == trainable


def test_15b_figures():
    """Figures of docs/training.md (448x256, 4 s, 640 text tokens, rank 32, checkpointing): weights 30.64 GB
    (28.5 GiB; FP8 14.3 GiB); LoRA per GPU 38.4 GiB (24.2 GiB on an FP8 base); DMD-2 with FSDP2 over 8 GPUs
    71.5 GiB per GPU; full fine-tuning with FSDP2 over 8 GPUs 39.5 GiB per GPU."""
    assert clip_tokens(448, 256, 4.0, 0) == 26 * 8 * 14 + 101
    assert round(weight_bytes() / 1e9, 2) == 30.64
    assert estimate_lora().gib()["total"] == 38.4
    assert estimate_lora(fp8_base=True).gib()["total"] == 24.2
    assert estimate_distill(gpus=8).gib()["total"] == 71.5
    assert estimate_finetune(gpus=8).gib()["total"] == 39.5
    assert estimate_finetune(gpus=16).total < estimate_finetune(gpus=8).total
    assert estimate_lora(checkpointing=False).total > 2 * estimate_lora().total
