"""Strict loading and writing of official DiT checkpoints (dit.md section 7, pitfalls P17 and P18).

An official checkpoint is a folder holding either one ``model.safetensors`` or a sharded set: the
Hugging Face index ``model.safetensors.index.json`` (``weight_map``: tensor name -> shard file) plus its
``model-0000k-of-0000n.safetensors`` shards, any of which may ship compressed as ``<shard>.zst`` (the
compressed copy is preferred when both exist, as in the reference). Checkpoint names equal the module
names of the model; there are no renames or transposes (dit.md 2, 7).

The reference loads with ``strict=False`` and only prints mismatches, which leaves uninitialised weights
behind (P17). Here every mismatch is collected across all shards and raised as one :class:`CheckpointError`,
and the whole key/shape/dtype audit runs on the safetensors headers before any tensor data is read, so a
wrong folder fails in seconds rather than after reading tens of gigabytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor
import zstandard
from safetensors import SafetensorError
from tqdm.auto import tqdm

__all__ = [
    "CheckpointError",
    "CheckpointFiles",
    "load_state_dict_strict",
    "ShardFile",
    "TensorSpec",
    "describe_checkpoint",
    "expected_from_module",
    "load_official_state_dict",
    "save_official_checkpoint",
]

TensorSpec = tuple[tuple[int, ...], torch.dtype]
"""Expected ``(shape, dtype)`` of one state-dict entry, e.g. ``((7208, 5120), torch.bfloat16)``."""

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
ZST_SUFFIX = ".zst"

_MAX_LISTED = 50  # entries shown per problem category; the rest are counted
_MAX_HEADER_BYTES = 100_000_000  # same bound as the safetensors library
_ZST_READ_BYTES = 4 << 20  # compressed bytes fed to the decompressor per step
_INCOMPLETE = "probably an incomplete or corrupted download; delete it and download it again"

# safetensors dtype codes -> torch dtypes (names missing from older torch builds are skipped).
_ST_DTYPES: dict[str, torch.dtype] = {
    code: getattr(torch, name)
    for code, name in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
        "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
        "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
        "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
        "C64": "complex64",
    }.items()
    if hasattr(torch, name)
}


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
    """Find the files of an official checkpoint folder without reading any tensor (dit.md 7).

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


# ----------------------------------------------------------------------------------------------
# Matching a checkpoint against the expected state dict
# ----------------------------------------------------------------------------------------------


@dataclass
class _Problems:
    """Everything wrong with a checkpoint, one human-readable line per entry."""

    damaged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshaped: list[str] = field(default_factory=list)
    mistyped: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.damaged, self.missing, self.unexpected, self.misshaped, self.mistyped))

    def message(self, folder: Path) -> str:
        sections = [
            ("damaged files", "damaged files", self.damaged),
            ("missing", "missing keys (the model needs them, the checkpoint lacks them)", self.missing),
            ("unexpected", "unexpected keys (in the checkpoint, not in the model)", self.unexpected),
            ("mis-shaped", "mis-shaped keys", self.misshaped),
            ("wrong dtype", "keys whose dtype cannot be cast to the model's", self.mistyped),
        ]
        counts = ", ".join(f"{short}: {len(items)}" for short, _, items in sections if items)
        lines = [f"checkpoint {folder} cannot be loaded into this model ({counts})"]
        for _, title, items in sections:
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines.extend(f"    {item}" for item in items[:_MAX_LISTED])
                if len(items) > _MAX_LISTED:
                    lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
        if self.missing or self.unexpected or self.misshaped or self.mistyped:
            lines.append(
                "Check that this folder holds the checkpoint for this model configuration, and re-download it "
                "if its index or shards disagree; loading it anyway would leave uninitialised weights (dit.md P17)."
            )
        return "\n".join(lines)


def _shape_str(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _join_names(names: list[str]) -> str:
    more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _castable(found: str, expected: torch.dtype) -> bool:
    dtype = _ST_DTYPES.get(found)
    return dtype is not None and (dtype == expected or (dtype.is_floating_point and expected.is_floating_point))


def _normalize_expected(expected: Mapping[str, TensorSpec]) -> dict[str, TensorSpec]:
    specs = {}
    for name, spec in expected.items():
        try:
            shape, dtype = spec
            specs[name] = (tuple(int(d) for d in shape), dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"expected[{name!r}] must be a (shape, torch.dtype) pair, got {spec!r}") from exc
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"expected[{name!r}] must be a (shape, torch.dtype) pair, got dtype {dtype!r}")
    return specs


