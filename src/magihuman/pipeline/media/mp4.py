"""The output file (architecture.md §12.3; atomic writing and validation are our own design).

:func:`check_output_path` before any model runs, :func:`write_mp4` at the end: H.264 + AAC through PyAV
(libx264 and the native AAC encoder bundled with it; no ``ffmpeg`` executable).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

__all__ = ["DEFAULT_CRF", "DEFAULT_FPS", "OUTPUT_AUDIO_SAMPLE_RATE", "check_output_path", "write_mp4"]

logger = logging.getLogger(__name__)

#: Frames per second of every generated video (architecture.md §13.2, §11).
DEFAULT_FPS = 25
#: x264 constant rate factor the reference gets from imageio ``quality=8``: int((1 - 0.8) * 51) = 10
#: (architecture.md §12.3). Visually lossless; files are large. 18-23 is the usual range for sharing.
DEFAULT_CRF = 10
#: Rate of the final audio track (architecture.md §12.2).
OUTPUT_AUDIO_SAMPLE_RATE = 44100

_VIDEO_CODEC = "libx264"
_AUDIO_CODEC = "aac"
_PIX_FMT = "yuv420p"


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Validate an output path before any model runs (our design; the reference checks only at the end).

    Args:
        path: where the ``.mp4`` will be written; ``~`` is expanded.
        overwrite: allow replacing an existing file.

    Returns:
        The absolute ``Path`` (not resolved through symlinks).

    Raises:
        ValueError: the suffix is not ``.mp4`` (any case), or the path is an existing folder.
        FileNotFoundError: the parent folder does not exist.
        NotADirectoryError: the parent exists but is not a folder.
        PermissionError: the parent folder is not writable.
        FileExistsError: the file exists and ``overwrite`` is False.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"output path must be a non-empty file path, got {path!r}")
    target = Path(os.path.abspath(Path(os.fspath(path)).expanduser()))
    if target.suffix.lower() != ".mp4":
        raise ValueError(
            f"output file must end in .mp4 (H.264 + AAC in an MP4 container), got {str(target)!r}; "
            f"use e.g. {str(target.with_suffix('.mp4'))!r}"
        )
    parent = target.parent
    if not parent.exists():
        raise FileNotFoundError(
            f"output folder does not exist: {str(parent)!r}; create it first (mkdir -p) or choose another path"
        )
    if not parent.is_dir():
        raise NotADirectoryError(f"output parent is not a folder: {str(parent)!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder is not writable: {str(parent)!r}; choose another folder")
    if target.is_dir():
        raise ValueError(f"output path is an existing folder: {str(target)!r}; give a file name ending in .mp4")
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"output file already exists: {str(target)!r}; choose another name, or allow replacing it "
            "(overwrite=True)"
        )
    return target


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    fps: int | float | Fraction = DEFAULT_FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = OUTPUT_AUDIO_SAMPLE_RATE,
    overwrite: bool = False,
    crf: int = DEFAULT_CRF,
    preset: str = "medium",
    num_frames: int | None = None,
) -> Path:
    """Write H.264 video (+ optional AAC audio) to an MP4 file, atomically (architecture.md §12.3).

    Video: libx264, ``yuv420p`` (RGB converted by libswscale with its defaults, BT.601 limited range,
    untagged - what the reference's ffmpeg produced), constant rate factor ``crf`` (reference: 10), one
    frame every ``1/fps`` s; the file reads back as exactly ``F`` frames at ``fps``. Audio: native AAC at
    ``sample_rate`` with the encoder's default bit rate (the reference re-encodes its WAV with default AAC
    settings), samples clipped to ``[-1, 1]`` and fed in encoder ``frame_size`` chunks (1024), interleaved
    with the video by time. Both streams keep their full length (no ``-shortest``, architecture.md §12.3): generated
    audio is usually 0.04-0.12 s longer than the video (architecture.md §12.2).

    Odd sizes: ``yuv420p`` needs even width and height, so an odd-sized frame is padded by one row/column
    on the bottom/right by edge replication (a warning is logged); the file is then up to 1 pixel larger.
    Sizes from the pipeline are multiples of 32 and are never padded. (The reference's imageio
    instead rescales to a multiple of 16.)

    Atomicity (our design): the file is written to a hidden temp file ``.<name>.<random>.part`` in the
    target folder and moved into place only after the container is closed; on any error the temp file is
    removed and an existing target is left untouched. Without ``overwrite`` the final step uses a hard
    link, so a file created meanwhile by someone else is never clobbered.

    Args:
        path: output file, ``.mp4`` suffix (validated by :func:`check_output_path` before any encoding).
        frames: ``uint8`` array ``[F, H, W, 3]`` RGB (e.g. from :func:`video_to_uint8`), or an iterable of
            ``uint8`` ``[H, W, 3]`` frames (streaming; all must share one size).
        fps: frame rate in frames per second (> 0); 25 in the pipeline. Floats are turned into a fraction
            (29.97 -> 2997/100).
        audio: ``None`` for a silent file, or float waveform ``[channels, samples]`` with 1 or 2 channels
            (a 1-D array counts as mono), nominally in ``[-1, 1]`` (clipped). Layout is mono or stereo as
            given.
        sample_rate: audio rate in Hz, one AAC supports (44100 in the pipeline, also 48000, 32000, ...).
        overwrite: replace an existing file.
        crf: x264 constant rate factor 0-51 (0 = lossless-ish, 23 = x264 default, lower = better/larger).
        preset: x264 speed preset (``ultrafast`` ... ``veryslow``; default ``medium`` as the reference).
        num_frames: optional expected frame count; checked against the array / the iterable
            (a mismatch raises ``ValueError`` and nothing is written).

    Returns:
        The absolute path of the written file.

    Raises:
        ValueError: bad frames (dtype, shape, empty, inconsistent size), bad audio (dtype, shape,
            non-finite, empty), unsupported ``sample_rate``, bad ``fps``/``crf``/``preset``, suffix not
            ``.mp4``, or a ``num_frames`` mismatch.
        FileExistsError: the target exists and ``overwrite`` is False.
        FileNotFoundError / PermissionError: the target folder is missing / not writable.
        RuntimeError: the libav encoder or muxer failed (message included).
    """
    target = check_output_path(path, overwrite=overwrite)
    rate = _as_fps(fps)
    _check_encoder_options(crf, preset, num_frames)
    wave = None if audio is None else _prepare_audio(audio, sample_rate)
    frame_iter, height, width = _frame_source(frames, num_frames)
    pad = _even_size_padding(height, width)

    tmp = _reserve_temp(target)
    container = None
    try:
        container = av.open(os.fspath(tmp), mode="w", format="mp4")
        vstream = _add_video_stream(container, rate, (height + pad[0], width + pad[1]), crf, preset)
        track = None if wave is None else _AudioTrack(container, wave, int(sample_rate))
        count = _encode_frames(container, vstream, frame_iter, (height, width), pad, track, rate)
        if num_frames is not None and count != num_frames:
            raise ValueError(f"num_frames={num_frames} but the frame iterable yielded {count} frames")
        _mux(container, vstream.encode(None))
        if track is not None:
            track.finish()
        container.close()
        container = None
        _commit(tmp, target, overwrite)
    except BaseException as exc:
        _discard(container, tmp)
        if isinstance(exc, av.error.FFmpegError):
            raise RuntimeError(f"encoding {str(target)!r} failed in libav: {exc}") from exc
        raise
    return target


def _check_encoder_options(crf: Any, preset: Any, num_frames: Any) -> None:
    """Refuse a bad x264 ``crf``/``preset`` or ``num_frames`` with a ``ValueError`` naming the value."""
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an integer in 0..51 (lower = better quality), got {crf!r}")
    if preset not in _X264_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(_X264_PRESETS)}, got {preset!r}")
    if num_frames is not None and (
        isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1
    ):
        raise ValueError(f"num_frames must be a positive integer or None, got {num_frames!r}")


def _even_size_padding(height: int, width: int) -> tuple[int, int]:
    """Rows and columns (0 or 1 each) to add so ``yuv420p`` gets even sizes; logs a warning when any."""
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        logger.warning(
            "frame size %dx%d is odd; yuv420p needs even sizes, padding to %dx%d by edge replication",
            width, height, width + pad_w, height + pad_h,
        )
    return pad_h, pad_w


def _add_video_stream(container: Any, rate: Fraction, size: tuple[int, int], crf: int, preset: str) -> Any:
    """Add the libx264 ``yuv420p`` stream of ``size`` = (height, width) pixels at ``rate`` frames/s."""
    vstream = container.add_stream(_VIDEO_CODEC, rate=rate, options={"crf": str(int(crf)), "preset": preset})
    vstream.width = size[1]
    vstream.height = size[0]
    vstream.pix_fmt = _PIX_FMT
    return vstream


def _mux(container: Any, packets: Iterable[Any]) -> None:
    for packet in packets:
        container.mux(packet)


def _encode_frames(
    container: Any,
    vstream: Any,
    frames: Iterator[np.ndarray],
    size: tuple[int, int],
    pad: tuple[int, int],
    track: _AudioTrack | None,
    rate: Fraction,
) -> int:
    """Encode every frame (checked against frame 0's ``size`` = (H, W), padded by ``pad`` rows/columns),
    interleaving the audio up to the end of each frame's display time; returns the frame count."""
    height, width = size
    pad_h, pad_w = pad
    count = 0
    for frame in frames:
        if count > 0:
            frame = _check_frame(frame, height, width, count)
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        vframe = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vframe.pts = count
        _mux(container, vstream.encode(vframe))
        count += 1
        if track is not None:  # interleave: audio up to the end of this frame's display time
            track.encode_until(int(count / rate * track.sample_rate))
    return count


class _AudioTrack:
    """The AAC stream of the file being written, fed from ``wave`` ``[channels, samples]`` float32 in
    whole encoder frames (``frame_size`` samples, 1024 by default) as the video advances."""

    def __init__(self, container: Any, wave: np.ndarray, sample_rate: int) -> None:
        self.container, self.wave, self.sample_rate = container, wave, sample_rate
        self.layout = "stereo" if wave.shape[0] == 2 else "mono"
        self.stream = container.add_stream(_AUDIO_CODEC, rate=sample_rate, layout=self.layout)
        if not self.stream.codec_context.is_open:
            self.stream.codec_context.open()
        self.chunk = self.stream.codec_context.frame_size or 1024
        self.done = 0  # samples encoded so far

    def encode_until(self, end: int, final: bool = False) -> None:
        """Encode whole ``chunk``-sample AAC frames up to sample ``end`` (and the remainder if final)."""
        end = min(end, self.wave.shape[1])
        while end - self.done >= self.chunk or (final and self.done < end):
            stop = min(self.done + self.chunk, end)
            block = np.ascontiguousarray(self.wave[:, self.done:stop])
            aframe = av.AudioFrame.from_ndarray(block, format="fltp", layout=self.layout)
            aframe.sample_rate = self.sample_rate
            aframe.pts = self.done
            aframe.time_base = Fraction(1, self.sample_rate)
            _mux(self.container, self.stream.encode(aframe))
            self.done = stop

    def finish(self) -> None:
        """Encode the remaining samples and flush the encoder."""
        self.encode_until(self.wave.shape[1], final=True)
        _mux(self.container, self.stream.encode(None))


def _discard(container: Any, tmp: Path) -> None:
    """After a failure: close ``container`` if still open (its own errors ignored) and remove ``tmp``."""
    if container is not None:
        try:
            container.close()
        except Exception:  # noqa: BLE001 - already failing; the original error matters
            pass
    tmp.unlink(missing_ok=True)


_X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)


