"""Uploaded files: size-limited, identified by their content (never by name), stored under server-chosen names.

An upload arrives as a multipart file part (a spooled temporary file) or as a ``data:`` URL inside a JSON
body. Either way it is copied into the job's own folder under a fixed name (``input_reference.png``,
``audio.wav``, ...; the extension comes from the format found in the file's header, not from the client).
Then the request goes through the pipeline's input boundary
(:func:`magihuman.pipeline.validation.validate_request`), which decodes the image in full and the audio
far enough to prove them usable, as for the command line. A file that is not an accepted format, or that
does not decode, is refused with a :class:`RequestError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["RequestError", "BodyTooLarge", "Upload", "save_upload", "decode_data_url", "remove_folder",
           "IMAGE_FORMATS", "AUDIO_FORMATS", "VIDEO_FORMATS"]

#: Image formats accepted as ``input_reference`` (Pillow format name -> stored extension).
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}
#: Audio containers accepted as ``audio`` (PyAV format name part -> stored extension).
AUDIO_FORMATS = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg", "mov": ".m4a", "mp4": ".m4a",
                 "m4a": ".m4a", "aac": ".aac"}
#: Video containers accepted as a clip to edit (PyAV format name part -> stored extension).
VIDEO_FORMATS = {"mp4": ".mp4", "mov": ".mov", "webm": ".webm", "matroska": ".mkv"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


class RequestError(ValueError):
    """A request value the server refuses (HTTP 4xx).

    Attributes:
        field: the request field (or header) at fault, e.g. ``"seconds"``, ``"input_reference"``.
        code: machine-readable reason (``invalid_value``, ``file_too_large``, ``unreadable_file``, ...).
        status: HTTP status to answer with (400, 413, 415, ...).
    """

    def __init__(self, field: str | None, message: str, *, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.field, self.code, self.status = field, code, status


class BodyTooLarge(RequestError):
    """The request body exceeded the server's ``max_request_bytes``."""

    def __init__(self, limit: int):
        super().__init__("body", f"the request body exceeds {limit} bytes; send smaller files",
                         code="request_too_large", status=413)


@dataclass(frozen=True)
class Upload:
    """A stored, checked upload.

    Attributes:
        name: file name inside the job folder (chosen by the server).
        sha256: hex digest of its bytes (part of the request's idempotency fingerprint).
        size: bytes.
    """

    name: str
    sha256: str
    size: int


