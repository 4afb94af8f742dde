"""LoRA adapters on the server: the operator's adapter folder, the request's ``loras`` field, and applying
a job's adapters in a worker for that job only.

Adapters are files the operator puts in ``magihuman serve --lora-dir DIR``: ``DIR/<name>.safetensors``
written by ``magihuman train lora`` (:mod:`magihuman.pipeline.lora`). A request names them, never gives a
path: ``"loras": [{"name": "style", "scale": 0.8}]``. The API checks the names and scales and that each file
is an adapter (its header only) before the job is queued; whether its tensors fit the loaded transformer is
known only in the worker, where a misfit fails the job with error code ``lora_mismatch``.

In a worker each adapter file is loaded once, unfused (:func:`magihuman.pipeline.lora.load_lora`), and
kept. Before a job every kept adapter's scale is set to the job's scale, or to 0 when the job does not
name it; after the job all go back to 0. An adapter at scale 0 is skipped in the forward, so a job without
``loras`` renders the base model's output bit for bit. A file replaced on disk is read again only by a
restarted worker.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LORA_NAME_PATTERN", "MAX_LORAS", "MAX_LORA_SCALE", "LoraJobError", "adapter_path", "list_adapters",
           "check_request_loras", "AdapterSet"]

logger = logging.getLogger("magihuman.serve.adapters")

#: Adapter names: the file stem in ``--lora-dir`` (no path separators).
LORA_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
#: Most adapters one request may name.
MAX_LORAS = 8
#: Largest ``|scale|`` a request may give.
MAX_LORA_SCALE = 4.0
_SUFFIX = ".safetensors"
_NAME = re.compile(LORA_NAME_PATTERN)


class LoraJobError(RuntimeError):
    """An adapter could not be applied in the worker; ``code`` is the job's error code: ``lora_mismatch`` (the
    file does not fit the loaded transformer) or ``lora_unsupported`` (this worker cannot apply adapters)."""

    def __init__(self, message: str, code: str = "lora_mismatch"):
        super().__init__(message)
        self.code = code


def adapter_path(lora_dir: Path, name: str) -> Path:
    """``lora_dir/<name>.safetensors`` for a name matching :data:`LORA_NAME_PATTERN`.

    Raises:
        ValueError: a name that does not match the pattern.
    """
    if not _NAME.match(name):
        raise ValueError(f"adapter name {name!r} does not match {LORA_NAME_PATTERN}")
    return Path(lora_dir) / f"{name}{_SUFFIX}"


def adapter_settings(path: Path) -> dict[str, Any] | None:
    """The ``magihuman_lora`` settings in an adapter file's header (rank, alpha, ...), or None when ``path``
    is not a readable adapter file. Reads the header only."""
    import json

    from safetensors import safe_open

    from magihuman.pipeline.lora_files import METADATA_KEY

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None
    except Exception:  # noqa: BLE001 - any unreadable header means: not an adapter
        return None


def list_adapters(lora_dir: Path | None) -> list[dict[str, Any]]:
    """The adapters in ``lora_dir`` (sorted by name): ``{"name", "rank", "alpha"}`` each; files whose stem is
    not a valid name, or that are not adapters, are left out (logged). None: no folder, no adapters."""
    if lora_dir is None or not Path(lora_dir).is_dir():
        return []
    found = []
    for path in sorted(Path(lora_dir).glob(f"*{_SUFFIX}")):
        settings = adapter_settings(path) if _NAME.match(path.stem) and path.is_file() else None
        if settings is None:
            logger.warning("%s is not a usable adapter (name or header); not listed", path)
            continue
        rank, alpha = int(settings.get("rank", 0)), float(settings.get("alpha", 0))
        found.append({"name": path.stem, "rank": rank, "alpha": alpha})
    return found


def check_request_loras(loras: Sequence[Any], lora_dir: Path | None) -> list[dict[str, Any]]:
    """The request's adapters as ``[{"name", "scale"}]`` after checking each against the server's folder.

    Args:
        loras: parsed entries with ``name`` and ``scale`` attributes (pattern and range already checked).
        lora_dir: the server's ``--lora-dir`` (None: the server has none).

    Raises:
        ValueError: no adapter folder, a name given twice, a scale not finite or outside the range, or a
            name with no adapter file in the folder (the message says which and how to list them).
    """
    if not loras:
        return []
    if lora_dir is None:
        raise ValueError("this server has no adapters (it was started without --lora-dir); leave loras out")
    checked, seen = [], set()
    for entry in loras:
        name, scale = entry.name, float(entry.scale)
        if name in seen:
            raise ValueError(f"adapter {name!r} is named twice; give each adapter once with its scale")
        if not (math.isfinite(scale) and abs(scale) <= MAX_LORA_SCALE):
            raise ValueError(f"scale of {name!r} must be a finite number in [-{MAX_LORA_SCALE:g}, "
                             f"{MAX_LORA_SCALE:g}], got {scale}")
        path = adapter_path(lora_dir, name)
        if not path.is_file() or adapter_settings(path) is None:
            raise ValueError(f"no adapter named {name!r} on this server; GET /v1/models lists them under loras")
        seen.add(name)
        checked.append({"name": name, "scale": scale})
    return checked


class AdapterSet:
    """The adapters loaded into one pipeline's transformer, by name, and the scales of the current job.

    Args:
        pipeline: a ``MagiHumanPipeline`` (anything with ``transformer`` and ``load_lora``).
        lora_dir: the server's ``--lora-dir``.
    """

    def __init__(self, pipeline: Any, lora_dir: Path | None):
        self.pipeline, self.lora_dir = pipeline, lora_dir
        self.loaded: dict[str, str] = {}  # request name -> PEFT adapter name

    def apply(self, loras: Iterable[dict[str, Any]]) -> None:
        """Set the job's adapters to their scales and every other loaded adapter to 0 (loading new files once).

        Raises:
            LoraJobError: no adapter folder, a pipeline without LoRA support, or a file that does not fit the
                transformer (the message names the keys).
        """
        wanted = {entry["name"]: float(entry["scale"]) for entry in loras}
        if wanted and (self.lora_dir is None or not hasattr(self.pipeline, "load_lora")):
            raise LoraJobError("this worker cannot apply LoRA adapters (no --lora-dir, or a pipeline without "
                               "load_lora)", code="lora_unsupported")
        for name in wanted:
            if name not in self.loaded:
                self.loaded[name] = self._load(name)
        self._set_scales({self.loaded[n]: wanted.get(n, 0.0) for n in self.loaded})

    def reset(self) -> None:
        """Every loaded adapter back to scale 0: the transformer computes the base model again, bit for bit."""
        self._set_scales({adapter: 0.0 for adapter in self.loaded.values()})

    def _load(self, name: str) -> str:
        from magihuman.pipeline.lora import load_lora
        from magihuman.pipeline.lora_files import LoraError

        adapter = f"serve_{len(self.loaded)}"
        try:
            load_lora(self.pipeline.transformer, adapter_path(self.lora_dir, name), 0.0, adapter_name=adapter)
        except LoraError as exc:
            raise LoraJobError(f"adapter {name!r}: {exc}") from None
        return adapter

    def _set_scales(self, scales: dict[str, float]) -> None:
        if not scales:
            return
        from magihuman.pipeline.lora import lora_layers

        for layer in lora_layers(self.pipeline.transformer):
            for adapter, scale in scales.items():
                if adapter in layer.lora_A:
                    layer.scaling[adapter] = layer.lora_alpha[adapter] / layer.r[adapter] * scale