def _as_fps(fps: int | float | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.integer, np.floating)):
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if isinstance(fps, (float, np.floating)):
        if not math.isfinite(fps):
            raise ValueError(f"fps must be finite, got {fps!r}")
        rate = Fraction(str(float(fps))).limit_denominator(100_000)
    else:
        rate = Fraction(fps)
    if rate <= 0:
        raise ValueError(f"fps must be > 0 frames per second, got {fps!r}")
    return rate


def _prepare_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate and convert to contiguous float32 ``[channels, samples]`` clipped to [-1, 1]."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    supported = av.codec.Codec(_AUDIO_CODEC, "w").audio_rates
    if supported and int(sample_rate) not in supported:
        raise ValueError(
            f"AAC cannot encode {sample_rate} Hz; resample to one of {sorted(supported)} Hz "
            "(the pipeline resamples its 51200 Hz VAE output to 44100 Hz)"
        )
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(audio)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"audio must be a float array in [-1, 1], got dtype {arr.dtype}; divide int16 PCM by 32768"
        )
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"audio must have shape [channels, samples], got {arr.shape}")
    if arr.shape[0] not in (1, 2):
        hint = "; it looks like [samples, channels] - pass audio.T" if arr.shape[1] in (1, 2) else ""
        raise ValueError(f"audio must have 1 or 2 channels on axis 0 ([channels, samples]), got {arr.shape}{hint}")
    if arr.shape[1] == 0:
        raise ValueError("audio has no samples; pass audio=None for a silent video")
    if not np.isfinite(arr).all():
        raise ValueError("audio contains NaN or infinite values")
    return np.ascontiguousarray(np.clip(arr, -1.0, 1.0), dtype=np.float32)


