"""The offline demo bundle: tiny random-weight models in the official file layouts.

``magihuman generate --demo`` runs the complete pipeline (text encoder, DiT, sampler, both VAEs,
MP4 writer) on a fresh machine with no downloads. The weights are **random**: the output is
structured noise with noise for sound, proving the installation and the code path, not the model.
Every file is written in the published format (sharded DiT safetensors with an index, ``.zst``
shards for ``base/``, the original ``Wan2.2_VAE.pth``, Stable Audio Open's single
``model.safetensors`` + ``model_config.json``, a T5Gemma seq2seq snapshot with its tokenizer), so
the demo exercises the same loaders as the real checkpoints.

The bundle is built deterministically on first use (a few seconds, about 23 MB) under
``$MAGIHUMAN_DEMO_DIR`` or ``~/.cache/magihuman/demo-v<N>``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from magihuman.demo.random_codecs import (
    save_random_audio_vae,
    save_random_text_encoder,
    save_random_turbo_vae,
    save_random_wan22_vae,
)
from magihuman.demo.random_weights import (
    TINY_TRANSFORMER_CONFIG,
    save_random_transformer,
)
from magihuman.pipeline.loading import ROOT_LAYOUT, TRANSFORMER_CONFIG_FILE

#: Bump when the bundle's contents change, so stale caches are rebuilt.
DEMO_VERSION = 4
_COMPLETE_MARKER = "DEMO_WEIGHTS_ARE_RANDOM.txt"
_MARKER_TEXT = (
    "This folder is the magihuman demo bundle: tiny models with RANDOM weights in the official file\n"
    "layouts. It proves that the pipeline runs; its output is noise. For real results run\n"
    "`magihuman download --root DIR` and `magihuman generate --checkpoint-root DIR ...`.\n"
)


def default_demo_root() -> Path:
    """``$MAGIHUMAN_DEMO_DIR`` or ``~/.cache/magihuman/demo-v<DEMO_VERSION>``."""
    env = os.environ.get("MAGIHUMAN_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "magihuman" / f"demo-v{DEMO_VERSION}"


def build_demo_bundle(root: str | Path, *, seed: int = 0) -> Path:
    """Write the bundle into ``root`` (which must not exist yet), laid out as a checkpoint root.

    Layout (docs/design.md): ``distill/`` (2 safetensors shards + index), ``base/`` (``.zst`` shards),
    ``540p_sr/`` and ``1080p_sr/`` (super-resolution DiTs, same architecture), ``turbo_vae/`` (Turbo-VAED
    JSON config + ``.ckpt`` with ``module.``-prefixed ``ema_state_dict``),
    ``t5gemma-9b-9b-ul2/``, ``Wan2.2-TI2V-5B/Wan2.2_VAE.pth``, ``stable-audio-open-1.0/``. The
    transformer folders also carry ``magihuman_transformer.json`` with the tiny config.

    Args:
        root: destination folder.
        seed: base seed; the same seed writes the same weights.

    Returns:
        ``root``.

    Raises:
        FileExistsError: if ``root`` exists.
    """
    root = Path(root).expanduser()
    if root.exists():
        raise FileExistsError(f"{root} exists; remove it or pick another folder for the demo bundle")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        config = dict(TINY_TRANSFORMER_CONFIG)
        transformers = (("distill", False), ("base", True), ("540p_sr", False), ("1080p_sr", False))
        for offset, (name, compress) in enumerate(transformers):
            folder = staging / name
            save_random_transformer(folder, config, seed=seed + 10 + offset, max_shard_bytes=4 << 20,
                                    compress=compress)
            (folder / TRANSFORMER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_random_text_encoder(staging / ROOT_LAYOUT["text_encoder"], hidden_size=config["text_in_channels"],
                                 seed=seed + 2)
        save_random_wan22_vae(staging / ROOT_LAYOUT["video_vae"], seed=seed + 3)
        save_random_audio_vae(staging / ROOT_LAYOUT["audio_vae"], seed=seed + 4)
        save_random_turbo_vae(staging / ROOT_LAYOUT["turbo_vae"], seed=seed + 5)
        (staging / _COMPLETE_MARKER).write_text(_MARKER_TEXT)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


#: The toy world's trained models (``magihuman toy train``), shipped inside the package when present.
TOY_BUNDLE = Path(__file__).resolve().parent / "toy_bundle"
#: Marker written last into a complete shipped toy bundle (holds how it was trained).
TOY_MARKER = "TOY_BUNDLE.json"


def toy_bundle() -> Path | None:
    """The shipped trained toy bundle's checkpoint root, or None when this install has none."""
    return TOY_BUNDLE if (TOY_BUNDLE / TOY_MARKER).is_file() else None


def demo_checkpoint_root() -> tuple[Path, bool]:
    """What ``--demo`` runs: ``(root, trained)``.

    ``$MAGIHUMAN_DEMO_DIR`` set: the random-weight bundle there (built on first use; tests use it for models
    of a known shape). Otherwise the shipped trained toy bundle (a cartoon person who speaks, trained by
    ``magihuman toy train``), or the random bundle when this install ships none.
    """
    trained = demo_is_trained()
    return (TOY_BUNDLE, True) if trained else (ensure_demo_bundle(), False)


def demo_is_trained() -> bool:
    """Whether ``--demo`` runs the shipped trained toy bundle (:func:`demo_checkpoint_root`); its transformers were
    trained in float32, so the CLI runs their block linears in float32 (``RuntimeOptions.fp32``)."""
    return not os.environ.get("MAGIHUMAN_DEMO_DIR") and toy_bundle() is not None


def ensure_demo_bundle(root: str | Path | None = None) -> Path:
    """The demo bundle's folder, building it first if it is missing or incomplete.

    Args:
        root: folder to use (default :func:`default_demo_root`).

    Returns:
        The bundle root, ready for ``MagiHumanPipeline.from_official(root)``.
    """
    root = Path(root).expanduser() if root is not None else default_demo_root()
    if (root / _COMPLETE_MARKER).is_file():
        return root
    if root.exists():  # an interrupted or foreign folder: rebuild only what we own
        if not any(root.iterdir()):
            root.rmdir()
        else:
            raise FileExistsError(
                f"{root} exists but is not a complete demo bundle; delete it to rebuild the demo weights"
            )
    print(f"building the demo bundle (random weights, about 23 MB, once) at {root}", file=sys.stderr, flush=True)
    try:
        return build_demo_bundle(root)
    except OSError:  # FileExistsError, or the final rename lost a race with another process
        if (root / _COMPLETE_MARKER).is_file():  # another process (e.g. another rank) finished it first
            return root
        raise
