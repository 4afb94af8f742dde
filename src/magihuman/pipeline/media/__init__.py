"""Media input and output: reference image, driving audio, pixel conversion and MP4 writing.

Everything here is plain CPU work around the models, one module per concern:

* :mod:`~magihuman.pipeline.media.image`: the conditioning image (architecture.md §9.1):
  :func:`load_image`, :func:`center_crop_box`, :func:`preprocess_image`, :func:`check_image_file`;
* :mod:`~magihuman.pipeline.media.audio`: driving audio (architecture.md §9.2, §11.5):
  :func:`load_audio`, :func:`check_audio_file`;
* :mod:`~magihuman.pipeline.media.pixels`: decoded pixels to ``uint8`` (architecture.md §12.1):
  :func:`video_to_uint8`;
* :mod:`~magihuman.pipeline.media.mp4`: the output file (architecture.md §12.3, our own design where
  noted): :func:`check_output_path`, :func:`write_mp4`;
* :mod:`~magihuman.pipeline.media.probe`: container facts, :func:`probe_media`;
* :mod:`~magihuman.pipeline.media.video`: an input clip (extend, retake): :func:`probe_clip`,
  :func:`read_clip_frames`.

Decoding and encoding go through PyAV only (it bundles libav with libx264 and the native AAC
encoder). No ``ffmpeg`` executable is needed or called. The names below are re-exported lazily, so
importing this package costs nothing until one is used.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "load_image": "image", "center_crop_box": "image", "preprocess_image": "image", "check_image_file": "image",
    "AUDIO_INPUT_SAMPLE_RATE": "audio", "load_audio": "audio", "check_audio_file": "audio",
    "video_to_uint8": "pixels",
    "DEFAULT_CRF": "mp4", "DEFAULT_FPS": "mp4", "OUTPUT_AUDIO_SAMPLE_RATE": "mp4", "check_output_path": "mp4",
    "write_mp4": "mp4",
    "probe_media": "probe",
    "ClipInfo": "video", "probe_clip": "video", "read_clip_frames": "video", "CLIP_FPS": "video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
