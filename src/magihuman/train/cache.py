"""The latent cache: every clip encoded once, read many times by the trainer.

Layout of a cache folder (written by ``magihuman train prepare``, :mod:`magihuman.train.prepare`)::

    cache.json               format version, encoder folders, buckets, the video-only switch
    index.jsonl              one line per encoded clip: id, caption, bucket, file, has_audio
    samples/<id>.safetensors video_latent [48, T, h, w], audio_latent [A, 64] (absent when video-only),
                             text_embeds [Nt, C]; all float32
    negative.safetensors     text_embeds of the negative prompt (the "dropped text" of CFG training)

Latents are exactly what inference feeds the DiT: normalised Wan2.2 posterior means (pipeline.md 4.2),
Stable Audio posterior samples, time-major (pipeline.md 7.2), and T5Gemma states trimmed to the prompt
(pipeline.md 3). Each sample file is written atomically before its index line is appended, so an
interrupted ``prepare`` resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from magihuman.model.checkpoint import write_atomic

#: Version of the cache layout; a cache of another version is refused.
CACHE_VERSION = 1
CACHE_FILE = "cache.json"
INDEX_FILE = "index.jsonl"
NEGATIVE_FILE = "negative.safetensors"
SAMPLES_DIR = "samples"


class CacheError(ValueError):
    """A cache folder that is missing, of another version or damaged; the message says how to fix it."""


@dataclass
class LatentSample:
    """One cached clip, as the trainer uses it.

    Attributes:
        clip_id: the clip's name.
        caption: its prompt.
        video_latent: ``[48, T, h, w]`` float32 (normalised Wan2.2 space).
        audio_latent: ``[A, 64]`` float32, or None for a video-only clip.
        text_embeds: ``[Nt, C]`` float32 T5Gemma states.
    """

    clip_id: str
    caption: str
    video_latent: torch.Tensor
    audio_latent: torch.Tensor | None
    text_embeds: torch.Tensor

    @property
    def shape_key(self) -> tuple:
        """Samples with equal keys batch together (same latent shapes, same modalities)."""
        audio = None if self.audio_latent is None else tuple(self.audio_latent.shape)
        return tuple(self.video_latent.shape), audio


def write_cache_header(folder: Path, header: dict) -> None:
    """Create ``folder`` and write ``cache.json`` (``header`` plus the format version), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SAMPLES_DIR).mkdir(exist_ok=True)
    content = json.dumps(dict(header, version=CACHE_VERSION), indent=2, sort_keys=True) + "\n"
    write_atomic(folder / CACHE_FILE, lambda tmp: tmp.write_text(content))


def read_cache_header(folder: Path) -> dict:
    """``cache.json`` of a cache folder.

    Raises:
        CacheError: no cache there, or one of another version.
    """
    path = Path(folder) / CACHE_FILE
    if not path.is_file():
        raise CacheError(f"{folder} is not a latent cache (no {CACHE_FILE}); run `magihuman train prepare` first")
    header = json.loads(path.read_text())
    if header.get("version") != CACHE_VERSION:
        raise CacheError(f"{folder} is a cache of version {header.get('version')}, this code reads version "
                         f"{CACHE_VERSION}; run `magihuman train prepare` again into a new folder")
    return header


