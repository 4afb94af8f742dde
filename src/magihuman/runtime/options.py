"""The memory and speed switches as plain data (no torch import): :class:`RuntimeOptions` and the names
the CLI offers for them.

Each field is one CLI flag; :func:`magihuman.runtime.placement.place_transformer` applies them to a
DiT. Importing this module does not import torch, so the CLI can build its ``--help`` from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from magihuman.model.attention_choices import ATTENTION_CHOICES

__all__ = ["OFFLOAD_MODES", "ATTENTION_CHOICES", "RuntimeOptions"]

#: ``--offload`` modes: ``"components"`` (:mod:`magihuman.runtime.offload` ``ComponentOffload``) and
#: ``"blocks"`` (``enable_block_streaming``).
OFFLOAD_MODES = ("components", "blocks")



@dataclass(frozen=True)
class RuntimeOptions:
    """How the models are placed and run: memory and speed switches, each one CLI flag (:mod:`magihuman.runtime`).

    Attributes:
        fp8: FP8 (e4m3, per-row scale) storage of the DiT block linears (``--fp8``): 15.4 instead of 30.6 GB.
        offload: ``"components"`` (each model on the GPU only for its stage) and/or ``"blocks"`` (stream the
            DiT layers from host memory) (``--offload``).
        blocks_per_group: layers per streamed group (``--offload-blocks-per-group``).
        shard: FSDP2-shard the DiT weights over the ``torchrun`` ranks (``--shard``).
        compile: ``torch.compile`` of the repeated transformer layers (``--compile``).
        attention: ``"auto"``, ``"sdpa"``, ``"flex"`` or ``"fa3"`` (``--attention``).
        decode_tile: Turbo decoder spatial tile in latent pixels (``--decode-tile-size``; None: off).
            Tiles overlap by a third and are blended (errors on random weights: docs/parity.md).
        fp8_gemm: with ``fp8``, run the eligible block linears as FP8 tensor-core GEMMs on GPUs of
            compute capability >= 8.9 (``--fp8-gemm``; experimental, see
            :func:`~magihuman.runtime.fp8.enable_fp8_weights`).
        fp32: run the DiT block linears in float32 instead of the reference's bf16 (``--fp32``): for CPUs
            without fast bf16 GEMMs (AVX2-only CPUs emulate them) and for models trained in float32, such as the
            toy world's (docs/toy_world.md). Not bit-equal to the reference.
        batch_cfg: CFG presets run the conditional and the negative-prompt pass as one batched call
            (exact: :func:`~magihuman.sampling.loop.denoise`); False (``--no-batch-cfg``) runs two calls and
            needs half the activation memory.

    Raises:
        ValueError: for an unknown offload mode, a non-positive group size, ``shard`` together with
            ``offload=("blocks",)``, ``fp8_gemm`` without ``fp8``, or ``fp32`` with ``fp8``.
    """

    fp8: bool = False
    offload: tuple[str, ...] = ()
    blocks_per_group: int = 1
    shard: bool = False
    compile: bool = False
    attention: str = "auto"
    decode_tile: int | None = None
    fp8_gemm: bool = False
    batch_cfg: bool = True
    fp32: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.offload) - set(OFFLOAD_MODES))
        if unknown:
            raise ValueError(f"unknown offload mode(s) {unknown}; choose from {list(OFFLOAD_MODES)}")
        if self.blocks_per_group < 1:
            raise ValueError(f"blocks_per_group must be >= 1, got {self.blocks_per_group}")
        if self.shard and "blocks" in self.offload:
            raise ValueError("--shard and --offload blocks both place the DiT weights; pick one")
        if self.fp8_gemm and not self.fp8:
            raise ValueError("fp8_gemm computes with the FP8 weights; set fp8=True too (--fp8-gemm implies --fp8)")
        if self.fp32 and self.fp8:
            raise ValueError("--fp32 and --fp8 both set the DiT block linears' precision; pick one")

    @property
    def loads_on_host(self) -> bool:
        """Whether the DiTs are loaded into host memory first (then converted and placed)."""
        return self.fp8 or self.fp32 or self.shard or bool(self.offload)
