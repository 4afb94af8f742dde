"""``magihuman train prepare``: encode a dataset once into a latent cache (:mod:`magihuman.train.cache`).

Steps, per clip (the encoders are the inference ones, so the cache holds exactly what generation feeds
the DiT):

1. check every clip before any model loads: readable, caption, a bucket it covers, sound unless the
   dataset is video-only (one error lists every problem);
2. frames at 25 fps through :func:`~magihuman.train.video_io.read_frames` and the Wan2.2 VAE encoder
   (posterior mean, normalised: pipeline.md 4.2, 7.1);
3. sound through the Stable Audio VAE encoder (posterior sample from a per-clip seeded generator, as the
   pipeline encodes a driving track: pipeline.md 7.2);
4. caption through T5Gemma (pipeline.md 3); the negative prompt once, for text dropout.

Clips already in the cache are skipped, so an interrupted run resumes. A progress bar counts clips.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from magihuman.train.cache import (
    CacheError,
    LatentSample,
    read_cache_header,
    read_index,
    write_cache_header,
    write_negative,
    write_sample,
)
from magihuman.train.dataset import Bucket, ClipRecord, DatasetError, choose_bucket, read_dataset
from magihuman.train.video_io import probe_clip, read_frames, read_sound


@dataclass(frozen=True)
class PlannedClip:
    """A clip with its bucket and whether its sound is used."""

    record: ClipRecord
    bucket: Bucket
    with_audio: bool


def plan_clips(records: Sequence[ClipRecord], buckets: Sequence[Bucket], *, video_only: bool) -> list[PlannedClip]:
    """Assign every clip a bucket, checking all of them first.

    Raises:
        DatasetError: listing every clip that cannot be used (unreadable, too short, silent without
            ``video_only``), with the fix.
    """
    planned, problems = [], []
    for record in records:
        try:
            info = probe_clip(record.video, record.audio)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        bucket = choose_bucket(buckets, info.width, info.height, info.duration)
        if bucket is None:
            shortest = min(b.seconds for b in buckets)
            problems.append(f"{record.video}: {info.duration:.2f} s is shorter than the shortest bucket "
                            f"({shortest:g} s)")
            continue
        if not info.has_audio and not video_only:
            problems.append(f"{record.video} has no sound; add its audio track, or train video-only with --video-only")
            continue
        planned.append(PlannedClip(record, bucket, not video_only))
    if problems:
        raise DatasetError(f"{len(problems)} clip(s) cannot be used:\n  " + "\n  ".join(problems))
    return planned


def prepare_dataset(
    dataset: str | Path, output: str | Path, *, root: str | Path, buckets: Sequence[Bucket], video_only: bool = False,
    negative_prompt: str | None = None, device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
) -> Path:
    """Encode ``dataset`` into the cache folder ``output`` (created, or resumed when it exists).

    Args:
        dataset: a folder of clips with captions, or a CSV/JSONL manifest (:mod:`magihuman.train.dataset`).
        output: cache folder.
        root: checkpoint root holding ``t5gemma-9b-9b-ul2/``, ``Wan2.2-TI2V-5B/``, ``stable-audio-open-1.0/``
            (``magihuman download``, or the demo bundle).
        buckets: target sizes and lengths.
        video_only: train video only: no clip's sound is encoded and silent clips are accepted.
        negative_prompt: the unconditional text (None: the pipeline's default).
        device: where the encoders run.
        seed: base seed of the audio posterior samples (each clip adds a hash of its id).
        progress: show a progress bar.

    Returns:
        ``output``.

    Raises:
        DatasetError: bad clips (before any model loads).
        CacheError: ``output`` is a cache made with other settings.
    """
    output = Path(output)
    planned = plan_clips(read_dataset(dataset), buckets, video_only=video_only)
    header = {"root": str(Path(root).resolve()), "video_only": video_only, "buckets": sorted({b.name for b in buckets}),
              "seed": seed}
    if (output / "cache.json").is_file():
        old = read_cache_header(output)
        differs = {k: (old.get(k), v) for k, v in header.items() if old.get(k) != v}
        if differs:
            raise CacheError(f"{output} was prepared with other settings {differs}; use a new folder")
    elif output.exists() and any(output.iterdir()):
        raise CacheError(f"{output} exists and is not a latent cache; pick a new folder")
    else:
        write_cache_header(output, header)
    done = {entry["id"] for entry in read_index(output)}
    todo = [clip for clip in planned if clip.record.clip_id not in done]
    encoders = _Encoders(Path(root), torch.device(device), with_audio=not video_only)
    if not (output / "negative.safetensors").is_file():
        write_negative(output, encoders.text(negative_prompt))
    for clip in tqdm(todo, desc="encoding clips", unit="clip", disable=not progress, initial=len(done),
                     total=len(planned)):
        write_sample(output, encoders.sample(clip, seed), clip.bucket.name)
    return output


class _Encoders:
    """The three inference encoders, loaded once (VAEs in bf16 on CUDA, float32 on CPU, as the pipeline)."""

    def __init__(self, root: Path, device: torch.device, *, with_audio: bool):
        from magihuman.codecs.audio_vae import AudioVAE
        from magihuman.codecs.text_encoder import TextEncoder
        from magihuman.codecs.video_vae import VideoVAE
        from magihuman.pipeline.loading import ROOT_LAYOUT

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.device = device
        self.text_encoder = TextEncoder.from_official(root / ROOT_LAYOUT["text_encoder"], device=device)
        self.video_vae = VideoVAE.from_official(root / ROOT_LAYOUT["video_vae"], dtype=dtype, device=device)
        self.audio_vae = AudioVAE.from_official(root / ROOT_LAYOUT["audio_vae"], device=device) if with_audio else None

    def text(self, prompt: str | None) -> torch.Tensor:
        """``[Nt, C]`` float32 states of ``prompt`` (None: the default negative prompt)."""
        from magihuman.codecs.text_encoder import DEFAULT_NEGATIVE_PROMPT

        embeds, _ = self.text_encoder.encode(prompt if prompt is not None else DEFAULT_NEGATIVE_PROMPT)
        return embeds[0].float().cpu()

    @torch.no_grad()
    def sample(self, clip: PlannedClip, seed: int) -> LatentSample:
        bucket = clip.bucket
        pixels = read_frames(clip.record.video, bucket.pixel_frames, bucket.width, bucket.height)
        video = self.video_vae.encode(pixels.to(self.device))[0].float().cpu()
        audio = None
        if clip.with_audio:
            sound = read_sound(clip.record.audio or clip.record.video, bucket.audio_latents)
            generator = torch.Generator().manual_seed(seed + zlib.crc32(clip.record.clip_id.encode()))
            audio = self.audio_vae.encode(sound.to(self.device), generator=generator)[0].float().cpu()
            if audio.shape[0] != bucket.audio_latents:
                raise CacheError(f"{clip.record.video}: {audio.shape[0]} audio latents, "
                                 f"expected {bucket.audio_latents}")
        return LatentSample(clip.record.clip_id, clip.record.caption, video, audio, self.text(clip.record.caption))
