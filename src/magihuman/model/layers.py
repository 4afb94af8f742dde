"""The parts of one transformer layer (architecture.md §4): per-modality expert norms and linears, attention with
q/k norms, RoPE, GQA and a per-head gate, the gelu7/swiglu7 MLPs, and the embedders.

:class:`~magihuman.model.transformer.MagiHumanTransformer` wires them together. Numerics (architecture.md §5.1): the
residual stream is float32; block GEMMs take bf16 inputs and weights; norms, RoPE, the gate and the
activations run in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from magihuman.model.attention import AttentionBackend
from magihuman.model.packing import LocalWindow
from magihuman.model.rope import FourierTable, apply_rope

#: RMSNorm epsilon of every norm in the model (architecture.md §4.1).
NORM_EPS = 1e-6
#: Activation constants of gelu7/swiglu7 (architecture.md §4.4).
ACT_CLAMP = 7.0
ACT_SIGMOID_SCALE = 1.702


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """``x * rsqrt(mean(x^2) + eps) * (weight + 1)`` over the last dim, in float32 (architecture.md §4.1).

    Args:
        x: ``[..., n]`` any float dtype.
        weight: ``[n]`` float32, stored as ``gain - 1`` (zero-initialised).

    Returns:
        ``[..., n]`` float32.
    """
    x = x.float()
    normed = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return normed * (weight.float() + 1)


def split_groups(x: torch.Tensor, groups: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Split ``[B, N, ...]`` along the token dim into the (video, audio, text) groups."""
    return torch.split(x, list(groups), dim=1)


