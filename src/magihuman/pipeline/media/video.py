"""Reading an input clip (extend, retake; docs/long_clips.md): facts, and its frames at 25 fps and a given size.

Frames are taken at ``t_k = k / 25`` s from the first frame's time: frame ``k`` is the latest decoded frame
whose time is not after ``t_k`` (a 25 fps clip gives back its own frames, others are resampled by holding
frames). A clip of another size is centre-cropped to the target's aspect and resized with Lanczos, as the
first-frame image is (architecture.md §9.1); at the target size the decoded pixels are kept as they are.
Sound is read with :func:`magihuman.pipeline.media.audio.load_audio` (mono, 51.2 kHz).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

__all__ = ["ClipInfo", "probe_clip", "read_clip_frames", "CLIP_FPS"]

#: Frame rate clips are read at: the model's 25 fps (architecture.md §13.3).
CLIP_FPS = 25


@dataclass(frozen=True)
class ClipInfo:
    """Facts of an input clip.

    Attributes:
        path: the file.
        width, height: stored frame size in pixels.
        fps: its frame rate (frames per second).
        num_frames: frames it has at 25 fps (``round(frames * 25 / fps)``).
        has_audio: whether it has an audio stream.
    """

    path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    has_audio: bool

    @property
    def seconds(self) -> float:
        """Duration of the video at 25 fps, seconds."""
        return self.num_frames / CLIP_FPS


def probe_clip(path: str | os.PathLike) -> ClipInfo:
    """Open a clip and count its frames (one decoding pass over the video).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable video file, no video stream, or no decodable frame.
    """
    from magihuman.pipeline.media.probe import probe_media

    info = probe_media(path, count_frames=True)
    if not info["num_video_streams"]:
        raise ValueError(f"{info['path']!r} has no video stream; pass a video clip (e.g. an MP4)")
    if not info["num_frames"]:
        raise ValueError(f"{info['path']!r}: the video stream holds no decodable frame")
    fps = info["fps"] or CLIP_FPS
    frames = max(1, int(round(info["num_frames"] * CLIP_FPS / fps)))
    return ClipInfo(Path(info["path"]), int(info["width"]), int(info["height"]), float(fps), frames,
                    bool(info["num_audio_streams"]))


def read_clip_frames(path: str | os.PathLike, *, width: int, height: int, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` frames of a clip at 25 fps, at ``width`` x ``height`` (module docstring).

    Returns:
        ``uint8 [num_frames, height, width, 3]`` RGB.

    Raises:
        ValueError: the clip holds fewer frames than asked, or cannot be decoded.
    """
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    filled, start = 0, None
    try:
        with av.open(os.fspath(path)) as container:
            stream = container.streams.video[0]
            previous = None
            for frame in container.decode(stream):
                time = float(frame.pts * stream.time_base) if frame.pts is not None else filled / CLIP_FPS
                start = time if start is None else start
                first_k = max(0, math.ceil((time - start) * CLIP_FPS - 1e-6))  # frames k shown at or after this one
                while filled < min(first_k, num_frames):  # the previous frame holds until this one's time
                    out[filled] = previous
                    filled += 1
                if filled >= num_frames:
                    break
                previous = _resized(frame, width, height)
            while filled < num_frames and previous is not None:  # the last frame holds to the end
                out[filled] = previous
                filled += 1
    except av.error.FFmpegError as exc:
        raise ValueError(f"could not decode the video of {os.fspath(path)!r}: {exc}") from exc
    if filled < num_frames:
        raise ValueError(f"{os.fspath(path)!r} holds {filled} frames at 25 fps, {num_frames} were asked for")
    return out


def _resized(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """One decoded frame as ``uint8 [height, width, 3]``: as decoded at that size, else cropped and resized."""
    if (frame.width, frame.height) == (width, height):
        return frame.to_ndarray(format="rgb24")
    import PIL.Image

    from magihuman.pipeline.media.image import center_crop_box

    image = frame.to_image()
    image = image.crop(center_crop_box(image.width, image.height, width, height))
    return np.asarray(image.resize((width, height), PIL.Image.Resampling.LANCZOS), dtype=np.uint8)
