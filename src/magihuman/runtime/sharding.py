"""FSDP2 sharding of the DiT weights over the ranks of a process group (CLI ``--shard`` under ``torchrun``).

Memory of the 15B DiT's weights per rank: ``30.64 GB / N`` plus one gathered block linear
(<= 839 MB bf16); with ``--fp8``: ``15.28 GB / N`` + the replicated row scales (9.7 MB) + fp32 rest / N
+ one gathered e4m3 linear (<= 420 MB). Speed: one all-gather per block linear per forward; for N GPUs
that do not fit the model alone.
"""

from __future__ import annotations

import torch
from torch import nn

from magihuman.model.layers import ExpertLinear, TransformerLayer
from magihuman.runtime.state import as_device, is_block_streamed, is_sharded

__all__ = ["shard_transformer"]


def shard_transformer(model: nn.Module, group: torch.distributed.ProcessGroup | None = None, *,
                      device: str | torch.device | None = None, reshard_after_forward: bool = True) -> nn.Module:
    """Shard the weights over the ranks of a process group with FSDP2 (``torch.distributed.fsdp.fully_shard``).

    CLI: ``--shard`` (launched with ``torchrun --nproc-per-node N``; it can share its process group
    with Ulysses sequence parallelism, since every rank still runs the same unit forwards in the same
    order). Memory: each rank keeps ``1/N`` of every parameter (30.64 GB / N for the 15B; buffers are
    replicated: 64 bytes) plus the gathered weight of the block linear being run and possibly the
    next one's (each <= 81912 x 5120 x 2 B = 839 MB). Speed: one all-gather of
    each block linear per forward (30.6 GB x (N-1)/N of traffic per rank per forward); this answers
    "8 GPUs x 22 GB all OOM" (architecture.md §14, #39), it is not a speed-up.

    Units: FSDP2 gathers each unit with one flat all-gather and requires one dtype per unit, and a
    layer mixes bf16 block linears with float32 norms (architecture.md §2.3), so every ``ExpertLinear`` is its
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
    if is_sharded(model):
        raise ValueError("the model is already sharded")
    if is_block_streamed(model):
        raise ValueError("the model streams its blocks; use either enable_block_streaming or shard_transformer")
    device_type = (as_device(device, "device") if device is not None else next(model.parameters()).device).type
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
