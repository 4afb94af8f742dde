"""Inputs and helpers shared by the runtime tests (tests/test_fp8.py, test_offload.py, test_sharding.py,
test_compile.py, test_attention_backends.py, test_placement.py): the tiny random DiT of
:mod:`magihuman.demo.random_weights` and its velocities."""

from __future__ import annotations

import torch

from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG, random_transformer


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def tiny_inputs(seed: int = 1, frames: int = 3, audio: int = 9, text: int = 7):
    g = torch.Generator().manual_seed(seed)
    channels = TINY_TRANSFORMER_CONFIG["text_in_channels"]
    return (torch.randn(1, 48, frames, 4, 6, generator=g), torch.randn(1, audio, 64, generator=g),
            torch.randn(1, text, channels, generator=g))


def reference_velocities() -> tuple[torch.Tensor, torch.Tensor]:
    """The plain tiny model's velocities (bf16 block linears) for :func:`tiny_inputs`."""
    with torch.no_grad():
        return random_transformer()(*tiny_inputs())
