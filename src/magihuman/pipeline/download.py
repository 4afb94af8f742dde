"""Fetch the official checkpoints from the Hugging Face hub into a checkpoint root.

The result is the layout of ``docs/design.md`` that ``MagiHumanPipeline.from_official(root)`` and
``magihuman generate --checkpoint-root ROOT`` read::

    ROOT/
      distill/  base/  turbo_vae/      # GAIR/daVinci-MagiHuman (sub-folders of the repo)
      t5gemma-9b-9b-ul2/               # google/t5gemma-9b-9b-ul2
      stable-audio-open-1.0/           # stabilityai/stable-audio-open-1.0 (VAE files only)
      Wan2.2-TI2V-5B/                  # Wan-AI/Wan2.2-TI2V-5B (Wan2.2_VAE.pth only)

What is fetched from where is data (:data:`SOURCES`); the functions only select rows, ask the hub for
the file sizes (a dry run) and call :func:`huggingface_hub.snapshot_download`. Hub problems surface as
:class:`DownloadError` with a message that says what to do; the CLI turns it into exit code 1.

``huggingface_hub`` is imported inside the functions so that ``import magihuman.pipeline.download`` (and the
CLI's ``--help``) stays cheap.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMPONENTS",
    "DIT_PRESETS",
    "SOURCES",
    "UNREACHABLE_MESSAGE",
    "DownloadError",
    "HubSource",
    "PlannedSource",
    "download_sources",
    "format_size",
    "hub_offline",
    "plan_download",
    "select_sources",
]


@dataclass(frozen=True)
class HubSource:
    """One thing to fetch: some files of one hub repository, placed under the checkpoint root.

    Attributes:
        name: component name used by ``--components`` (``dit`` rows are picked by ``--preset``).
        repo_id: Hugging Face model repository.
        local_dir: folder under the root that ``snapshot_download`` writes into (``"."``: the root itself,
            for repos whose own sub-folders are the layout folders).
        folder: the folder this source creates under the root (what ``generate`` looks for).
        allow_patterns: ``fnmatch`` patterns of the repo files to fetch (``*`` also matches ``/``).
        gated: the repo requires accepting a licence on its hub page and a logged-in token.
        note: what the files are, for the plan table.
    """

    name: str
    repo_id: str
    local_dir: str
    folder: str
    allow_patterns: tuple[str, ...]
    gated: bool = False
    note: str = ""


_MAGIHUMAN = "GAIR/daVinci-MagiHuman"

#: Every source, in download order. Paths inside the repos follow docs/design.md and architecture.md §13.1, §7.1.
SOURCES: tuple[HubSource, ...] = (
    # The DiTs: the repo's own sub-folders are the layout folders, so they are fetched into the root.
    # architecture.md §7.1: model.safetensors.index.json + shards (a shard may be stored as <shard>.zst).
    HubSource("dit", _MAGIHUMAN, ".", "distill", ("distill/*",), note="distilled 15B DiT (preset distill)"),
    HubSource("dit", _MAGIHUMAN, ".", "base", ("base/*",), note="base 15B DiT (preset base)"),
    # Super-resolution DiTs (architecture.md §10.1): same architecture, run after the base DiT.
    HubSource("dit", _MAGIHUMAN, ".", "540p_sr", ("540p_sr/*",), note="540p super-resolution DiT (preset sr_540p)"),
    HubSource("dit", _MAGIHUMAN, ".", "1080p_sr", ("1080p_sr/*",), note="1080p super-resolution DiT (preset sr_1080p)"),
    # Distilled video decoder of the official examples (architecture.md §13.1: JSON config + checkpoint).
    HubSource("turbo_vae", _MAGIHUMAN, ".", "turbo_vae", ("turbo_vae/*",), note="Turbo VAE video decoder"),
    # Text encoder: config, tokenizer and the seq2seq weights (only the encoder half is used, but the
    # published shards hold both halves). Gemma licence.
    HubSource(
        "text_encoder", "google/t5gemma-9b-9b-ul2", "t5gemma-9b-9b-ul2", "t5gemma-9b-9b-ul2",
        ("*.json", "*.safetensors", "tokenizer.model"), gated=True, note="T5Gemma 9B-9B UL2 text encoder",
    ),
    # Audio VAE: the original single-file layout the reference reads (architecture.md §7.1): model_config.json +
    # model.safetensors (the whole Stable Audio Open model; only its pretransform.model.* tensors are
    # loaded). Stability AI Community licence.
    HubSource(
        "audio_vae", "stabilityai/stable-audio-open-1.0", "stable-audio-open-1.0", "stable-audio-open-1.0",
        ("model_config.json", "model.safetensors"), gated=True, note="Stable Audio Open 1.0 (VAE used)",
    ),
    # Same VAE weights in diffusers layout (vae/ sub-folder), far smaller than the full model file; the
    # loader accepts either. Opt-in: `--components audio_vae_diffusers`.
    HubSource(
        "audio_vae_diffusers", "stabilityai/stable-audio-open-1.0", "stable-audio-open-1.0",
        "stable-audio-open-1.0", ("vae/*",), gated=True, note="Stable Audio Open VAE, diffusers layout",
    ),
    # Video VAE (encodes the first frame; architecture.md §7.1): only the original .pth.
    HubSource(
        "video_vae", "Wan-AI/Wan2.2-TI2V-5B", "Wan2.2-TI2V-5B", "Wan2.2-TI2V-5B", ("Wan2.2_VAE.pth",),
        note="Wan2.2 VAE",
    ),
)

#: The DiT folders each preset needs (``magihuman.pipeline.presets``; repeated so that ``download`` stays import-light).
PRESET_FOLDERS: dict[str, tuple[str, ...]] = {
    "distill": ("distill",), "base": ("base",), "sr_540p": ("base", "540p_sr"), "sr_1080p": ("base", "1080p_sr"),
}
#: Presets whose DiTs can be downloaded (``--preset``), plus ``all``.
DIT_PRESETS: tuple[str, ...] = tuple(PRESET_FOLDERS)
#: Component names accepted by ``--components``.
COMPONENTS: tuple[str, ...] = tuple(dict.fromkeys(s.name for s in SOURCES))
#: Components fetched when ``--components`` is not given.
DEFAULT_COMPONENTS: tuple[str, ...] = ("dit", "turbo_vae", "text_encoder", "audio_vae", "video_vae")

UNREACHABLE_MESSAGE = (
    "cannot reach the Hugging Face hub; download on a connected machine and copy the folder, "
    "or pass --checkpoint-root"
)

GATED_NOTE = (
    "google/t5gemma-9b-9b-ul2 and stabilityai/stable-audio-open-1.0 are gated: accept their licences on "
    "their hub pages (https://huggingface.co/<repo>) and log in with `hf auth login` "
    "(or set HF_TOKEN) before downloading"
)


class DownloadError(RuntimeError):
    """The hub could not deliver the files; the message says why and what to do."""


@dataclass(frozen=True)
class PlannedSource:
    """A source with the hub's answer to a dry run.

    Attributes:
        source: the row of :data:`SOURCES`.
        num_files: files matching the patterns.
        total_bytes: their total size (``None`` if the hub did not report sizes).
        missing_bytes: size of those the hub would download, i.e. not complete in the root yet
            (``None`` if unknown).
    """

    source: HubSource
    num_files: int
    total_bytes: int | None
    missing_bytes: int | None


def select_sources(preset: str = "distill", components: Sequence[str] | None = None) -> list[HubSource]:
    """The rows of :data:`SOURCES` to fetch.

    Args:
        preset: a preset name (``"distill"``, ``"base"``, ``"sr_540p"``, ``"sr_1080p"``) or ``"all"``: which
            DiT folder(s) the ``dit`` component means.
        components: component names (:data:`COMPONENTS`); ``None`` or empty: :data:`DEFAULT_COMPONENTS`.

    Returns:
        The selected sources, in :data:`SOURCES` order.

    Raises:
        ValueError: unknown preset or component name.
    """
    if preset != "all" and preset not in DIT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join((*DIT_PRESETS, 'all'))}")
    wanted = set(components or DEFAULT_COMPONENTS)
    unknown = sorted(wanted - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    return [
        s
        for s in SOURCES
        if s.name in wanted and (s.name != "dit" or preset == "all" or s.folder in PRESET_FOLDERS[preset])
    ]


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, and as ``huggingface_hub`` read it at import)."""
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if value in {"1", "true", "yes", "y", "on"}:
        return True
    import huggingface_hub.constants

    return bool(getattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False))


