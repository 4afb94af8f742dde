"""The local ``google/t5gemma-9b-9b-ul2`` snapshot: folder checks, tokenizer, token counting (architecture.md §11.2).

A snapshot folder holds ``config.json`` (``T5GemmaConfig`` with ``encoder``/``decoder`` sub-configs), the
weights (``model.safetensors`` or ``model.safetensors.index.json`` with its shards) and the tokenizer
files. :func:`resolve_t5gemma_folder` checks all of that before transformers is asked to load anything,
so a missing or damaged file is one clear error naming it. :func:`load_tokenizer` and
:func:`count_prompt_tokens` need the tokenizer files only: the input boundary can count a prompt's tokens
without loading the 9 B-parameter encoder. The encoder itself is :class:`magihuman.codecs.text_encoder.TextEncoder`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from magihuman.codecs.files import (
    OfficialFile,
    damaged_file_error,
    read_json_file,
    safetensors_error,
)
from magihuman.model.checkpoint_files import safetensors_damage

__all__ = [
    "OFFICIAL_SUBFOLDER",
    "count_prompt_tokens",
    "load_tokenizer",
    "quiet_transformers",
    "resolve_t5gemma_folder",
]

#: Subfolder name of the text encoder inside a checkpoint root (docs/design.md).
OFFICIAL_SUBFOLDER = "t5gemma-9b-9b-ul2"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_EXPECTED = "a local snapshot of google/t5gemma-9b-9b-ul2 (run `magihuman download` to fetch it)"
_SOURCE = "the google/t5gemma-9b-9b-ul2 repository"


def snapshot_file(name: str, what: str) -> OfficialFile:
    """The :class:`~magihuman.codecs.files.OfficialFile` of one file of the snapshot, for messages."""
    return OfficialFile(f"T5Gemma {what}", name, _SOURCE)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report / progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------
# Folder checks
# ----------------------------------------------------------------------------------------------


def _describe_folder(folder: Path, limit: int = 12) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "(unreadable)"
    if not names:
        return "(empty folder)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _locate_folder(path: str | Path) -> Path:
    """The snapshot folder: ``path`` itself, or its ``t5gemma-9b-9b-ul2/`` when ``path`` is a checkpoint root."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"Text encoder folder {str(folder)!r} does not exist; expected {_EXPECTED}.")
    if not folder.is_dir():
        raise ValueError(
            f"Text encoder path {str(folder)!r} is a file; pass the folder that holds config.json, "
            f"the *.safetensors weights and the tokenizer files ({_EXPECTED})."
        )
    if not (folder / "config.json").is_file() and (folder / OFFICIAL_SUBFOLDER / "config.json").is_file():
        folder = folder / OFFICIAL_SUBFOLDER
    return folder


def _read_t5gemma_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No config.json in text encoder folder {str(folder)!r} (found: {_describe_folder(folder)}); "
            f"expected {_EXPECTED}, with config.json, model*.safetensors and tokenizer files, "
            f"or a checkpoint root containing {OFFICIAL_SUBFOLDER}/."
        )
    config = read_json_file(config_file, snapshot_file("config.json", "config"))
    if not isinstance(config, dict):
        config = {"model_type": None, "note": "config.json is not a JSON object"}
    model_type = config.get("model_type")
    if model_type != "t5gemma" or not isinstance(config.get("encoder"), dict):
        raise ValueError(
            f"{str(config_file)!r} is not a T5Gemma encoder-decoder config: found model_type={model_type!r}, "
            f"architectures={config.get('architectures')!r}, encoder sub-config "
            f"{'present' if isinstance(config.get('encoder'), dict) else 'missing'}; expected "
            f"model_type='t5gemma' with 'encoder'/'decoder' sub-configs ({_EXPECTED})."
        )
    return config


def weight_files(folder: Path) -> list[Path]:
    """The snapshot's weight files (the single file, or every shard its index lists).

    Raises:
        FileNotFoundError: no weights, or shards listed in the index are absent.
        CheckpointError: the index is damaged (not JSON, no ``weight_map``).
    """
    weights = [name for name in _WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise FileNotFoundError(
            f"No weights in text encoder folder {str(folder)!r} (found: {_describe_folder(folder)}); expected "
            f"model.safetensors or model.safetensors.index.json with its model-XXXXX-of-YYYYY.safetensors shards."
        )
    if not weights[0].endswith(".index.json"):
        return [folder / weights[0]]
    index_file = folder / weights[0]
    index = read_json_file(index_file, snapshot_file(index_file.name, "weight index"))
    try:
        shards = sorted(set(index["weight_map"].values()))
    except (KeyError, TypeError, AttributeError) as exc:
        reason = "it has no 'weight_map' object (tensor name -> shard file)"
        raise damaged_file_error(index_file, snapshot_file(index_file.name, "weight index"), reason) from exc
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Text encoder folder {str(folder)!r} lacks {len(missing)} of {len(shards)} weight shards listed in "
            f"{index_file.name}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
            f"the download looks incomplete, re-run `magihuman download`."
        )
    return [folder / shard for shard in shards]


