"""Clean conditions: latent positions held at given clean values while the rest is denoised.

Image-to-video (architecture.md §9.1) holds latent frame 0 at the clean image latent: it is written over
the state before every model call (both guidance calls see it) and once after the loop; the scheduler
still updates it in between and its history holds the written values; nothing else marks the frame.
:class:`CleanCondition` is that rule for any set of positions: a clean video latent with a per-latent-frame
mask ``[T]`` and a clean audio latent with a per-audio-latent mask ``[A]``. Masked positions are written
over the state before every model call and in the result; unmasked positions are denoised as usual.
The first-frame case (:meth:`CleanCondition.first_frame`) writes the same values at the same moments,
so its results are bit-identical to the plain image-to-video loop.

The time convention (ours, shared with the trainer; docs/long_clips.md):

* video latent frame ``t`` covers pixel frames ``4t - 3 .. 4t``; frame 0 covers pixel frame 0 alone
  (the causal first frame of the Wan2.2 VAE, architecture.md §11.3);
* audio latents run at 25 per second, so audio latent ``i`` lines up with pixel frame ``i``
  (architecture.md §13.2);
* a clean video prefix of ``P`` latent frames goes with the clean audio latents ``0 .. 4(P - 1)``
  (:func:`prefix_audio_latents`).

The trainer writes clean latents at the same positions and leaves them out of the loss. The published
15B checkpoints were trained with first-frame conditioning only; how they behave with other masks has
not been measured (docs/long_clips.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from magihuman.sampling.records import Latents

__all__ = ["CleanCondition", "frame_span", "latent_frame_of", "prefix_audio_latents", "latent_frames_touching",
           "TEMPORAL_STRIDE"]

#: Pixel frames per latent frame after the first (architecture.md §11.3); audio latents per latent frame.
TEMPORAL_STRIDE = 4


def frame_span(t: int) -> tuple[int, int]:
    """Pixel frames ``(first, last)`` (inclusive) that video latent frame ``t`` covers: ``(0, 0)`` for frame 0,
    else ``(4t - 3, 4t)`` (module docstring).

    Raises:
        ValueError: for a negative ``t``.
    """
    if t < 0:
        raise ValueError(f"latent frame index must be >= 0, got {t}")
    return (0, 0) if t == 0 else (TEMPORAL_STRIDE * t - 3, TEMPORAL_STRIDE * t)


def latent_frame_of(pixel_frame: int) -> int:
    """The video latent frame that covers ``pixel_frame``: 0 for frame 0, else ``ceil(p / 4)``.

    Raises:
        ValueError: for a negative frame.
    """
    if pixel_frame < 0:
        raise ValueError(f"pixel frame index must be >= 0, got {pixel_frame}")
    return (pixel_frame + TEMPORAL_STRIDE - 1) // TEMPORAL_STRIDE


def latent_frames_touching(first_pixel: int, end_pixel: int) -> range:
    """Latent frames whose pixel frames meet ``[first_pixel, end_pixel)`` (a half-open pixel range).

    Raises:
        ValueError: for an empty or negative range.
    """
    if not 0 <= first_pixel < end_pixel:
        raise ValueError(f"pixel range [{first_pixel}, {end_pixel}) is empty or negative")
    return range(latent_frame_of(first_pixel), latent_frame_of(end_pixel - 1) + 1)


def prefix_audio_latents(prefix_frames: int) -> int:
    """Audio latents that go with a clean video prefix of ``P`` latent frames: ``4(P - 1) + 1`` (0 for P = 0)."""
    if prefix_frames < 0:
        raise ValueError(f"prefix_frames must be >= 0, got {prefix_frames}")
    return 0 if prefix_frames == 0 else TEMPORAL_STRIDE * (prefix_frames - 1) + 1


def _check_pair(name: str, values, mask, ndim: int, axis: int, layout: str) -> None:
    if (values is None) != (mask is None):
        raise ValueError(f"give both {name} and {name}_mask, or neither")
    if values is None:
        return
    if not isinstance(values, torch.Tensor) or values.ndim != ndim or values.dtype != torch.float32:
        got = f"{tuple(values.shape)} {values.dtype}" if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"condition {name} must be a float32 tensor {layout}, got {got}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 1:
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"condition {name}_mask must be a 1-d bool tensor, got {got}")
    if mask.shape[0] != values.shape[axis]:
        raise ValueError(f"condition {name}_mask has {mask.shape[0]} entries, {name} has {values.shape[axis]} "
                         f"positions on axis {axis}")


@dataclass(frozen=True)
class CleanCondition:
    """Latent positions held at clean values during denoising (module docstring; architecture.md §9.1 generalised).

    Attributes:
        video: ``[B, 48, T, h, w]`` float32 clean video latent (normalised Wan2.2 space); only the frames
            where ``video_mask`` is True are read. None: no video position is held.
        video_mask: ``[T]`` bool, True where latent frame ``t`` is held clean.
        audio: ``[B, A, 64]`` float32 clean audio latent; only the latents where ``audio_mask`` is True are
            read. None: no audio position is held.
        audio_mask: ``[A]`` bool, True where audio latent ``i`` is held clean.

    Raises:
        ValueError: a value without its mask (or the reverse), a wrong rank or dtype, or a mask whose length
            differs from its latent's time axis.
    """

    video: torch.Tensor | None = None
    video_mask: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    audio_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_pair("video", self.video, self.video_mask, 5, 2, "[B, 48, T, h, w]")
        _check_pair("audio", self.audio, self.audio_mask, 3, 1, "[B, A, 64]")

    # --------------------------------------------------------------------------------------- builders
    @classmethod
    def first_frame(cls, image_latent: torch.Tensor, num_frames: int) -> CleanCondition:
        """Image-to-video (architecture.md §9.1): latent frame 0 held at ``image_latent`` ``[B, 48, 1, h, w]``
        float32 in a video of ``num_frames`` latent frames (no copy: the image is broadcast over time)."""
        if not isinstance(image_latent, torch.Tensor) or image_latent.ndim != 5 or image_latent.shape[2] != 1:
            got = tuple(image_latent.shape) if isinstance(image_latent, torch.Tensor) else type(image_latent).__name__
            raise ValueError(f"image_latent must be [B, 48, 1, h, w], got {got}")
        mask = torch.zeros(num_frames, dtype=torch.bool)
        mask[0] = True
        return cls(image_latent.expand(-1, -1, num_frames, -1, -1), mask)

    @classmethod
    def prefix(cls, video: torch.Tensor, audio: torch.Tensor | None, *, num_frames: int,
               audio_latents: int) -> CleanCondition:
        """A clean prefix: the first ``P`` latent frames held at ``video`` ``[B, 48, P, h, w]`` and, when given,
        the first ``4(P - 1) + 1`` audio latents at ``audio`` ``[B, 4(P - 1) + 1, 64]`` (the convention of the
        module docstring), in a state of ``num_frames`` latent frames and ``audio_latents`` audio latents.

        Raises:
            ValueError: a prefix longer than the state, or an audio prefix of another length than ``4(P-1)+1``.
        """
        frames = video.shape[2]
        if not 0 < frames <= num_frames:
            raise ValueError(f"a clean prefix of {frames} latent frames does not fit {num_frames} frames")
        full = video.new_zeros(*video.shape[:2], num_frames, *video.shape[3:])
        full[:, :, :frames] = video
        mask = torch.arange(num_frames) < frames
        if audio is None:
            return cls(full, mask)
        expected = prefix_audio_latents(frames)
        if audio.ndim != 3 or audio.shape[1] != expected or expected > audio_latents:
            raise ValueError(f"a clean prefix of {frames} latent frames goes with {expected} audio latents "
                             f"(4(P-1)+1) within {audio_latents}, got audio {tuple(audio.shape)}")
        full_audio = audio.new_zeros(audio.shape[0], audio_latents, audio.shape[2])
        full_audio[:, :expected] = audio
        return cls(full, mask, full_audio, torch.arange(audio_latents) < expected)

    # --------------------------------------------------------------------------------------- use
    @property
    def held_video_frames(self) -> int:
        """Number of latent frames held clean."""
        return 0 if self.video_mask is None else int(self.video_mask.sum())

    @property
    def held_audio_latents(self) -> int:
        """Number of audio latents held clean."""
        return 0 if self.audio_mask is None else int(self.audio_mask.sum())

    def check(self, latents: Latents, *, audio_fixed: bool = False) -> None:
        """Refuse a condition that does not fit ``latents`` (before the first model call).

        Raises:
            ValueError: the clean video or audio has another shape than the state's, or audio positions are
                held while the whole audio is fixed (``audio_fixed``: it already stays as given).
        """
        if self.video is not None and tuple(self.video.shape) != tuple(latents.video.shape):
            raise ValueError(f"condition video has shape {tuple(self.video.shape)}, the latents' video "
                             f"{tuple(latents.video.shape)}")
        if self.audio is not None:
            if audio_fixed:
                raise ValueError("the audio is fixed (audio_fixed=True), so a clean audio condition has no effect; "
                                 "drop one of them")
            if tuple(self.audio.shape) != tuple(latents.audio.shape):
                raise ValueError(f"condition audio has shape {tuple(self.audio.shape)}, the latents' audio "
                                 f"{tuple(latents.audio.shape)}")

    def apply(self, latents: Latents) -> Latents:
        """The state with every held position written over by its clean value (new tensors where written;
        the inputs are not modified)."""
        return Latents(_write(latents.video, self.video, self.video_mask, 2),
                       _write(latents.audio, self.audio, self.audio_mask, 1))


def _write(state: torch.Tensor, clean: torch.Tensor | None, mask: torch.Tensor | None, axis: int) -> torch.Tensor:
    """A copy of ``state`` with the positions of ``mask`` along ``axis`` taken from ``clean`` (exact copies)."""
    if clean is None or not bool(mask.any()):
        return state
    index = mask.nonzero().flatten().to(state.device)
    state = state.clone()
    state.index_copy_(axis, index, clean.index_select(axis, index.to(clean.device)).to(state.device))
    return state
