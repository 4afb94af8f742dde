"""Process groups and data parallelism for multi-process training.

``magihuman train`` runs on one process, or under ``torchrun --nproc_per_node N -m magihuman train ...``:
each process then trains on its slice of every global batch (NCCL on GPUs, gloo on the CPU), and the
processes hold the model in one of three ways:

* ``ddp`` (LoRA; :class:`~torch.nn.parallel.DistributedDataParallel`): every process holds the whole
  model and the gradients are averaged;
* ``fsdp2`` (full fine-tuning; :func:`shard_for_training`): the float32 weights, their gradients and the
  AdamW moments are sharded over the processes (``torch.distributed.fsdp.fully_shard``), each unit
  gathered for its forward and backward;
* the DMD-2 distiller averages its gradients itself (:func:`average_gradients`): its fake score runs up
  to three forwards per backward and its generator's backward passes through the frozen fake score,
  which DDP's one-forward-one-backward hooks do not allow.

Checkpoints hold full tensors (:func:`gather_full`, :func:`local_like`), so a run resumes at any process
count.
"""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from magihuman.model.layers import ExpertLinear

#: Gradient bytes per all-reduce in :func:`average_gradients`.
BUCKET_BYTES = 64 << 20


def init_from_env(device: str | torch.device) -> torch.device:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; returns this process's device.

    With CUDA, ``cuda`` becomes ``cuda:LOCAL_RANK``.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def init_explicit(rank: int, world: int, port: int) -> None:
    """Join a gloo group of ``world`` processes on 127.0.0.1:``port`` (CPU tests and spawned workers)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shutdown() -> None:
    """Leave the process group, if any, after collecting unreachable objects: modules and DTensors left in
    reference cycles may still hold the group, and gloo work released during the interpreter's shutdown can
    abort the process (the mechanism described in pytorch/pytorch PR 179291)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def data_parallel_mode(sharding: str, mode: str, world: int) -> str:
    """``"none"`` for one process, else ``"ddp"`` or ``"fsdp2"``; ``sharding="auto"`` means fsdp2 for mode
    ``finetune`` and ddp for ``lora`` (TrainConfig.sharding)."""
    if world <= 1:
        return "none"
    if sharding == "auto":
        return "fsdp2" if mode == "finetune" else "ddp"
    return sharding


def shard_for_training(model: nn.Module, *, mixed_precision: str, device: str | torch.device) -> nn.Module:
    """Shard a transformer for full fine-tuning over the world with FSDP2 (``fully_shard``).

    Units as :func:`magihuman.runtime.sharding.shard_transformer` builds them for inference: every block
    linear (``ExpertLinear``) is a unit, every layer one for its norms, the root one for the adapter and
    heads. With ``mixed_precision="bf16"`` the block linears are gathered in bf16
    (``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``): their GEMMs then run in bf16 as
    under autocast in one process (architecture.md §2.3: block linears bf16, the rest float32), and their
    gradients are reduce-scattered in float32; the other units stay float32. Each layer becomes float32
    just before it is sharded and ``fully_shard`` moves the shard to ``device``, so a process's host memory
    holds the model in its official dtypes plus one float32 layer. Enable gradient checkpointing before.

    Args:
        model: a :class:`~magihuman.model.transformer.MagiHumanTransformer` whose parameters require grad.
        mixed_precision: ``"bf16"`` or ``"fp32"`` (TrainConfig.mixed_precision).
        device: the compute device (``cuda:LOCAL_RANK`` with NCCL, ``cpu`` with gloo).

    Returns:
        ``model``: its parameters become float32 ``DTensor``s sharded on dim 0 (torch.chunk's split).

    Raises:
        RuntimeError: without an initialised process group.
    """
    if not dist.is_initialized():
        raise RuntimeError("FSDP2 needs a process group: launch with `torchrun --nproc_per_node N`")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    bf16 = mixed_precision == "bf16"
    linear_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    for layer in model.block.layers:
        layer.float()
        for module in layer.modules():
            if isinstance(module, ExpertLinear):
                fully_shard(module, mesh=mesh, mp_policy=linear_policy)
        fully_shard(layer, mesh=mesh)
    for child in model.children():
        if child is not model.block:
            child.float()
    fully_shard(model, mesh=mesh)
    return model


def gather_full(tensors: Mapping[str, torch.Tensor], *, keep: bool) -> dict[str, torch.Tensor]:
    """Full CPU copies of possibly sharded tensors, one at a time.

    A collective when any tensor is a ``DTensor``: every process calls it with the same names in the same
    order; only a process with ``keep`` (rank 0) gets the tensors, the others get ``{}``.
    """
    out = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if keep:
            out[name] = full.detach().cpu()
    return out


def local_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` held as ``like`` is: this process's shard when ``like`` is a ``DTensor`` (a collective), else
    ``full`` on ``like``'s device, in its dtype."""
    full = full.to(like.device, like.dtype)
    return distribute_tensor(full, like.device_mesh, like.placements) if isinstance(like, DTensor) else full


def average_gradients(params: Iterable[torch.Tensor], *, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average the ``.grad`` of ``params`` over the world in place (no-op in one process).

    The gradients are flattened into buckets of one dtype and device (at most ``bucket_bytes``) and
    all-reduced, so every process ends with the same values. Parameters without a gradient are skipped;
    which ones have one must agree across processes.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    bucket: list[torch.Tensor] = []

    def flush() -> None:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()
        bucket.clear()

    for grad in (p.grad for p in params if p.grad is not None):
        if bucket and (grad.dtype != bucket[0].dtype or grad.device != bucket[0].device
                       or sum(g.numel() for g in bucket) * grad.element_size() + grad.nbytes > bucket_bytes):
            flush()
        bucket.append(grad)
    if bucket:
        flush()
