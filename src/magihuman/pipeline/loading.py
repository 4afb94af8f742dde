"""Where each component of a preset lives under a checkpoint root: one table for the pipeline and the CLI.

A checkpoint root is laid out as ``magihuman download`` writes it (docs/design.md): one sub-folder per
DiT checkpoint (``distill/``, ``base/``, ``540p_sr/``, ``1080p_sr/``) and one per codec
(:data:`ROOT_LAYOUT`). :func:`component_layout` says which sub-folders a preset needs,
:func:`check_checkpoint_root` turns a root and per-component overrides into checked folders,
:func:`check_checkpoint_files` reads each weights file's header (a truncated download is named here), and
:func:`transformer_config` reads the optional DiT config file. Every path taken here has ``~`` expanded.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from magihuman.pipeline.errors import InputError, MissingInputError, expand_path
from magihuman.pipeline.presets import DEFAULT_VIDEO_DECODER, VIDEO_DECODERS, Preset, get_preset

#: Sub-folders of a checkpoint root (docs/design.md), by codec component.
ROOT_LAYOUT = {
    "text_encoder": "t5gemma-9b-9b-ul2",
    "video_vae": "Wan2.2-TI2V-5B",
    "audio_vae": "stable-audio-open-1.0",
    "turbo_vae": "turbo_vae",
}
#: Optional file in a transformer checkpoint folder with ``MagiHumanTransformer`` config fields
#: (written by the demo bundle; absent in the published folders, which use the 15B defaults).
TRANSFORMER_CONFIG_FILE = "magihuman_transformer.json"


def component_layout(preset: Preset, *, video_decoder: str = DEFAULT_VIDEO_DECODER) -> dict[str, str | None]:
    """Sub-folder of the checkpoint root for each component of ``preset`` (docs/design.md).

    Returns:
        ``{component: sub-folder}`` for ``transformer``, ``sr_transformer``, ``text_encoder``, ``video_vae``,
        ``audio_vae`` and ``turbo_vae``; None where the preset does not use the component
        (``sr_transformer`` without SR, ``turbo_vae`` with the Wan decoder).

    Raises:
        ValueError: for an unknown ``video_decoder``.
    """
    check_video_decoder(video_decoder)
    return dict(ROOT_LAYOUT, transformer=preset.checkpoint, sr_transformer=preset.sr.checkpoint if preset.sr else None,
                turbo_vae=ROOT_LAYOUT["turbo_vae"] if video_decoder == "turbo" else None)


def transformer_config(folder: str | Path) -> dict[str, Any]:
    """Config fields from :data:`TRANSFORMER_CONFIG_FILE` in ``folder`` (``~`` expanded) if it has one, else
    {} (the 15B model's defaults)."""
    config_file = Path(folder).expanduser() / TRANSFORMER_CONFIG_FILE
    return json.loads(config_file.read_text()) if config_file.is_file() else {}


def check_video_decoder(name: str) -> None:
    """Raise ``ValueError`` naming the choices unless ``name`` is one of :data:`VIDEO_DECODERS`."""
    if name not in VIDEO_DECODERS:
        raise ValueError(f"video_decoder must be one of {VIDEO_DECODERS}, got {name!r}")


# ----------------------------------------------------------------------------------------- checkpoints
#: What each component is, for messages, and its ``magihuman download --components`` name.
_COMPONENTS = {
    "transformer": ("DiT", "dit"), "sr_transformer": ("super-resolution DiT", "dit"),
    "text_encoder": ("T5Gemma text encoder", "text_encoder"), "video_vae": ("Wan2.2 VAE (Wan2.2_VAE.pth)", "video_vae"),
    "audio_vae": ("Stable Audio Open VAE", "audio_vae"), "turbo_vae": ("Turbo-VAED decoder", "turbo_vae"),
}


def check_checkpoint_root(root: Any, components: Mapping[str, Any], *, preset: str,
                          video_decoder: str = "turbo") -> dict[str, Path]:
    """Where each component of ``preset`` comes from: its own path, else ``root``'s layout folder.

    Args:
        root: a checkpoint root made by ``magihuman download`` (``~`` expanded), or None.
        components: component name -> explicit path or None (``transformer``, ``text_encoder``, ...).
        preset: the preset (picks the DiT folder and whether an SR DiT is needed).
        video_decoder: ``"turbo"`` (needs ``turbo_vae``) or ``"wan"``.

    Returns:
        Component name -> path, for every component the preset uses.

    Raises:
        InputError: a root that is missing, not a folder or lacks a layout folder; a component path that
            does not exist; no root and not every component given.
    """
    table = component_layout(get_preset(preset) if isinstance(preset, str) else preset, video_decoder=video_decoder)
    layout = {k: table[k] for k in _COMPONENTS if table.get(k)}  # DiT first, as the user thinks of them
    given = {k: expand_path(v) for k, v in components.items() if v is not None and k in layout}
    for name, path in given.items():
        if not path.exists():
            raise MissingInputError(f"--{name.replace('_', '-')} path not found: {path}", field=name)
    root = expand_path(root)
    if root is None:
        unset = [f"--{k.replace('_', '-')}" for k in layout if k not in given]
        if unset:
            raise InputError("no checkpoint root: fetch the weights with `magihuman download --root DIR`, then pass "
                             "--checkpoint-root DIR (or set MAGIHUMAN_CHECKPOINT_ROOT); or give "
                             f"{', '.join(unset)}; or try --demo (random weights)", field="checkpoint_root")
        return given
    if not root.is_dir():
        raise InputError(f"checkpoint root {root} is not a folder; fetch the weights with `magihuman download --root "
                         f"{root}` or fix --checkpoint-root", field="checkpoint_root")
    lacking = [f"{layout[k]}/" for k in layout if k not in given and not (root / layout[k]).is_dir()]
    if lacking:
        raise InputError(f"checkpoint root {root} lacks {', '.join(lacking)}; fetch it with `magihuman download "
                         f"--root {root} --preset {preset}` or give the component's own path (--transformer, "
                         "--text-encoder, --video-vae, --audio-vae)", field="checkpoint_root")
    return {k: given.get(k, root / layout[k]) for k in layout}


def check_checkpoint_files(paths: Mapping[str, Path]) -> None:
    """Cheap checks of each component's files: present, not empty, and every ``.safetensors`` header and
    ``.pth``/``.ckpt`` archive directory intact (a truncated download is found here, not by the loader).

    Raises:
        InputError: naming the component, the file, what it is and what was expected.
    """
    for name, path in paths.items():
        label, download = _COMPONENTS.get(name, (name, name))
        fix = f"re-download it (`magihuman download --components {download}`) or give the right path"
        path = expand_path(path)
        if not path.exists():
            raise MissingInputError(f"{label} checkpoint not found: {path}; {fix}", field=name)
        files = [path] if path.is_file() else sorted(p for sub in (path, path / "vae") if sub.is_dir()
                                                     for p in sub.iterdir() if p.is_file())
        if not files:
            raise InputError(f"{label} folder {path} is empty; {fix}", field=name)
        for file in files:
            problem = _file_problem(file)
            if problem:
                raise InputError(f"{label} file {file} {problem}; {fix}", field=name)


def _file_problem(file: Path) -> str | None:
    """What is wrong with a weights file, judged from its header and size; None when it looks whole.

    ``.safetensors`` files are judged by :func:`~magihuman.model.checkpoint_files.safetensors_damage`
    (header and size), ``.pth``/``.ckpt``/``.pt`` files by their zip directory (a legacy pickle passes
    unchecked) and described by :func:`~magihuman.codecs.files.describe_torch_file`. Other files pass.
    Returns a phrase that follows the file name: what the file is and what was expected.
    """
    suffix = file.suffix.lower()
    if suffix not in (".safetensors", ".pth", ".ckpt", ".pt"):
        return None
    if file.stat().st_size == 0:
        return "is empty (0 bytes)"
    if suffix == ".safetensors":
        from magihuman.model.checkpoint_files import safetensors_damage  # torch stays out of this module's import

        reason = safetensors_damage(file)
        if reason is None:
            return None
        return f"cannot be read as a safetensors file: {reason}; expected a safetensors shard"
    if _is_torch_archive(file):
        return None
    from magihuman.codecs.files import describe_torch_file  # torch stays out of this module's import

    return f"cannot be read as a PyTorch checkpoint: {describe_torch_file(file)}; expected a torch.save archive"


def _is_torch_archive(file: Path) -> bool:
    """Whether ``file`` is a legacy ``torch.save`` pickle (nothing cheap to check) or a readable zip archive
    holding a ``data.pkl`` (the ``torch.save`` format)."""
    with open(file, "rb") as handle:
        head = handle.read(4)
    if head[:1] == b"\x80":
        return True
    if head != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(file) as archive:
            return any(n.endswith("data.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
