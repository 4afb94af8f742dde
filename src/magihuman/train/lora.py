"""LoRA training setup: which block linears get adapters, and writing the adapter file.

The layers, the file format and inference loading live in :mod:`magihuman.pipeline.lora` (inference
needs them without the trainer). Targets come from :class:`~magihuman.train.config.LoraSettings`: the
groups ``attention`` (``linear_qkv``, ``linear_proj``) and ``mlp`` (``up_gate_proj``, ``down_proj``) or
regular expressions over module names, optionally limited to some layers. In the sandwich layers every
modality expert gets its own pair (dit.md 2.3).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from magihuman.pipeline.lora import inject_lora, lora_config, save_lora_file, target_regex
from magihuman.train.config import LORA_TARGET_GROUPS, LoraSettings


def target_patterns(settings: LoraSettings) -> list[str]:
    """Group names expanded to their module patterns; other entries are kept as regular expressions."""
    patterns: list[str] = []
    for target in settings.targets:
        patterns.extend(LORA_TARGET_GROUPS.get(target, (target,)))
    return patterns


def add_lora(model: nn.Module, settings: LoraSettings, adapter_name: str = "default") -> list[str]:
    """Inject trainable float32 adapters (B = 0, so the model starts as the base); freeze everything else.

    Returns:
        The names of the wrapped linears.

    Raises:
        LoraError: the targets match no block linear.
    """
    config = lora_config(settings.rank, settings.alpha, target_regex(target_patterns(settings), settings.layers))
    names = inject_lora(model, config, adapter_name)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
        if ".lora_" in name:
            param.data = param.data.float()
    return names


def save_lora(model: nn.Module, path: Path, *, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the trained adapter (or ``weights``, e.g. its EMA, by parameter name) as ``.safetensors``."""
    return save_lora_file(model, path, weights=weights)
