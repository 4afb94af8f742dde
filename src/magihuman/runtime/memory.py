"""Memory and speed switches: fast on one GPU, and fits on small GPUs (anchors.md 1 "memory" theme, 4).

Each switch is one function that changes a loaded model (or pipeline) in place. Numbers are for the
15B DiT (dit.md 2): 15,277,834,240 block-linear weight elements (``linear_qkv``, ``linear_proj``,
``up_gate_proj``, ``down_proj``; bf16, 2 bytes each) and 21,584,912 float32 elements for everything
else (adapter, norms, heads, the RoPE bands buffer), 30.64 GB in all.

| switch | function | CLI flag | GPU memory of the 15B DiT's weights (bytes) | speed |
|---|---|---|---|---|
| FP8 weights | :func:`enable_fp8_weights` | ``--fp8`` | ``1 x 15.28e9`` (e4m3 block linears) ``+ 4 x 2.42e6`` (row scales) ``+ 4 x 21.6e6`` (fp32 rest) = 15.37 GB, plus one expert's bf16 weight in flight (<= 280 MB) | upcast path: the GEMMs stay bf16; the upcast adds 3 bytes of memory traffic per weight element per GEMM (estimate: ~5-10 % slower at 448x256, ~1-2 % at SR sizes). ``--fp8-gemm``: FP8 tensor-core GEMMs for 76.9 % of the block FLOPs (compute capability >= 8.9; experimental) |
| block streaming | :func:`enable_block_streaming` | ``--offload blocks`` | ``84 MB`` resident (adapter + heads, fp32) ``+ (1 + prefetch) x blocks_per_group x`` one layer (0.55 GB shared, 1.64 GB sandwich, bf16); host RAM holds the layers | bound by host-to-device copies: ~30.6 GB per forward (~1.2 s at 25 GB/s pinned); hidden behind compute only at long sequences (SR) |
| FSDP2 sharding | :func:`shard_transformer` | ``--shard`` (under ``torchrun``) | ``30.64 GB / N`` per rank + one gathered block linear (<= 839 MB bf16); with ``--fp8``: ``15.28 GB / N`` + the replicated row scales (9.7 MB) + fp32 rest / N + one gathered e4m3 linear (<= 420 MB) | one all-gather per block linear per forward; for N GPUs that do not fit the model alone |
| component offload | :class:`ComponentOffload` / :func:`offload_idle_components` | ``--offload components`` | only the running stage's component: max(DiT 30.6 GB, T5Gemma encoder 18.5 GB, VAE) instead of their sum (~52 GB + SR DiT) | one host-device round trip per component per request (~1-3 s for a 15B DiT) |
| regional compile | :func:`compile_repeated_blocks` | ``--compile`` | unchanged (+ Inductor workspaces) | ~1.2x on the DiT reported for the reference's compiler (anchors.md 0); one compile per layer variant at first call |
| attention kernel | :func:`pick_attention_backend` | ``--attention auto\\|sdpa\\|flex\\|fa3`` | unchanged | FA3 ~1.3x over FA2 on Hopper (anchors.md 4); local-window layers keep FlexAttention |

Combining them: apply FP8 first, then compile, then streaming or sharding (never both: both decide
where a weight lives). FP8 and sharding combine: the e4m3 bytes are sharded and all-gathered like any
other weight. Component offload and block streaming combine (streamed models are left in
place by :class:`ComponentOffload`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from magihuman.model.attention import flex_attention_backend, get_attention_backend, register_attention_backend
from magihuman.model.transformer import ExpertLinear, TransformerLayer, split_groups

logger = logging.getLogger(__name__)

__all__ = [
    "FP8_DTYPE", "FP8ExpertLinear", "enable_fp8_weights", "fp8_gemm_coverage", "weight_bytes",
    "enable_block_streaming", "shard_transformer",
    "on_device", "ComponentOffload", "offload_idle_components",
    "compile_repeated_blocks",
    "pick_attention_backend", "resolve_attention_backend", "register_fa3_backend", "ATTENTION_CHOICES",
]

#: The FP8 storage dtype (None on a PyTorch without float8 dtypes).
FP8_DTYPE: Optional[torch.dtype] = getattr(torch, "float8_e4m3fn", None)
#: Largest finite e4m3fn value.
FP8_MAX = 448.0
#: Rows quantised per chunk (bounds the float32 transient of the conversion to 4 B x rows x in).
_QUANT_CHUNK_ROWS = 4096


# ================================================================================================ FP8
def _require_float8() -> torch.dtype:
    if FP8_DTYPE is None:
        raise RuntimeError(
            f"this PyTorch ({torch.__version__}) has no torch.float8_e4m3fn dtype, which FP8 weight storage needs; "
            "install PyTorch >= 2.1 or run without --fp8"
        )
    return FP8_DTYPE


def quantize_fp8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Round a ``[rows, in]`` weight to e4m3 with one power-of-two float32 scale per row.

    ``scale_r = 2^ceil(log2(amax_r / 448))`` (1 for an all-zero row), ``q = e4m3(w / scale)``. Because
    the scale is a power of two, ``w / scale`` is exact and so is the dequantisation
    ``bf16(q) * bf16(scale)``: the only error is e4m3's own rounding (3 mantissa bits, relative step
    2^-4 for normal values). A per-row scale keeps small rows out of e4m3's subnormal range, which an
    unscaled cast (diffusers' layerwise casting) would hit for weights of std ~0.014.

    Args:
        weight: ``[rows, in]`` finite floating tensor.

    Returns:
        ``(q [rows, in] float8_e4m3fn, scale [rows] float32)`` on the weight's device.

    Raises:
        ValueError: if the weight holds NaN or infinity.
    """
    fp8 = _require_float8()
    q = torch.empty(weight.shape, dtype=fp8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], _QUANT_CHUNK_ROWS):
        rows = weight[start:start + _QUANT_CHUNK_ROWS].float()
        amax = rows.abs().amax(dim=1)
        if not torch.isfinite(amax).all():
            raise ValueError("the weight holds NaN or infinite values; FP8 quantisation needs finite weights")
        exponent = torch.ceil(torch.log2(amax / FP8_MAX))
        row_scale = torch.where(amax > 0, torch.exp2(exponent), torch.ones_like(amax))
        q[start:start + rows.shape[0]] = (rows / row_scale[:, None]).to(fp8)
        scale[start:start + rows.shape[0]] = row_scale
    return q, scale


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _fp8_gemm_supported(device: torch.device) -> bool:
    """True on CUDA GPUs with FP8 tensor cores (compute capability >= 8.9) and a torch with ``_scaled_mm``."""
    return device.type == "cuda" and hasattr(torch, "_scaled_mm") and _cuda_capability(device) >= (8, 9)


