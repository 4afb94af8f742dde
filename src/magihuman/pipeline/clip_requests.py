"""Requests that edit an existing clip: :class:`ExtendRequest` and :class:`RetakeRequest`, their checks and plans.

Both are checked completely before any model loads (:meth:`ExtendRequest.validate_inputs`), as a
:class:`~magihuman.pipeline.request.GenerationRequest` is: the numbers first, then the clip (opened and its
frames counted), then the prompt, device, checkpoints and memory through
:func:`magihuman.pipeline.validation.validate_request`. Every refusal is one
:class:`~magihuman.pipeline.errors.InputError` naming the field and the fix. The plans (:class:`ExtendPlan`,
:class:`RetakePlan`) are the latent arithmetic of docs/long_clips.md, torch-free:

* a clip of ``N`` frames at 25 fps is encoded as ``N' = 4((N - 1) // 4) + 1`` frames, ``T' = (N' - 1)//4 + 1``
  latent frames and ``N'`` audio latents (audio latent ``i`` lines up with frame ``i``);
* extend: the clip's last ``4(K - 1) + 1`` frames and audio latents are the clean prefix (``K`` latent
  frames), followed by ``n`` new latent frames (``4n`` new frames, ``4n`` new audio latents);
* retake: the range ``[start, end)`` is ``[f0, f1)`` in frames; the audio latents ``f0 .. f1 - 1`` and the
  latent frames whose pixel frames meet the range are regenerated inside one window around them; every
  other latent of the clip is held clean;
* both: at each picture join the ``fade_frames`` frames on the kept side fade from the clip's own frames into
  their decode from the held latents (docs/long_clips.md, "Joins in pixels"); no latent changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from magihuman.pipeline.errors import InputError, MissingInputError, expand_path
from magihuman.pipeline.presets import (
    DEFAULT_EXTEND_PREFIX_FRAMES,
    DEFAULT_FADE_FRAMES,
    DEFAULT_OVERLAP_FRAMES,
    DEFAULT_PRESET,
    DEFAULT_SECONDS,
    DEFAULT_SEED,
    get_preset,
)
from magihuman.pipeline.windows import TURBO_DECODE_CHUNKS, WindowPlan, plan_windows, window_latent_frames

__all__ = ["ExtendRequest", "RetakeRequest", "ExtendPlan", "RetakePlan", "RETAKE_TARGETS", "MIN_CLIP_FRAMES"]

#: What a retake regenerates inside its range.
RETAKE_TARGETS = ("both", "video", "audio")
#: Fewest frames of an input clip: two latent frames.
MIN_CLIP_FRAMES = 5
_FPS = 25
_STRIDE = 4


class _ClipEdit(BaseModel):
    """Fields shared by extend and retake (see the subclasses)."""

    model_config = ConfigDict(extra="forbid")

    clip: Path
    prompt: str
    width: int | None = None
    height: int | None = None
    seed: int = DEFAULT_SEED
    preset: str = DEFAULT_PRESET
    negative_prompt: str | None = None
    window_seconds: float | None = None
    fade_frames: int | None = None

    @field_validator("clip", mode="before")
    @classmethod
    def _no_empty_clip(cls, value: Any) -> Any:
        if value in ("", None):
            raise ValueError("clip is required: the path of the video to edit")
        return value

    def validate_inputs(self, *, device: Any = None, runtime: Any = None,
                        checkpoints: dict[str, Path] | None = None) -> list[str]:
        """Check every value and the clip before any model loads; returns notices.

        Raises:
            InputError: naming the field (``MissingInputError`` for a missing clip).
        """
        return self.plan(device=device, runtime=runtime, checkpoints=checkpoints).notices

    def plan(self, **checks: Any):  # pragma: no cover - overridden
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- shared checks
    def _window_frames(self) -> int:
        from magihuman.pipeline.validation import MAX_SECONDS

        window = self.window_seconds
        if window is not None and (not math.isfinite(window) or not 0 < window <= MAX_SECONDS):
            raise InputError(f"window_seconds must be in (0, {MAX_SECONDS:g}], got {window}; e.g. 5",
                             field="window_seconds")
        return window_latent_frames(window if window is not None else get_preset(self.preset).window_seconds)

    def _fade_frames(self) -> int:
        from magihuman.pipeline.validation import MAX_FADE_FRAMES

        fade = DEFAULT_FADE_FRAMES if self.fade_frames is None else self.fade_frames
        if isinstance(fade, bool) or not 0 <= fade <= MAX_FADE_FRAMES:
            raise InputError(f"fade_frames must be 0..{MAX_FADE_FRAMES} (0: a hard cut), got {fade}",
                             field="fade_frames")
        return fade

    def _check_preset(self) -> None:
        from magihuman.pipeline.presets import PRESETS

        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; choose distill or base", field="preset")
        if get_preset(self.preset).sr is not None:
            raise InputError(f"extend and retake run the distill and base presets; {self.preset} (super-resolution) "
                             "is not supported for them yet", field="preset")

    def _clip_info(self):
        from magihuman.pipeline.media.video import probe_clip
        from magihuman.pipeline.validation import MAX_LONG_SECONDS

        text = str(self.clip)
        if text.lower().startswith(("http:/", "https:/", "ftp:/")):
            raise InputError(f"clip URLs are not supported: {text}; download the file and pass its path", field="clip")
        path = expand_path(self.clip)
        if not path.exists():
            raise MissingInputError(f"clip not found: {path}; check the path", field="clip")
        try:
            info = probe_clip(path)
        except (ValueError, OSError) as exc:
            raise InputError(f"cannot use the clip: {exc}", field="clip") from None
        if info.num_frames < MIN_CLIP_FRAMES:
            raise InputError(f"the clip holds {info.num_frames} frames at 25 fps; at least {MIN_CLIP_FRAMES} "
                             f"({MIN_CLIP_FRAMES / _FPS:g} s) are needed", field="clip")
        if info.seconds > MAX_LONG_SECONDS + 0.5 / _FPS:
            raise InputError(f"the clip is {info.seconds:.2f} s long, over the limit of {MAX_LONG_SECONDS:g} s; "
                             "trim it first", field="clip")
        return info

    def _size(self, info) -> tuple[int, int, list[str]]:
        from magihuman.pipeline.validation import MAX_BASE_SIDE, MIN_SIZE

        if (self.width is None) != (self.height is None):
            raise InputError("give both width and height, or neither (the clip's own size)",
                             field="height" if self.height is None else "width")
        width, height = (self.width, self.height) if self.width is not None else (info.width, info.height)
        rounded = (width // MIN_SIZE * MIN_SIZE, height // MIN_SIZE * MIN_SIZE)
        given = self.width is not None
        for name, value in zip(("width", "height"), rounded):
            if value < MIN_SIZE or value > MAX_BASE_SIDE:
                where = f"{name}={width if name == 'width' else height}" if given else f"the clip's {name}"
                raise InputError(f"{where} renders {value} px; extend and retake render {MIN_SIZE}..{MAX_BASE_SIDE} "
                                 "px a side: pass width and height (e.g. 448x256); the clip is cropped and resized "
                                 "to them", field=name if given else "width")
        notices = []
        if rounded != (info.width, info.height):
            notices.append(f"the clip is {info.width}x{info.height}; it is cropped and resized to {rounded[0]}x"
                           f"{rounded[1]} (multiples of {MIN_SIZE} px), the size of the output")
        return rounded[0], rounded[1], notices

    def _common_checks(self, seconds: float, width: int, height: int, checks: dict[str, Any]) -> list[str]:
        """Prompt, sizes, seed, negative prompt, device, checkpoints and memory, as for a generation of
        ``seconds`` (one window) at ``width`` x ``height``."""
        from magihuman.pipeline.request import GenerationRequest
        from magihuman.pipeline.validation import validate_request

        proxy = GenerationRequest.model_construct(  # the other fields keep their defaults
            prompt=self.prompt, seconds=seconds, width=width, height=height, seed=self.seed, preset=self.preset,
            negative_prompt=self.negative_prompt)
        return [n for n in validate_request(proxy, **checks) if "rounded" not in n]


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a number of seconds, got {value!r}", field=name)
    return float(value)


@dataclass(frozen=True)
class ExtendPlan:
    """What an extend request does (module docstring).

    Attributes:
        width, height: the working and output size in pixels.
        clip_frames: ``N``, the clip's frames at 25 fps (all kept in the output).
        has_audio: whether the clip has sound (else its part of the output is silent).
        windows: the window plan of the generated sequence: the clip's last ``K`` latent frames (clean
            prefix) followed by the new ones.
        notices: messages for the user.
        fade_frames: frames before the join that fade into their decode, at most ``4(K - 1) + 1``.
    """

    width: int
    height: int
    clip_frames: int
    has_audio: bool
    windows: WindowPlan
    notices: list[str]
    fade_frames: int

    @property
    def prefix_frames(self) -> int:
        """``K``: latent frames of the clip held clean."""
        return self.windows.windows[0].clean_frames

    @property
    def prefix_pixel_frames(self) -> int:
        """``4(K - 1) + 1``: the clip's last frames that the prefix encodes."""
        return _STRIDE * (self.prefix_frames - 1) + 1

    @property
    def new_pixel_frames(self) -> int:
        """Frames added after the clip: ``4n``."""
        return _STRIDE * self.windows.new_frames


