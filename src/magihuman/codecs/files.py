"""Reading the codecs' official files with one clear error per damaged or wrong file.

The codec checkpoints come from several repositories and formats (architecture.md §11.3, 3.1, 4.2, 5.1):
a ``torch.save`` pickle (``Wan2.2_VAE.pth``, the Turbo-VAED ``.ckpt``), JSON configs, safetensors
files. When one of them is truncated, is a text file (an HTML error page, a Git LFS pointer) or holds
something else, the libraries raise errors that name their internals (torch even advises
``weights_only=False``). The readers here turn every such failure into one
:class:`~magihuman.model.checkpoint.CheckpointError` that says which file, what it actually is, what
was expected (the official file name and where it comes from) and the fix.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from magihuman.model.checkpoint_files import CheckpointError, safetensors_damage

__all__ = [
    "OfficialFile",
    "damaged_file_error",
    "read_json_file",
    "safetensors_error",
    "torch_load_file",
    "wrong_contents_error",
]

_REDOWNLOAD = "delete it and download it again (`magihuman download`)"
_UNSUPPORTED_GLOBAL = "Unsupported global"


@dataclass(frozen=True)
class OfficialFile:
    """The official file a codec loader expects, for error messages.

    Attributes:
        description: what the file is, e.g. ``"Wan2.2 VAE checkpoint"``.
        name: its official file name, e.g. ``"Wan2.2_VAE.pth"``.
        source: where it comes from, e.g. ``"the Wan-AI/Wan2.2-TI2V-5B repository"``.
    """

    description: str
    name: str
    source: str

    @property
    def expected(self) -> str:
        """``"expected <name> from <source>"``."""
        return f"expected {self.name} from {self.source}"


def damaged_file_error(path: Path, official: OfficialFile, reason: str) -> CheckpointError:
    """The error for a file that cannot be read: which file, what it is, what was expected, the fix."""
    return CheckpointError(f"cannot read the {official.description} {path}: {reason}; {official.expected}. "
                           f"The download is probably incomplete or damaged: {_REDOWNLOAD}.")


def wrong_contents_error(path: Path, official: OfficialFile, detail: str) -> CheckpointError:
    """The error for a readable file that does not hold what the loader needs (wrong keys, wrong type)."""
    return CheckpointError(f"{path} is not a usable {official.description}: {detail}\nExpected {official.name} from "
                           f"{official.source}; check the path, and if it is that file, {_REDOWNLOAD}.")


# ----------------------------------------------------------------------------------------------
# torch.save files (.pth / .ckpt)
# ----------------------------------------------------------------------------------------------


def torch_load_file(path: Path, official: OfficialFile, *, trust_checkpoint: bool = False,
                    untrusted_hint: str = "") -> Any:
    """``torch.load`` on the CPU, memory-mapped when the file format allows it.

    Args:
        path: the file (must exist; see :func:`torch.load`).
        official: what the file should be, for the messages.
        trust_checkpoint: load with ``weights_only=False`` (can run code stored in the file).
        untrusted_hint: appended to the message when the file holds non-tensor objects that
            ``weights_only=True`` refuses (e.g. how to opt in with ``trust_checkpoint=True``).

    Returns:
        Whatever the file holds (normally a state dict).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is empty, truncated, not a ``torch.save`` file (e.g. text), or holds
            objects that ``weights_only=True`` refuses; the message never suggests ``weights_only=False``.
    """
    kwargs = {"map_location": "cpu", "weights_only": not trust_checkpoint}
    try:
        try:
            return torch.load(path, mmap=True, **kwargs)
        except RuntimeError as exc:  # legacy (non-zip) format: mmap is not available
            if "mmap can only be used" not in str(exc):
                raise
            return torch.load(path, **kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(f"{official.description} {path} does not exist; {official.expected}") from None
    except pickle.UnpicklingError as exc:
        if _UNSUPPORTED_GLOBAL in str(exc) and _is_torch_file(path):
            found = [line.strip() for line in str(exc).splitlines() if _UNSUPPORTED_GLOBAL in line]
            raise CheckpointError(
                f"the {official.description} {path} holds non-tensor objects (e.g. optimiser or training "
                f"state{'; ' + found[0] if found else ''}), which the safe loader refuses; "
                f"{official.expected}. {untrusted_hint}".rstrip()
            ) from exc
        raise damaged_file_error(path, official, describe_torch_file(path)) from exc
    except (EOFError, OSError, RuntimeError, ValueError, zipfile.BadZipFile) as exc:
        raise damaged_file_error(path, official, describe_torch_file(path)) from exc


def _head(path: Path, size: int = 64) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file (a zip archive or a pickle)."""
    head = _head(path, 4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def describe_torch_file(path: Path) -> str:
    """What a file that ``torch.load`` refused actually is, judged from its first bytes and size.

    Returns:
        e.g. ``"the file is empty"``, ``"it is a text file of 23 bytes starting '<html>...', not a
        torch.save file"``, ``"it is a zip archive (the torch.save format) that is truncated or damaged"``.
    """
    try:
        size, head = path.stat().st_size, _head(path)
    except OSError as exc:
        return f"it cannot be read ({exc})"
    if size == 0:
        return "the file is empty (0 bytes)"
    if head.startswith(b"version https://git-lfs"):
        return f"it is a Git LFS pointer ({size} bytes of text), not the weights"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError):
            return f"it is a zip archive (the torch.save format) that is truncated or damaged ({size} bytes)"
        return f"it is a zip archive of {size} bytes but not a readable torch.save file"
    if head[:1] == b"\x80":
        return f"it is a pickle (the legacy torch.save format) that ends early or is damaged ({size} bytes)"
    if _looks_like_text(head):
        snippet = head.decode("utf-8", errors="replace").splitlines()[0][:40]
        return f"it is a text file of {size} bytes starting {snippet!r}, not a torch.save file"
    return f"it is neither a zip archive nor a pickle ({size} bytes), so not a torch.save file"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


# ----------------------------------------------------------------------------------------------
# JSON configs and safetensors files
# ----------------------------------------------------------------------------------------------


def read_json_file(path: Path, official: OfficialFile) -> Any:
    """Parse a JSON config.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not UTF-8 text or not valid JSON (empty, truncated, binary).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{official.description} {path} does not exist; {official.expected}") from None
    except UnicodeDecodeError as exc:
        raise damaged_file_error(path, official, "it is not UTF-8 text, so not a JSON file") from exc
    except OSError as exc:
        raise damaged_file_error(path, official, f"it cannot be read ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        what = "the file is empty" if not text.strip() else f"it is not valid JSON ({exc})"
        raise damaged_file_error(path, official, what) from exc


def safetensors_error(path: Path, official: OfficialFile, exc: Exception) -> CheckpointError:
    """The :class:`CheckpointError` for a safetensors file that the library refused with ``exc``."""
    reason = None
    if isinstance(exc, (SafetensorError, OSError)) and os.path.isfile(path):
        reason = safetensors_damage(path)
        if reason and path.stat().st_size and _looks_like_text(_head(path)):
            reason = "it is a text file (e.g. a Git LFS pointer or an error page), not a safetensors file"
    return damaged_file_error(path, official, reason or f"it is not a readable safetensors file ({exc})")