#: ``torch._scaled_mm`` on CUDA needs the reduction width and the weight's output rows in multiples of 16.
_FP8_GEMM_ALIGN = 16


def _fp8_gemm_rows(in_features: int, out_features: int) -> int:
    """Output rows of a ``[out, in]`` linear that run as the FP8 GEMM: all but the last ``out % 16``, or
    none when ``in`` is not a multiple of 16 (the rest run as bf16 GEMMs)."""
    if in_features % _FP8_GEMM_ALIGN:
        return 0
    return out_features - out_features % _FP8_GEMM_ALIGN


def _dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q [rows, in]`` e4m3 times its ``scale [rows]`` in ``dtype`` (exact: power-of-two scales)."""
    return q.to(dtype) * scale.to(dtype)[:, None]


def _fp8_rowwise_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``x @ dequant(q, scale)^T`` as an FP8 GEMM (``torch._scaled_mm``), dynamic per-token activation scales.

    ``torch._scaled_mm`` wants the weight's output rows in a multiple of 16, so for ``out % 16 = r > 0``
    the first ``out - r`` rows run as the FP8 GEMM and the last ``r`` rows (8 of the 15B's 7208
    ``linear_qkv`` and 27304 ``up_gate_proj`` rows) as a bf16 GEMM on the dequantised rows; the two are
    concatenated; an input width that is not a multiple of 16 runs wholly as the bf16 GEMM (:func:`_fp8_gemm_rows`).

    Args:
        x: ``[..., in]`` activations (any float dtype; quantised per row to e4m3 with scale amax/448).
        q: ``[out, in]`` e4m3 weight (row-major; passed transposed, i.e. column-major, as required).
        scale: ``[out]`` float32 weight row scales.
        out_dtype: result dtype (bf16).

    Returns:
        ``[..., out]`` in ``out_dtype``.

    Raises:
        RuntimeError: when ``torch._scaled_mm`` fails (a PyTorch without row-wise FP8 kernels for the GPU).
    """
    lead, width = x.shape[:-1], x.shape[-1]
    out_rows = q.shape[0]
    rows = x.reshape(-1, width).float()
    aligned = _fp8_gemm_rows(width, out_rows)
    if rows.shape[0] == 0 or aligned == 0:
        return F.linear(rows.to(out_dtype), _dequantize(q, scale, out_dtype)).reshape(*lead, out_rows)
    x_scale = (rows.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    xq = (rows / x_scale).to(q.dtype)
    try:
        out = torch._scaled_mm(xq, q[:aligned].t(), scale_a=x_scale, scale_b=scale[:aligned].float()[None, :],
                               out_dtype=out_dtype)
    except RuntimeError as error:
        raise RuntimeError(
            f"the FP8 GEMM (torch._scaled_mm, row-wise scales) failed on {x.device}: {error}. This PyTorch may lack "
            "row-wise FP8 kernels for this GPU; call enable_fp8_weights(model, scaled_gemm=False) (FP8 storage only)"
        ) from error
    if aligned < out_rows:
        rest = F.linear(rows.to(out_dtype), _dequantize(q[aligned:], scale[aligned:], out_dtype))
        out = torch.cat([out, rest], dim=-1)
    return out.reshape(*lead, out_rows)


def fp8_gemm_coverage(config: Optional[dict] = None) -> float:
    """Fraction of the block-linear FLOPs that :func:`enable_fp8_weights` ``(scaled_gemm=True)`` runs as FP8 GEMMs.

    Eligible: every block linear whose reduction width is a multiple of 16 (all but the swiglu7
    ``down_proj``, whose width is 13652 in the 15B); within it every output row except the last
    ``out % 16``. The fraction does not depend on the token count. 15B: 0.769.

    Args:
        config: :class:`~magihuman.model.transformer.MagiHumanTransformer` config fields (None: the 15B).
    """
    from magihuman.model.transformer import MagiHumanTransformer

    with torch.device("meta"):
        model = MagiHumanTransformer(**(config or {}))
    total = fast = 0  # multiply-adds per token (every token passes one expert of every linear)
    for module in model.modules():
        if isinstance(module, ExpertLinear):
            total += module.in_features * module.out_features
            fast += module.in_features * _fp8_gemm_rows(module.in_features, module.out_features)
    return fast / total


class FP8ExpertLinear(ExpertLinear):
    """:class:`~magihuman.model.transformer.ExpertLinear` with e4m3 weight storage (built by :func:`enable_fp8_weights`).

    The parameter ``weight`` (state-dict key unchanged) is ``[out * experts, in]`` **uint8 holding the
    float8_e4m3fn bit patterns** (:attr:`weight_e4m3` is the same memory viewed as e4m3) and the buffer
    ``weight_scale`` is ``[out * experts]`` float32 (power-of-two row scales, see
    :func:`quantize_fp8_rows`). Bytes rather than a float8 dtype, so that every collective backend
    moves them (gloo has no float8 type; FSDP2 all-gathers them for ``--fp8 --shard``) and
    ``model.to(dtype)`` leaves them alone (it casts floating-point tensors only). :attr:`compute_dtype`
    (bf16) is the GEMM and output dtype, which is what the rest of the model reads. Forward dequantises one expert at a time to
    ``compute_dtype`` (exact) and runs the same bf16 GEMMs as ``ExpertLinear``, so the output equals a
    bf16 model holding the dequantised weights bit-for-bit. With ``scaled_gemm`` on a GPU with FP8
    tensor cores the GEMMs run as FP8 GEMMs instead (:func:`_fp8_rowwise_linear`; untested on a GPU
    here; never taken on CPU).
    """

    compute_dtype: torch.dtype = torch.bfloat16
    scaled_gemm: bool = False

    @property
    def weight_e4m3(self) -> torch.Tensor:
        """The stored ``[out * experts, in]`` weight viewed as float8_e4m3fn (no copy).

        Raises:
            RuntimeError: when the stored bytes were cast to another dtype after :func:`enable_fp8_weights`.
        """
        stored = self.weight
        if stored.dtype != torch.uint8:
            raise RuntimeError(
                f"an FP8 block linear holds {stored.dtype} weights: the model was cast (e.g. "
                "restore_official_dtypes()) after enable_fp8_weights; reload it, then call enable_fp8_weights last"
            )
        return stored.view(FP8_DTYPE)

    def dequantized_weight(self) -> torch.Tensor:
        """The full ``[out * experts, in]`` weight in ``compute_dtype`` (exact)."""
        return _dequantize(self.weight_e4m3, self.weight_scale, self.compute_dtype)

    def _use_scaled_gemm(self, x: torch.Tensor) -> bool:
        return (self.scaled_gemm and _fp8_gemm_rows(self.in_features, self.out_features) > 0
                and _fp8_gemm_supported(x.device))

    def forward(self, x: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
        """``x [B, N, in]`` -> ``[B, N, out]`` in ``compute_dtype``."""
        weights = self.weight_e4m3.view(self.num_experts, self.out_features, self.in_features)
        scales = self.weight_scale.view(self.num_experts, self.out_features)
        parts = (x,) if self.num_experts == 1 else split_groups(x, groups)
        if self._use_scaled_gemm(x):
            outs = [_fp8_rowwise_linear(part, q, s, self.compute_dtype) for part, q, s in zip(parts, weights, scales)]
        else:
            outs = [
                F.linear(part.to(self.compute_dtype), _dequantize(q, s, self.compute_dtype))
                for part, q, s in zip(parts, weights, scales)
            ]
        return outs[0] if self.num_experts == 1 else torch.cat(outs, dim=1)


def enable_fp8_weights(model: nn.Module, *, compute_dtype: torch.dtype = torch.bfloat16,
                       scaled_gemm: bool = False) -> nn.Module:
    """Store the block linears in FP8 (e4m3, per-row power-of-two scales); upcast just before each GEMM.

    CLI: ``--fp8``. Memory/speed: block-linear weights take 1 byte per element + 4 bytes per output row
    instead of 2 bytes per element; everything in dit.md's float32 list (adapter, all RMSNorm gains,
    heads, RoPE bands) is untouched. 15B DiT: 30.64 GB -> 15.37 GB, plus one expert's dequantised
    weight during its GEMM (<= 27304 x 5120 x 2 B = 280 MB). Speed: the GEMMs stay bf16; the
    upcast adds 3 bytes of traffic per weight element per GEMM (estimated ~5-10 % slower at
    448x256, ~1-2 % at SR sizes; not measured, no GPU here). Accuracy: e4m3 rounding of the weights
    only (weight rel_l2 0.027 at the 15B's width; the output equals a bf16 model holding the
    rounded weights bit-for-bit; velocities of the random 6-layer test model move by rel_l2 0.11,
    exactly as much as 2.6 % random weight noise moves them; see tests/test_memory.py).

    Only ``ExpertLinear`` modules are converted (diffusers' ``enable_layerwise_casting`` would not
    touch them: it casts ``nn.Linear``/conv layers only, and without a scale). Modules are converted in
    place (their class becomes :class:`FP8ExpertLinear`, state-dict key ``weight`` keeps its name and
    gains ``weight_scale``). Calling it again only updates ``compute_dtype`` / ``scaled_gemm``. The
    result is for inference: save and load the official bf16 checkpoints, and convert after loading.

    Args:
        model: a loaded :class:`~magihuman.model.transformer.MagiHumanTransformer` (any module holding
            ``ExpertLinear`` layers), on any device. Do not cast the model's dtype afterwards.
        compute_dtype: GEMM dtype (bf16 as the reference; float16/float32 allowed).
        scaled_gemm: on GPUs with compute capability >= 8.9 (CLI ``--fp8-gemm``), run the block linears
            whose input width is a multiple of 16 as FP8 tensor-core GEMMs with per-token activation
            scales (:func:`_fp8_rowwise_linear`; 76.9 % of the 15B's block FLOPs, see
            :func:`fp8_gemm_coverage`: all but the swiglu7 ``down_proj``). Experimental and **untested on
            a GPU in this project** (the routing and the math are tested on CPU through CPU
            ``torch._scaled_mm``); the upcast path is used on CPU and for the other linears.

    Returns:
        ``model``.

    Raises:
        RuntimeError: on a PyTorch without float8 dtypes.
        ValueError: for a non-float or FP8 ``compute_dtype``, a model without block linears, weights
            on the meta device, already sharded by FSDP or streamed, or non-finite weights.
    """
    _require_float8()
    if not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point or compute_dtype.itemsize < 2:
        raise ValueError(f"compute_dtype must be torch.bfloat16, torch.float16 or torch.float32, got {compute_dtype!r}")
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, ExpertLinear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no ExpertLinear block linears; pass a MagiHumanTransformer")
    if hasattr(model, "enable_group_offload") and _is_group_offloaded(model):
        raise ValueError("block streaming holds the old weights; call enable_fp8_weights before enable_block_streaming")
    for name, module in linears:
        if isinstance(module, FP8ExpertLinear):
            module.compute_dtype, module.scaled_gemm = compute_dtype, scaled_gemm
            continue
        weight = module._parameters["weight"]
        if weight.is_meta:
            raise ValueError(f"{name}.weight is on the meta device; load the checkpoint before enable_fp8_weights")
        if type(weight.data) is not torch.Tensor:  # DTensor (FSDP2) or another tensor subclass
            raise ValueError(
                f"{name}.weight is a {type(weight.data).__name__}; call enable_fp8_weights before shard_transformer"
            )
        with torch.no_grad():
            try:
                q, scale = quantize_fp8_rows(weight.detach())
            except ValueError as error:
                raise ValueError(f"{name}.weight: {error}") from None
        module._parameters["weight"] = nn.Parameter(q.view(torch.uint8), requires_grad=False)
        module.register_buffer("weight_scale", scale, persistent=True)
        module.__class__ = FP8ExpertLinear
        module.compute_dtype, module.scaled_gemm = compute_dtype, scaled_gemm
    return model


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's tensors held by this process, by kind.

    FSDP2-sharded parameters count their local shard only.

    Returns:
        ``{"block_linear": ..., "scales": ..., "other": ..., "total": ...}``: block-linear weights
        (``ExpertLinear.weight``), FP8 row scales, and every other parameter and buffer.
    """
    block_ids = {id(m._parameters["weight"]) for m in model.modules() if isinstance(m, ExpertLinear)}
    scale_ids = {id(m.weight_scale) for m in model.modules() if isinstance(m, FP8ExpertLinear)}
    out = {"block_linear": 0, "scales": 0, "other": 0}
    for tensor in list(model.parameters()) + list(model.buffers()):
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        size = local.numel() * local.element_size()
        kind = "block_linear" if id(tensor) in block_ids else "scales" if id(tensor) in scale_ids else "other"
        out[kind] += size
    out["total"] = sum(out.values())
    return out


# ===================================================================================== block streaming
def _as_device(value: Any, what: str) -> torch.device:
    try:
        return torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} must name a torch device such as 'cuda', 'cuda:0' or 'cpu', got {value!r}") from None


def _is_group_offloaded(module: nn.Module) -> bool:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return _is_group_offload_enabled(module)


def _is_sharded(module: nn.Module) -> bool:
    return any(type(p.data) is not torch.Tensor for p in module.parameters())


def enable_block_streaming(model: nn.Module, *, onload_device: str | torch.device,
                           offload_device: str | torch.device = "cpu", blocks_per_group: int = 1,
                           prefetch: bool = True, low_cpu_mem_usage: bool = False) -> nn.Module:
    """Keep the transformer layers on ``offload_device`` and stream them to ``onload_device`` during forward.

    CLI: ``--offload blocks`` (and ``--offload-blocks-per-group K``). Memory/speed: GPU holds the
    adapter and heads (84 MB fp32 for the 15B, resident) plus ``blocks_per_group`` layers being run
    and, with prefetch, the next group being copied: <= 2 x 1.64 GB (sandwich layers, bf16; 0.82 GB
    with FP8) + activations. Host RAM holds all layers pinned (30.6 GB bf16, 15.4 GB FP8; twice that
    briefly while diffusers pins them, unless ``low_cpu_mem_usage``). Every forward copies all layers:
    ~30.6 GB, ~1.2 s at 25 GB/s, so short sequences are copy-bound; at SR sizes the copy hides behind
    compute.

    Uses diffusers group offloading (``block_level`` over ``block.layers``, ``block_modules=["block"]``,
    a CUDA side stream for prefetch). The adapter and output heads are kept on ``onload_device``
    between calls, so ``next(model.parameters()).device`` still reports the compute device. Inputs
    are moved to ``onload_device`` by the hooks. Load the model on the CPU first (e.g.
    ``from_official(device="cpu")``) so that the 15B weights never have to fit on the GPU.

    ``onload_device == offload_device == "cpu"`` is accepted as a functional check (what the CPU tests
    run); any other equal pair is an error.

    Args:
        model: a :class:`~magihuman.model.transformer.MagiHumanTransformer` (``block.layers`` ModuleList).
        onload_device: where layers run (``"cuda"``).
        offload_device: where layers wait (``"cpu"``).
        blocks_per_group: layers moved together (>= 1). Prefetch on CUDA requires 1.
        prefetch: copy the next group on a CUDA side stream while the current one runs (CUDA only;
            elsewhere groups load synchronously).
        low_cpu_mem_usage: pin host memory per transfer instead of once (less host RAM, slower).

    Returns:
        ``model``.

    Raises:
        ValueError: for a bad device name, equal non-CPU devices, ``blocks_per_group`` < 1 or above
            the layer count, prefetch with more than one block per group on CUDA, a model without
            ``block.layers``, or a model that is already streamed or FSDP-sharded.
    """
    onload, offload = _as_device(onload_device, "onload_device"), _as_device(offload_device, "offload_device")
    if onload == offload and onload.type != "cpu":
        raise ValueError(
            f"offload_device equals onload_device ({onload}): streaming would move nothing; use "
            "offload_device='cpu', or drop --offload blocks if the model fits on the device"
        )
    layers = getattr(getattr(model, "block", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "enable_group_offload"):
        raise ValueError(f"{type(model).__name__} has no block.layers ModuleList; pass a MagiHumanTransformer")
    if isinstance(blocks_per_group, bool) or not isinstance(blocks_per_group, int) or not 1 <= blocks_per_group <= len(layers):
        raise ValueError(f"blocks_per_group must be an int in 1..{len(layers)}, got {blocks_per_group!r}")
    use_stream = bool(prefetch) and onload.type == "cuda"
    if use_stream and blocks_per_group != 1:
        raise ValueError(
            f"prefetch streams one layer at a time; got blocks_per_group={blocks_per_group}. "
            "Pass blocks_per_group=1, or prefetch=False to move several layers per copy"
        )
    if _is_group_offloaded(model):
        raise ValueError("block streaming is already enabled on this model")
    if _is_sharded(model):
        raise ValueError("the model is FSDP-sharded; use either shard_transformer or enable_block_streaming, not both")

    model.enable_group_offload(
        onload_device=onload, offload_device=offload, offload_type="block_level",
        num_blocks_per_group=blocks_per_group, use_stream=use_stream, non_blocking=use_stream,
        low_cpu_mem_usage=low_cpu_mem_usage, block_modules=["block"],
    )
    _keep_top_level_resident(model, onload)
    return model


def _keep_top_level_resident(model: nn.Module, device: torch.device) -> None:
    """Make diffusers' top-level group (adapter, heads, RoPE buffer) live on ``device`` for good."""
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    registry = getattr(model, "_diffusers_hook", None)
    hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
    if hook is None:  # diffusers changed its layout: fall back to moving them per call (~84 MB)
        logger.warning("could not pin the adapter and heads to %s; diffusers will move them on each call", device)
        return
    hook.group.offload_device = device
    hook.group.onload_()


# ========================================================================================= FSDP2 shard
def shard_transformer(model: nn.Module, group: Optional["torch.distributed.ProcessGroup"] = None, *,
                      device: Optional[str | torch.device] = None, reshard_after_forward: bool = True) -> nn.Module:
    """Shard the weights over the ranks of a process group with FSDP2 (``torch.distributed.fsdp.fully_shard``).

    CLI: ``--shard`` (launched with ``torchrun --nproc-per-node N``; it can share its process group
    with Ulysses sequence parallelism, since every rank still runs the same unit forwards in the same
    order). Memory: each rank keeps ``1/N`` of every parameter (30.64 GB / N for the 15B; buffers are
    replicated: 64 bytes) plus the gathered weight of the block linear being run and possibly the
    next one's (each <= 81912 x 5120 x 2 B = 839 MB). Speed: one all-gather of
    each block linear per forward (30.6 GB x (N-1)/N of traffic per rank per forward); this answers
    "8 GPUs x 22 GB all OOM" (anchors.md 1, #39), it is not a speed-up.

    Units: FSDP2 gathers each unit with one flat all-gather and requires one dtype per unit, and a
    layer mixes bf16 block linears with float32 norms (dit.md 2.2), so every ``ExpertLinear`` is its
    own unit, each ``TransformerLayer`` is one for its float32 norms, and the root holds the adapter
    and heads. Every rank must run the same forward calls (same shapes) in the same order.

    Args:
        model: a :class:`~magihuman.model.transformer.MagiHumanTransformer` on ``device``, or on the CPU:
            FSDP2 moves a unit's parameters to the mesh device when it shards that unit, so the GPU
            should only ever hold one whole unit (expected from FSDP2's design; untested here without
            a GPU). Host RAM: one full copy per rank.
        group: process group to shard over (default: the world).
        device: the compute device (``cuda`` after ``torch.cuda.set_device(LOCAL_RANK)`` with NCCL;
            ``cpu`` with gloo, as the tests run). Default: where the parameters are.
        reshard_after_forward: free gathered weights after each unit's forward (True: least memory).

    Returns:
        ``model`` (its parameters become ``DTensor``s sharded on dim 0).

    Raises:
        RuntimeError: when torch.distributed is unavailable or not initialised.
        ValueError: for a model without transformer layers, one that is already sharded, streamed
            or holds FP8 weights, or a unit whose parameters do not share one dtype.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: launch with `torchrun --nproc-per-node N ...` and call "
            "torch.distributed.init_process_group('nccl') (gloo on CPU) before shard_transformer"
        )
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layers = [m for m in model.modules() if isinstance(m, TransformerLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no TransformerLayer; pass a MagiHumanTransformer")
    if _is_sharded(model):
        raise ValueError("the model is already sharded")
    if hasattr(model, "enable_group_offload") and _is_group_offloaded(model):
        raise ValueError("the model streams its blocks; use either enable_block_streaming or shard_transformer")
    device_type = (_as_device(device, "device") if device is not None else next(model.parameters()).device).type
    if group is None:
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    else:
        mesh = DeviceMesh.from_group(group, device_type)

    def shard(unit: nn.Module, **kwargs) -> None:
        own = [p for p in unit.parameters() if type(p.data) is torch.Tensor]
        dtypes = {p.dtype for p in own}
        if len(dtypes) > 1:
            raise ValueError(f"{type(unit).__name__} mixes parameter dtypes {sorted(map(str, dtypes))}; "
                             "FSDP2 needs one dtype per unit")
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward, **kwargs)

    for layer in layers:
        for module in layer.modules():
            if isinstance(module, ExpertLinear):
                shard(module)
        shard(layer)
    shard(model)
    return model


# ==================================================================================== component offload
def _move(component: Any, device: torch.device) -> None:
    component.to(device)


@contextlib.contextmanager
def on_device(component: Any, device: str | torch.device, offload_device: str | torch.device = "cpu") -> Iterator[Any]:
    """Move ``component`` to ``device`` for the ``with`` block, then to ``offload_device`` (also on error).

    Memory: the component occupies ``device`` only inside the block. Works with anything that has
    ``.to(device)``: ``nn.Module``, :class:`~magihuman.codecs.text_encoder.TextEncoder`,
    :class:`~magihuman.codecs.video_vae.VideoVAE`, :class:`~magihuman.codecs.audio_vae.AudioVAE`.
    ``None`` is passed through untouched.

    Raises:
        ValueError: for a bad device name.
    """
    device, offload = _as_device(device, "device"), _as_device(offload_device, "offload_device")
    if component is None:
        yield None
        return
    _move(component, device)
    try:
        yield component
    finally:
        _move(component, offload)


#: Pipeline attributes that ComponentOffload manages, in stage order.
PIPELINE_COMPONENTS = ("text_encoder", "transformer", "sr_transformer", "video_vae", "video_decoder", "audio_vae")


@dataclass
class ComponentOffload:
    """Lend each pipeline component to the compute device for its own stage only.

    CLI: ``--offload components``. Memory: device memory is the largest single component plus
    activations instead of the sum (15B DiT 30.6 GB, T5Gemma-9B encoder 18.5 GB bf16, SR DiT 30.6 GB,
    Wan2.2 VAE 1.4 GB bf16, Stable Audio VAE 0.6 GB fp32); host RAM holds the rest. Speed: each stage
    pays one host-to-device copy of its component (~1-3 s for a 15B DiT, ~1 s for the text encoder,
    pinned memory faster) and one copy back.

    Components that place their own weights (block streaming, FSDP sharding) are never moved.

    Attributes:
        pipe: a :class:`~magihuman.pipeline.magihuman_pipeline.MagiHumanPipeline` (or any object with the
            :data:`PIPELINE_COMPONENTS` attributes; missing or None ones are skipped).
        device: the compute device.
        offload_device: where idle components wait (``"cpu"``).
        resident: component names that stay on ``device`` (e.g. ``("audio_vae",)``, 0.6 GB).
    """

    pipe: Any
    device: torch.device
    offload_device: torch.device = torch.device("cpu")
    resident: tuple[str, ...] = ()
    _names: tuple[str, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = _as_device(self.device, "device")
        self.offload_device = _as_device(self.offload_device, "offload_device")
        if self.device == self.offload_device:
            raise ValueError(
                f"the compute device and the offload device are both {self.device}: nothing to offload; "
                "drop --offload components, or run on a GPU"
            )
        unknown = sorted(set(self.resident) - set(PIPELINE_COMPONENTS))
        if unknown:
            raise ValueError(f"unknown resident components {unknown}; choose from {list(PIPELINE_COMPONENTS)}")
        self._names = tuple(n for n in PIPELINE_COMPONENTS if getattr(self.pipe, n, None) is not None)

    @property
    def execution_device(self) -> torch.device:
        """Where the stages compute (the pipeline should create its latents here)."""
        return self.device

    def _self_placed(self, component: Any) -> bool:
        return isinstance(component, nn.Module) and (_is_sharded(component) or (
            hasattr(component, "enable_group_offload") and _is_group_offloaded(component)))

    def _distinct(self, names: Iterable[str]) -> list[tuple[str, Any]]:
        seen: set[int] = set()
        out = []
        for name in names:
            if name not in PIPELINE_COMPONENTS:
                raise ValueError(f"unknown pipeline component {name!r}; choose from {list(PIPELINE_COMPONENTS)}")
            component = getattr(self.pipe, name, None)
            if component is None or id(component) in seen or self._self_placed(component):
                continue
            seen.add(id(component))
            out.append((name, component))
        return out

    def offload_all(self) -> None:
        """Park every managed component on the offload device (resident ones on the compute device)."""
        resident = {id(getattr(self.pipe, n)) for n in self.resident if getattr(self.pipe, n, None) is not None}
        for _, component in self._distinct(self._names):
            _move(component, self.device if id(component) in resident else self.offload_device)

    @contextlib.contextmanager
    def stage(self, *names: str) -> Iterator[None]:
        """Move the named components (e.g. ``"text_encoder"``) to the device for the block, then back.

        The same object under two names (``video_vae`` is also ``video_decoder`` without the Turbo
        decoder) moves once. Resident and self-placed components are not moved.
        """
        resident = {id(getattr(self.pipe, n, None)) for n in self.resident}
        moving = [component for _, component in self._distinct(names) if id(component) not in resident]
        with contextlib.ExitStack() as stack:
            for component in moving:
                stack.enter_context(on_device(component, self.device, self.offload_device))
            yield


def offload_idle_components(pipe: Any, device: str | torch.device, *, offload_device: str | torch.device = "cpu",
                            resident: Sequence[str] = ()) -> ComponentOffload:
    """Park every component of ``pipe`` on ``offload_device`` and return the :class:`ComponentOffload`
    whose :meth:`~ComponentOffload.stage` lends each one to ``device`` for its stage.

    CLI: ``--offload components``. Memory/speed: see :class:`ComponentOffload`.

    Raises:
        ValueError: for equal devices, a bad device name or an unknown resident component.
    """
    offload = ComponentOffload(pipe, device, offload_device, tuple(resident))
    offload.offload_all()
    return offload


# =========================================================================================== compile
#: Dynamo recompile limit set by :func:`compile_repeated_blocks` (layer variants x token counts).
_RECOMPILE_LIMIT = 64


def compile_repeated_blocks(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` each ``TransformerLayer`` ("regional compilation"), not the whole model.

    CLI: ``--compile`` (optionally ``--compile-mode max-autotune-no-cudagraphs``). Memory: unchanged.
    Speed: Inductor fuses the float32 norm/RoPE/gate/activation element-wise work around the bf16 GEMMs;
    the reference credits its own compiler with ~1.2x (anchors.md 0). Layers sharing a structure share
    a compiled graph (3 variants in the 15B: sandwich gelu7, shared swiglu7, sandwich swiglu7; 5 in
    the 1080p SR model, whose local-window layers differ), so compile time is that of a few layers,
    paid at the first call of each new token count. Numerics: Inductor may change float32 rounding (dit.md 4).

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


# ========================================================================================= attention
#: Values of ``--attention``.
ATTENTION_CHOICES = ("auto", "sdpa", "flex", "fa3")


def _fa3_importable() -> bool:
    """True when the FlashAttention-3 Python interface (``flash_attn_interface``, Hopper build) is installed."""
    return importlib.util.find_spec("flash_attn_interface") is not None


def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and _cuda_capability(device)[0] == 9


def fa3_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask=None) -> torch.Tensor:
    """FlashAttention-3 (``flash_attn_interface.flash_attn_func``) behind the attention seam.

    Takes ``q [B, Hq, N, D]``, ``k, v [B, Hkv, N, D]`` (GQA handled by FA3) and returns
    ``[B, Hq, N, D]``; FA3 itself wants ``[B, N, H, D]``, which the transposes give for free (the model
    builds q/k/v as transposed views of ``[B, N, H, D]`` tensors). Non-causal, scale ``1/sqrt(D)``
    (dit.md 5.3). FA3 has no form of the frame-based local window (dit.md 5.2), so masked layers go to
    :func:`~magihuman.model.attention.flex_attention_backend` (block-sparse on CUDA).
    """
    if mask is not None:
        return flex_attention_backend(query, key, value, mask)
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), causal=False)
    if isinstance(out, tuple):  # older FA3 builds return (out, softmax_lse)
        out = out[0]
    return out.transpose(1, 2)


def register_fa3_backend() -> str:
    """Register :func:`fa3_attention` as ``"fa3"`` in :mod:`magihuman.model.attention` (idempotent); returns ``"fa3"``."""
    register_attention_backend("fa3", fa3_attention)
    return "fa3"


def pick_attention_backend(device: str | torch.device) -> str:
    """The fastest attention backend available for ``device`` (what ``--attention auto`` resolves to).

    CLI: ``--attention auto``. ``"fa3"`` on a Hopper GPU (compute capability 9.x) with the
    ``flash_attn_interface`` package installed (registered on first use); otherwise ``"sdpa"``, where
    PyTorch itself picks cuDNN / FlashAttention-2 / memory-efficient kernels on CUDA. Speed: FA3 is
    ~1.3x faster than FA2 on H100 for long sequences (anchors.md 4). Memory: the same (O(N)).

    Raises:
        ValueError: for a bad device name.
    """
    device = _as_device(device, "device")
    if device.type == "cuda" and _fa3_importable() and _is_hopper(device):
        return register_fa3_backend()
    return "sdpa"


def resolve_attention_backend(choice: str, device: str | torch.device) -> str:
    """Turn an ``--attention`` value into a registered backend name for ``device``.

    ``"auto"`` -> :func:`pick_attention_backend`; ``"fa3"`` checks that FA3 can run; ``"sdpa"`` and
    ``"flex"`` pass through (and any other registered name).

    Raises:
        ValueError: for an unknown name, or ``"fa3"`` without a Hopper GPU or without the
            ``flash_attn_interface`` package (the message says how to install it or what to use).
    """
    device = _as_device(device, "device")
    if choice == "auto":
        return pick_attention_backend(device)
    if choice == "fa3":
        if not _fa3_importable():
            raise ValueError(
                "--attention fa3 needs FlashAttention-3 (the `flash_attn_interface` module, built from "
                "flash-attention's hopper/ folder); install it or use --attention sdpa"
            )
        if not _is_hopper(device):
            raise ValueError(f"--attention fa3 runs on Hopper GPUs (H100/H200) only, not on {device}; use sdpa")
        return register_fa3_backend()
    get_attention_backend(choice)  # raises ValueError listing the known names
    return choice
