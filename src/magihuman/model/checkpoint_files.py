"""The files of an official DiT checkpoint: folder layout, safetensors headers, ``.zst`` streams (architecture.md §7.2).

An official checkpoint is a folder holding either one ``model.safetensors`` or a sharded set: the
Hugging Face index ``model.safetensors.index.json`` (``weight_map``: tensor name -> shard file) plus its
``model-0000k-of-0000n.safetensors`` shards, any of which may ship compressed as ``<shard>.zst`` (the
compressed copy is preferred when both exist, as in the reference).

This module finds those files (:func:`describe_checkpoint`), parses safetensors headers without reading
tensor data (for ``.zst`` shards only the start of the stream is decompressed) and reads tensors shard by
shard. The strict audit against a model lives in :mod:`magihuman.model.checkpoint`; writing lives in
:mod:`magihuman.model.checkpoint_writer`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import zstandard
from safetensors import SafetensorError

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "ZST_SUFFIX",
    "CheckpointError",
    "CheckpointFiles",
    "CheckpointNotFoundError",
    "ShardFile",
    "describe_checkpoint",
    "safetensors_damage",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
ZST_SUFFIX = ".zst"

_MAX_LISTED = 50  # entries shown per problem category; the rest are counted
_MAX_HEADER_BYTES = 100_000_000  # same bound as the safetensors library
_ZST_READ_BYTES = 4 << 20  # compressed bytes fed to the decompressor per step
_INCOMPLETE = "probably an incomplete or corrupted download; delete it and download it again"

class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, damaged or does not match the model.

    The message lists every problem found (missing, unexpected and mis-shaped keys, damaged or absent
    files) and says how to fix it.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint folder does not exist (also catchable as ``FileNotFoundError``)."""


@dataclass(frozen=True)
class ShardFile:
    """One safetensors file of a checkpoint.

    Attributes:
        name: the file name as the index ``weight_map`` writes it (``"model.safetensors"`` for a
            single-file checkpoint).
        path: the file actually read: ``<name>.zst`` when present, else ``<name>``.
    """

    name: str
    path: Path

    @property
    def compressed(self) -> bool:
        """Whether ``path`` is a zstd-compressed copy of the shard."""
        return self.path.name.endswith(ZST_SUFFIX)


@dataclass(frozen=True)
class CheckpointFiles:
    """The files that make up one checkpoint folder (see :func:`describe_checkpoint`).

    Attributes:
        folder: the checkpoint folder.
        index: ``folder / "model.safetensors.index.json"``, or ``None`` for a single-file checkpoint.
        shards: the files to read, sorted by name; one entry (``model.safetensors``) without an index.
        weight_map: tensor name -> shard name from the index; ``None`` for a single-file checkpoint.
    """

    folder: Path
    index: Path | None
    shards: tuple[ShardFile, ...]
    weight_map: Mapping[str, str] | None = None


# ----------------------------------------------------------------------------------------------
# Folder layout
# ----------------------------------------------------------------------------------------------


