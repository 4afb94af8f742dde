"""Writing official DiT checkpoints (architecture.md §7.2): safetensors shards, the index, ``.zst`` copies.

:func:`save_official_checkpoint` writes what :func:`magihuman.model.checkpoint.load_official_state_dict`
reads; :func:`write_atomic` is the create-or-replace-at-once primitive used by every writer of model files.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import safetensors.torch
import torch
import zstandard

from magihuman.model.checkpoint_files import INDEX_FILE, SINGLE_FILE, ZST_SUFFIX

__all__ = ["save_official_checkpoint", "write_atomic"]


def save_official_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | os.PathLike,
    *,
    max_shard_bytes: int | None = None,
    compress: bool = False,
) -> Path:
    """Write ``state_dict`` in the official layout, readable by :func:`load_official_state_dict`.

    Tensors are greedily packed into shards in ``state_dict`` order, each shard holding at most
    ``max_shard_bytes`` of tensor data (a larger tensor gets a shard of its own). One shard is written as
    ``model.safetensors``; several as ``model-0000k-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` (``{"metadata": {"total_size": ...}, "weight_map": {...}}``, keys
    sorted). With ``compress=True`` each shard is written as ``<shard>.zst`` instead, always with an index
    (even for one shard), because the reference only looks for ``.zst`` copies of indexed shards. Tensors
    keep their dtypes and are written contiguous, from the CPU. Each file is written to a temporary name and
    renamed, and official-layout files of an earlier checkpoint in ``folder`` that are not part of this
    one (``model.safetensors``, the index, ``model-*-of-*.safetensors[.zst]``) are removed, so the folder
    holds exactly this checkpoint.

    Args:
        state_dict: name -> tensor.
        folder: output folder; created if needed.
        max_shard_bytes: shard size limit in bytes of tensor data; ``None`` writes a single shard.
        compress: write zstd-compressed shards.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``state_dict`` is empty or ``max_shard_bytes`` is not positive.
    """
    if not state_dict:
        raise ValueError("save_official_checkpoint needs a non-empty state_dict")
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be a positive number of bytes or None, got {max_shard_bytes}")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    groups = _plan_shards(_prepare_tensors(state_dict), max_shard_bytes)
    if len(groups) == 1 and not compress:
        written = [_write_shard(groups[0], folder / SINGLE_FILE, compress=False)]
    else:
        written = _write_sharded(groups, folder, compress)
    _remove_stale(folder, keep=written)
    return folder


def _prepare_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing storage are cloned (safetensors refuses them)."""
    out, seen = {}, set()
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        key = t.untyped_storage().data_ptr()
        if key in seen and t.numel():
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out


def _plan_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes is not None and groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = t
        size += nbytes
    return groups


def _write_sharded(groups: list[dict[str, torch.Tensor]], folder: Path, compress: bool) -> list[Path]:
    weight_map, total, written = {}, 0, []
    for k, group in enumerate(groups, start=1):
        name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        target = folder / (name + ZST_SUFFIX if compress else name)
        written.append(_write_shard(group, target, compress=compress))
        weight_map.update(dict.fromkeys(group, name))
        total += sum(t.numel() * t.element_size() for t in group.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    text = json.dumps(index, indent=2) + "\n"
    written.append(write_atomic(folder / INDEX_FILE, lambda tmp: tmp.write_bytes(text.encode("utf-8"))))
    return written


def _write_shard(tensors: dict[str, torch.Tensor], target: Path, *, compress: bool) -> Path:
    data = safetensors.torch.save(tensors, metadata={"format": "pt"})
    if not compress:
        return write_atomic(target, lambda tmp: tmp.write_bytes(data))

    def write_zst(tmp: Path) -> None:
        with open(tmp, "wb") as fh, zstandard.ZstdCompressor().stream_writer(fh, size=len(data)) as writer:
            writer.write(data)

    return write_atomic(target, write_zst)


def write_atomic(target: Path, write: Callable[[Path], None]) -> Path:
    """Create or replace ``target`` all at once: ``write(tmp)`` fills a hidden temp file in the same
    folder, which is then renamed onto ``target`` (``os.replace``). On any error the temp file is
    removed and ``target`` is left as it was.

    Args:
        target: the file to write; its folder must exist.
        write: fills the file at the given path (e.g. ``torch.save``, ``safetensors.torch.save_file``).

    Returns:
        ``target``.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_LAYOUT_FILE = re.compile(r"model\.safetensors(\.index\.json)?|model-\d+-of-\d+\.safetensors(\.zst)?")


def _remove_stale(folder: Path, keep: Iterable[Path]) -> None:
    """Delete official-layout files of an earlier checkpoint so that they cannot shadow the new one."""
    keep = set(keep)
    for path in folder.iterdir():
        if path not in keep and _LAYOUT_FILE.fullmatch(path.name) and path.is_file():
            path.unlink()
