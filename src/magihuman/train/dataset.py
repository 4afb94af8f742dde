"""Training clips: where they are, what they say, and which size/length bucket each one gets.

A dataset is one of (the layouts video-LoRA trainers already use):

* a **folder** of clips, each with a caption file of the same stem (``talk01.mp4`` + ``talk01.txt``);
* a **CSV** manifest with a header holding ``video`` and ``caption`` columns (optional ``audio``: a separate
  sound file for the clip);
* a **JSONL** manifest, one object per line with the same keys.

Relative paths in a manifest are taken from the manifest's folder. Clips are MP4/MOV/MKV/WebM files; a
clip trains both modalities from its own audio track (or from ``audio``). A clip without sound is
refused unless the dataset is explicitly video-only (``video_only=True``, CLI ``--video-only``), in
which case no clip's audio is used.

Buckets (:class:`Bucket`): every clip is centre-cropped and resized to the configured size whose aspect
ratio is closest to its own, and cut to the longest configured length it covers, so one batch holds
latents of one shape (pipeline.md 4.1 gives the latent sizes of a size and length).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Video file suffixes recognised in a dataset folder.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
#: Latents per second of both modalities' time base (pipeline.md 4.1: 25 audio latents per second, video
#: at 25 fps with a temporal stride of 4).
LATENT_RATE = 25
#: Video latent temporal stride (Wan2.2, pipeline.md 4.1).
TEMPORAL_STRIDE = 4
#: Pixel sizes round down to multiples of this (VAE stride 16 x the DiT's 2x2 patch, pipeline.md 4.1).
SIZE_MULTIPLE = 32


class DatasetError(ValueError):
    """A dataset folder or manifest that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class ClipRecord:
    """One training clip.

    Attributes:
        clip_id: a unique name (the file stem, made unique with a suffix when stems repeat).
        video: path of the video file.
        caption: the text prompt of this clip (non-empty).
        audio: a separate sound file, or None to use the video's own track.
    """

    clip_id: str
    video: Path
    caption: str
    audio: Path | None = None


@dataclass(frozen=True)
class Bucket:
    """A target size and length; all clips of a bucket have latents of one shape.

    Attributes:
        width, height: pixels, multiples of 32.
        seconds: clip length; ``audio_latents = round(25 s) + 1`` as generated audio has (pipeline.md 4.1).
    """

    width: int
    height: int
    seconds: float

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
                raise DatasetError(f"bucket {name} must be a multiple of {SIZE_MULTIPLE} pixels, got {value!r}")
        if not math.isfinite(self.seconds) or self.seconds <= 0:
            raise DatasetError(f"bucket seconds must be positive, got {self.seconds!r}")

    @property
    def audio_latents(self) -> int:
        """``L_a = round(25 s) + 1`` audio latents (pipeline.md 4.1)."""
        return int(round(self.seconds * LATENT_RATE)) + 1

    @property
    def latent_frames(self) -> int:
        """``T = (L_a - 1) // 4 + 1`` video latent frames."""
        return (self.audio_latents - 1) // TEMPORAL_STRIDE + 1

    @property
    def pixel_frames(self) -> int:
        """``F = 4 (T - 1) + 1`` video frames read from the clip at 25 fps."""
        return TEMPORAL_STRIDE * (self.latent_frames - 1) + 1

    @property
    def name(self) -> str:
        """``WxH_Ss``, e.g. ``448x256_4s``."""
        return f"{self.width}x{self.height}_{self.seconds:g}s"


def parse_buckets(sizes: Sequence[str | tuple[int, int]], seconds: Sequence[float]) -> list[Bucket]:
    """Every (size, length) combination as buckets.

    Args:
        sizes: ``"WxH"`` strings or ``(width, height)`` pairs.
        seconds: clip lengths in seconds.

    Raises:
        DatasetError: an empty list, a malformed size or a size/length that is not valid.
    """
    if not sizes or not seconds:
        raise DatasetError("give at least one bucket size (e.g. 448x256) and one length in seconds (e.g. 4)")
    pairs = []
    for size in sizes:
        if isinstance(size, str):
            try:
                width, height = (int(v) for v in size.lower().split("x"))
            except ValueError:
                raise DatasetError(f"bucket size {size!r} is not WIDTHxHEIGHT (e.g. 448x256)") from None
        else:
            width, height = size
        pairs.append((width, height))
    return [Bucket(w, h, float(s)) for w, h in pairs for s in sorted(set(seconds))]