def describe_checkpoint(folder: str | os.PathLike) -> CheckpointFiles:
    """Find the files of an official checkpoint folder without reading any tensor (architecture.md §7.2).

    With an index, every shard it names must exist, plain or as ``<shard>.zst`` (preferred). Without
    one, the folder must hold ``model.safetensors`` (the ``.zst`` fallback does not apply to it).

    Args:
        folder: the checkpoint folder, e.g. ``<root>/distill``.

    Returns:
        The folder's :class:`CheckpointFiles`.

    Raises:
        CheckpointNotFoundError: ``folder`` does not exist.
        CheckpointError: ``folder`` is a file, holds no checkpoint (the message suggests a sub-folder when
            it is a repository root such as ``base/ distill/ 540p_sr/ ...``), has an unreadable index,
            or its index names shard files that are absent.
    """
    folder = Path(folder).expanduser()
    _check_is_folder(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = _read_weight_map(index)
        return CheckpointFiles(folder, index, _find_shards(folder, index, weight_map), weight_map)
    single = folder / SINGLE_FILE
    if single.is_file():
        return CheckpointFiles(folder, None, (ShardFile(SINGLE_FILE, single),))
    raise CheckpointError(_no_checkpoint_message(folder))


def _check_is_folder(folder: Path) -> None:
    if not folder.exists():
        raise CheckpointNotFoundError(
            f"checkpoint folder {folder} does not exist; pass the folder that holds {SINGLE_FILE} or "
            f"{INDEX_FILE} (e.g. <root>/distill after `magihuman download`)"
        )
    if not folder.is_dir():
        raise CheckpointError(
            f"expected a checkpoint folder but {folder} is a file; pass the folder that holds "
            f"{SINGLE_FILE} or {INDEX_FILE} (here probably {folder.parent})"
        )


def _is_checkpoint_folder(path: Path) -> bool:
    return (path / INDEX_FILE).is_file() or (path / SINGLE_FILE).is_file()


def _no_checkpoint_message(folder: Path) -> str:
    head = f"{folder} is not a checkpoint folder: it has neither {SINGLE_FILE} nor {INDEX_FILE}."
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    found = [p.name for p in entries if p.is_dir() and _is_checkpoint_folder(p)]
    if found:
        example = "distill" if "distill" in found else found[0]
        return (
            f"{head} It looks like a repository root containing checkpoints {', '.join(found)}; "
            f"pass one of them, e.g. {folder / example}"
        )
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:8]]
    more = f" and {len(entries) - 8} more" if len(entries) > 8 else ""
    listing = f"found: {', '.join(shown)}{more}" if entries else "the folder is empty"
    hint = ""
    if (folder / (SINGLE_FILE + ZST_SUFFIX)).is_file():
        hint = f" Only shards listed in an index may be .zst; decompress {SINGLE_FILE}{ZST_SUFFIX} first."
    return (
        f"{head} ({listing}). Pass a folder holding a single-file checkpoint ({SINGLE_FILE}) or a "
        f"sharded one ({INDEX_FILE} plus its model-0000k-of-0000n.safetensors[.zst] shards).{hint}"
    )


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint index {index} ({exc}); {_INCOMPLETE}") from exc
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"checkpoint index {index} has no non-empty 'weight_map' object (tensor name -> shard file); "
            f"{_INCOMPLETE}"
        )
    bad = sorted(k for k, v in weight_map.items() if not _is_plain_file_name(v))
    if bad:
        raise CheckpointError(
            f"checkpoint index {index} maps {len(bad)} tensor(s) to invalid shard file names (they must be "
            f"plain file names inside the folder): {_join_names(bad)}"
        )
    return weight_map


def _is_plain_file_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _find_shards(folder: Path, index: Path, weight_map: Mapping[str, str]) -> tuple[ShardFile, ...]:
    shards, absent = [], []
    for name in sorted(set(weight_map.values())):
        compressed, plain = folder / (name + ZST_SUFFIX), folder / name
        if compressed.is_file():
            shards.append(ShardFile(name, compressed))
        elif plain.is_file():
            shards.append(ShardFile(name, plain))
        else:
            absent.append(name)
    if absent:
        counts = {name: sum(1 for v in weight_map.values() if v == name) for name in absent}
        listed = "; ".join(f"{name} (holds {counts[name]} tensors)" for name in absent)
        raise CheckpointError(
            f"checkpoint index {index} names {len(absent)} shard file(s) that are in {folder} neither plain "
            f"nor as {ZST_SUFFIX}: {listed}. The download is probably incomplete; download the missing "
            f"shard(s) again."
        )
    return tuple(shards)


# ----------------------------------------------------------------------------------------------
# Reading safetensors files (plain or zstd-compressed)
# ----------------------------------------------------------------------------------------------


class _DamagedFileError(Exception):
    """Internal: a file is truncated or not a valid safetensors/zstd file (turned into a problem)."""


@dataclass(frozen=True)
class _Header:
    """The parsed safetensors header of one file.

    Attributes:
        tensors: name -> (shape, safetensors dtype code such as ``"BF16"``).
        file_bytes: the size the whole (decompressed) safetensors file must have.
    """

    tensors: dict[str, tuple[tuple[int, ...], str]]
    file_bytes: int


def _iter_zst(path: Path) -> Iterator[bytes]:
    """Stream-decompress a ``.zst`` file (one or more frames) chunk by chunk.

    Raises:
        _DamagedFileError: the file is empty or ends inside a frame (truncated).
        zstandard.ZstdError: the data is not zstd or is corrupted.
    """
    dctx = zstandard.ZstdDecompressor()
    dobj, fed, pending = dctx.decompressobj(), False, b""
    with open(path, "rb") as fh:
        while chunk := pending or fh.read(_ZST_READ_BYTES):
            pending, fed = b"", True
            if out := dobj.decompress(chunk):
                yield out
            if dobj.eof:  # a frame ended; anything after it starts the next frame
                pending, dobj, fed = dobj.unused_data, dctx.decompressobj(), False
    if fed:
        raise _DamagedFileError("the zstd stream ends in the middle of a frame (file truncated)")
    if not path.stat().st_size:
        raise _DamagedFileError("the file is empty")