def write_sample(folder: Path, sample: LatentSample, bucket: str) -> None:
    """Write one sample file atomically, then append its index line."""
    tensors = {"video_latent": sample.video_latent.float().contiguous(),
               "text_embeds": sample.text_embeds.float().contiguous()}
    if sample.audio_latent is not None:
        tensors["audio_latent"] = sample.audio_latent.float().contiguous()
    name = f"{SAMPLES_DIR}/{sample.clip_id}.safetensors"
    write_atomic(Path(folder) / name, lambda tmp: save_file(tensors, str(tmp)))
    line = {"id": sample.clip_id, "caption": sample.caption, "bucket": bucket, "file": name,
            "has_audio": sample.audio_latent is not None}
    with open(Path(folder) / INDEX_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_index(folder: Path) -> list[dict]:
    """Index lines whose sample file exists (a line cut short by a crash is skipped)."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return []
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (Path(folder) / entry["file"]).is_file():
            entries[entry["id"]] = entry
    return list(entries.values())


def write_negative(folder: Path, text_embeds: torch.Tensor) -> None:
    """Store the negative prompt's ``[Nn, C]`` states (the unconditional text of CFG)."""
    write_atomic(Path(folder) / NEGATIVE_FILE,
                 lambda tmp: save_file({"text_embeds": text_embeds.float().contiguous()}, str(tmp)))


def load_negative(folder: Path) -> torch.Tensor:
    """``[Nn, C]`` float32 negative-prompt states of a cache.

    Raises:
        CacheError: the file is missing.
    """
    path = Path(folder) / NEGATIVE_FILE
    if not path.is_file():
        raise CacheError(f"{path} is missing; run `magihuman train prepare` again to finish the cache")
    return load_file(str(path))["text_embeds"]


def load_samples(folder: str | Path) -> list[LatentSample]:
    """Every sample of a cache, in index order.

    Raises:
        CacheError: not a cache, or a cache without samples.
    """
    folder = Path(folder)
    read_cache_header(folder)
    samples = []
    for entry in read_index(folder):
        tensors = load_file(str(folder / entry["file"]))
        samples.append(LatentSample(entry["id"], entry["caption"], tensors["video_latent"],
                                    tensors.get("audio_latent"), tensors["text_embeds"]))
    if not samples:
        raise CacheError(f"the cache {folder} holds no samples; run `magihuman train prepare` on a dataset")
    return samples


def _link_samples(parts: list[tuple[str | os.PathLike, str, int | None]], staging: Path) -> int:
    """:func:`merge_caches`' sample files and index lines, written into ``staging``."""
    count = 0
    with open(staging / INDEX_FILE, "w", encoding="utf-8") as index:
        for folder, prefix, take in parts:
            entries = read_index(Path(folder))
            if take is not None and len(entries) < take:
                raise CacheError(f"{folder} holds {len(entries)} samples, fewer than the {take} asked for")
            for entry in entries[:take]:
                name = f"{SAMPLES_DIR}/{prefix}{entry['id']}.safetensors"
                try:
                    os.link(Path(folder) / entry["file"], staging / name)
                except OSError:
                    shutil.copyfile(Path(folder) / entry["file"], staging / name)
                index.write(json.dumps(dict(entry, id=f"{prefix}{entry['id']}", file=name)) + "\n")
                count += 1
    return count


def merge_caches(parts: list[tuple[str | os.PathLike, str, int | None]], output: str | os.PathLike) -> int:
    """Write a cache made of samples of other caches (e.g. a LoRA's new clips plus ordinary clips as prior
    preservation, the regularisation set of DreamBooth, arXiv:2208.12242 §3.3); returns its sample count.

    Sample files are hard-linked where the file system allows, else copied. The header and negative prompt
    come from the first part.

    Args:
        parts: ``(cache folder, id prefix, how many samples or None for all)``; samples are taken in index
            order and renamed ``<prefix><id>`` so ids of different caches cannot collide.
        output: new cache folder; must not exist yet.

    Raises:
        CacheError: a part is not a cache, holds fewer samples than asked, or was encoded with other codecs or
            another video-only switch than the first part; ``output`` exists.
    """
    output = Path(output)
    if output.exists():
        raise CacheError(f"{output} exists; choose a new folder for the merged cache or delete it")
    if not parts:
        raise CacheError("merge_caches needs at least one cache")
    headers = [read_cache_header(Path(folder)) for folder, _, _ in parts]
    for (folder, _, _), header in zip(parts[1:], headers[1:], strict=True):
        for key in ("root", "video_only"):
            if header.get(key) != headers[0].get(key):
                raise CacheError(f"{folder} has {key}={header.get(key)!r} but {parts[0][0]} has "
                                 f"{headers[0].get(key)!r}; merge caches encoded the same way")
    staging = output.with_name(f".{output.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    buckets = sorted({b for header in headers for b in header.get("buckets", [])})
    header = {k: v for k, v in headers[0].items() if k != "version"}
    write_cache_header(staging, dict(header, buckets=buckets))
    try:
        count = _link_samples(parts, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_negative(staging, load_negative(Path(parts[0][0])))
    staging.rename(output)
    return count


def group_by_shape(samples: list[LatentSample]) -> dict[tuple, list[int]]:
    """Sample indices per :attr:`LatentSample.shape_key`, in first-seen order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        groups[sample.shape_key].append(i)
    return dict(groups)
