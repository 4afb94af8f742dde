"""Windows of a long clip: which latent frames and audio latents each generation window covers (ours).

A clip longer than one window is generated window by window, each window at most ``T_w`` latent frames (the
memory of one window, whatever the length). Window ``w`` covers latent frames ``[start_w, start_w + T_w')``
(``T_w' = T_w``, or up to 3 fewer: below); each window starts ``K`` frames (the overlap) before the previous one
ends, and the last one is ``T_w`` long and moved back to end at the clip's last frame, so it may overlap its
predecessor by more than ``K``. The frames a window shares with the previous one are held clean at the previous
window's values (video and the matching audio latents; the first video frame rebuilt as a first frame,
:func:`magihuman.pipeline.long_generation.first_frame_latent`), and the joined clip keeps each latent once.

Time alignment (the convention of :mod:`magihuman.sampling.conditioning`): a window starting at latent frame
``s`` starts at audio latent ``4s``; it holds ``4(T_w' - 1) + 1`` audio latents for its ``T_w'`` frames (the
last window: all that are left, up to 3 more, as a single pass has ``25 s + 1``); its ``c`` leading clean frames
go with its ``4(c - 1) + 1`` leading audio latents.

Joins and the video decoder's chunks: the Turbo-VAED decoder decodes in chunks of latent frames (the first
``F``, then every ``S``; 7 and 7 in the official config ``TurboV3-Wan22-TinyShallow_7_7.json``, architecture.md
§11.4), so a new decoder chunk starts at latent frames ``F + kS``. A join within one latent frame of such a chunk
border shows as a larger step between frames than a join elsewhere (measured on the toy model:
docs/benchmarks.md, "Joins away from the decoder's chunk borders"). So a window that another follows ends up to 3
latent frames early, the least that puts its end (the next join) 2 or more latent frames from every chunk border;
the overlap stays ``K``, so every window is conditioned as before. The first window keeps ``T_w`` (the single pass
of that length), so the first join, at ``T_w``, does not move. The generation reads ``F`` and ``S`` from the loaded
decoder (:func:`decoder_chunks`); the Wan2.2 VAE decoder decodes the clip in one causal pass without chunks, so with
it the windows are all ``T_w`` long. Checks made before any model loads assume the default decoder's chunks,
:data:`TURBO_DECODE_CHUNKS`.

Torch-free: the input boundary plans a request's windows before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TURBO_DECODE_CHUNKS", "Window", "WindowPlan", "decoder_chunks", "near_decode_border", "plan_windows",
           "window_latent_frames"]

_STRIDE = 4  # pixel frames (and audio latents) per latent frame after the first (architecture.md §11.3)
#: ``(first_chunk_size, step_size)`` of the official Turbo-VAED config (codecs: TurboV3-Wan22-TinyShallow_7_7.json)
TURBO_DECODE_CHUNKS = (7, 7)
_MAX_SHIFT = 3  # latent frames a window may end early to keep the next join off a decoder chunk border


def window_latent_frames(window_seconds: float) -> int:
    """Latent frames of a window of ``window_seconds``: ``(round(25 s)) // 4 + 1`` (architecture.md §13.2)."""
    return int(round(window_seconds * 25)) // _STRIDE + 1