class ExpertRMSNorm(nn.Module):
    """RMSNorm with one gain per modality in sandwich layers (architecture.md §2.4: weight ``[video|audio|text]``).

    Args:
        dim: normalised width (hidden size, or head_dim for q/k norms).
        num_experts: 3 in ``mm_layers``, else 1 (shared by all tokens).
    """

    def __init__(self, dim: int, num_experts: int):
        super().__init__()
        self.dim, self.num_experts = dim, num_experts
        self.weight = nn.Parameter(torch.zeros(dim * num_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
        """``x [B, N, ..., dim]`` -> float32 of the same shape, expert m applied to group m."""
        if self.num_experts == 1:
            return rms_norm(x, self.weight)
        weights = self.weight.view(self.num_experts, self.dim)
        return torch.cat([rms_norm(part, w) for part, w in zip(split_groups(x, groups), weights)], dim=1)


class ExpertLinear(nn.Module):
    """Bias-free block linear with per-modality experts stacked along the output dim (architecture.md §2.4).

    The weight is ``[out * num_experts, in]`` in bf16 (architecture.md §2.3). The input is cast to the weight
    dtype and the output stays in it (a bf16 GEMM with a bf16 result, architecture.md §5.1). In sandwich layers each
    expert runs as its own GEMM over its group's rows (architecture.md §4.6: M = Nv, Na, Nt), which the
    golden vectors need for bit-equality.
    """

    def __init__(self, in_features: int, out_features: int, num_experts: int, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features, self.num_experts = in_features, out_features, num_experts
        self.weight = nn.Parameter(torch.empty(out_features * num_experts, in_features, dtype=dtype))

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the GEMM and of its result (the weight dtype; bf16 in the official model).

        Callers read this instead of ``weight.dtype`` so that layers storing their weight in another
        form (FP8 storage, an FSDP2 shard) can answer without touching the weight."""
        return self.weight.dtype

    def forward(self, x: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
        """``x [B, N, in]`` -> ``[B, N, out]`` in the weight dtype."""
        x = x.to(self.weight.dtype)
        if self.num_experts == 1:
            return F.linear(x, self.weight)
        weights = self.weight.view(self.num_experts, self.out_features, self.in_features)
        return torch.cat([F.linear(part, w) for part, w in zip(split_groups(x, groups), weights)], dim=1)


def gelu7(x: torch.Tensor) -> torch.Tensor:
    """``min(x, 7) * sigmoid(1.702 * min(x, 7))`` in float32, no gating (architecture.md §4.4)."""
    a = x.float().clamp(max=ACT_CLAMP)
    return a * torch.sigmoid(ACT_SIGMOID_SCALE * a)


def swiglu7(x: torch.Tensor) -> torch.Tensor:
    """Interleaved swiglu7 (architecture.md §2.4, §4.4): even columns gate, odd columns are the linear branch.

    ``out_j = (a_j * sigmoid(1.702 a_j)) * (b_j + 1)`` with ``a = min(x[2j], 7)`` and
    ``b = clamp(x[2j+1], -7, 7)``. Input ``[..., 2I]``, output ``[..., I]`` float32.
    """
    x = x.float()
    a = x[..., 0::2].clamp(max=ACT_CLAMP)
    b = x[..., 1::2].clamp(min=-ACT_CLAMP, max=ACT_CLAMP)
    return (a * torch.sigmoid(ACT_SIGMOID_SCALE * a)) * (b + 1)


def swiglu7_intermediate(hidden_size: int) -> int:
    """``floor(floor(hidden*4*2/3)/4)*4`` = 13652 for 5120 (architecture.md §2.1)."""
    return (hidden_size * 4 * 2 // 3) // 4 * 4


class Attention(nn.Module):
    """Gated GQA self-attention sub-block with pre-norm (architecture.md §4.3).

    ``linear_qkv`` rows per expert: ``[Q (Hq*d) | K (Hkv*d) | V (Hkv*d) | gate (Hq)]`` (architecture.md §2.4).
    """

    def __init__(self, hidden_size: int, head_dim: int, num_kv_heads: int, num_experts: int, gating: bool):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = hidden_size // head_dim
        self.num_kv_heads = num_kv_heads
        self.gating = gating
        qkv_out = (self.num_heads + 2 * num_kv_heads) * head_dim + (self.num_heads if gating else 0)
        self.pre_norm = ExpertRMSNorm(hidden_size, num_experts)
        self.linear_qkv = ExpertLinear(hidden_size, qkv_out, num_experts)
        self.linear_proj = ExpertLinear(self.num_heads * head_dim, hidden_size, num_experts)
        self.q_norm = ExpertRMSNorm(head_dim, num_experts)
        self.k_norm = ExpertRMSNorm(head_dim, num_experts)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, groups: Sequence[int],
        attend: AttentionBackend, mask: LocalWindow | None,
    ) -> torch.Tensor:
        """``x [B, N, hidden]`` float32 residual -> the bf16 output projection ``[B, N, hidden]``."""
        b, n, _ = x.shape
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        # 1-2. pre-norm (fp32 -> bf16) and the fused qkv+gate GEMM, widened to fp32.
        qkvg = self.linear_qkv(self.pre_norm(x, groups), groups).float()
        q, k, v, gate = torch.split(qkvg, [hq * d, hkv * d, hkv * d, qkvg.shape[-1] - (hq + 2 * hkv) * d], dim=-1)
        # 3-4. per-head q/k RMS norms in fp32 (V is not normalised, architecture.md §4.1).
        q = self.q_norm(q.reshape(b, n, hq, d), groups)
        k = self.k_norm(k.reshape(b, n, hkv, d), groups)
        # 5-6. RoPE in fp32 on the first 6B dims.
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        # 7. bf16 attention over all tokens, [B, H, N, d] layout.
        dtype = self.linear_qkv.compute_dtype
        heads = attend(
            q.to(dtype).transpose(1, 2), k.to(dtype).transpose(1, 2),
            v.reshape(b, n, hkv, d).to(dtype).transpose(1, 2), mask,
        ).transpose(1, 2)
        # 9. per-head sigmoid gate on the fp32 attention output (architecture.md §4.3).
        heads = heads.float()
        if self.gating:
            heads = heads * torch.sigmoid(gate)[..., None]
        # 10. bf16 output projection (bf16 result, added to the fp32 residual by the caller).
        return self.linear_proj(heads.reshape(b, n, hq * d), groups)


class MLP(nn.Module):
    """Pre-norm MLP sub-block: gelu7 at 4x width, or interleaved swiglu7 (architecture.md §4.4)."""

    def __init__(self, hidden_size: int, num_experts: int, gelu7_layer: bool):
        super().__init__()
        self.activation = gelu7 if gelu7_layer else swiglu7
        intermediate = 4 * hidden_size if gelu7_layer else swiglu7_intermediate(hidden_size)
        up_out = intermediate if gelu7_layer else 2 * intermediate
        self.pre_norm = ExpertRMSNorm(hidden_size, num_experts)
        self.up_gate_proj = ExpertLinear(hidden_size, up_out, num_experts)
        self.down_proj = ExpertLinear(intermediate, hidden_size, num_experts)

    def forward(self, x: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
        """``x [B, N, hidden]`` float32 -> ``[B, N, hidden]`` float32 (the widened bf16 down GEMM)."""
        up = self.up_gate_proj(self.pre_norm(x, groups), groups).float()
        return self.down_proj(self.activation(up), groups).float()


class TransformerLayer(nn.Module):
    """One pre-norm layer: ``x += attn(x)``, ``x += mlp(x)``, residual in float32 (architecture.md §4)."""

    def __init__(self, hidden_size: int, head_dim: int, num_kv_heads: int, *, experts: int, gelu7_layer: bool,
                 local: bool, gating: bool):
        super().__init__()
        self.local = local
        self.attention = Attention(hidden_size, head_dim, num_kv_heads, experts, gating)
        self.mlp = MLP(hidden_size, experts, gelu7_layer)

    def forward(self, x, rope, groups, attend, local_mask):
        """``x [B, N, hidden]`` float32 -> same; ``rope [N, 6B]`` or ``[B, N, 6B]``; ``groups`` = (Nv, Na, Nt) of these rows;
        ``local_mask`` (a :class:`~magihuman.model.packing.LocalWindow`) is used only if this layer is local."""
        x = x + self.attention(x, rope, groups, attend, local_mask if self.local else None)
        return x + self.mlp(x, groups)


class Adapter(nn.Module):
    """Input embedders (float32 ``nn.Linear`` with bias) and the position table (architecture.md §2.3, §4.2)."""

    def __init__(self, hidden_size: int, head_dim: int, video_in: int, audio_in: int, text_in: int):
        super().__init__()
        self.video_embedder = nn.Linear(video_in, hidden_size)
        self.text_embedder = nn.Linear(text_in, hidden_size)
        self.audio_embedder = nn.Linear(audio_in, hidden_size)
        self.rope = FourierTable(head_dim)

    def forward(self, video_tokens, audio_tokens, text_tokens) -> torch.Tensor:
        """``[B, Nv, 192]``, ``[B, Na, 64]``, ``[B, Nt, C_text]`` -> ``[B, N, hidden]`` float32."""
        return torch.cat(
            [
                self.video_embedder(video_tokens.float()),
                self.audio_embedder(audio_tokens.float()),
                self.text_embedder(text_tokens.float()),
            ],
            dim=1,
        )


class Block(nn.Module):
    """``block.layers``: the stack of transformer layers (official key prefix)."""

    def __init__(self, layers: Sequence[TransformerLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
