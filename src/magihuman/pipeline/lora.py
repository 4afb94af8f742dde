"""LoRA adapters on the DiT's block linears, through PEFT: layers, adapter files, loading and fusing.

The block linears are :class:`~magihuman.model.transformer.ExpertLinear` modules (dit.md 2.3): one
bias-free GEMM, or in sandwich layers one per modality expert (video, audio, text rows). PEFT has no
layer for them, so :class:`ExpertLoraLinear` is registered as a PEFT custom LoRA layer
(``LoraConfig._register_custom_module``); everything else (injection by module-name pattern, adapter
state dicts, active adapters, merging) is PEFT's.

An expert linear of ``E`` experts gets one low-rank pair per expert, stored stacked like the base weight:
``lora_A.weight [E·r, in]`` and ``lora_B.weight [E·out, r]``; expert ``e`` adds
``(alpha / r) · B_e A_e x`` to its own rows. With ``E = 1`` these are PEFT's ordinary Linear LoRA tensors.

Adapter file (:mod:`magihuman.pipeline.lora_files`, which reads and checks it without importing PEFT): a
``.safetensors`` with keys ``transformer.<module>.lora_A.weight`` /
``transformer.<module>.lora_B.weight`` (the diffusers prefix), float32, and header metadata
``magihuman_lora`` (JSON: rank, alpha, target regex, the base model's config) so that loading needs no
side file. Loading checks every key and shape against the model first and refuses a mismatched file in
one :class:`LoraError` naming the keys.

Scale: ``scale`` multiplies ``alpha / r``; scale 0 skips the adapter, so the output is the base model's
bit for bit. Fusing (``fuse=True``) adds ``scale · (alpha / r) · B A`` into the weights once (bf16
rounding; on an FP8 base the fused weight is re-quantised), after which the forward costs nothing extra.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora.layer import LoraLayer
from safetensors.torch import save_file
from torch import nn

from magihuman.model.checkpoint import write_atomic
from magihuman.model.layers import ExpertLinear, split_groups
from magihuman.pipeline.lora_files import KEY_PREFIX, METADATA_KEY, LoraError, read_lora_file

_MAX_LISTED = 12


class ExpertLoraLinear(nn.Module, LoraLayer):
    """PEFT LoRA layer around an :class:`ExpertLinear` (one low-rank pair per expert; module docstring).

    Forward: ``base(x) + Σ_adapters scaling · B_e A_e x_e`` per expert group ``e``, in float32 (the base
    result is widened; callers widen it anyway). An adapter whose scaling is 0 is skipped.
    """

    adapter_layer_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: ExpertLinear, adapter_name: str, config: LoraConfig, r: int = 8,
                 lora_alpha: float = 8, **kwargs):
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, config)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    @property
    def compute_dtype(self) -> torch.dtype:
        """The wrapped linear's GEMM dtype (the attention reads it to pick its input dtype)."""
        return self.get_base_layer().compute_dtype

    @property
    def num_experts(self) -> int:
        """Experts of the wrapped linear (3 in sandwich layers, else 1)."""
        return self.get_base_layer().num_experts

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig, **kwargs) -> None:
        """Create adapter ``adapter_name``: A with PEFT's default init (Kaiming uniform), B zero (no-op at start)."""
        if r <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {r}")
        experts = self.num_experts
        self.r[adapter_name], self.lora_alpha[adapter_name] = r, lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.lora_dropout[adapter_name] = nn.Identity()
        device = self.get_base_layer().weight.device
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r * experts, bias=False, device=device)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features * experts, bias=False, device=device)
        if config.init_lora_weights:
            nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[adapter_name].weight)
        self.set_adapter(self.active_adapters)

    def _pairs(self, adapter: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        r, experts = self.r[adapter], self.num_experts
        a = self.lora_A[adapter].weight.view(experts, r, self.in_features)
        b = self.lora_B[adapter].weight.view(experts, self.out_features, r)
        return list(zip(a, b))

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scaling · B_e A_e`` stacked like the base weight: ``[E·out, in]`` float32."""
        return torch.cat([b.float() @ a.float() for a, b in self._pairs(adapter)]) * self.scaling[adapter]

    def forward(self, x: torch.Tensor, groups: Sequence[int], *args, **kwargs) -> torch.Tensor:
        """``x [B, N, in]`` -> ``[B, N, out]``: the base dtype when no adapter acts, else float32."""
        result = self.base_layer(x, groups)
        if self.disable_adapters or self.merged:
            return result
        parts = (x,) if self.num_experts == 1 else split_groups(x, groups)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A or self.scaling[adapter] == 0:
                continue
            weight_dtype = self.lora_A[adapter].weight.dtype
            pairs = self._pairs(adapter)
            delta = [F.linear(F.linear(part.to(weight_dtype), a), b) for part, (a, b) in zip(parts, pairs)]
            result = result.float() + (delta[0] if len(delta) == 1 else torch.cat(delta, dim=1)).float() * \
                self.scaling[adapter]
        return result

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or named) adapters into the base weight (bf16 rounding; FP8 re-quantised)."""
        base = self.get_base_layer()
        for adapter in adapter_names or list(self.active_adapters):
            if adapter not in self.lora_A or adapter in self.merged_adapters:
                continue
            if self.scaling[adapter] != 0:
                _add_to_weight(base, self.get_delta_weight(adapter))
            self.merged_adapters.append(adapter)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged adapters again (not bit-exact: the weight was rounded when merged)."""
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if self.scaling[adapter] != 0:
                _add_to_weight(base, -self.get_delta_weight(adapter))


def _add_to_weight(base: ExpertLinear, delta: torch.Tensor) -> None:
    if hasattr(base, "dequantized_weight"):  # FP8 storage (runtime FP8): dequantise, add, re-quantise
        from magihuman.runtime.fp8 import quantize_fp8_rows

        merged = base.dequantized_weight().float() + delta.to(base.weight.device)
        q, scale = quantize_fp8_rows(merged)
        base.weight.data = q.view(torch.uint8)
        base.weight_scale.copy_(scale)
        return
    base.weight.data = (base.weight.float() + delta.to(base.weight.device)).to(base.weight.dtype)


# --------------------------------------------------------------------------------------- config
def target_regex(patterns: Iterable[str], layers: Sequence[int] | None = None) -> str:
    """A PEFT ``target_modules`` regex matching ``block.layers.<i>.<pattern>`` module names."""
    layer = "|".join(str(i) for i in layers) if layers is not None else r"\d+"
    return rf"block\.layers\.({layer})\.({'|'.join(f'(?:{p})' for p in patterns)})"


def lora_config(rank: int, alpha: float, target_modules: str) -> LoraConfig:
    """A PEFT ``LoraConfig`` with :class:`ExpertLoraLinear` registered for the expert linears."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0, bias="none")
    config._register_custom_module({ExpertLinear: ExpertLoraLinear})
    return config


def inject_lora(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> list[str]:
    """Wrap every targeted expert linear of ``model`` (in place); returns the wrapped module names.

    Raises:
        LoraError: the pattern matches no expert linear of this model.
    """
    pattern = re.compile(config.target_modules)
    names = [n.removesuffix(".base_layer") for n, m in model.named_modules() if isinstance(m, ExpertLinear)]
    names = [n for n in names if pattern.fullmatch(n)]
    if not names:
        raise LoraError(f"the LoRA targets {config.target_modules!r} match no block linear of this model")
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    return names


def lora_layers(model: nn.Module) -> list[ExpertLoraLinear]:
    """The :class:`ExpertLoraLinear` modules of ``model``."""
    return [m for m in model.modules() if isinstance(m, ExpertLoraLinear)]


# --------------------------------------------------------------------------------------- files
def save_lora_file(model: nn.Module, path: str | Path, *, adapter_name: str = "default",
                   weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write adapter ``adapter_name`` of ``model`` as a ``.safetensors`` adapter file, atomically.

    Args:
        model: a transformer with injected adapters.
        path: output file (``.safetensors``).
        adapter_name: which adapter.
        weights: parameter values to write instead of the live ones (e.g. EMA), by parameter name.
    """
    layers = lora_layers(model)
    if not layers:
        raise LoraError("the model holds no LoRA adapter to save")
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    if weights is not None:
        live = {n.replace(f".{adapter_name}.", "."): n for n, _ in model.named_parameters() if ".lora_" in n}
        state = {k: weights.get(live.get(k, k), v) for k, v in state.items()}
    first = layers[0]
    peft_config = getattr(model, "peft_config", {}).get(adapter_name)
    settings = {"rank": first.r[adapter_name], "alpha": first.lora_alpha[adapter_name],
                "target_modules": peft_config.target_modules if peft_config is not None else None,
                "base_config": {k: v for k, v in dict(model.config).items() if not k.startswith("_")}}
    tensors = {KEY_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", METADATA_KEY: json.dumps(settings, default=list)}
    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def check_lora_state(model: nn.Module, state: dict[str, torch.Tensor], rank: int, path: Path | str = "") -> None:
    """Refuse an adapter whose keys or shapes do not fit ``model`` (one error naming all the keys).

    Raises:
        LoraError: unknown modules, keys other than ``lora_A.weight``/``lora_B.weight``, or shapes that
            differ from ``[E·r, in]`` / ``[E·out, r]`` of this model's linears.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, ExpertLinear)}
    linears.update({n.removesuffix(".base_layer"): m for n, m in linears.items()})
    unknown, wrong = [], []
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".lora_")
        linear = linears.get(module)
        if linear is None or leaf not in ("A.weight", "B.weight"):
            unknown.append(key)
            continue
        experts = linear.num_experts
        want = (experts * rank, linear.in_features) if leaf == "A.weight" else (experts * linear.out_features, rank)
        if tuple(tensor.shape) != want:
            wrong.append(f"{key} {tuple(tensor.shape)} (this model needs {want})")
    if unknown or wrong:
        lines = []
        if unknown:
            listed = ", ".join(unknown[:_MAX_LISTED])
            lines.append(f"{len(unknown)} key(s) name no block linear of this model: {listed}")
        if wrong:
            lines.append(f"{len(wrong)} key(s) have the wrong shape: {'; '.join(wrong[:_MAX_LISTED])}")
        raise LoraError(f"the LoRA {path} does not fit this transformer (trained for another model?): "
                        + " | ".join(lines))


def load_lora(model: nn.Module, path: str | Path, scale: float = 1.0, *, adapter_name: str | None = None,
              fuse: bool = False) -> str:
    """Add the adapter file ``path`` to ``model`` at ``scale`` (several adapters may be loaded and act together).

    Args:
        model: a :class:`~magihuman.model.transformer.MagiHumanTransformer` (bf16 or FP8 block linears).
        path: adapter file from ``magihuman train lora``.
        scale: multiplier of ``alpha / r`` (0: the adapter does nothing; the output equals the base's bit for bit).
        adapter_name: PEFT adapter name (default: ``lora_<n>``).
        fuse: add the adapter into the weights now (faster forward; the adapter can no longer be rescaled).

    Returns:
        The adapter name.

    Raises:
        LoraError: a missing or unreadable file, or keys/shapes that do not fit the model (named).
    """
    state, settings = read_lora_file(path)
    check_lora_state(model, state, int(settings["rank"]), path)
    name = adapter_name or f"lora_{len(getattr(model, 'peft_config', {}))}"
    targets = sorted({k.rpartition(".lora_")[0].removesuffix(".base_layer") for k in state})
    regex = "|".join(re.escape(t) for t in targets)
    inject_lora(model, lora_config(int(settings["rank"]), float(settings["alpha"]), f"(?:{regex})"), name)
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
    if missing:
        raise LoraError(f"the LoRA {path} lacks tensors for {', '.join(missing[:_MAX_LISTED])}")
    layers = lora_layers(model)
    active = sorted({a for layer in layers for a in layer.lora_A})
    for layer in layers:
        if name in layer.lora_A:
            layer.scaling[name] = layer.lora_alpha[name] / layer.r[name] * float(scale)
        layer.set_adapter([a for a in active if a in layer.lora_A], inference_mode=True)
        if fuse and name in layer.lora_A:
            layer.merge(adapter_names=[name])
    model.requires_grad_(False)
    return name