def _check_frame(frame: Any, height: int | None, width: int | None, index: int) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"frame {index} must be uint8 RGB, got dtype {arr.dtype}; convert float video with video_to_uint8"
        )
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"frame {index} must have shape [H, W, 3], got {arr.shape}")
    if height is not None and arr.shape[:2] != (height, width):
        raise ValueError(
            f"frame {index} is {arr.shape[1]}x{arr.shape[0]} but frame 0 is {width}x{height}; all frames "
            "must share one size"
        )
    return arr


def _frame_source(
    frames: np.ndarray | Iterable[np.ndarray], num_frames: int | None
) -> tuple[Iterator[np.ndarray], int, int]:
    """Validate ``frames`` up front and return (iterator over [H, W, 3] uint8 frames, H, W)."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 [F, H, W, 3], got dtype {frames.dtype}; convert float video with "
                "video_to_uint8"
            )
        if frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"frames must have shape [F, H, W, 3] (RGB, channels last), got {frames.shape}")
        if min(frames.shape[:3]) < 1:
            raise ValueError(f"frames must hold at least one non-empty frame, got shape {frames.shape}")
        if num_frames is not None and frames.shape[0] != num_frames:
            raise ValueError(f"num_frames={num_frames} but frames holds {frames.shape[0]} frames")
        return iter(frames), int(frames.shape[1]), int(frames.shape[2])
    if isinstance(frames, (torch.Tensor, str, bytes)) or not isinstance(frames, Iterable):
        raise ValueError(
            f"frames must be a uint8 numpy array [F, H, W, 3] or an iterable of [H, W, 3] frames, got "
            f"{type(frames).__name__}; use video_to_uint8 for a decoded tensor"
        )
    it = iter(frames)
    try:
        first = _check_frame(next(it), None, None, 0)
    except StopIteration:
        raise ValueError("frames is empty; at least one frame is needed") from None

    def _chain() -> Iterator[np.ndarray]:
        yield first
        yield from it

    return _chain(), int(first.shape[0]), int(first.shape[1])


def _reserve_temp(target: Path) -> Path:
    """Create an empty hidden temp file next to ``target`` (mode 0666 minus umask)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise RuntimeError(f"could not create a temporary file in {str(target.parent)!r}")


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished temp file onto ``target`` (never clobbering without ``overwrite``)."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # atomic and fails if the target appeared meanwhile
    except FileExistsError:
        raise FileExistsError(
            f"output file appeared while encoding: {str(target)!r}; it was left as it is: choose another name"
        ) from None
    except OSError:  # file system without hard links: best effort
        if target.exists():
            raise FileExistsError(
                f"output file appeared while encoding: {str(target)!r}; it was left as it is: choose another "
                "name"
            ) from None
        os.replace(tmp, target)
        return
    tmp.unlink()
