"""Where a model's weights already live: checks shared by the runtime switches.

Each switch refuses a model that another switch already placed (block streaming and FSDP2 both
decide where a weight lives; FP8 conversion must come before either), so they all ask the same
questions here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["as_device", "is_block_streamed", "is_sharded", "is_self_placed"]


def as_device(value: Any, what: str) -> torch.device:
    """``torch.device(value)``.

    Args:
        value: a device or its name (``"cuda"``, ``"cuda:0"``, ``"cpu"``).
        what: the argument's name, for the error message.

    Raises:
        ValueError: when ``value`` names no torch device.
    """
    try:
        return torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} must name a torch device such as 'cuda', 'cuda:0' or 'cpu', got {value!r}") from None


def is_block_streamed(module: nn.Module) -> bool:
    """Whether diffusers group offloading (:func:`~magihuman.runtime.offload.enable_block_streaming`)
    is on for ``module``; False for modules without diffusers' ``enable_group_offload``."""
    if not hasattr(module, "enable_group_offload"):
        return False
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return _is_group_offload_enabled(module)


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter is a tensor subclass (an FSDP2 ``DTensor`` after
    :func:`~magihuman.runtime.sharding.shard_transformer`)."""
    return any(type(p.data) is not torch.Tensor for p in module.parameters())


def is_self_placed(component: Any) -> bool:
    """Whether ``component`` places its own weights (streamed or sharded), so nothing else may move it."""
    return isinstance(component, nn.Module) and (is_sharded(component) or is_block_streamed(component))
