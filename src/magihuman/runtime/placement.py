"""Applies :class:`~magihuman.runtime.options.RuntimeOptions` to the models: the one place that knows the
order in which the memory and speed switches go on.

Two entries, both called by :class:`~magihuman.pipeline.magihuman_pipeline.MagiHumanPipeline`:
:func:`place_transformer` for each DiT right after loading, and :func:`offload_idle_components` for
the whole pipeline once every component is built (``--offload components``; it skips the DiTs that
:func:`place_transformer` streamed or sharded, so it must come after it).
"""

from __future__ import annotations

import torch
from torch import nn

from magihuman.model.attention import resolve_attention_backend
from magihuman.runtime.compile import compile_repeated_blocks
from magihuman.runtime.fp8 import enable_fp8_weights
from magihuman.runtime.offload import ComponentOffload, enable_block_streaming, offload_idle_components
from magihuman.runtime.options import RuntimeOptions
from magihuman.runtime.sharding import shard_transformer

__all__ = ["place_transformer", "offload_idle_components", "ComponentOffload"]


def place_transformer(model: nn.Module, runtime: RuntimeOptions, device: torch.device) -> nn.Module:
    """Apply the runtime switches to one loaded DiT and put it where it runs.

    The order is fixed, each step for a reason:

    1. FP8 weights (``runtime.fp8``, :func:`~magihuman.runtime.fp8.enable_fp8_weights`): first,
       while every weight is an ordinary tensor in host memory. It replaces the block linears, so
       streaming and FSDP2 must see the FP8 layers, not the bf16 ones (both refuse to be followed
       by it), and the converted model is half the size to move. Or float32 block linears
       (``runtime.fp32``), at the same point for the same reason.
    2. Attention kernel (``runtime.attention``,
       :func:`~magihuman.model.attention.resolve_attention_backend`): before compiling, so that the
       compiled layers trace the chosen kernel. A DiT with local-window layers on CUDA runs
       FlexAttention instead of SDPA (architecture.md §6.2).
    3. Regional compile (``runtime.compile``, :func:`~magihuman.runtime.compile.compile_repeated_blocks`):
       after FP8 and the kernel, so that the compiled layers capture the final layer code.
    4. Exactly one placement: block streaming (``"blocks" in runtime.offload``,
       :func:`~magihuman.runtime.offload.enable_block_streaming`), else FSDP2 sharding
       (``runtime.shard``, :func:`~magihuman.runtime.sharding.shard_transformer`), else a plain
       ``model.to(device)``. Streaming and sharding both decide where each weight lives, so they
       never combine (:class:`~magihuman.runtime.options.RuntimeOptions` refuses the pair).

    Args:
        model: a loaded :class:`~magihuman.model.transformer.MagiHumanTransformer` (on the CPU when
            ``runtime.loads_on_host``).
        runtime: the switches.
        device: the compute device.

    Returns:
        The placed model (the same object).

    Raises:
        ValueError: from the steps: an attention choice that cannot run on ``device`` (e.g. ``fa3``
            off Hopper), or a model that one of the switches refuses.
        RuntimeError: FP8 on a PyTorch without float8 dtypes; ``shard`` without an initialised
            process group.
    """
    if runtime.fp8:
        enable_fp8_weights(model, scaled_gemm=runtime.fp8_gemm)
    if runtime.fp32:
        for name, param in model.named_parameters():
            if model.is_block_linear(name):
                param.data = param.data.float()
    name = resolve_attention_backend(runtime.attention, device,
                                     local_window_layers=bool(model.config.local_attn_layers))
    model.set_attention_backend(name)
    if runtime.compile:
        compile_repeated_blocks(model)
    if "blocks" in runtime.offload:
        return enable_block_streaming(model, onload_device=device, blocks_per_group=runtime.blocks_per_group)
    if runtime.shard:
        return shard_transformer(model, device=device)
    return model.to(device)