@dataclass
class _Sources:
    """Where each checkpoint tensor is read from.

    Attributes:
        shard_of: tensor name -> shard name, for names the index attributes to a shard that holds them.
        accounted: names already reported (index/shard disagreement) or unknowable (in a damaged shard),
            which the key audit must not report again as missing.
    """

    shard_of: dict[str, str] = field(default_factory=dict)
    accounted: set[str] = field(default_factory=set)


def _assign_sources(
    files: CheckpointFiles,
    headers: Mapping[str, _Header],
    expected: Mapping[str, TensorSpec],
    problems: _Problems,
) -> _Sources:
    """Match the index against the shards' contents, recording every disagreement.

    A name listed for a shard that does not hold it is missing (or unexpected if the model does not
    need it); a tensor stored in a shard the index does not attribute it to is unexpected, or missing
    when the model needs it and the index does not list it at all (a stale index).
    """
    listed = dict(files.weight_map or {})
    if files.weight_map is None:  # single file: its header is the list
        listed = dict.fromkeys(headers[SINGLE_FILE].tensors, SINGLE_FILE)
    sources = _Sources()
    for name, shard in listed.items():
        if shard not in headers:  # damaged shard, already reported
            sources.accounted.add(name)
        elif name in headers[shard].tensors:
            sources.shard_of[name] = shard
        else:
            sources.accounted.add(name)
            bucket = problems.missing if name in expected else problems.unexpected
            bucket.append(f"{name}  (the index lists it in {shard}, which does not contain it)")
    for shard, header in headers.items():
        for name in header.tensors:
            if listed.get(name) == shard:
                continue
            if name in expected and name not in listed:
                sources.accounted.add(name)
                problems.missing.append(f"{name}  (stored in {shard}, but the index does not list it)")
            else:
                where = "does not list it" if name not in listed else f"maps it to {listed[name]}"
                problems.unexpected.append(f"{name}  (stored in {shard}, but the index {where})")
    return sources


def _audit(
    sources: _Sources,
    headers: Mapping[str, _Header],
    expected: Mapping[str, TensorSpec],
    optional: Collection[str],
    problems: _Problems,
) -> None:
    """Compare the checkpoint's names, shapes and dtypes with ``expected`` (header data only)."""
    for name, (shape, dtype) in expected.items():
        shard = sources.shard_of.get(name)
        if shard is None:
            if name not in optional and name not in sources.accounted:
                problems.missing.append(name)
            continue
        found_shape, found_dtype = headers[shard].tensors[name]
        if found_shape != shape:
            problems.misshaped.append(
                f"{name}: expected {_shape_str(shape)}, found {_shape_str(found_shape)} in {shard}"
            )
        if not _castable(found_dtype, dtype):
            problems.mistyped.append(f"{name}: the model has {dtype}, {shard} stores {found_dtype}")
    for name, shard in sources.shard_of.items():
        if name not in expected:
            problems.unexpected.append(f"{name}  (in {shard})")


# ----------------------------------------------------------------------------------------------
# Public loading / saving API
# ----------------------------------------------------------------------------------------------


def expected_from_module(module: torch.nn.Module) -> dict[str, TensorSpec]:
    """Expected ``(shape, dtype)`` of every entry of ``module.state_dict()``.

    Works on a model built on the ``meta`` device, so it costs no memory. Non-persistent buffers are
    not in a state dict and therefore not expected.

    Args:
        module: the model, e.g. ``MagiHumanTransformer`` built on ``torch.device("meta")``.

    Returns:
        name -> ((shape...), dtype), in state-dict order.
    """
    return {name: (tuple(t.shape), t.dtype) for name, t in module.state_dict().items()}


