"""Reading media containers with PyAV: :func:`probe_media` (tests, the CLI summary) and the shared
open-for-reading helpers of the image/audio input checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import av

__all__ = ["probe_media"]


def probe_media(path: str | os.PathLike, *, count_frames: bool = True) -> dict[str, Any]:
    """Container facts of a media file, read with PyAV (for tests and the CLI summary).

    Args:
        path: media file.
        count_frames: decode the first video and audio streams (one demuxing pass) to count frames and
            samples exactly. If False, the header values are reported instead (``nb_frames``, which may be
            0 for some formats, and the audio stream duration).

    Returns:
        Dict with keys ``path`` (str), ``format`` (demuxer name), ``num_video_streams``,
        ``num_audio_streams`` (int); for the first video stream ``video_codec`` (e.g. ``"h264"``),
        ``width``, ``height`` (pixels), ``pix_fmt``, ``fps`` (float, frames/s), ``num_frames`` (int),
        ``video_duration`` (``num_frames / fps``, seconds); for the first audio stream ``audio_codec``
        (e.g. ``"aac"``), ``sample_rate`` (Hz), ``channels``, ``num_samples`` (decoded samples per channel)
        and ``audio_duration`` (``num_samples / sample_rate``, seconds; AAC decoders return whole 1024-sample
        frames and libav trims only the encoder delay, not the end padding, so this can exceed the written
        length by < 1024 samples) and ``audio_header_duration`` (the stream's edit-list duration in
        seconds, which equals the written length). Keys of an absent stream map to ``None``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a media file PyAV can read.
    """
    src = _existing_file(path, "media file")
    info = dict.fromkeys(_PROBE_KEYS)
    info.update(path=str(src), num_video_streams=0, num_audio_streams=0)
    container = _open_input(src, "media")
    try:
        video, audio = container.streams.video, container.streams.audio
        info.update(format=container.format.name, num_video_streams=len(video), num_audio_streams=len(audio))
        try:
            if video:
                info.update(_video_header(video[0]))
            if audio:
                info.update(_audio_header(audio[0]))
            if count_frames and (video or audio):
                info.update(_decoded_lengths(container, info["fps"], info["sample_rate"]))
        except av.error.FFmpegError as exc:
            raise ValueError(f"could not decode {str(src)!r}: {exc}") from exc
    finally:
        container.close()
    return info


#: The keys of :func:`probe_media`'s result, in order.
_PROBE_KEYS = (
    "path", "format", "num_video_streams", "num_audio_streams",
    "video_codec", "width", "height", "pix_fmt", "fps", "num_frames", "video_duration",
    "audio_codec", "sample_rate", "channels", "num_samples", "audio_duration", "audio_header_duration",
)


def _video_header(vs: Any) -> dict[str, Any]:
    """Header facts of a video stream: codec, size, pixel format, fps and the stated frame count."""
    rate = vs.average_rate or vs.guessed_rate
    fps = float(rate) if rate else None
    return {
        "video_codec": vs.codec_context.name,
        "width": vs.codec_context.width,
        "height": vs.codec_context.height,
        "pix_fmt": vs.codec_context.pix_fmt,
        "fps": fps,
        "num_frames": int(vs.frames),
        "video_duration": vs.frames / fps if fps else None,
    }


def _audio_header(ast: Any) -> dict[str, Any]:
    """Header facts of an audio stream: codec, rate, channels and, when stated, its length."""
    sr = ast.codec_context.sample_rate
    facts = {"audio_codec": ast.codec_context.name, "sample_rate": sr, "channels": ast.codec_context.channels}
    if ast.duration and ast.time_base and sr:
        facts["audio_header_duration"] = float(ast.duration * ast.time_base)
        facts["num_samples"] = int(round(ast.duration * ast.time_base * sr))
        facts["audio_duration"] = facts["num_samples"] / sr
    return facts


def _decoded_lengths(container: Any, fps: float | None, sample_rate: int | None) -> dict[str, Any]:
    """Decode the first video and audio streams in one pass; their exact frame / sample counts and durations."""
    video, audio = container.streams.video, container.streams.audio
    frames = samples = 0
    for item in container.decode(*video[:1], *audio[:1]):
        if isinstance(item, av.VideoFrame):
            frames += 1
        else:
            samples += item.samples
    lengths: dict[str, Any] = {}
    if video:
        lengths.update(num_frames=frames, video_duration=frames / fps if fps else None)
    if audio:
        lengths.update(num_samples=samples, audio_duration=samples / sample_rate if sample_rate else None)
    return lengths


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what} must be a file path, got {type(path).__name__}")
    src = Path(os.fspath(path)).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"{what} not found: {str(src)!r}; check the path")
    if src.is_dir():
        raise ValueError(f"{what} path is a folder, not a file: {str(src)!r}; pass a file")
    return src


def _open_input(src: Path, what: str) -> Any:
    try:
        return av.open(os.fspath(src), mode="r")
    except av.error.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(
            f"not a readable {what} file: {str(src)!r} ({reason}); it is empty, damaged or not media: pass a "
            "wav/mp3/m4a/flac file or a video with sound" if what == "audio" else
            f"not a readable {what} file: {str(src)!r} ({reason}); it is empty, damaged or not media"
        ) from exc