def _check_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"No tokenizer files in text encoder folder {str(folder)!r} (found: {_describe_folder(folder)}); "
            f"expected one of {', '.join(_TOKENIZER_FILES)}."
        )


def resolve_t5gemma_folder(path: str | Path) -> tuple[Path, dict]:
    """Check that ``path`` is a T5Gemma seq2seq snapshot; return the folder and its config dict.

    Accepts the model folder itself or a checkpoint root holding ``t5gemma-9b-9b-ul2/``; ``~`` is expanded.
    Only file names and the JSON files are read, no weights.

    Raises:
        FileNotFoundError: The folder, its ``config.json``, weights, shards or tokenizer are missing.
        CheckpointError: (a ``ValueError``) ``config.json`` or the weight index is damaged (empty, not JSON);
            the message names the file and says to re-download it.
        ValueError: ``path`` is a file, or ``config.json`` is not a T5Gemma encoder-decoder config.
    """
    folder = _locate_folder(path)
    config = _read_t5gemma_config(folder)
    weight_files(folder)
    _check_tokenizer_files(folder)
    return folder, config


def raise_if_weights_damaged(folder: Path, exc: Exception) -> None:
    """Raise the :class:`CheckpointError` of the first damaged safetensors weight file, if any.

    Called after transformers failed to load the weights with ``exc``, to say which file is broken and how.
    """
    for file in weight_files(folder):
        if file.suffix == ".safetensors" and safetensors_damage(file):
            raise safetensors_error(file, snapshot_file(file.name, "weights"), exc) from exc


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def load_tokenizer(path: str | Path) -> Any:
    """The snapshot's own tokenizer, loaded offline (``AutoTokenizer.from_pretrained``, architecture.md §11.2).

    Needs only ``config.json`` and the tokenizer files (cheap: no weights are read or checked).

    Args:
        path: the snapshot folder, or a checkpoint root holding ``t5gemma-9b-9b-ul2/``; ``~`` is expanded.

    Returns:
        The tokenizer (a Gemma tokenizer for the official snapshot), callable as ``tokenizer([prompt])``.

    Raises:
        FileNotFoundError: the folder, its ``config.json`` or its tokenizer files are missing.
        CheckpointError: (a ``ValueError``) a tokenizer file or ``config.json`` is damaged (empty,
            truncated JSON); the message names the file and says to re-download it.
        ValueError: ``path`` is a file, or not a T5Gemma snapshot.
    """
    from transformers import AutoTokenizer

    folder = _locate_folder(path)
    _read_t5gemma_config(folder)
    _check_tokenizer_files(folder)
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, RuntimeError) as exc:  # JSONDecodeError is a ValueError
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                read_json_file(folder / name, snapshot_file(name, "tokenizer file"))
        reason = f"transformers cannot build the tokenizer from it ({type(exc).__name__}: {exc})"
        raise damaged_file_error(folder, snapshot_file("tokenizer files", "tokenizer"), reason) from exc


def count_prompt_tokens(tokenizer: Any, prompt: str) -> int:
    """Tokens the text encoder sees for ``prompt`` (``<bos>`` included), before the 640 cap.

    Runs the tokenizer only, as :meth:`TextEncoder.encode` does (defaults: no padding, no truncation).

    Args:
        tokenizer: a tokenizer from :func:`load_tokenizer` (or ``TextEncoder.tokenizer``), or a snapshot
            folder / checkpoint root, from which the tokenizer is loaded first.
        prompt: any text (an empty string gives the number of special tokens, normally 1).

    Returns:
        The raw token count ``L_raw``; the encoder keeps ``min(L_raw, 640)`` (architecture.md §11.2).

    Raises:
        TypeError: ``prompt`` is not a ``str``.
        FileNotFoundError, CheckpointError, ValueError: as :func:`load_tokenizer` when given a folder.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}.")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    return len(tokenizer([prompt])["input_ids"][0])