def load_official_state_dict(
    folder: str | os.PathLike,
    expected: Mapping[str, TensorSpec],
    *,
    optional: Collection[str] = (),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Load an official checkpoint folder strictly, shard by shard (dit.md 7, P17, P18).

    First every shard's safetensors header is read (for ``.zst`` shards, only the start of the stream is
    decompressed) and the checkpoint is audited against ``expected``: missing keys, unexpected keys
    (listed in the index or stored in a shard but not expected, or stored in a shard the index does not
    attribute them to), mis-shaped keys and non-castable dtypes are all collected and raised as one
    :class:`CheckpointError` before any tensor data is read. Then shards are read one at a time: a plain
    shard tensor by tensor, a ``.zst`` shard decompressed in memory with the ``zstandard`` library and
    parsed by ``safetensors.torch.load``. Peak memory is about the loaded model plus two shard sizes for
    ``.zst`` shards (decompressed bytes plus parsed tensors) and plus one tensor for plain shards.

    Each tensor is cast to its expected dtype with ``Tensor.to`` (round-to-nearest-even for
    float32 -> bfloat16), as the reference's copy into bf16 block-linear parameters does (dit.md 2.6, 7);
    the distilled checkpoint reportedly ships everything in float32.

    Args:
        folder: a checkpoint folder (``model.safetensors``, or an index with plain or ``.zst`` shards).
        expected: name -> ``(shape, dtype)`` the model needs, e.g. :func:`expected_from_module`.
        optional: names of ``expected`` that may be absent from the checkpoint; they are then left out of
            the result so the caller keeps its own value. The transformer passes
            ``{"adapter.rope.bands"}``: a persistent buffer that the checkpoint overrides when it has one
            and the formula of dit.md 3.4 supplies otherwise (P18). Present optional keys are checked like
            any other.
        device: where the returned tensors live (cast happens on the CPU first).
        progress: show a progress bar over shards (it also hides itself when stderr is not a terminal).

    Returns:
        name -> tensor with exactly the expected shape and dtype, on ``device``, in ``expected`` order.
        Absent ``optional`` names are not included.

    Raises:
        CheckpointError: the folder is not a usable checkpoint (see :func:`describe_checkpoint`), a file is
            truncated or corrupt (probably an incomplete download), or the checkpoint does not match
            ``expected``; the message lists every problem found.
        TypeError: an ``expected`` entry is not a ``(shape, torch.dtype)`` pair.
    """
    specs = _normalize_expected(expected)
    files = describe_checkpoint(folder)
    problems = _Problems()
    headers = _read_headers(files.shards, problems)
    if files.weight_map is None and SINGLE_FILE not in headers:  # the only file is damaged
        raise CheckpointError(problems.message(files.folder))
    sources = _assign_sources(files, headers, specs, problems)
    _audit(sources, headers, specs, optional, problems)
    if problems:
        raise CheckpointError(problems.message(files.folder))
    loaded = _load_tensors(files, headers, sources.shard_of, specs, torch.device(device), progress, problems)
    if problems:
        raise CheckpointError(problems.message(files.folder))
    return {name: loaded[name] for name in specs if name in loaded}


def _read_headers(shards: Iterable[ShardFile], problems: _Problems) -> dict[str, _Header]:
    headers = {}
    for shard in shards:
        try:
            headers[shard.name] = _read_header(shard)
        except _READ_ERRORS as exc:
            problems.damaged.append(_describe_damage(shard, exc))
    return headers


def _load_tensors(
    files: CheckpointFiles,
    headers: Mapping[str, _Header],
    sources: Mapping[str, str],
    specs: Mapping[str, TensorSpec],
    device: torch.device,
    progress: bool,
    problems: _Problems,
) -> dict[str, torch.Tensor]:
    """Read every shard in turn; after a damaged shard, only verify the remaining ``.zst`` streams."""
    loaded: dict[str, torch.Tensor] = {}
    bar = tqdm(files.shards, desc=f"loading {files.folder.name}", unit="shard", disable=None if progress else True)
    for shard in bar:
        names = [name for name, source in sources.items() if source == shard.name]
        try:
            if problems:
                _verify_zst(shard, headers[shard.name])
                continue
            for name, tensor in _iter_shard_tensors(shard, headers[shard.name], names):
                loaded[name] = _convert(tensor, specs[name][1], device)
        except _READ_ERRORS as exc:
            problems.damaged.append(_describe_damage(shard, exc))
            loaded.clear()  # the load failed: free memory while the rest is verified
    return loaded


def _verify_zst(shard: ShardFile, header: _Header) -> None:
    """Check that a ``.zst`` shard decompresses completely, without keeping the data."""
    if shard.compressed:
        _check_decompressed_size(sum(len(chunk) for chunk in _iter_zst(shard.path)), header)


def _convert(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Cast on the CPU (round-to-nearest-even for narrowing floats), then move to ``device``."""
    return tensor.to(dtype=dtype).to(device=device).contiguous()


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


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, Tensor], *, what: str) -> None:
    """Assign ``state_dict`` into ``model`` (built on the meta device) after a strict key/shape check.

    The tensors become the model's parameters (``load_state_dict(assign=True)``), so no second copy
    of the weights is made.

    Args:
        model: Module whose parameters may be on the meta device.
        state_dict: ``{name: tensor}`` in the model's own naming, already in the wanted dtype/device.
        what: Human-readable name of the checkpoint for the error message (e.g. a file path).

    Raises:
        CheckpointError: ONE error (a ValueError) listing every missing key, unexpected key and shape
            mismatch. Used by the codec loaders, whose files are read whole (``.pth``, single safetensors).
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {expected[k]}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {what} does not match the model ({type(model).__name__}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                lines.append(f"  {len(items)} {title} key(s): " + ", ".join(items))
        lines.append("  Check that the file is the right checkpoint and that the config matches it.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