class ExtendRequest(_ClipEdit):
    """Continue a clip (docs/long_clips.md): ``seconds`` more, from its last frames and sound.

    Attributes:
        clip: the video to continue (never modified).
        prompt: what happens next.
        seconds: length of the continuation, rounded up to whole latent frames (4 frames, 0.16 s).
        width, height: working and output size (None: the clip's, rounded down to multiples of 32).
        seed, preset, negative_prompt: as in :class:`~magihuman.pipeline.request.GenerationRequest`
            (distill and base presets).
        window_seconds: window length of a long continuation (None: the preset's, 5 s).
        overlap_frames: ``K``, latent frames of the clip (and between windows) held clean (None: the clip's last
            ``DEFAULT_EXTEND_PREFIX_FRAMES`` (4), or as many as a shorter clip holds, and 2 between windows).
        fade_frames: frames before the join that fade from the clip's own into their decode, ``0..25``
            (None: 8; at most the ``4(K - 1) + 1`` frames the held latents re-create; 0: a hard cut).
    """

    seconds: float = DEFAULT_SECONDS
    overlap_frames: int | None = None

    def plan(self, *, device: Any = None, runtime: Any = None, checkpoints: dict[str, Path] | None = None,
             decode_chunks: tuple[int, int] | None = TURBO_DECODE_CHUNKS) -> ExtendPlan:
        """The checked plan (module docstring); ``decode_chunks`` as for
        :func:`~magihuman.pipeline.windows.plan_windows` (the loaded video decoder's, when it is known). Raises
        ``InputError`` naming the field."""
        from magihuman.pipeline.validation import MAX_LONG_SECONDS, MAX_OVERLAP_FRAMES

        seconds = _finite("seconds", self.seconds)
        if not 0 < seconds <= MAX_LONG_SECONDS:
            raise InputError(f"seconds (the continuation) must be in (0, {MAX_LONG_SECONDS:g}], got {seconds:g}",
                             field="seconds")
        fade = self._fade_frames()
        overlap = DEFAULT_OVERLAP_FRAMES if self.overlap_frames is None else self.overlap_frames
        if isinstance(overlap, bool) or not 1 <= overlap <= MAX_OVERLAP_FRAMES:
            raise InputError(f"overlap_frames must be 1..{MAX_OVERLAP_FRAMES}, got {overlap}", field="overlap_frames")
        self._check_preset()
        window = self._window_frames()
        if window <= overlap:
            raise InputError(f"a window of {window} latent frames must be longer than overlap_frames={overlap}",
                             field="window_seconds")
        info = self._clip_info()
        prefix = overlap
        if self.overlap_frames is None:  # as many as the clip and the window allow, up to the default
            prefix = min(DEFAULT_EXTEND_PREFIX_FRAMES, (info.num_frames - 1) // _STRIDE + 1, window - 1)
        prefix_pixels = _STRIDE * (prefix - 1) + 1
        if info.num_frames < prefix_pixels:
            raise InputError(f"the clip holds {info.num_frames} frames; overlap_frames={overlap} needs its last "
                             f"{prefix_pixels}: pass a smaller overlap_frames", field="overlap_frames")
        new = max(1, math.ceil(round(seconds * _FPS) / _STRIDE))
        notices = []
        if _STRIDE * new != round(seconds * _FPS):
            notices.append(f"the continuation is rounded up to {_STRIDE * new / _FPS:g} s (whole latent frames of "
                           f"{_STRIDE} frames)")
        width, height, more = self._size(info)
        total = prefix + new
        windows = plan_windows(total, _STRIDE * (total - 1) + 1, window_frames=window, overlap=overlap,
                               prefix_frames=prefix, decode_chunks=decode_chunks)
        first_window = (windows.windows[0].frames - 1) * _STRIDE / _FPS
        notices += more + self._common_checks(first_window, width, height,
                                              dict(device=device, runtime=runtime, checkpoints=checkpoints))
        if not info.has_audio:
            notices.append("the clip has no sound: its part of the output stays silent and the continuation's "
                           "sound starts from silence")
        return ExtendPlan(width, height, info.num_frames, info.has_audio, windows, notices,
                          min(fade, prefix_pixels))


@dataclass(frozen=True)
class RetakePlan:
    """What a retake request does (module docstring).

    Attributes:
        width, height: the working and output size in pixels.
        clip_frames: ``N``, the clip's frames at 25 fps (all kept outside the regenerated span).
        encoded_frames: ``N' = 4((N - 1)//4) + 1`` frames encoded (``T'`` latent frames, ``N'`` audio latents).
        has_audio: whether the clip has sound.
        target: ``"both"``, ``"video"`` or ``"audio"``.
        first_frame, end_frame: the range ``[f0, f1)`` in frames (= audio latents regenerated).
        first_latent, last_latent: the latent frames (inclusive) whose pixel frames meet the range.
        window_start, window_frames: the window (latent frames) the DiT sees.
        notices: messages for the user.
        fade_frames: frames on each side of the regenerated frames that fade into their decode.
    """

    width: int
    height: int
    clip_frames: int
    encoded_frames: int
    has_audio: bool
    target: str
    first_frame: int
    end_frame: int
    first_latent: int
    last_latent: int
    window_start: int
    window_frames: int
    notices: list[str]
    fade_frames: int

    @property
    def latent_frames(self) -> int:
        """``T'`` of the encoded clip."""
        return (self.encoded_frames - 1) // _STRIDE + 1

    @property
    def pixel_span(self) -> tuple[int, int]:
        """Frames ``[first, end)`` whose pixels the regenerated latent frames decode to."""
        first = 0 if self.first_latent == 0 else _STRIDE * self.first_latent - 3
        return first, _STRIDE * self.last_latent + 1

    @property
    def window_audio(self) -> tuple[int, int]:
        """Audio latents ``[start, stop)`` of the window (to the end of the clip for the last window)."""
        start = _STRIDE * self.window_start
        last = self.window_start + self.window_frames == self.latent_frames
        return start, self.encoded_frames if last else start + _STRIDE * (self.window_frames - 1) + 1


class RetakeRequest(_ClipEdit):
    """Regenerate a time range of a clip (docs/long_clips.md); the rest is held clean.

    Attributes:
        clip: the video to edit (never modified).
        prompt: what the range should show and say.
        start, end: the range in seconds, ``0 <= start < end <=`` the clip's length (1/25 s steps).
        target: ``"both"`` (default), ``"video"`` (the sound is kept) or ``"audio"`` (the frames are kept).
        width, height, seed, preset, negative_prompt, window_seconds: as in :class:`ExtendRequest`; the range
            must fit one window with a latent frame of context on each side.
        fade_frames: frames on each side of the regenerated ones that fade from the clip's own into their
            decode from the held latents, ``0..25`` (None: 8; 0: a hard cut, every frame outside the regenerated
            ones the clip's own). Video targets only.
    """

    start: float
    end: float
    target: Literal["both", "video", "audio"] = "both"

    def plan(self, *, device: Any = None, runtime: Any = None,
             checkpoints: dict[str, Path] | None = None) -> RetakePlan:
        """The checked plan (module docstring). Raises ``InputError`` naming the field."""
        start, end = _finite("start", self.start), _finite("end", self.end)
        if start < 0:
            raise InputError(f"start must be >= 0 s, got {start:g}", field="start")
        if end <= start:
            raise InputError(f"end ({end:g} s) must be after start ({start:g} s)", field="end")
        fade = self._fade_frames()
        self._check_preset()
        window = self._window_frames()
        info = self._clip_info()
        if end > info.seconds + 0.5 / _FPS:
            raise InputError(f"the range ends at {end:g} s, after the end of the clip ({info.seconds:.2f} s); "
                             f"pass end <= {info.seconds:.2f}", field="end")
        if self.target != "video" and not info.has_audio:
            raise InputError(f"the clip has no audio track, so there is no audio to retake (target={self.target}); "
                             "use target video", field="target")
        encoded = _STRIDE * ((info.num_frames - 1) // _STRIDE) + 1
        first, stop = round(start * _FPS), min(round(end * _FPS), info.num_frames)
        notices = []
        if stop <= first:
            raise InputError(f"the range {start:g}-{end:g} s is under one frame (1/25 s); widen it", field="end")
        if first >= encoded:
            raise InputError(f"the range starts in the clip's last {info.num_frames - encoded} frame(s), which no "
                             "latent frame covers (latents hold 4k+1 frames); start earlier", field="start")
        if stop > encoded:
            notices.append(f"the clip's last {info.num_frames - encoded} frame(s) are not covered by latents and "
                           "stay as they are")
            stop = encoded
        t0, t1 = (0 if first == 0 else (first + 3) // _STRIDE), (stop - 1 + 3) // _STRIDE
        total = (encoded - 1) // _STRIDE + 1
        window_start, frames = self._window(t0, t1, total, window)
        width, height, more = self._size(info)
        seconds = (frames - 1) * _STRIDE / _FPS or 1 / _FPS
        notices += more + self._common_checks(seconds, width, height,
                                              dict(device=device, runtime=runtime, checkpoints=checkpoints))
        if self.target != "audio" and not ((first == 0 or first % _STRIDE == 1) and stop % _STRIDE == 1):
            notices.append("video is regenerated in whole latent frames (4 frames): frames "
                           f"{max(0, 4 * t0 - 3)}-{4 * t1} change for the range's frames {first}-{stop - 1}")
        return RetakePlan(width, height, info.num_frames, encoded, info.has_audio, self.target, first, stop, t0, t1,
                          window_start, frames, notices, fade)

    def _window(self, t0: int, t1: int, total: int, window: int) -> tuple[int, int]:
        """The window (start, frames) around latent frames ``t0..t1``: the whole clip if it fits one window."""
        if total <= window:
            return 0, total
        span = t1 - t0 + 1
        if span > window - 2:
            most = (window - 2) * _STRIDE / _FPS
            raise InputError(f"the range covers {span} latent frames ({span * _STRIDE / _FPS:.2f} s); one retake "
                             f"regenerates at most {window - 2} ({most:.2f} s: a window of {window} latent frames with "
                             "one of context on each side); retake it in parts or raise window_seconds (at most 10)",
                             field="end")
        start = min(max(0, t0 - (window - span) // 2), total - window)
        return start, window
