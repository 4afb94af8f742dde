"""Toy clips on disk: the training manifest and the held-out prompt set.

Layout of a dataset folder (written into a hidden staging folder, renamed into place when complete):

``clips/clip-000000.mp4`` (+ ``.png`` first frame for first-frame clips), ``manifest.jsonl`` (one row
per training clip, :func:`manifest_record`), ``held_out.jsonl`` (a prompt set for ``magihuman eval``,
:func:`held_out_record`) with ``held_out/held-000.mp4`` (the generator's own clip for each held-out
caption, for reference scores) and ``held_out/held-000.png`` first frames. No held-out caption's
attributes and words occur among the training clips.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from magihuman.toy.clip import SECONDS, ToyClip, make_clip
from magihuman.toy.drawing import HEIGHT, WIDTH
from magihuman.toy.palette import SHIRT_COLOURS

__all__ = ["TRAIN_STREAM", "HELD_OUT_STREAM", "DatasetSummary", "manifest_record", "held_out_record",
           "held_out_clips", "write_dataset"]

#: Second entry of a clip's seed tuple: training clips ``(seed, 0, i)``, held-out clips ``(seed, 1, j)``.
TRAIN_STREAM, HELD_OUT_STREAM = 0, 1


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`write_dataset` wrote: the folder, the clip counts, first-frame clips among them."""

    root: Path
    clips: int
    held_out: int
    first_frame_clips: int


def manifest_record(clip: ToyClip, video: str, image: str | None) -> dict:
    """One training-manifest row: the only place that decides the trainer's field names.

    Args:
        clip: the clip.
        video, image: paths of its MP4 and first-frame PNG relative to the dataset folder (image None
            for text-only clips).

    Returns:
        ``{"video", "caption", ["image"], "variant", "seed", "attributes"}`` (JSON-ready).
    """
    row = {"video": video, "caption": clip.caption}
    if image is not None:
        row["image"] = image
    row.update(variant=clip.variant, seed=_seed_list(clip.seed), attributes=clip.attributes.to_dict())
    return row


def held_out_record(clip: ToyClip, index: int, video: str, image: str | None) -> dict:
    """One prompt-set row for ``magihuman eval`` (see :mod:`magihuman.eval.prompt_set`).

    Returns:
        ``{"id", "prompt", ["image"], "dialogue", "language", "seed", "seconds", "width", "height",
        "reference_video", "toy"}``: ``seed`` is the generation seed, ``toy`` the expected attributes.
    """
    row = {"id": f"held-{index:03d}", "prompt": clip.caption}
    if image is not None:
        row["image"] = image
    row.update(dialogue=[clip.attributes.dialogue], language="en", seed=index, seconds=SECONDS, width=WIDTH,
               height=HEIGHT, reference_video=video, toy=clip.attributes.to_dict())
    return row


def held_out_clips(seed: int, count: int = 100, *, shirt_colours: tuple[str, ...] = SHIRT_COLOURS) -> list[ToyClip]:
    """The held-out clips of a dataset seed: ``make_clip((seed, HELD_OUT_STREAM, j))`` for ``j < count``."""
    return [make_clip((seed, HELD_OUT_STREAM, j), shirt_colours=shirt_colours) for j in range(count)]


def write_dataset(out: str | os.PathLike, *, clips: int, seed: int = 0, held_out: int = 100,
                  overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                  shirt_colours: tuple[str, ...] = SHIRT_COLOURS) -> DatasetSummary:
    """Write ``clips`` training clips and ``held_out`` held-out prompts into the folder ``out``.

    Args:
        out: destination; must not exist (or be empty) unless ``overwrite``.
        clips: training clips (>= 1).
        seed: dataset seed; the same seed writes the same clips.
        held_out: held-out captions (>= 0).
        overwrite: replace an existing ``out`` (only once the new dataset is complete).
        progress: called as ``progress(done, total)`` after each clip.
        shirt_colours: the shirt colours clips are drawn with (e.g. ``HELD_OUT_SHIRT_COLOURS`` for a LoRA
            dataset of a colour the base model never saw).

    Raises:
        ValueError: ``clips < 1`` or ``held_out < 0``.
        FileExistsError: ``out`` is a file, or a folder that is not empty and ``overwrite`` is False.
    """
    if clips < 1 or held_out < 0:
        raise ValueError(f"need clips >= 1 and held_out >= 0, got clips={clips}, held_out={held_out}")
    target = Path(out).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; choose another folder")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; choose another folder or pass overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        total, done = clips + held_out, 0
        held_keys, first_frames = set(), 0
        (staging / "held_out").mkdir()
        with open(staging / "held_out.jsonl", "w") as rows:
            for j, clip in enumerate(held_out_clips(seed, held_out, shirt_colours=shirt_colours)):
                held_keys.add(_content_key(clip))
                video, image = _write_clip(staging, "held_out", f"held-{j:03d}", clip)
                rows.write(json.dumps(held_out_record(clip, j, video, image)) + "\n")
                done += 1
                if progress:
                    progress(done, total)
        (staging / "clips").mkdir()
        with open(staging / "manifest.jsonl", "w") as rows:
            index = written = 0
            while written < clips:
                clip = make_clip((seed, TRAIN_STREAM, index), shirt_colours=shirt_colours)
                index += 1
                if _content_key(clip) in held_keys:
                    continue
                video, image = _write_clip(staging, "clips", f"clip-{written:06d}", clip)
                rows.write(json.dumps(manifest_record(clip, video, image)) + "\n")
                first_frames += image is not None
                written += 1
                done += 1
                if progress:
                    progress(done, total)
        if target.exists():
            shutil.rmtree(target) if overwrite else target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DatasetSummary(target, clips, held_out, first_frames)


def _write_clip(root: Path, folder: str, stem: str, clip: ToyClip) -> tuple[str, str | None]:
    """Write ``folder/stem.mp4`` (+ ``.png`` first frame); return their paths relative to ``root``."""
    from magihuman.pipeline.media import write_mp4  # imports torch: only when writing

    video = f"{folder}/{stem}.mp4"
    write_mp4(root / video, clip.frames, fps=clip.fps, audio=clip.audio, sample_rate=clip.sample_rate)
    if clip.image is None:
        return video, None
    image = f"{folder}/{stem}.png"
    Image.fromarray(clip.image).save(root / image)
    return video, image


def _content_key(clip: ToyClip) -> tuple:
    a = clip.attributes
    return a.gender, a.hair, a.shirt, a.wall, a.skin, a.voice, a.words


def _seed_list(seed) -> list[int] | int:
    return [int(s) for s in seed] if isinstance(seed, tuple) else int(np.int64(seed))
