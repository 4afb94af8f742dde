"""FP8 (e4m3) storage of the DiT block linears, and the FP8 tensor-core GEMM (CLI ``--fp8``, ``--fp8-gemm``).

Each block linear (:class:`~magihuman.model.layers.ExpertLinear`) is replaced by an
:class:`FP8ExpertLinear` built from it: the weight is held as e4m3 bit patterns (uint8 bytes) with one
power-of-two float32 scale per output row, and is upcast to bf16 just before each GEMM (exact), or run
as an FP8 GEMM (``torch._scaled_mm``) on GPUs with FP8 tensor cores. Everything in architecture.md's float32
list (adapter, norms, heads, RoPE bands) is left alone. Memory of the 15B DiT's weights: 30.64 GB ->
15.37 GB (see :func:`enable_fp8_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from magihuman.model.layers import ExpertLinear, split_groups
from magihuman.runtime.state import is_block_streamed

__all__ = [
    "FP8_DTYPE", "FP8_MAX", "FP8ExpertLinear", "quantize_fp8_rows", "enable_fp8_weights", "fp8_gemm_coverage",
    "weight_bytes",
]

#: The FP8 storage dtype (None on a PyTorch without float8 dtypes).
FP8_DTYPE: torch.dtype | None = getattr(torch, "float8_e4m3fn", None)
#: Largest finite e4m3fn value.
FP8_MAX = 448.0
#: Rows quantised per chunk (bounds the float32 transient of the conversion to 4 B x rows x in).
_QUANT_CHUNK_ROWS = 4096


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


def fp8_gemm_coverage(config: dict | None = None) -> float:
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



def _check_compute_dtype(compute_dtype: object) -> torch.dtype:
    if not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point or compute_dtype.itemsize < 2:
        raise ValueError(f"compute_dtype must be torch.bfloat16, torch.float16 or torch.float32, got {compute_dtype!r}")
    return compute_dtype


class FP8ExpertLinear(ExpertLinear):
    """:class:`~magihuman.model.layers.ExpertLinear` with e4m3 weight storage.

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

    Build one from a loaded bf16 layer with :meth:`from_expert_linear` (what :func:`enable_fp8_weights`
    does for every block linear), or from stored bytes and scales with the constructor.

    Args:
        weight: ``[out * num_experts, in]`` uint8 e4m3 bit patterns (a float8_e4m3fn tensor is viewed as uint8).
        weight_scale: ``[out * num_experts]`` float32 row scales, on the weight's device.
        num_experts: experts stacked along the output rows (1 or 3, as the layer it replaces).
        compute_dtype: GEMM and output dtype (bf16; float16/float32 allowed).
        scaled_gemm: run the eligible GEMMs as FP8 GEMMs on GPUs that have them (see :func:`enable_fp8_weights`).

    Raises:
        ValueError: for a weight that is not 2-D uint8/e4m3, rows not divisible by ``num_experts``, a scale
            of the wrong shape, dtype or device, or a bad ``compute_dtype``.
    """

    compute_dtype: torch.dtype = torch.bfloat16
    scaled_gemm: bool = False

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, num_experts: int, *,
                 compute_dtype: torch.dtype = torch.bfloat16, scaled_gemm: bool = False):
        nn.Module.__init__(self)  # not ExpertLinear.__init__, which would allocate a floating-point weight
        if FP8_DTYPE is not None and weight.dtype == FP8_DTYPE:
            weight = weight.view(torch.uint8)
        if weight.dtype != torch.uint8 or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D uint8 (e4m3 bytes) tensor, got {weight.dtype} {tuple(weight.shape)}")
        rows, in_features = weight.shape
        if num_experts < 1 or rows % num_experts:
            raise ValueError(f"{rows} weight rows do not split into num_experts={num_experts} equal experts")
        if weight_scale.shape != (rows,) or weight_scale.dtype != torch.float32 or weight_scale.device != weight.device:
            raise ValueError(
                f"weight_scale must be float32 of shape ({rows},) on {weight.device}, got "
                f"{weight_scale.dtype} {tuple(weight_scale.shape)} on {weight_scale.device}"
            )
        self.in_features, self.out_features, self.num_experts = in_features, rows // num_experts, num_experts
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", weight_scale, persistent=True)
        self.compute_dtype, self.scaled_gemm = _check_compute_dtype(compute_dtype), bool(scaled_gemm)

    @classmethod
    def from_expert_linear(cls, linear: ExpertLinear, *, compute_dtype: torch.dtype = torch.bfloat16,
                           scaled_gemm: bool = False) -> FP8ExpertLinear:
        """Quantise a loaded block linear (:func:`quantize_fp8_rows`) into a new FP8 layer on its device.

        The new layer has the same features, experts and training flag; ``linear`` is left unchanged
        (the caller puts the new layer in its place and drops the old one).

        Raises:
            RuntimeError: on a PyTorch without float8 dtypes.
            ValueError: for a weight on the meta device, an FSDP2-sharded (``DTensor``) weight,
                non-finite weights, or a bad ``compute_dtype``.
        """
        _require_float8()
        weight = linear._parameters["weight"]
        if weight.is_meta:
            raise ValueError("weight is on the meta device; load the checkpoint before enable_fp8_weights")
        if type(weight.data) is not torch.Tensor:  # DTensor (FSDP2) or another tensor subclass
            raise ValueError(
                f"weight is a {type(weight.data).__name__}; call enable_fp8_weights before shard_transformer"
            )
        with torch.no_grad():
            try:
                q, scale = quantize_fp8_rows(weight.detach())
            except ValueError as error:
                raise ValueError(f"weight: {error}") from None
        fp8 = cls(q.view(torch.uint8), scale, linear.num_experts, compute_dtype=compute_dtype, scaled_gemm=scaled_gemm)
        return fp8.train(linear.training)

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
    instead of 2 bytes per element; everything in the float32 list of architecture.md §5.1 (adapter, all RMSNorm gains,
    heads, RoPE bands) is untouched. 15B DiT: 30.64 GB -> 15.37 GB, plus one expert's dequantised
    weight during its GEMM (<= 27304 x 5120 x 2 B = 280 MB). Speed: the GEMMs stay bf16; the
    upcast adds 3 bytes of traffic per weight element per GEMM (estimated ~5-10 % slower at
    448x256, ~1-2 % at SR sizes; not measured, no GPU here). Accuracy: e4m3 rounding of the weights
    only (weight rel_l2 0.027 at the 15B's width; the output equals a bf16 model holding the
    rounded weights bit-for-bit; velocities of the random 6-layer test model move by rel_l2 0.11,
    exactly as much as 2.6 % random weight noise moves them; see tests/test_fp8.py).

    Only ``ExpertLinear`` modules are converted (diffusers' ``enable_layerwise_casting`` would not
    touch them: it casts ``nn.Linear``/conv layers only, and without a scale). Each one is replaced on
    its parent module by :meth:`FP8ExpertLinear.from_expert_linear` (same attribute name, so the
    state-dict key ``weight`` keeps its name and gains ``weight_scale``); the bf16 weight is freed as
    soon as its layer is converted. Calling it again only updates ``compute_dtype`` / ``scaled_gemm``.
    The result is for inference: save and load the official bf16 checkpoints, and convert after loading.

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
        ``model`` (when ``model`` is itself an ``ExpertLinear``: its FP8 replacement).

    Raises:
        RuntimeError: on a PyTorch without float8 dtypes.
        ValueError: for a non-float or FP8 ``compute_dtype``, a model without block linears, weights
            on the meta device, already sharded by FSDP or streamed, or non-finite weights.
    """
    _require_float8()
    _check_compute_dtype(compute_dtype)
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, ExpertLinear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no ExpertLinear block linears; pass a MagiHumanTransformer")
    if is_block_streamed(model):
        raise ValueError("block streaming holds the old weights; call enable_fp8_weights before enable_block_streaming")
    for name, module in linears:
        if isinstance(module, FP8ExpertLinear):
            module.compute_dtype, module.scaled_gemm = compute_dtype, scaled_gemm
            continue
        try:
            fp8 = FP8ExpertLinear.from_expert_linear(module, compute_dtype=compute_dtype, scaled_gemm=scaled_gemm)
        except ValueError as error:
            raise ValueError(f"{name + '.' if name else ''}{error}") from None
        if not name:
            return fp8
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, fp8)
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
