"""Random-weight transformers in the official checkpoint layout, for tests and the offline demo.

The initialisation follows the recipe of the golden case ``dit_forward_a`` (so that activations
stay in a realistic range, including some swiglu7 clamp hits): RMSNorm weights ``0.1*randn``
(gain ``1 + w``), embedders ``randn/sqrt(in)`` with ``0.1*randn`` biases, block linears
``randn/sqrt(in)`` (``up_gate_proj`` x2.5) rounded to bf16, heads ``randn/sqrt(in)``, RoPE bands
from the formula. Tensors are drawn in ``state_dict()`` order from one CPU generator, so a seed
gives the same weights on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from magihuman.model.rope import default_bands
from magihuman.model.transformer import MagiHumanTransformer

#: A ~2.5 M-parameter configuration with the 15B model's structure (sandwich experts at both ends,
#: gelu7 then swiglu7, GQA 4:2 with gates; 2 K/V heads so ``--cp 2`` runs), fast enough for CPU tests and the demo.
TINY_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    num_layers=6, hidden_size=128, head_dim=32, num_query_groups=2, video_in_channels=192,
    audio_in_channels=64, text_in_channels=32, mm_layers=(0, 1, 4, 5), gelu7_layers=(0, 1),
)


def _init_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    draw = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if "norm" in name or name.endswith(".bias"):
        return 0.1 * draw
    scale = 2.5 if name.endswith("up_gate_proj.weight") else 1.0
    return scale * draw / math.sqrt(shape[-1])


def random_transformer_state_dict(config: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full official-layout state dict with random weights.

    Args:
        config: ``MagiHumanTransformer`` config fields (default :data:`TINY_TRANSFORMER_CONFIG`).
        seed: generator seed.

    Returns:
        ``{key: tensor}`` with the official dtypes: block linears bf16, everything else float32.
    """
    config = dict(TINY_TRANSFORMER_CONFIG if config is None else config)
    with torch.device("meta"):
        template = MagiHumanTransformer(**config).state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, meta in template.items():
        if name.endswith("rope.bands"):
            state[name] = default_bands(meta.shape[0])
            continue
        state[name] = _init_tensor(name, meta.shape, generator).to(meta.dtype)
    return state


def random_transformer(config: Mapping[str, Any] | None = None, seed: int = 0) -> MagiHumanTransformer:
    """A ready ``MagiHumanTransformer`` (eval mode, CPU) with :func:`random_transformer_state_dict` weights."""
    config = dict(TINY_TRANSFORMER_CONFIG if config is None else config)
    model = MagiHumanTransformer(**config)
    model.load_state_dict(random_transformer_state_dict(config, seed))
    return model.eval()


def save_random_transformer(
    folder: str | Path, config: Mapping[str, Any] | None = None, *, seed: int = 0,
    max_shard_bytes: int | None = None, compress: bool = False,
) -> Path:
    """Write a random transformer as an official checkpoint folder (``model.safetensors`` or shards).

    Args:
        folder: output folder (created).
        config: config fields (default :data:`TINY_TRANSFORMER_CONFIG`).
        seed: generator seed.
        max_shard_bytes: shard size; None writes a single ``model.safetensors``.
        compress: write ``<shard>.zst`` files (sharded layouts only).

    Returns:
        The folder.
    """
    from magihuman.model.checkpoint import save_official_checkpoint

    return save_official_checkpoint(
        random_transformer_state_dict(config, seed), folder, max_shard_bytes=max_shard_bytes, compress=compress
    )
