"""Per-GPU memory estimates of training runs, computed from the model config (docs/training.md).

Everything is counted from the state dict of the configuration, built on the meta device (no memory):
the weights in their stored dtypes (block linears bf16 or FP8 with a float32 row scale, the rest
float32), the trained parameters with their float32 gradient and two AdamW moments, and the activations
of one clip. These are estimates of what the tensors need, not measurements: CUDA context, allocator
fragmentation and communication buffers come on top (``OVERHEAD_BYTES`` is a flat allowance for them).

Activations are counted per token and layer from the tensors a layer keeps for its backward pass
(dit.md 3.7: float32 residual and norms, the bf16 GEMM inputs, the float32 q/k/v/gate and MLP
intermediates); with gradient checkpointing only each layer's float32 input stays, plus one layer
recomputed at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from magihuman.model.layers import ExpertLinear

#: Allowance for the CUDA context, allocator slack and communication buffers (bytes).
OVERHEAD_BYTES = 3 * 2**30
_ADAM_BYTES = 4 + 4 + 4 + 4  # float32 master/trained weight, gradient, exp_avg, exp_avg_sq


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by part; :attr:`total` adds them and :data:`OVERHEAD_BYTES`."""

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All parts plus the overhead allowance, in bytes."""
        return sum(self.parts.values()) + OVERHEAD_BYTES

    def gib(self) -> dict[str, float]:
        """The parts and the total in GiB (2**30 bytes), rounded to 0.1."""
        out = {k: round(v / 2**30, 1) for k, v in self.parts.items()}
        out["overhead"] = round(OVERHEAD_BYTES / 2**30, 1)
        out["total"] = round(self.total / 2**30, 1)
        return out


def _meta_model(config: Mapping[str, Any] | None):
    from magihuman.model.transformer import MagiHumanTransformer

    with torch.device("meta"):
        return MagiHumanTransformer(**dict(config or {}))


def weight_bytes(config: Mapping[str, Any] | None = None, *, fp8: bool = False) -> int:
    """Bytes of the stored weights: official dtypes, or FP8 block linears (1 byte + 4 bytes per row)."""
    model = _meta_model(config)
    total = 0
    for name, tensor in model.state_dict().items():
        if fp8 and model.is_block_linear(name):
            total += tensor.numel() + 4 * tensor.shape[0]
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def lora_parameter_count(config: Mapping[str, Any] | None = None, *, rank: int = 32,
                         patterns: tuple[str, ...] = ("attention", "mlp")) -> int:
    """Adapter parameters of rank ``rank`` on the block linears whose names contain a pattern
    (``E·r·(in + out)`` per linear of ``E`` experts)."""
    model = _meta_model(config)
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, ExpertLinear) and any(f".{p}." in f".{name}." for p in patterns):
            count += module.num_experts * rank * (module.in_features + module.out_features)
    return count


def clip_tokens(width: int = 448, height: int = 256, seconds: float = 4.0, text_tokens: int = 640) -> int:
    """Tokens of one clip: video ``T·(h/2)·(w/2)``, audio ``25 s + 1``, text (pipeline.md 4.1; 640 at most)."""
    audio = int(round(seconds * 25)) + 1
    frames = (audio - 1) // 4 + 1
    return frames * (height // 32) * (width // 32) + audio + text_tokens


def activation_bytes_per_token_layer(config: Mapping[str, Any] | None = None) -> int:
    """Bytes one token keeps per layer for the backward pass, without checkpointing (module docstring)."""
    model = _meta_model(config)
    cfg = model.config
    hidden, d, hq, hkv = cfg.hidden_size, cfg.head_dim, model.num_heads, cfg.num_query_groups
    qkvg = (hq + 2 * hkv) * d + hq
    attention = 4 * hidden + 2 * hidden + 4 * qkvg + 2 * 4 * (hq + hkv) * d + 2 * (hq + 2 * hkv) * d + 2 * hq * d \
        + 4 * hq * d + 2 * hq * d
    intermediate = 2 * ((hidden * 4 * 2 // 3) // 4 * 4)  # swiglu7 up width (the larger MLP on most layers)
    mlp = 4 * hidden + 2 * hidden + 4 * intermediate * 3 + 4 * intermediate // 2 + 2 * intermediate // 2
    return attention + mlp + 4 * hidden


def activation_bytes(config: Mapping[str, Any] | None = None, *, tokens: int, batch_size: int = 1,
                     checkpointing: bool = True) -> int:
    """Activation bytes of one forward/backward: all layers, or (checkpointing) the layer inputs plus one layer."""
    model = _meta_model(config)
    layers, hidden = model.config.num_layers, model.config.hidden_size
    per_layer = activation_bytes_per_token_layer(config) * tokens * batch_size
    if checkpointing:
        return layers * 4 * hidden * tokens * batch_size + per_layer
    return layers * per_layer


def estimate_lora(config: Mapping[str, Any] | None = None, *, rank: int = 32, fp8_base: bool = False,
                  tokens: int | None = None, batch_size: int = 1, checkpointing: bool = True) -> MemoryEstimate:
    """LoRA (DDP: every GPU holds the whole frozen base): base weights, adapters with AdamW, activations."""
    tokens = tokens or clip_tokens()
    adapters = lora_parameter_count(config, rank=rank)
    return MemoryEstimate({
        "base weights": weight_bytes(config, fp8=fp8_base),
        "adapters + grads + AdamW": adapters * _ADAM_BYTES,
        "activations": activation_bytes(config, tokens=tokens, batch_size=batch_size, checkpointing=checkpointing),
    })


def estimate_finetune(config: Mapping[str, Any] | None = None, *, gpus: int = 8, tokens: int | None = None,
                      batch_size: int = 1, checkpointing: bool = True) -> MemoryEstimate:
    """Full fine-tuning with FSDP2 over ``gpus``: float32 weights, gradients and AdamW moments sharded;
    one layer gathered at a time in bf16; activations of this GPU's clips."""
    tokens = tokens or clip_tokens()
    model = _meta_model(config)
    params = sum(t.numel() for t in model.state_dict().values())
    largest_layer = max(sum(p.numel() for p in layer.parameters()) for layer in model.block.layers)
    return MemoryEstimate({
        "sharded weights + grads + AdamW": math.ceil(params * _ADAM_BYTES / gpus),
        "gathered layer (bf16, x2 prefetch)": 2 * 2 * largest_layer,
        "activations": activation_bytes(config, tokens=tokens, batch_size=batch_size, checkpointing=checkpointing),
    })


def estimate_distill(config: Mapping[str, Any] | None = None, *, gpus: int = 8, tokens: int | None = None,
                     batch_size: int = 1, fp8_teacher: bool = False, checkpointing: bool = True) -> MemoryEstimate:
    """DMD-2 with FSDP2 over ``gpus``: the frozen teacher (bf16 or FP8, sharded), generator and fake score
    (float32 + grads + AdamW each, sharded), activations of one trained forward/backward at a time."""
    tokens = tokens or clip_tokens()
    model = _meta_model(config)
    params = sum(t.numel() for t in model.state_dict().values())
    largest_layer = max(sum(p.numel() for p in layer.parameters()) for layer in model.block.layers)
    return MemoryEstimate({
        "teacher weights (sharded)": math.ceil(weight_bytes(config, fp8=fp8_teacher) / gpus),
        "generator + fake score: weights + grads + AdamW (sharded)": math.ceil(2 * params * _ADAM_BYTES / gpus),
        "gathered layer (bf16, x2 prefetch)": 2 * 2 * largest_layer,
        "activations": activation_bytes(config, tokens=tokens, batch_size=batch_size, checkpointing=checkpointing),
    })
