"""Process groups for multi-process training: torchrun's environment, or explicit ranks (tests, spawn).

``magihuman train`` runs on one process, or under ``torchrun --nproc_per_node N -m magihuman train ...``:
each process then trains on its slice of every global batch and DDP averages the gradients
(:class:`~magihuman.train.trainer.Trainer`). NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


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
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()
