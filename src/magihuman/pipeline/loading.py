"""Where each component of a preset lives under a checkpoint root: one table for the pipeline and the CLI.

A checkpoint root is laid out as ``magihuman download`` writes it (docs/design.md): one sub-folder per
DiT checkpoint (``distill/``, ``base/``, ``540p_sr/``, ``1080p_sr/``) and one per codec
(:data:`ROOT_LAYOUT`). :func:`component_layout` says which sub-folders a preset needs,
:func:`component_paths` turns a root and per-component overrides into folders, and
:func:`transformer_config` reads the optional DiT config file. Every path taken here has ``~`` expanded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from magihuman.pipeline.presets import DEFAULT_VIDEO_DECODER, VIDEO_DECODERS, Preset

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


def component_paths(root: str | Path | None, preset: Preset, explicit: Mapping[str, str | Path | None], *,
                    video_decoder: str = DEFAULT_VIDEO_DECODER) -> dict[str, Path]:
    """The folder of each component in ``explicit``: its own path if given, else ``root / layout[name]``.

    Args:
        root: the checkpoint root, or None when every component has its own path.
        preset: the preset being loaded (picks the DiT sub-folders).
        explicit: ``{component: path or None}`` for the components to locate.
        video_decoder: ``"turbo"`` or ``"wan"`` (whether ``turbo_vae`` belongs to the layout).

    Returns:
        ``{component: Path}`` with ``~`` expanded.

    Raises:
        ValueError: when a component has neither a path nor a root, or the preset does not use it.
    """
    layout = component_layout(preset, video_decoder=video_decoder)
    paths = {}
    for name, path in explicit.items():
        if path is not None:
            paths[name] = Path(path).expanduser()
            continue
        if root is None:
            raise ValueError(
                f"no location for the {name.replace('_', ' ')}: pass a checkpoint root (see `magihuman download`) "
                f"or the component's own path"
            )
        if layout.get(name) is None:
            raise ValueError(f"preset {preset.name!r} has no {name.replace('_', ' ')} in its checkpoint layout")
        paths[name] = Path(root).expanduser() / layout[name]
    return paths


def transformer_config(folder: str | Path) -> dict[str, Any]:
    """Config fields from :data:`TRANSFORMER_CONFIG_FILE` in ``folder`` (``~`` expanded) if it has one, else
    {} (the 15B model's defaults)."""
    config_file = Path(folder).expanduser() / TRANSFORMER_CONFIG_FILE
    return json.loads(config_file.read_text()) if config_file.is_file() else {}


def check_video_decoder(name: str) -> None:
    """Raise ``ValueError`` naming the choices unless ``name`` is one of :data:`VIDEO_DECODERS`."""
    if name not in VIDEO_DECODERS:
        raise ValueError(f"video_decoder must be one of {VIDEO_DECODERS}, got {name!r}")
