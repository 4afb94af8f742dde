"""The one attention seam of the transformer (dit.md 5).

Every layer calls :func:`attention` with bf16 ``q [B, Hq, N, D]`` and ``k, v [B, Hkv, N, D]``
(GQA: query head h uses K/V head ``h // (Hq/Hkv)``), non-causal, softmax scale ``1/sqrt(D)``, no
soft-cap (dit.md 5.3). Local-attention layers pass a boolean ``[N, N]`` mask (True = may attend,
dit.md 5.2). Kernels register here by name, so no model code imports a kernel library; sequence
parallelism wraps this same function.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

AttentionBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """PyTorch ``scaled_dot_product_attention`` with native GQA (dit.md 5.1 "Equivalent in torch").

    On CPU with no mask this is the kernel the golden vectors were produced with, so the
    transformer reproduces them bit-for-bit (golden README).

    Args:
        query: ``[B, Hq, N, D]``.
        key, value: ``[B, Hkv, N, D]``, ``Hq % Hkv == 0``.
        mask: optional boolean ``[N, N]`` (True = attend).

    Returns:
        ``[B, Hq, N, D]`` in the query dtype.
    """
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)


def math_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Reference math in float32 (softmax of ``q k^T / sqrt(D)``), for tests and debugging.

    Mathematically equal to :func:`sdpa_attention`; rounds differently (rel_l2 ~1e-2 on the
    velocities of a tiny model, dit.md 9 item 7).
    """
    groups = query.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(groups, dim=1)
    v = value.float().repeat_interleave(groups, dim=1)
    logits = query.float() @ k.transpose(-1, -2) / query.shape[-1] ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return (logits.softmax(dim=-1) @ v).to(query.dtype)


_BACKENDS: dict[str, AttentionBackend] = {"sdpa": sdpa_attention, "math": math_attention}


def register_attention_backend(name: str, backend: AttentionBackend) -> None:
    """Make a kernel selectable by name (``model.set_attention_backend(name)``)."""
    _BACKENDS[name] = backend


def get_attention_backend(name: str) -> AttentionBackend:
    """The kernel registered under ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; available: {sorted(_BACKENDS)}") from None


def available_attention_backends() -> list[str]:
    return sorted(_BACKENDS)
