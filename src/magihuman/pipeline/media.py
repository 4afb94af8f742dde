"""Media input and output: reference image, driving audio, pixel conversion and MP4 writing.

Everything here is plain CPU work around the models:

* image conditioning input (``pipeline.md`` 7.1): :func:`load_image`, :func:`center_crop_box`,
  :func:`preprocess_image`;
* driving-audio input (``pipeline.md`` 7.2, ``codecs.md`` 4.1): :func:`load_audio`;
* decoded pixels to ``uint8`` (``pipeline.md`` 9.1): :func:`video_to_uint8`;
* the output file (``pipeline.md`` 9.3, our own design where noted): :func:`check_output_path`,
  :func:`write_mp4`, :func:`probe_media`.

Decoding and encoding go through PyAV only (it bundles libav with libx264 and the native AAC
encoder). No ``ffmpeg`` executable is needed or called.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import warnings
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = [
    "DEFAULT_CRF",
    "DEFAULT_FPS",
    "AUDIO_INPUT_SAMPLE_RATE",
    "OUTPUT_AUDIO_SAMPLE_RATE",
    "load_image",
    "center_crop_box",
    "preprocess_image",
    "video_to_uint8",
    "load_audio",
    "check_output_path",
    "write_mp4",
    "probe_media",
]

logger = logging.getLogger(__name__)

#: Frames per second of every generated video (``pipeline.md`` 13 item 33, ``codecs.md`` 1).
DEFAULT_FPS = 25
#: x264 constant rate factor the reference gets from imageio ``quality=8``: int((1 - 0.8) * 51) = 10
#: (``pipeline.md`` 9.3). Visually lossless; files are large. 18-23 is the usual range for sharing.
DEFAULT_CRF = 10
#: Rate at which driving audio is decoded for the audio VAE: 25 latents/s x 2048 hop (``pipeline.md`` 7.2).
AUDIO_INPUT_SAMPLE_RATE = 51200
#: Rate of the final audio track (``pipeline.md`` 9.2).
OUTPUT_AUDIO_SAMPLE_RATE = 44100

# Spatial stride of the Wan2.2 VAE (2x2 patchify x 8x8 convolutions); diffusers' image processor floors
# the target size to a multiple of it, so we insist on multiples instead of silently changing the size.
_VAE_SCALE_FACTOR = 16
_VIDEO_CODEC = "libx264"
_AUDIO_CODEC = "aac"
_PIX_FMT = "yuv420p"


# ---------------------------------------------------------------------------------------------------------
# Image input (pipeline.md 7.1)
# ---------------------------------------------------------------------------------------------------------


def load_image(image: str | os.PathLike | PIL.Image.Image) -> PIL.Image.Image:
    """Load the conditioning image upright and in RGB (``pipeline.md`` 7.1 step 1, pitfall 19).

    The EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``) and the result is converted to
    ``RGB`` with ``Image.convert`` (an alpha channel is dropped, not composited; grayscale is replicated),
    like ``diffusers.utils.load_image`` that the reference calls.

    Args:
        image: path to an image file in any format Pillow reads, or a ``PIL.Image.Image`` (also transposed
            by its EXIF orientation and converted; the caller's object is not modified).

    Returns:
        A new, fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, size ``(width, height)`` in pixels after
        orientation.

    Raises:
        ValueError: ``image`` is a URL (download it first), a folder, not an image Pillow can read, or of an
            unsupported type.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(image, PIL.Image.Image):
        return _upright_rgb(image)
    if not isinstance(image, (str, os.PathLike)):
        raise ValueError(
            f"image must be a file path or a PIL.Image.Image, got {type(image).__name__}; "
            "pass the path of a PNG/JPEG file or an image opened with PIL.Image.open"
        )
    text = os.fspath(image)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.lower().startswith(("http://", "https://", "ftp://")):
        raise ValueError(
            f"image URLs are not supported (offline tool): {text!r}; download the file first and pass its "
            "local path"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {str(path)!r}; check the path (--image_path)")
    if path.is_dir():
        raise ValueError(f"image path is a folder, not a file: {str(path)!r}; pass an image file")
    try:
        with PIL.Image.open(path) as opened:
            return _upright_rgb(opened)
    except PIL.UnidentifiedImageError as exc:
        raise ValueError(
            f"not a readable image: {str(path)!r} ({exc}); pass a PNG, JPEG, WebP or another format "
            "Pillow can open"
        ) from exc
    except OSError as exc:  # truncated / corrupt data found while decoding
        raise ValueError(f"could not decode image {str(path)!r}: {exc}; the file may be damaged") from exc


def _upright_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """EXIF-transpose (returns a copy) and convert to RGB; always returns a new loaded image."""
    upright = PIL.ImageOps.exif_transpose(image)  # a new image; orientation tag removed from its EXIF
    if upright is None:  # only with in_place=True; kept for type checkers
        upright = image.copy()
    rgb = upright.convert("RGB")
    rgb.load()
    return rgb


def center_crop_box(
    width: int, height: int, target_width: int, target_height: int
) -> tuple[float, float, float, float]:
    """Float crop box that centres the target aspect ratio in an image (``pipeline.md`` 7.1 step 2).

    With ``(w, h)`` the image size and ``(tw, th)`` the target size: if ``h / w > th / tw`` the full width is
    kept and ``new_h = int(w * th / tw)``; otherwise the full height is kept and ``new_w = int(h * tw / th)``.
    The box is ``((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2)``. No resizing
    happens here. ``PIL.Image.crop`` rounds each coordinate with Python's ``round`` (half to even), so
    ``(0, 6.5, 101, 73.5)`` crops rows 6..74 (68 rows) - pitfall 19.

    Args:
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).
        target_width: target width in pixels (> 0).
        target_height: target height in pixels (> 0).

    Returns:
        ``(left, upper, right, lower)`` as floats, in pixels; pass it to ``PIL.Image.Image.crop``.
        Example: 1280x720 to 448x256 gives ``(10.0, 0.0, 1270.0, 720.0)`` (a 1260x720 crop).

    Raises:
        ValueError: a size is not a positive integer.
    """
    for name, value in (
        ("width", width),
        ("height", height),
        ("target_width", target_width),
        ("target_height", target_height),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")
    w, h, tw, th = int(width), int(height), int(target_width), int(target_height)
    if h / w > th / tw:
        new_w, new_h = w, int(w * th / tw)
    else:
        new_w, new_h = int(h * tw / th), h
    return ((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2)


def preprocess_image(image: str | os.PathLike | PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """Image to the VAE input: centre crop, Lanczos resize, scale to [-1, 1] (``pipeline.md`` 7.1 steps 1-3).

    Steps: :func:`load_image` (EXIF orientation, RGB); crop with :func:`center_crop_box` unless the image
    already is exactly ``width`` x ``height``; then ``diffusers.video_processor.VideoProcessor(
    vae_scale_factor=16).preprocess`` (PIL Lanczos resize to ``(width, height)``, ``/255``, NCHW,
    ``2x - 1``), as the reference does. Reproduces the reference tensor bit for bit (golden
    ``codec_wan22_vae`` ``encode.preprocessed_image``). The bf16 cast and the time axis are the VAE's
    business (step 4), not done here.

    Args:
        image: path or ``PIL.Image.Image`` (see :func:`load_image`).
        width: target width in pixels, a positive multiple of 16 (e.g. 448).
        height: target height in pixels, a positive multiple of 16 (e.g. 256).

    Returns:
        ``torch.Tensor`` of shape ``[1, 3, height, width]``, dtype ``float32``, values in ``[-1, 1]``,
        channels RGB.

    Raises:
        ValueError: width/height not positive multiples of 16 (diffusers would silently floor them), or
            the image cannot be read (see :func:`load_image`).
        FileNotFoundError: the image path does not exist.
    """
    for name, value in (("width", width), ("height", height)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value <= 0
            or value % _VAE_SCALE_FACTOR
        ):
            raise ValueError(
                f"{name} must be a positive multiple of {_VAE_SCALE_FACTOR} pixels (the video VAE stride), "
                f"got {value!r}; the pipeline uses multiples of 32 (e.g. 448x256)"
            )
    width, height = int(width), int(height)
    from diffusers.video_processor import VideoProcessor  # local: keeps `import magihuman.pipeline.media` light

    img = load_image(image)
    if img.size != (width, height):
        img = img.crop(center_crop_box(img.width, img.height, width, height))
    processor = VideoProcessor(vae_scale_factor=_VAE_SCALE_FACTOR)
    pixels = processor.preprocess(img, height=height, width=width)
    return pixels.to(torch.float32).contiguous()


# ---------------------------------------------------------------------------------------------------------
# Pixels (pipeline.md 9.1)
# ---------------------------------------------------------------------------------------------------------


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Decoded video in [-1, 1] to ``uint8`` frames (``pipeline.md`` 9.1 "Post", pitfall 16).

    Per value: ``x * 0.5 + 0.5``, clamp to ``[0, 1]``, ``* 255`` in float32, then a **truncating** cast
    to ``uint8`` (no rounding), exactly as the reference. Only batch item 0 is used. Work is done a few
    frames at a time so a 1080p clip does not need a second full float copy. NaN values (a broken
    decode) become 0 with a ``RuntimeWarning``.

    Args:
        video: ``torch.Tensor`` ``[B, 3, F, H, W]`` of any floating dtype (computed in float32), on any
            device; nominal range ``[-1, 1]``.

    Returns:
        ``np.ndarray`` ``uint8`` of shape ``[F, H, W, 3]`` (RGB, channels last), C-contiguous.

    Raises:
        ValueError: not a floating tensor of shape ``[B, 3, F, H, W]`` with ``B, F, H, W >= 1``.
    """
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video must be a torch.Tensor [B, 3, F, H, W], got {type(video).__name__}")
    if video.ndim != 5 or video.shape[1] != 3 or min(video.shape) < 1:
        raise ValueError(
            f"video must have shape [B, 3, F, H, W] with non-zero sizes, got {tuple(video.shape)}; "
            "add a batch axis with video[None] if you have [3, F, H, W]"
        )
    if not video.is_floating_point():
        raise ValueError(f"video must be a floating tensor in [-1, 1], got dtype {video.dtype}")
    clip = video[0].detach()  # [3, F, H, W]
    _, num_frames, height, width = clip.shape
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    saw_nan = False
    chunk = 8
    for start in range(0, num_frames, chunk):
        part = clip[:, start : start + chunk].to(device="cpu", dtype=torch.float32)
        part = (part * 0.5 + 0.5).clamp(0.0, 1.0)
        if torch.isnan(part).any():
            saw_nan = True
            part = torch.nan_to_num(part, nan=0.0)
        part = part.permute(1, 2, 3, 0) * 255.0  # [f, H, W, 3]
        out[start : start + chunk] = part.numpy().astype(np.uint8)  # truncation, as the reference
    if saw_nan:
        warnings.warn("video contains NaN values; they were written as 0 (black)", RuntimeWarning, stacklevel=2)
    return out


# ---------------------------------------------------------------------------------------------------------
# Audio input (pipeline.md 7.2, codecs.md 4.1)
# ---------------------------------------------------------------------------------------------------------


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int = AUDIO_INPUT_SAMPLE_RATE,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode the first audio stream of a file to mono float32 (``pipeline.md`` 7.2, ``codecs.md`` 4.1).

    Mirrors the reference's ffmpeg/whisper loader through PyAV: one ``av.AudioResampler`` converts to
    **mono, signed 16-bit, ``sample_rate`` Hz** (libswresample defaults), then the samples are divided by
    32768. Going through 16-bit matters beyond precision: libswresample normalises the stereo-to-mono
    matrix only for integer output, so the mono signal is ``(L + R) / 2`` as in the reference (a float
    target would give ``0.707 * (L + R)``). Any file PyAV reads works (wav, mp3, m4a/aac, flac, ogg, or a
    video file with an audio track).

    Args:
        path: audio or video file.
        sample_rate: output rate in Hz; 51200 for the audio VAE (25 latents/s x 2048 hop).
        max_seconds: if given (> 0), keep only the first ``int(max_seconds * sample_rate)`` samples (the
            reference truncates to ``seconds * 51200``); decoding stops once enough is read. A shorter
            file is returned whole (callers that need an exact length must check ``len(result)``).

    Returns:
        ``np.ndarray`` float32 of shape ``[samples]``, values in ``[-1, 1)``, at ``sample_rate`` Hz.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable media file, no audio stream, no decodable samples, or bad
            ``sample_rate`` / ``max_seconds``.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    limit: int | None = None
    if max_seconds is not None:
        if (
            isinstance(max_seconds, bool)
            or not isinstance(max_seconds, (int, float, np.number))
            or not math.isfinite(max_seconds)
            or max_seconds <= 0
        ):
            raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}")
        limit = int(max_seconds * sample_rate)
        if limit < 1:
            raise ValueError(f"max_seconds={max_seconds} keeps no sample at {sample_rate} Hz; pass a longer time")
    src = _existing_file(path, "audio file")
    container = _open_input(src, "audio")
    try:
        if not container.streams.audio:
            raise ValueError(
                f"{str(src)!r} has no audio stream; pass a wav/mp3/m4a/flac file or a video with sound"
            )
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=int(sample_rate))
        chunks: list[np.ndarray] = []
        have = 0

        def _take(frames: list[av.AudioFrame]) -> None:
            nonlocal have
            for frame in frames:
                data = frame.to_ndarray().reshape(-1)
                chunks.append(data)
                have += data.shape[0]

        try:
            for frame in container.decode(stream):
                _take(resampler.resample(frame))
                if limit is not None and have >= limit:
                    break
            else:
                _take(resampler.resample(None))  # flush the resampler's delay line
        except av.error.FFmpegError as exc:
            raise ValueError(f"could not decode audio from {str(src)!r}: {exc}") from exc
    finally:
        container.close()
    if have == 0:
        raise ValueError(f"{str(src)!r}: the audio stream contains no decodable samples")
    samples = np.concatenate(chunks).astype(np.float32) / np.float32(32768.0)
    if limit is not None:
        samples = samples[:limit]
    return np.ascontiguousarray(samples, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# Output (pipeline.md 9.3; atomic writing and validation are our own design)
# ---------------------------------------------------------------------------------------------------------


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
            f"output file already exists: {str(target)!r}; pass overwrite=True (--overwrite) to replace it "
            "or choose another name"
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
    """Write H.264 video (+ optional AAC audio) to an MP4 file, atomically (``pipeline.md`` 9.3).

    Video: libx264, ``yuv420p`` (RGB converted by libswscale with its defaults, BT.601 limited range,
    untagged - what the reference's ffmpeg produced), constant rate factor ``crf`` (reference: 10), one
    frame every ``1/fps`` s; the file reads back as exactly ``F`` frames at ``fps``. Audio: native AAC at
    ``sample_rate`` with the encoder's default bit rate (the reference re-encodes its WAV with default AAC
    settings), samples clipped to ``[-1, 1]`` and fed in encoder ``frame_size`` chunks (1024), interleaved
    with the video by time. Both streams keep their full length (no ``-shortest``, pitfall 18): generated
    audio is usually 0.04-0.12 s longer than the video (pitfall 17).

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
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an integer in 0..51 (lower = better quality), got {crf!r}")
    if preset not in _X264_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(_X264_PRESETS)}, got {preset!r}")
    if num_frames is not None and (
        isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1
    ):
        raise ValueError(f"num_frames must be a positive integer or None, got {num_frames!r}")
    wave = None if audio is None else _prepare_audio(audio, sample_rate)

    frame_iter, height, width = _frame_source(frames, num_frames)
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        logger.warning(
            "frame size %dx%d is odd; yuv420p needs even sizes, padding to %dx%d by edge replication",
            width, height, width + pad_w, height + pad_h,
        )

    tmp = _reserve_temp(target)
    container = None
    try:
        container = av.open(os.fspath(tmp), mode="w", format="mp4")
        vstream = container.add_stream(_VIDEO_CODEC, rate=rate, options={"crf": str(int(crf)), "preset": preset})
        vstream.width = width + pad_w
        vstream.height = height + pad_h
        vstream.pix_fmt = _PIX_FMT
        astream = None
        if wave is not None:
            layout = "stereo" if wave.shape[0] == 2 else "mono"
            astream = container.add_stream(_AUDIO_CODEC, rate=int(sample_rate), layout=layout)
            if not astream.codec_context.is_open:
                astream.codec_context.open()
            chunk = astream.codec_context.frame_size or 1024
        audio_done = 0

        def _encode_audio_until(end: int, final: bool = False) -> None:
            """Encode whole ``chunk``-sample AAC frames up to sample ``end`` (and the remainder if final)."""
            nonlocal audio_done
            end = min(end, wave.shape[1])
            while end - audio_done >= chunk or (final and audio_done < end):
                stop = min(audio_done + chunk, end)
                block = np.ascontiguousarray(wave[:, audio_done:stop])
                aframe = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
                aframe.sample_rate = int(sample_rate)
                aframe.pts = audio_done
                aframe.time_base = Fraction(1, int(sample_rate))
                for packet in astream.encode(aframe):
                    container.mux(packet)
                audio_done = stop

        count = 0
        for frame in frame_iter:
            if count > 0:
                frame = _check_frame(frame, height, width, count)
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            vframe = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vframe.pts = count
            for packet in vstream.encode(vframe):
                container.mux(packet)
            count += 1
            if astream is not None:  # interleave: audio up to the end of this frame's display time
                _encode_audio_until(int(count / rate * sample_rate))
        if num_frames is not None and count != num_frames:
            raise ValueError(f"num_frames={num_frames} but the frame iterable yielded {count} frames")
        for packet in vstream.encode(None):
            container.mux(packet)
        if astream is not None:
            _encode_audio_until(wave.shape[1], final=True)
            for packet in astream.encode(None):
                container.mux(packet)
        container.close()
        container = None
        _commit(tmp, target, overwrite)
    except BaseException as exc:
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - already failing; the original error matters
                pass
        tmp.unlink(missing_ok=True)
        if isinstance(exc, av.error.FFmpegError):
            raise RuntimeError(f"encoding {str(target)!r} failed in libav: {exc}") from exc
        raise
    return target


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
    info: dict[str, Any] = {
        "path": str(src),
        "format": None,
        "num_video_streams": 0,
        "num_audio_streams": 0,
        "video_codec": None,
        "width": None,
        "height": None,
        "pix_fmt": None,
        "fps": None,
        "num_frames": None,
        "video_duration": None,
        "audio_codec": None,
        "sample_rate": None,
        "channels": None,
        "num_samples": None,
        "audio_duration": None,
        "audio_header_duration": None,
    }
    container = _open_input(src, "media")
    try:
        info["format"] = container.format.name
        info["num_video_streams"] = len(container.streams.video)
        info["num_audio_streams"] = len(container.streams.audio)
        try:
            if container.streams.video:
                vs = container.streams.video[0]
                rate = vs.average_rate or vs.guessed_rate
                fps = float(rate) if rate else None
                info.update(
                    video_codec=vs.codec_context.name,
                    width=vs.codec_context.width,
                    height=vs.codec_context.height,
                    pix_fmt=vs.codec_context.pix_fmt,
                    fps=fps,
                )
                info["num_frames"] = int(vs.frames)
                info["video_duration"] = vs.frames / fps if fps else None
            if container.streams.audio:
                ast = container.streams.audio[0]
                sr = ast.codec_context.sample_rate
                info.update(audio_codec=ast.codec_context.name, sample_rate=sr, channels=ast.codec_context.channels)
                if ast.duration and ast.time_base and sr:
                    info["audio_header_duration"] = float(ast.duration * ast.time_base)
                    info["num_samples"] = int(round(ast.duration * ast.time_base * sr))
                    info["audio_duration"] = info["num_samples"] / sr
            if count_frames and (container.streams.video or container.streams.audio):
                wanted = [*container.streams.video[:1], *container.streams.audio[:1]]
                frames = samples = 0
                for item in container.decode(*wanted):
                    if isinstance(item, av.VideoFrame):
                        frames += 1
                    else:
                        samples += item.samples
                if container.streams.video:
                    info["num_frames"] = frames
                    info["video_duration"] = frames / info["fps"] if info["fps"] else None
                if container.streams.audio:
                    info["num_samples"] = samples
                    sr = info["sample_rate"]
                    info["audio_duration"] = samples / sr if sr else None
        except av.error.FFmpegError as exc:
            raise ValueError(f"could not decode {str(src)!r}: {exc}") from exc
    finally:
        container.close()
    return info


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------

_X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what} must be a file path, got {type(path).__name__}")
    src = Path(os.fspath(path)).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"{what} not found: {str(src)!r}; check the path")
    if src.is_dir():
        raise ValueError(f"{what} path is a folder, not a file: {str(src)!r}")
    return src


def _open_input(src: Path, what: str) -> Any:
    try:
        return av.open(os.fspath(src), mode="r")
    except av.error.FFmpegError as exc:
        raise ValueError(f"not a readable {what} file: {str(src)!r} ({exc})") from exc


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
            f"output file appeared while encoding: {str(target)!r}; pass overwrite=True or choose another name"
        ) from None
    except OSError:  # file system without hard links: best effort
        if target.exists():
            raise FileExistsError(
                f"output file appeared while encoding: {str(target)!r}; pass overwrite=True or choose "
                "another name"
            ) from None
        os.replace(tmp, target)
        return
    tmp.unlink()