@dataclass(frozen=True)
class Window:
    """One generation window.

    Attributes:
        index: 0-based position in the plan.
        start: first latent frame of the clip it covers.
        frames: latent frames it covers (``T_w``, or up to 3 fewer to keep its end off a decoder chunk border).
        clean_frames: its leading latent frames held clean (from the previous window, or a given prefix).
        audio_start: first audio latent it covers (``4 * start``).
        audio_latents: audio latents it covers.
    """

    index: int
    start: int
    frames: int
    clean_frames: int
    audio_start: int
    audio_latents: int

    @property
    def stop(self) -> int:
        """One past its last latent frame."""
        return self.start + self.frames

    @property
    def clean_audio_latents(self) -> int:
        """Leading audio latents held clean: ``4(c - 1) + 1`` for ``c`` clean frames (0 for none)."""
        return 0 if self.clean_frames == 0 else _STRIDE * (self.clean_frames - 1) + 1


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one clip.

    Attributes:
        latent_frames: ``T`` of the whole clip.
        audio_latents: ``A`` of the whole clip (at least ``4(T - 1) + 1``).
        windows: the windows in generation order.
    """

    latent_frames: int
    audio_latents: int
    windows: tuple[Window, ...]

    @property
    def new_frames(self) -> int:
        """Latent frames the plan generates (the clip minus a given clean prefix)."""
        return self.latent_frames - self.windows[0].clean_frames

    @property
    def joins(self) -> list[int]:
        """Latent frame where each window after the first starts generating (``start + clean_frames``): the join
        lies just before it (:func:`magihuman.eval.seams.seam_frames` gives the pixel frames)."""
        return [w.start + w.clean_frames for w in self.windows[1:]]


def decoder_chunks(decoder: object) -> tuple[int, int] | None:
    """``(first_chunk_size, step_size)`` of a video decoder that decodes in sliding-window chunks (Turbo-VAED: its
    loaded config, :class:`magihuman.codecs.turbo_vae_config.TurboVAEConfig`), or None for one that decodes the
    clip in one causal pass without chunk borders (the Wan2.2 VAE decoder); for :func:`plan_windows`."""
    config = getattr(decoder, "config", None)
    first, step = getattr(config, "first_chunk_size", None), getattr(config, "step_size", None)
    return (first, step) if isinstance(first, int) and isinstance(step, int) else None


def near_decode_border(join: int, decode_chunks: tuple[int, int] = TURBO_DECODE_CHUNKS) -> bool:
    """Whether a join before latent frame ``join`` lies within one latent frame of a decoder chunk border (the
    first latent frame of a chunk after the first: ``F + kS`` for ``decode_chunks = (F, S)``, ``k >= 0``; the
    chunking of the reference's sliding-window Turbo-VAED decode, ``first_chunk_size`` and ``step_size`` of its
    config). Positions are latent frames of the decoded sequence; raises nothing."""
    first, step = decode_chunks
    if join <= first:
        return first - join <= 1
    offset = (join - first) % step
    return offset <= 1 or offset >= step - 1


def plan_windows(latent_frames: int, audio_latents: int, *, window_frames: int, overlap: int,
                 prefix_frames: int = 0, decode_chunks: tuple[int, int] | None = TURBO_DECODE_CHUNKS) -> WindowPlan:
    """Windows of ``window_frames`` latent frames covering ``latent_frames`` frames (module docstring).

    Args:
        latent_frames: ``T`` of the whole clip.
        audio_latents: ``A`` of the whole clip, ``>= 4(T - 1) + 1``.
        window_frames: ``T_w``; a clip no longer than it is one window of ``T`` frames.
        overlap: ``K``, latent frames each window shares with the previous one (at least 1).
        prefix_frames: leading latent frames of the clip already given (extend), held clean in the first
            window.
        decode_chunks: ``(F, S)`` of the video decoder's chunks; a window followed by another ends up to 3
            latent frames early to keep the next join off a chunk border (module docstring). ``None``: every
            window ``T_w`` long.

    Returns:
        The :class:`WindowPlan`.

    Raises:
        ValueError: a window that cannot generate anything (``T_w <= K``, or a prefix as long as the first
            window), too few audio latents, or a non-positive size.
    """
    if latent_frames < 1 or window_frames < 1:
        raise ValueError(f"latent_frames and window_frames must be >= 1, got {latent_frames} and {window_frames}")
    if audio_latents < _STRIDE * (latent_frames - 1) + 1:
        raise ValueError(f"{audio_latents} audio latents are too few for {latent_frames} latent frames "
                         f"(at least {_STRIDE * (latent_frames - 1) + 1})")
    if latent_frames > window_frames and not 1 <= overlap < window_frames:
        raise ValueError(f"overlap must be 1..{window_frames - 1} latent frames for windows of {window_frames}, "
                         f"got {overlap}")
    first = min(latent_frames, window_frames)
    if not 0 <= prefix_frames < first:
        raise ValueError(f"a clean prefix of {prefix_frames} latent frames leaves nothing to generate in a first "
                         f"window of {first}")
    spans = [(0, first)]  # the first window keeps T_w: it is the single pass of that length
    while sum(spans[-1]) < latent_frames:
        start = sum(spans[-1]) - overlap
        if start + window_frames >= latent_frames:  # the last window: T_w long, ending with the clip
            spans.append((latent_frames - window_frames, window_frames))
        else:
            spans.append((start, _frames_before_join(start, window_frames, overlap, latent_frames, decode_chunks)))
    windows = []
    for index, (start, frames) in enumerate(spans):
        clean = prefix_frames if index == 0 else sum(spans[index - 1]) - start
        last = index == len(spans) - 1
        audio = audio_latents - _STRIDE * start if last else _STRIDE * (frames - 1) + 1
        windows.append(Window(index, start, frames, clean, _STRIDE * start, audio))
    return WindowPlan(latent_frames, audio_latents, tuple(windows))


def _frames_before_join(start: int, frames: int, clean: int, latent_frames: int,
                        decode_chunks: tuple[int, int] | None) -> int:
    """Latent frames of a window at ``start`` holding ``clean`` clean frames: ``frames``, or up to 3 fewer when
    another window follows and its end would lie within one latent frame of a decoder chunk border."""
    if decode_chunks is None or start + frames >= latent_frames:
        return frames
    for shorter in range(frames, max(frames - _MAX_SHIFT, clean + 1) - 1, -1):
        if not near_decode_border(start + shorter, decode_chunks):
            return shorter
    return frames
