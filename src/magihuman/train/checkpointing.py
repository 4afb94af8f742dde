"""Resumable training checkpoints: trainable weights, optimiser state, EMA and the step, written atomically.

A checkpoint is a folder ``checkpoints/step-NNNNNNN/`` with ``trainable.safetensors`` (the trained
parameters in their training dtype, by module name), ``optimizer.pt`` (the optimiser state: the trainer
writes it keyed by parameter name, full tensors, as
``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict(full_state_dict=True)`` gives it),
``ema.safetensors`` (when EMA is on) and ``state.json`` (step and the config that made it). Tensors are
whole even when the run shards them (FSDP2 gathers them to rank 0), so a checkpoint resumes at any process
count. The folder is written under a temporary name and renamed, so a crash never leaves a half
checkpoint that resume would pick. Every random draw of the trainer is re-derived from (seed, step), so
these files are the whole state: resuming from step N continues bit for bit like the run that never
stopped (on the same machine and process count).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS_DIR = "checkpoints"
_PREFIX = "step-"


def checkpoint_folder(run: Path, step: int) -> Path:
    """``run/checkpoints/step-NNNNNNN``."""
    return Path(run) / CHECKPOINTS_DIR / f"{_PREFIX}{step:07d}"


def latest_checkpoint(run: Path) -> Path | None:
    """The complete checkpoint of the highest step in ``run``, or None."""
    folder = Path(run) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file())
    return found[-1] if found else None


def save_checkpoint(run: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    ema: dict[str, torch.Tensor] | None, extra: dict, *, keep: int) -> Path:
    """Write the checkpoint of ``step`` and remove the oldest beyond ``keep``.

    Returns:
        The checkpoint folder.
    """
    target = checkpoint_folder(run, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in trainable.items()}
        save_file(tensors, str(staging / "trainable.safetensors"))
        torch.save(optimizer_state, staging / "optimizer.pt")
        if ema is not None:
            save_file({k: v.cpu().contiguous() for k, v in ema.items()}, str(staging / "ema.safetensors"))
        (staging / "state.json").write_text(json.dumps(dict(extra, step=step), indent=2, default=str) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = sorted(p for p in target.parent.iterdir() if p.name.startswith(_PREFIX))
    for stale in old[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def load_checkpoint(folder: Path) -> tuple[int, dict[str, torch.Tensor], dict, dict[str, torch.Tensor] | None, dict]:
    """``(step, trainable, optimizer_state, ema, state)`` of a checkpoint folder."""
    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    trainable = load_file(str(folder / "trainable.safetensors"))
    optimizer_state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    ema_file = folder / "ema.safetensors"
    ema = load_file(str(ema_file)) if ema_file.is_file() else None
    return int(state["step"]), trainable, optimizer_state, ema, state