def choose_bucket(buckets: Sequence[Bucket], width: int, height: int, duration: float) -> Bucket | None:
    """The bucket for a clip of ``width x height`` pixels lasting ``duration`` seconds.

    The size is the one whose aspect ratio is closest in log scale (ties: the first listed); the length is
    the longest one not above ``duration`` plus one frame (a clip is cut, never stretched; a "2 s" bucket
    reads ``4(T-1)+1 = 49`` frames, which a 49-frame clip of 1.96 s holds). None when the clip is shorter
    than every length.
    """
    ratio = math.log(width / height)
    best = min({(b.width, b.height) for b in buckets},
               key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), [(b.width, b.height) for b in buckets].index(s)))
    fitting = [b for b in buckets if (b.width, b.height) == best and b.seconds <= duration + 1 / LATENT_RATE + 1e-6]
    return max(fitting, key=lambda b: b.seconds) if fitting else None


def read_dataset(source: str | Path) -> list[ClipRecord]:
    """The clips of a dataset folder, CSV or JSONL manifest (see the module docstring).

    Raises:
        DatasetError: a missing path, an unknown format, a clip without caption, an empty caption, a
            missing file, or no clips at all.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetError(f"dataset {source} does not exist; pass a folder of clips or a .csv/.jsonl manifest")
    if source.is_dir():
        rows = _folder_rows(source)
    elif source.suffix.lower() == ".csv":
        rows = _csv_rows(source)
    elif source.suffix.lower() in (".jsonl", ".json"):
        rows = _jsonl_rows(source)
    else:
        raise DatasetError(f"dataset {source}: expected a folder, a .csv or a .jsonl manifest")
    records = _records(rows, source)
    if not records:
        raise DatasetError(f"dataset {source} holds no clips ({', '.join(VIDEO_SUFFIXES)} with a caption each)")
    return records


def _folder_rows(folder: Path) -> list[dict]:
    rows = []
    for video in sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        caption = video.with_suffix(".txt")
        if not caption.is_file():
            raise DatasetError(f"{video} has no caption file {caption.name}; write the clip's prompt there")
        rows.append({"video": video.name, "caption": caption.read_text(encoding="utf-8"), "_where": str(caption)})
    return rows


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"video", "caption"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{path}: the header lacks column(s) {sorted(missing)} (need video, caption[, audio])")
        return [dict(row, _where=f"{path} row {i + 2}") for i, row in enumerate(reader)]


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} line {i + 1} is not JSON: {exc}") from None
        if not isinstance(row, dict) or "video" not in row or "caption" not in row:
            raise DatasetError(f"{path} line {i + 1}: expected an object with \"video\" and \"caption\"")
        rows.append(dict(row, _where=f"{path} line {i + 1}"))
    return rows


def _records(rows: list[dict], source: Path) -> list[ClipRecord]:
    base = source if source.is_dir() else source.parent
    records, seen = [], {}
    for row in rows:
        caption = str(row.get("caption") or "").strip()
        if not caption:
            raise DatasetError(f"{row['_where']}: the caption is empty; every clip needs its prompt")
        video = _resolve(base, row["video"], row["_where"], "video")
        audio = _resolve(base, row["audio"], row["_where"], "audio") if row.get("audio") else None
        stem = video.stem
        seen[stem] = seen.get(stem, 0) + 1
        clip_id = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        records.append(ClipRecord(clip_id, video, caption, audio))
    return records


def _resolve(base: Path, value: str, where: str, what: str) -> Path:
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise DatasetError(f"{where}: {what} file {path} not found")
    return path
