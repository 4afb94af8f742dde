"""The one attention seam of the transformer (architecture.md §6).

Every layer calls the chosen backend with bf16 ``q [B, Hq, N, D]`` and ``k, v [B, Hkv, N, D]``
(GQA: query head h uses K/V head ``h // (Hq/Hkv)``), non-causal, softmax scale ``1/sqrt(D)``, no
soft-cap (architecture.md §6.1). Local-attention layers also pass a :class:`~magihuman.model.packing.LocalWindow`
(architecture.md §6.2), which each kernel turns into its own mask form. Kernels register here by name, so no
model code imports a kernel library; sequence parallelism wraps this same seam.

| backend | kernel | local window as |
|---|---|---|
| ``sdpa`` (default) | ``torch.nn.functional.scaled_dot_product_attention`` (flash/cuDNN/efficient/CPU) | CPU: range split + LSE merge; else dense bool |
| ``sdpa_mask`` | the same kernel | dense ``[N, N]`` bool on every device |
| ``flex`` | FlexAttention (compiled on CUDA) | block-sparse mask: the 1080p SR choice |
| ``math`` | float32 reference softmax, for tests | dense bool |

On CPU, ``sdpa`` runs a window as the reference does without its Hopper kernel (``local_attention.py``).
A window that covers every frame (``R >= T - 1``) allows every pair, so the mask forms drop it; the
range split still runs then, as the reference's local layers do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from magihuman.model.local_attention import range_split_attention
from magihuman.model.packing import LocalWindow

AttentionBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, LocalWindow | None], torch.Tensor]


def _dense(mask: LocalWindow | None, device: torch.device) -> torch.Tensor | None:
    return None if mask is None or mask.covers_every_frame else _dense_mask(mask, str(device))


@functools.lru_cache(maxsize=2)
def _dense_mask(mask: LocalWindow, device: str) -> torch.Tensor:
    """The window's ``[N, N]`` bool mask, built once per (window, device) rather than in every local
    layer of every step (the block-sparse mask of :func:`flex_attention_backend` is cached the same way)."""
    return mask.dense(device)


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: LocalWindow | None = None
) -> torch.Tensor:
    """PyTorch ``scaled_dot_product_attention`` with native GQA (architecture.md §6.1).

    On CPU with no mask this is the kernel the golden vectors were produced with, so the
    transformer reproduces them bit-for-bit (golden README). On CPU a local window runs as the
    reference does without its Hopper kernel: one call of the same kernel per (query, key) range,
    merged by log-sum-exp (:func:`~magihuman.model.local_attention.range_split_attention`, architecture.md §6.2).

    Args:
        query: ``[B, Hq, N, D]``.
        key, value: ``[B, Hkv, N, D]``, ``Hq % Hkv == 0``.
        mask: optional local window: the range split on CPU, a dense boolean ``[N, N]`` mask elsewhere.

    Returns:
        ``[B, Hq, N, D]`` in the query dtype.
    """
    if mask is not None and query.device.type == "cpu":
        return range_split_attention(query, key, value, mask)
    return sdpa_mask_attention(query, key, value, mask)


def sdpa_mask_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: LocalWindow | None = None
) -> torch.Tensor:
    """:func:`sdpa_attention` with a local window always as one dense boolean ``[N, N]`` mask (architecture.md §6.2
    "SDPA equivalent"): one kernel call per layer; mathematically equal to the range split, other bits.

    Args and returns as :func:`sdpa_attention`.
    """
    return F.scaled_dot_product_attention(query, key, value, attn_mask=_dense(mask, query.device), enable_gqa=True)


def math_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: LocalWindow | None = None
) -> torch.Tensor:
    """Reference math in float32 (softmax of ``q k^T / sqrt(D)``), for tests and debugging.

    Mathematically equal to :func:`sdpa_attention`; rounds differently (rel_l2 ~1e-2 on the
    velocities of a tiny model, architecture.md §5.2).
    """
    groups = query.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(groups, dim=1)
    v = value.float().repeat_interleave(groups, dim=1)
    logits = query.float() @ k.transpose(-1, -2) / query.shape[-1] ** 0.5
    allowed = _dense(mask, query.device)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return (logits.softmax(dim=-1) @ v).to(query.dtype)


@functools.lru_cache(maxsize=8)
def _block_mask(mask: LocalWindow, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch, head, q_idx, kv_idx):
        return mask.allows(q_idx, kv_idx)

    n = mask.total_tokens
    return create_block_mask(mask_mod, None, None, n, n, device=device)


@functools.lru_cache(maxsize=1)
def _flex_kernel(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def flex_attention_backend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: LocalWindow | None = None
) -> torch.Tensor:
    """FlexAttention with a block-sparse local window (architecture.md §6.2): memory and work scale with the
    window, not N^2, which the 1080p SR stage (~54k tokens, 32 local layers) needs. Without a window it
    is plain SDPA. Compiled on CUDA; eager (slow, for tests) on CPU."""
    if mask is None or mask.covers_every_frame:
        return sdpa_attention(query, key, value)
    block_mask = _block_mask(mask, str(query.device))
    return _flex_kernel(query.device.type)(query, key, value, block_mask=block_mask, enable_gqa=True)


class RaggedAttention:
    """An :data:`AttentionBackend` over a batch whose samples have different true lengths (batched CFG).

    Sample ``b`` holds ``key_lengths[b]`` real tokens followed by padding (the packed sequence ends in
    text, so padded text sits at the end). Each sample's real rows go through ``backend`` on their own:
    the same kernel call, with the same shapes, as an unbatched forward of that sample, so no key
    padding mask is needed and the result is exact. Padding query rows get zeros. A local-attention
    window is re-sized to the sample's length; its rule does not depend on the text length (architecture.md §6.2).

    Build it with :func:`ragged_attention` (cached, so a compiled layer sees the same object each step).
    """

    def __init__(self, backend: AttentionBackend, key_lengths: tuple[int, ...]):
        self.backend, self.key_lengths = backend, key_lengths

    def __call__(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: LocalWindow | None = None
    ) -> torch.Tensor:
        n = query.shape[2]
        if len(self.key_lengths) != query.shape[0] or max(self.key_lengths) > n:
            raise ValueError(f"key_lengths {self.key_lengths} do not fit a batch of {query.shape[0]} x {n} tokens")
        if all(length == n for length in self.key_lengths):
            return self.backend(query, key, value, mask)
        out = query.new_zeros(query.shape)
        for b, length in enumerate(self.key_lengths):
            window = mask if mask is None or length == n else dataclasses.replace(mask, total_tokens=length)
            out[b:b + 1, :, :length] = self.backend(
                query[b:b + 1, :, :length], key[b:b + 1, :, :length], value[b:b + 1, :, :length], window
            )
        return out


@functools.lru_cache(maxsize=16)
def ragged_attention(backend: AttentionBackend, key_lengths: tuple[int, ...]) -> RaggedAttention:
    """The :class:`RaggedAttention` of ``backend`` for samples of ``key_lengths`` real tokens (one object per pair)."""
    return RaggedAttention(backend, tuple(int(n) for n in key_lengths))


_BACKENDS: dict[str, AttentionBackend] = {
    "sdpa": sdpa_attention, "sdpa_mask": sdpa_mask_attention, "math": math_attention,
    "flex": flex_attention_backend,
}


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
    """Names accepted by ``MagiHumanTransformer.set_attention_backend``, sorted."""
    return sorted(_BACKENDS)


# ============================================================================== backend choice
# Which registered kernel a model runs: the ``--attention`` values, FlashAttention-3 detection and
# registration, and the rule that sends local-window layers on CUDA to FlexAttention. All backend
# choice lives here; runtime.placement and the CLI call :func:`resolve_attention_backend`.

def _as_device(value: object) -> torch.device:
    try:
        return torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must name a torch device such as 'cuda', 'cuda:0' or 'cpu', got {value!r}") from None


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _fa3_importable() -> bool:
    """True when the FlashAttention-3 Python interface (``flash_attn_interface``, Hopper build) is installed."""
    import importlib.util

    return importlib.util.find_spec("flash_attn_interface") is not None


def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and _cuda_capability(device)[0] == 9


def fa3_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask=None) -> torch.Tensor:
    """FlashAttention-3 (``flash_attn_interface.flash_attn_func``) behind the attention seam.

    Takes ``q [B, Hq, N, D]``, ``k, v [B, Hkv, N, D]`` (GQA handled by FA3) and returns
    ``[B, Hq, N, D]``; FA3 itself wants ``[B, N, H, D]``, which the transposes give for free (the model
    builds q/k/v as transposed views of ``[B, N, H, D]`` tensors). Non-causal, scale ``1/sqrt(D)``
    (architecture.md §6.1). FA3 has no form of the frame-based local window (architecture.md §6.2), so masked layers go to
    :func:`flex_attention_backend` (block-sparse on CUDA).
    """
    if mask is not None:
        return flex_attention_backend(query, key, value, mask)
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), causal=False)
    if isinstance(out, tuple):  # older FA3 builds return (out, softmax_lse)
        out = out[0]
    return out.transpose(1, 2)


def register_fa3_backend() -> str:
    """Register :func:`fa3_attention` as ``"fa3"`` (idempotent); returns ``"fa3"``."""
    register_attention_backend("fa3", fa3_attention)
    return "fa3"


def pick_attention_backend(device: str | torch.device) -> str:
    """The fastest attention backend available for ``device`` (what ``--attention auto`` resolves to).

    CLI: ``--attention auto``. ``"fa3"`` on a Hopper GPU (compute capability 9.x) with the
    ``flash_attn_interface`` package installed (registered on first use); otherwise ``"sdpa"``, where
    PyTorch itself picks cuDNN / FlashAttention-2 / memory-efficient kernels on CUDA. Speed: FA3 is
    ~1.3x faster than FA2 on H100 for long sequences (architecture.md §14). Memory: the same (O(N)).

    Raises:
        ValueError: for a bad device name.
    """
    device = _as_device(device)
    if device.type == "cuda" and _fa3_importable() and _is_hopper(device):
        return register_fa3_backend()
    return "sdpa"


def resolve_attention_backend(choice: str, device: str | torch.device, *, local_window_layers: bool = False) -> str:
    """Turn an ``--attention`` value into a registered backend name for ``device``.

    ``"auto"`` -> :func:`pick_attention_backend`; ``"fa3"`` checks that FA3 can run; ``"sdpa"`` and
    ``"flex"`` pass through (and any other registered name). A model with local-window layers (the
    1080p SR DiT, architecture.md §6.2) that would run ``"sdpa"`` on CUDA gets ``"flex"`` instead: its window
    becomes a block-sparse mask rather than a dense ``N x N`` one (FA3 already sends masked layers to
    FlexAttention). On CPU the dense mask is kept (eager FlexAttention is slow there).

    Args:
        choice: one of :data:`ATTENTION_CHOICES` or another registered backend name.
        device: where the model runs.
        local_window_layers: whether the model has local-attention layers
            (``bool(model.config.local_attn_layers)``).

    Returns:
        A name accepted by ``MagiHumanTransformer.set_attention_backend``.

    Raises:
        ValueError: for a bad device name, an unknown backend name, or ``"fa3"`` without a Hopper GPU
            or without the ``flash_attn_interface`` package (the message says how to install it or
            what to use).
    """
    device = _as_device(device)
    if choice == "auto":
        name = pick_attention_backend(device)
    elif choice == "fa3":
        if not _fa3_importable():
            raise ValueError(
                "--attention fa3 needs FlashAttention-3 (the `flash_attn_interface` module, built from "
                "flash-attention's hopper/ folder); install it or use --attention sdpa"
            )
        if not _is_hopper(device):
            raise ValueError(f"--attention fa3 runs on Hopper GPUs (H100/H200) only, not on {device}; use sdpa")
        name = register_fa3_backend()
    else:
        get_attention_backend(choice)  # raises ValueError listing the known names
        name = choice
    if name == "sdpa" and local_window_layers and device.type == "cuda":
        name = "flex"  # block-sparse local window: no N x N mask at 1080p (architecture.md §6.2)
    return name