def plan_download(sources: Iterable[HubSource], root: str | os.PathLike) -> list[PlannedSource]:
    """Ask the hub which files each source has, and their sizes (no file is downloaded).

    Args:
        sources: rows of :data:`SOURCES`.
        root: checkpoint root (files already there count as present).

    Returns:
        One :class:`PlannedSource` per source.

    Raises:
        DownloadError: offline, unreachable hub, gated or missing repo, or no file matches the patterns.
    """
    root = Path(root).expanduser()
    planned = []
    for source in sources:
        if not _hub_has_dry_run():  # huggingface_hub < 1.0: sizes unknown, fetch anyway
            planned.append(PlannedSource(source, 0, None, None))
            continue
        infos = _call_hub(source, root, dry_run=True)
        if not infos:
            raise DownloadError(
                f"no file of {source.repo_id} matches {', '.join(source.allow_patterns)}; the repository "
                "layout may have changed - please report it"
            )
        sizes = [info.file_size for info in infos]
        known = all(size is not None for size in sizes)
        planned.append(
            PlannedSource(
                source,
                len(infos),
                sum(sizes) if known else None,
                sum(i.file_size for i in infos if i.will_download) if known else None,
            )
        )
    return planned


def download_sources(sources: Iterable[HubSource], root: str | os.PathLike) -> Path:
    """Download the sources into ``root`` (created if needed); files already complete are kept.

    Args:
        sources: rows of :data:`SOURCES`.
        root: checkpoint root.

    Returns:
        The absolute root.

    Raises:
        DownloadError: as :func:`plan_download`.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    for source in sources:
        _call_hub(source, root, dry_run=False)
    return root


def check_free_space(planned: Sequence[PlannedSource], root: str | os.PathLike) -> None:
    """Raise :class:`DownloadError` if the known missing bytes exceed the free space under ``root``."""
    need = sum(p.missing_bytes or 0 for p in planned)
    probe = Path(os.path.abspath(Path(root).expanduser()))
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise DownloadError(
            f"not enough disk space under {str(probe)!r}: need {format_size(need)}, {format_size(free)} free; "
            "free some space or pass another --root"
        )


def format_size(num_bytes: int | None) -> str:
    """``1.5 GB``-style decimal size (``"unknown"`` for ``None``)."""
    if num_bytes is None:
        return "unknown"
    size = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# ------------------------------------------------------------------------------------------------ helpers


def _hub_has_dry_run() -> bool:
    import inspect

    from huggingface_hub import snapshot_download

    return "dry_run" in inspect.signature(snapshot_download).parameters


def _call_hub(source: HubSource, root: Path, *, dry_run: bool):
    """``snapshot_download`` of one source, translating the hub's exceptions into :class:`DownloadError`."""
    if hub_offline():
        raise DownloadError(f"{UNREACHABLE_MESSAGE} (HF_HUB_OFFLINE is set)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        options = {"dry_run": True} if dry_run else {}
        return snapshot_download(
            source.repo_id, local_dir=root / source.local_dir, allow_patterns=list(source.allow_patterns), **options
        )
    except GatedRepoError:
        raise DownloadError(
            f"{source.repo_id} is gated and this account has no access: accept its licence at "
            f"https://huggingface.co/{source.repo_id} and log in with `hf auth login` (or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise DownloadError(
            f"{source.repo_id} was not found or needs a login: check the name, accept its licence at "
            f"https://huggingface.co/{source.repo_id} if it is gated, and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the hub raises many connection error types
        if _is_connection_error(exc):
            raise DownloadError(f"{UNREACHABLE_MESSAGE} ({source.repo_id}: {_first_line(exc)})") from None
        raise DownloadError(f"downloading {source.repo_id} failed: {_first_line(exc)}") from exc


def _is_connection_error(exc: BaseException | None) -> bool:
    """True if ``exc`` or an exception it was raised from is a network failure.

    The hub wraps them: ``LocalEntryNotFoundError`` for a failed download, ``DryRunError`` caused by an
    ``httpx`` ``ConnectError`` for a failed dry run.
    """
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        if any(word in type(exc).__name__ for word in ("Connect", "Timeout", "Network", "Proxy")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