def decode_data_url(field: str, value: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:[mime];base64,...`` URL.

    Raises:
        RequestError: not a data URL (e.g. a path or a web URL), not base64, or larger than ``max_bytes``.
    """
    match = _DATA_URL.match(value)
    if match is None or not match.group("b64"):
        raise RequestError(field, f"{field} must be an uploaded file (multipart) or a base64 data URL "
                                f"('data:...;base64,...'); file paths and web URLs are not accepted",
                           code="invalid_file_reference")
    payload = value[match.end():]
    if len(payload) > (max_bytes * 4) // 3 + 8:
        raise RequestError(field, f"{field} is larger than the {max_bytes}-byte upload limit", code="file_too_large",
                           status=413)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, f"{field}: the data URL's base64 payload is malformed",
                           code="invalid_base64") from None


def save_upload(field: str, source: BinaryIO | bytes, folder: Path, max_bytes: int) -> Upload:
    """Copy an upload into ``folder`` and identify its format from its content.

    Args:
        field: ``"input_reference"`` (an image), ``"audio"`` (a driving track) or ``"video"`` (a clip to edit).
        source: a binary file object positioned at the start, or the bytes themselves.
        folder: the job's folder (exists).
        max_bytes: size limit in bytes.

    Returns:
        The stored :class:`Upload`.

    Raises:
        RequestError: empty, larger than ``max_bytes`` (413), or not an accepted image / audio format (415).
    """
    staging = folder / f".{field}.upload"
    digest = hashlib.sha256()
    size = 0
    with open(staging, "xb") as out:
        chunks = [source] if isinstance(source, bytes) else iter(lambda: source.read(1 << 20), b"")
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                out.close()
                staging.unlink(missing_ok=True)
                raise RequestError(field, f"{field} is larger than the {max_bytes}-byte upload limit",
                                   code="file_too_large", status=413)
            digest.update(chunk)
            out.write(chunk)
    try:
        if size == 0:
            raise RequestError(field, f"{field} is an empty file", code="empty_file")
        check = {"input_reference": _check_image, "video": _check_video}.get(field, _check_audio)
        extension = check(field, staging)
        name = f"{field}{extension}"
        os.replace(staging, folder / name)
    finally:
        staging.unlink(missing_ok=True)
    return Upload(name, digest.hexdigest(), size)


def _check_image(field: str, path: Path) -> str:
    """The stored extension of an accepted image, from its header; its pixels are decoded by the input boundary."""
    import PIL.Image

    from magihuman.pipeline.validation import MAX_IMAGE_PIXELS

    try:
        with PIL.Image.open(path) as image:  # reads the header only
            kind, (width, height) = image.format, image.size
    except PIL.Image.DecompressionBombError:
        raise RequestError(field, f"{field} declares more than {MAX_IMAGE_PIXELS} pixels; send a smaller image",
                           code="image_too_large", status=413) from None
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(field, f"{field} is not a readable image ({type(exc).__name__}); send a PNG, JPEG, "
                                  "WebP or BMP file", code="unreadable_file", status=415) from None
    if kind not in IMAGE_FORMATS:
        raise RequestError(field, f"{field} is a {kind} image; send PNG, JPEG, WebP or BMP",
                           code="unsupported_file", status=415)
    if width * height > MAX_IMAGE_PIXELS:
        raise RequestError(field, f"{field} is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS} are accepted",
                           code="image_too_large", status=413)
    return IMAGE_FORMATS[kind]


def _check_audio(field: str, path: Path) -> str:
    """The stored extension of an accepted audio container (probed by PyAV); its samples are decoded by the
    input boundary."""
    import av

    try:
        with av.open(os.fspath(path), mode="r") as container:
            names, streams = container.format.name.split(","), len(container.streams.audio)
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        reason = str(exc).replace(str(path), field)
        raise RequestError(field, f"{field} is not a readable audio file ({reason}); send WAV, MP3, FLAC, OGG or "
                                  "M4A", code="unreadable_file", status=415) from None
    if not streams:
        raise RequestError(field, f"{field} has no audio stream; send WAV, MP3, FLAC, OGG or M4A",
                           code="unreadable_file", status=415)
    for name in names:
        if name in AUDIO_FORMATS:
            return AUDIO_FORMATS[name]
    raise RequestError(field, f"{field} is in the {names[0]} container; send WAV, MP3, FLAC, OGG or M4A",
                       code="unsupported_file", status=415)


def _check_video(field: str, path: Path) -> str:
    """The stored extension of an accepted video container with a video stream (probed by PyAV); its frames are
    decoded by the input boundary (extend, retake)."""
    import av

    try:
        with av.open(os.fspath(path), mode="r") as container:
            names, streams = container.format.name.split(","), len(container.streams.video)
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        reason = str(exc).replace(str(path), field)
        raise RequestError(field, f"{field} is not a readable video file ({reason}); send MP4, MOV, MKV or WebM",
                           code="unreadable_file", status=415) from None
    if not streams:
        raise RequestError(field, f"{field} has no video stream; send a clip", code="unreadable_file", status=415)
    for name, extension in VIDEO_FORMATS.items():  # libav names MP4 "mov,mp4,...": prefer .mp4
        if name in names:
            return extension
    raise RequestError(field, f"{field} is in the {names[0]} container; send MP4, MOV, MKV or WebM",
                       code="unsupported_file", status=415)


def remove_folder(folder: Path) -> None:
    """Delete a job folder and everything in it; a missing folder is fine."""
    shutil.rmtree(folder, ignore_errors=True)
