"""One toy clip: :func:`make_clip` draws the attributes, speaks the words and renders the frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magihuman.toy.attributes import ToyAttributes, sample_attributes
from magihuman.toy.captions import make_caption
from magihuman.toy.drawing import MAX_OFFSET, draw_frame
from magihuman.toy.palette import SHIRT_COLOURS
from magihuman.toy.voice import OPEN_RMS, SAMPLE_RATE, Speech, frame_loudness, synthesise_speech

__all__ = ["FPS", "NUM_FRAMES", "SECONDS", "VARIANTS", "ToyClip", "make_clip", "render_clip"]

FPS = 25
SECONDS = 2.0
#: Pixel frames of a 2 s clip as the pipeline makes it: L_a = 51 audio latents, T = 13 latent frames,
#: F = 4 (T - 1) + 1 = 49 (architecture.md §13.2).
NUM_FRAMES = 49
#: ``"t2v"``: text only, the person centred; ``"i2v"``: the first frame is given and the person is shifted.
VARIANTS = ("t2v", "i2v")
_BLINK_FRAMES = 3


@dataclass(frozen=True)
class ToyClip:
    """A synthetic talking clip and its ground truth.

    Attributes:
        seed: what :func:`make_clip` was called with.
        variant: ``"t2v"`` or ``"i2v"`` (first-frame clip).
        attributes: what the clip shows and says.
        caption: its prompt.
        frames: ``uint8 [F, H, W, 3]`` RGB at :data:`FPS`.
        audio: ``float32 [2, S]`` stereo (both channels equal) at :data:`SAMPLE_RATE`, :data:`SECONDS` long.
        mouth_opening: ``float32 [F]`` in [0, 1], drawn in each frame.
        loudness: ``float32 [F]`` RMS of the voice over each frame's interval.
        eyes_open: ``bool [F]``.
        segments: ``(start, end)`` seconds of each spoken word.
        f0: the voice's base fundamental in Hz.
    """

    seed: int | tuple[int, ...]
    variant: str
    attributes: ToyAttributes
    caption: str
    frames: np.ndarray
    audio: np.ndarray
    mouth_opening: np.ndarray
    loudness: np.ndarray
    eyes_open: np.ndarray
    segments: tuple[tuple[float, float], ...]
    f0: float
    fps: int = FPS
    sample_rate: int = SAMPLE_RATE

    @property
    def image(self) -> np.ndarray | None:
        """The first frame for first-frame (``i2v``) clips, else None."""
        return self.frames[0] if self.variant == "i2v" else None


def make_clip(seed: int | tuple[int, ...], *, variant: str | None = None,
              shirt_colours: tuple[str, ...] = SHIRT_COLOURS, attributes: ToyAttributes | None = None) -> ToyClip:
    """A deterministic clip: the same ``seed`` (and arguments) always gives the same pixels and samples.

    Args:
        seed: an int or a tuple of ints (e.g. ``(dataset_seed, stream, index)``) for ``numpy.random.default_rng``.
        variant: ``"t2v"``, ``"i2v"``, or None to draw one (half each).
        shirt_colours: the shirt colours to draw from.
        attributes: use these instead of drawing them (the seed still sets timing, pitch, blinks, wording).

    Raises:
        ValueError: an unknown variant.
    """
    rng = np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed)
    chosen = str(rng.choice(VARIANTS)) if variant is None else variant
    if chosen not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)} or None, got {variant!r}")
    max_offset = MAX_OFFSET if chosen == "i2v" else (0, 0)
    drawn = sample_attributes(rng, max_offset=max_offset, shirt_colours=shirt_colours)
    attributes = drawn if attributes is None else attributes
    caption = make_caption(attributes, rng)
    speech = synthesise_speech(attributes.words, attributes.voice, rng, seconds=SECONDS)
    return render_clip(seed, chosen, attributes, caption, speech, _blinks(rng))


def render_clip(seed, variant: str, attributes: ToyAttributes, caption: str, speech: Speech,
                eyes_open: np.ndarray, *, num_frames: int = NUM_FRAMES) -> ToyClip:
    """Frames from the speech's loudness (mouth) and the blink track; see :class:`ToyClip`."""
    loudness = frame_loudness(speech.waveform, num_frames, fps=FPS, sample_rate=SAMPLE_RATE)
    opening = np.clip(loudness / OPEN_RMS, 0.0, 1.0).astype(np.float32)
    frames = np.stack([draw_frame(attributes, float(o), bool(e)) for o, e in zip(opening, eyes_open)])
    audio = np.stack([speech.waveform, speech.waveform])
    return ToyClip(seed, variant, attributes, caption, frames, audio, opening, loudness, eyes_open,
                   speech.segments, speech.f0)


def _blinks(rng: np.random.Generator, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Eyes open except 3-frame blinks every 0.8-1.6 s, the first after 0.2-1.0 s."""
    eyes = np.ones(num_frames, dtype=bool)
    t = rng.uniform(0.2, 1.0)
    while (start := int(t * FPS)) < num_frames:
        eyes[start:start + _BLINK_FRAMES] = False
        t += rng.uniform(0.8, 1.6)
    return eyes
