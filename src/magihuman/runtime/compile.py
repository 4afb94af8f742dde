"""Regional compilation of the DiT (CLI ``--compile``): ``torch.compile`` of each repeated transformer layer.

Memory: unchanged (+ Inductor workspaces). Speed: ~1.2x on the DiT reported for the reference's
compiler (architecture.md §14); one compile per layer variant at first call.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from magihuman.model.layers import TransformerLayer

__all__ = ["compile_repeated_blocks"]

#: Dynamo recompile limit set by :func:`compile_repeated_blocks` (layer variants x token counts).
_RECOMPILE_LIMIT = 64


def compile_repeated_blocks(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` each ``TransformerLayer`` ("regional compilation"), not the whole model.

    CLI: ``--compile`` (optionally ``--compile-mode max-autotune-no-cudagraphs``). Memory: unchanged.
    Speed: Inductor fuses the float32 norm/RoPE/gate/activation element-wise work around the bf16 GEMMs;
    the reference credits its own compiler with ~1.2x (architecture.md §14). Layers sharing a structure share
    a compiled graph (3 variants in the 15B: sandwich gelu7, shared swiglu7, sandwich swiglu7; 5 in
    the 1080p SR model, whose local-window layers differ), so compile time is that of a few layers,
    paid at the first call of each new token count. Numerics: Inductor may change float32 rounding (architecture.md §5.1).

    Uses diffusers ``ModelMixin.compile_repeated_blocks`` (``_repeated_blocks = ["TransformerLayer"]``)
    when the model has it, else compiles every ``TransformerLayer`` itself. All layers share one code
    object, so every (layer variant, token count) pair counts against dynamo's per-code recompile
    limit (default 8; a base + 1080p SR run needs ~12): it is raised to at least 64 (a process-wide
    setting). The second token count seen makes dynamo compile a dynamic-shape graph; pass
    ``dynamic=False`` to keep static graphs per shape instead.

    Args:
        model: a :class:`~magihuman.model.transformer.MagiHumanTransformer`.
        **compile_kwargs: passed to ``torch.compile`` (e.g. ``backend="inductor"``, ``mode=...``,
            ``dynamic=False``; the CPU tests use ``backend="eager"``).

    Returns:
        ``model``.

    Raises:
        ValueError: when the model has no ``TransformerLayer``.
    """
    if not any(isinstance(m, TransformerLayer) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no TransformerLayer to compile; pass a MagiHumanTransformer")
    import torch._dynamo

    dynamo_config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), _RECOMPILE_LIMIT))
            break
    if hasattr(model, "compile_repeated_blocks") and "TransformerLayer" in (getattr(model, "_repeated_blocks", None) or ()):
        model.compile_repeated_blocks(**compile_kwargs)
    else:
        for module in model.modules():
            if isinstance(module, TransformerLayer):
                module.compile(**compile_kwargs)
    return model
