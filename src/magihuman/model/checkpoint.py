"""Strict loading of official DiT checkpoints (architecture.md §7.2).

Checkpoint names equal the module names of the model; there are no renames or transposes (architecture.md §2.3, §7.2).
The folder layout (single ``model.safetensors`` or an index with plain or ``.zst`` shards) is found by
:mod:`magihuman.model.checkpoint_files`; writing is :mod:`magihuman.model.checkpoint_writer`. The names
of both are re-exported here, so ``from magihuman.model.checkpoint import ...`` keeps working.

The reference loads with ``strict=False`` and only prints mismatches, which leaves uninitialised weights
behind (architecture.md §7.2). Here every mismatch is collected across all shards and raised as one :class:`CheckpointError`,
and the whole key/shape/dtype audit runs on the safetensors headers before any tensor data is read, so a
wrong folder fails in seconds rather than after reading tens of gigabytes.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from magihuman.model.checkpoint_files import (
    _MAX_LISTED,
    _READ_ERRORS,
    INDEX_FILE,
    SINGLE_FILE,
    ZST_SUFFIX,
    CheckpointError,
    CheckpointFiles,
    CheckpointNotFoundError,
    ShardFile,
    _check_decompressed_size,
    _describe_damage,
    _Header,
    _iter_shard_tensors,
    _iter_zst,
    _read_header,
    describe_checkpoint,
)
from magihuman.model.checkpoint_writer import save_official_checkpoint, write_atomic

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "ZST_SUFFIX",
    "CheckpointError",
    "CheckpointFiles",
    "CheckpointNotFoundError",
    "ShardFile",
    "TensorSpec",
    "describe_checkpoint",
    "expected_from_module",
    "load_official_state_dict",
    "load_state_dict_strict",
    "save_official_checkpoint",
    "write_atomic",
]

TensorSpec = tuple[tuple[int, ...], torch.dtype]
"""Expected ``(shape, dtype)`` of one state-dict entry, e.g. ``((7208, 5120), torch.bfloat16)``."""

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
                "if its index or shards disagree; loading it anyway would leave uninitialised weights (architecture.md §7.2)."
            )
        return "\n".join(lines)


def _shape_str(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


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
    """Load an official checkpoint folder strictly, shard by shard (architecture.md §7.2).

    First every shard's safetensors header is read (for ``.zst`` shards, only the start of the stream is
    decompressed) and the checkpoint is audited against ``expected``: missing keys, unexpected keys
    (listed in the index or stored in a shard but not expected, or stored in a shard the index does not
    attribute them to), mis-shaped keys and non-castable dtypes are all collected and raised as one
    :class:`CheckpointError` before any tensor data is read. Then shards are read one at a time: a plain
    shard tensor by tensor, a ``.zst`` shard decompressed in memory with the ``zstandard`` library and
    parsed by ``safetensors.torch.load``. Peak memory is about the loaded model plus two shard sizes for
    ``.zst`` shards (decompressed bytes plus parsed tensors) and plus one tensor for plain shards.

    Each tensor is cast to its expected dtype with ``Tensor.to`` (round-to-nearest-even for
    float32 -> bfloat16), as the reference's copy into bf16 block-linear parameters does (architecture.md §2.3, §7.2);
    the distilled checkpoint reportedly ships everything in float32.

    Args:
        folder: a checkpoint folder (``model.safetensors``, or an index with plain or ``.zst`` shards).
        expected: name -> ``(shape, dtype)`` the model needs, e.g. :func:`expected_from_module`.
        optional: names of ``expected`` that may be absent from the checkpoint; they are then left out of
            the result so the caller keeps its own value. The transformer passes
            ``{"adapter.rope.bands"}``: a persistent buffer that the checkpoint overrides when it has one
            and the formula of architecture.md §3.3 supplies otherwise (architecture.md §7.2). Present optional keys are checked like
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