class _ChunkReader:
    """``read(n)`` over an iterator of byte chunks (used to read a header from a zstd stream)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffer = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n and (chunk := next(self._chunks, None)) is not None:
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out


def _parse_header(read: Callable[[int], bytes]) -> _Header:
    """Parse a safetensors header from the start of a file (8-byte little-endian length, then JSON)."""
    prefix = read(8)
    if len(prefix) < 8:
        raise _DamagedFileError("the file is shorter than the 8-byte safetensors header length")
    length = int.from_bytes(prefix, "little")
    if length > _MAX_HEADER_BYTES:
        raise _DamagedFileError(f"the header length {length} is implausible; this is not a safetensors file")
    blob = read(length)
    if len(blob) < length:
        raise _DamagedFileError("the file ends inside its safetensors header (truncated)")
    try:
        entries = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _DamagedFileError(f"the safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(entries, dict):
        raise _DamagedFileError("the safetensors header is not a JSON object")
    tensors, data_bytes = {}, 0
    for name, info in entries.items():
        if name != "__metadata__":
            tensors[name], end = _parse_entry(name, info)
            data_bytes = max(data_bytes, end)
    return _Header(tensors, 8 + length + data_bytes)


def _parse_entry(name: str, info: object) -> tuple[tuple[tuple[int, ...], str], int]:
    try:
        shape = tuple(int(d) for d in info["shape"])
        dtype = str(info["dtype"])
        end = int(info["data_offsets"][1])
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise _DamagedFileError(f"the safetensors header entry for {name!r} is malformed") from exc
    return (shape, dtype), end


def _read_header(shard: ShardFile) -> _Header:
    """Read one shard's header; for plain files also check the file size against it.

    Raises:
        _DamagedFileError, zstandard.ZstdError, OSError: see :func:`_describe_damage`.
    """
    if shard.compressed:
        with contextlib.closing(_iter_zst(shard.path)) as chunks:
            return _parse_header(_ChunkReader(chunks).read)
    with open(shard.path, "rb") as fh:
        header = _parse_header(fh.read)
    size = shard.path.stat().st_size
    if size != header.file_bytes:
        what = "truncated" if size < header.file_bytes else "has trailing bytes"
        raise _DamagedFileError(f"the file is {size} bytes but its header describes {header.file_bytes} ({what})")
    return header


def _check_decompressed_size(size: int, header: _Header) -> None:
    if size != header.file_bytes:
        raise _DamagedFileError(f"it decompresses to {size} bytes but its header describes {header.file_bytes}")


def _decompress_shard(shard: ShardFile, header: _Header) -> bytes:
    """Decompress a whole ``.zst`` shard into memory, checking its length against the header."""
    chunks = list(_iter_zst(shard.path))
    _check_decompressed_size(sum(len(c) for c in chunks), header)
    return b"".join(chunks)


def _iter_shard_tensors(shard: ShardFile, header: _Header, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, cpu tensor)`` for ``names`` of one shard.

    A plain shard is read tensor by tensor (memory-mapped). A ``.zst`` shard is decompressed into memory
    and parsed by ``safetensors.torch.load``, which copies each tensor out of the bytes: about two shard
    sizes at the peak, released once the shard's tensors have been taken.
    """
    if shard.compressed:
        tensors = safetensors.torch.load(_decompress_shard(shard, header))
        for name in names:
            yield name, tensors.pop(name)
        return
    with safetensors.safe_open(str(shard.path), framework="pt", device="cpu") as fh:
        for name in names:
            yield name, fh.get_tensor(name)


def _describe_damage(shard: ShardFile, exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{shard.path}: cannot be read ({exc})"
    kind = "zstd-compressed shard" if shard.compressed else "safetensors file"
    return f"{shard.path}: this {kind} is damaged: {exc}; {_INCOMPLETE}"


_READ_ERRORS = (_DamagedFileError, SafetensorError, zstandard.ZstdError, OSError)


def safetensors_damage(path: str | os.PathLike) -> str | None:
    """Why a plain ``.safetensors`` file cannot be read, or ``None`` when its header and size are sound.

    Reads only the header (8-byte length, JSON) and compares the file size with the size the header
    describes; no tensor data is read. Used to turn a library error into a message that says what is wrong.

    Args:
        path: the file.

    Returns:
        A short reason such as ``"the file ends inside its safetensors header (truncated)"``, or ``None``.
    """
    path = Path(path).expanduser()
    try:
        _read_header(ShardFile(path.name, path))
    except (_DamagedFileError, OSError) as exc:
        return str(exc)
    return None


def _join_names(names: list[str]) -> str:
    more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more
