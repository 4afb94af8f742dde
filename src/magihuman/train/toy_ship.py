"""``magihuman toy ship``: copy a trained toy checkpoint root into the package, where ``--demo`` finds it.

The shipped bundle is ``magihuman/demo/toy_bundle/`` (:data:`magihuman.demo.bundle.TOY_BUNDLE`): the folders
of ``WORK/bundle`` that generation needs (text encoder, both VAEs, Turbo-VAED, ``base``, ``distill``, the
LoRA), then ``TOY_BUNDLE.json`` written last (its presence marks a complete bundle) with the recipe, each
stage's wall time, the files' sizes and, when given, the evaluation summaries it was shipped with. The copy is
staged next to the destination and swapped in, so an interrupted ship leaves the previous bundle whole.

Storage dtype: with ``dtype="bfloat16"`` (the default) every float32 weight of two or more dimensions (matrices,
convolution kernels, embeddings) is stored as bfloat16, halving the bundle; vectors (biases, norm gains, buffers
such as the RoPE bands of architecture.md §7.2) keep float32. Every loader casts to the dtype it runs in
(``--fp32`` runs cast them back), as it does for the official bf16 files. Evaluate the shipped copy, which is
what ``--demo`` runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from magihuman.demo.bundle import TOY_BUNDLE, TOY_MARKER
from magihuman.pipeline.loading import ROOT_LAYOUT

__all__ = ["MAX_BUNDLE_BYTES", "SHIPPED_FOLDERS", "STORAGE_DTYPES", "ship_bundle"]

#: The size the issue allows a shipped bundle (about 25 MB).
MAX_BUNDLE_BYTES = 25 * 1024 * 1024
#: Folders of a toy checkpoint root that ship (the training runs and caches stay in the work folder).
SHIPPED_FOLDERS = (ROOT_LAYOUT["text_encoder"], ROOT_LAYOUT["video_vae"], ROOT_LAYOUT["audio_vae"],
                   ROOT_LAYOUT["turbo_vae"], "base", "distill", "loras")


#: ``ship_bundle(dtype=...)`` choices.
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".ckpt")


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every float32 tensor of 2+ dimensions cast to ``dtype`` (dicts, lists, tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.dtype == torch.float32 and value.dim() >= 2 else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _store(source: Path, target: Path, dtype: torch.dtype) -> None:
    """Copy one bundle file; weight files (safetensors, torch pickles) with :func:`_cast` applied."""
    if dtype == torch.float32 or source.suffix not in _WEIGHT_SUFFIXES:
        shutil.copyfile(source, target)
    elif source.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(source), "pt") as f:
            metadata = f.metadata()
            tensors = {k: _cast(f.get_tensor(k), dtype).contiguous() for k in f.keys()}  # noqa: SIM118
        save_file(tensors, str(target), metadata=metadata)
    else:
        torch.save(_cast(torch.load(source, map_location="cpu", weights_only=True), dtype), target)


def _summary(report: Path) -> dict:
    data = json.loads(report.read_text())
    return {"report": str(report), "aggregate": data.get("aggregate", {})}


def ship_bundle(work: str | Path, dest: str | Path | None = None, *, reports: dict[str, Path] | None = None,
                overwrite: bool = False, dtype: str = "bfloat16", notes: list[str] | None = None) -> Path:
    """Copy ``work/bundle`` (from :func:`~magihuman.train.toy_recipe.run_recipe`) to ``dest`` (module docstring).

    Args:
        work: the toy work folder; every stage must be done.
        dest: destination folder (default: the package's ``demo/toy_bundle``).
        reports: ``{label: report.json}`` of ``magihuman eval`` runs on this bundle, summarised into the marker.
        overwrite: replace an existing bundle at ``dest``.
        dtype: storage dtype of the weights, a key of :data:`STORAGE_DTYPES` (module docstring).
        notes: free-text lines recorded as ``notes`` (e.g. how a run departed from its recorded recipe).

    Returns:
        ``dest``.

    Raises:
        FileNotFoundError: a stage not done, or a folder of the bundle or a report missing.
        FileExistsError: ``dest`` holds a bundle and ``overwrite`` is False.
        ValueError: an unknown ``dtype``, or a copy over :data:`MAX_BUNDLE_BYTES` (nothing is replaced then).
    """
    from magihuman.train.toy_recipe import STAGES

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; choose from {', '.join(STORAGE_DTYPES)}")

    work, dest = Path(work), Path(dest) if dest is not None else TOY_BUNDLE
    missing = [s for s in STAGES if not (work / "stages" / f"{s}.done").is_file()]
    if missing:
        raise FileNotFoundError(f"{work} has unfinished stages ({', '.join(missing)}); run `magihuman toy train "
                                f"{work}` to finish them first")
    absent = [f for f in SHIPPED_FOLDERS if not (work / "bundle" / f).is_dir()]
    if absent:
        raise FileNotFoundError(f"{work / 'bundle'} lacks {', '.join(absent)}")
    for label, report in (reports or {}).items():
        if not Path(report).is_file():
            raise FileNotFoundError(f"report {label!r} not found: {report}")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} already holds a bundle; pass overwrite=True (--overwrite) to replace it")
    files = sorted(p for f in SHIPPED_FOLDERS for p in (work / "bundle" / f).rglob("*") if p.is_file())
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for path in files:
            target = staging / path.relative_to(work / "bundle")
            target.parent.mkdir(parents=True, exist_ok=True)
            _store(path, target, STORAGE_DTYPES[dtype])
        sizes = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
        total = sum(sizes.values())
        if total > MAX_BUNDLE_BYTES:
            raise ValueError(f"the bundle is {total / 2**20:.1f} MiB stored as {dtype}, over the "
                             f"{MAX_BUNDLE_BYTES / 2**20:.0f} MiB a shipped bundle may take; shrink the recipe's "
                             "widths")
        stages = {s: json.loads((work / "stages" / f"{s}.done").read_text()).get("seconds") for s in STAGES}
        marker = {
            "what": "magihuman toy world: models trained from scratch by `magihuman toy train` (docs/toy_world.md)",
            "shipped": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "recipe": json.loads((work / "recipe.json").read_text()),
            "stage_seconds": stages,
            "storage_dtype": dtype,
            "bytes": sizes,
            "evaluation": {label: _summary(Path(r)) for label, r in (reports or {}).items()},
            "notes": list(notes or []),
        }
        (staging / TOY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
