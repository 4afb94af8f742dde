"""LoRA adapter files without PEFT: the format's names, reading a file, and ``FILE[:SCALE]`` specs.

An adapter file (written by :func:`magihuman.pipeline.lora.save_lora_file`) is a ``.safetensors`` with keys
``transformer.<module>.lora_A.weight`` / ``transformer.<module>.lora_B.weight`` (the diffusers prefix) and the
header entry ``magihuman_lora`` (JSON: rank, alpha, target regex, the base model's config). Checking a
command line's or a request's adapters needs only this module, which imports neither PEFT nor diffusers nor
transformers; :mod:`magihuman.pipeline.lora` holds the PEFT layers and the loading. (A pipeline imports PEFT
anyway: diffusers' model hooks do, whether or not a LoRA is used.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

#: Key prefix of the adapter tensors in a file (diffusers' convention for a pipeline's transformer).
KEY_PREFIX = "transformer."
#: Safetensors header entry holding the adapter's settings (JSON).
METADATA_KEY = "magihuman_lora"


class LoraError(ValueError):
    """An adapter file that does not fit the model: the message names the offending keys."""


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state, settings)`` of an adapter file: keys without the ``transformer.`` prefix.

    Raises:
        LoraError: not a readable safetensors file, or no magihuman LoRA metadata.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LoraError(f"LoRA file {path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {k.removeprefix(KEY_PREFIX): handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise LoraError(f"{path} is not a readable .safetensors adapter: {exc}") from None
    if METADATA_KEY not in metadata:
        raise LoraError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by `magihuman train lora`")
    return state, json.loads(metadata[METADATA_KEY])


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` -> ``(path, scale)`` (scale 1.0 when absent).

    Raises:
        LoraError: a scale that is not a number.
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            return Path(head), float(tail)
        except ValueError:
            if Path(spec).exists():
                return Path(spec), 1.0
            raise LoraError(f"--lora {spec!r}: the scale after ':' must be a number "
                            "(e.g. style.safetensors:0.8)") from None
    return Path(spec), 1.0


def check_lora_specs(specs: Iterable[str]) -> list[tuple[Path, float]]:
    """Parse ``FILE[:SCALE]`` specs and check that each file exists and holds adapter metadata (no tensor read).

    Raises:
        LoraError: a malformed spec, a missing file or a file that is not an adapter.
    """
    parsed = []
    for spec in specs:
        path, scale = parse_lora_spec(spec)
        if not path.expanduser().is_file():
            raise LoraError(f"--lora {spec!r}: file {path} not found")
        try:
            with safe_open(str(path.expanduser()), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise LoraError(f"--lora {spec!r}: {path} is not a readable .safetensors adapter ({exc})") from None
        if METADATA_KEY not in metadata:
            raise LoraError(f"--lora {spec!r}: {path} is not an adapter written by `magihuman train lora`")
        parsed.append((path.expanduser(), scale))
    return parsed
