"""Typed records for the tensors that travel together through sampling and the pipeline stages.

Each record is a frozen dataclass whose fields state their shape and dtype, checked on construction,
so a stage hands the next one a single value instead of loose positional tensors:

* :class:`Latents`: the video and audio latents of one denoising state (architecture.md §13.2);
* :class:`TextConditioning`: the prompt embedding and, for CFG, the negative-prompt one (architecture.md §11.2, 5);
* :class:`DrivingAudio`: a driving audio track's encoded latents and the waveform kept for the output
  (architecture.md §9.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _check_tensor(name: str, value, ndim: int, layout: str) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a {ndim}-d tensor {layout}, got {got}")


@dataclass(frozen=True)
class Latents:
    """Video and audio latents of one request, denoised together (architecture.md §13.2, 4.2).

    Attributes:
        video: ``[B, 48, T, h, w]`` float32, normalised Wan2.2 latent (``h = H/16``, ``w = W/16``).
        audio: ``[B, A, 64]`` float32, Stable Audio Open latent at 25 latents per second.

    Raises:
        ValueError: for a wrong rank, a dtype other than float32, or different batch sizes.
    """

    video: torch.Tensor
    audio: torch.Tensor

    def __post_init__(self) -> None:
        _check_tensor("latents.video", self.video, 5, "[B, 48, T, h, w]")
        _check_tensor("latents.audio", self.audio, 3, "[B, A, 64]")
        for name, tensor in (("latents.video", self.video), ("latents.audio", self.audio)):
            if tensor.dtype != torch.float32:
                raise ValueError(f"{name} must be float32, got {tensor.dtype}")
        if self.audio.shape[0] != self.video.shape[0]:
            raise ValueError(
                f"latents.audio has batch size {self.audio.shape[0]}, latents.video has {self.video.shape[0]}"
            )

    @property
    def batch_size(self) -> int:
        """B."""
        return self.video.shape[0]

    def to(self, device: torch.device | str) -> Latents:
        """Both latents moved to ``device`` (a new record; the same tensors when already there)."""
        return Latents(self.video.to(device), self.audio.to(device))

    def clone(self) -> Latents:
        """A record of copies (the loop's state never aliases its inputs)."""
        return Latents(self.video.clone(), self.audio.clone())


@dataclass(frozen=True)
class TextConditioning:
    """The text side of one request (architecture.md §11.2, 5).

    Attributes:
        prompt: ``[B, Nt, C]`` prompt embedding (T5Gemma encoder states; float32 from the encoder).
        negative: ``[B, Nn, C]`` negative-prompt embedding for classifier-free guidance, or None when
            the sampler uses no CFG. ``Nn`` may differ from ``Nt``.

    Raises:
        ValueError: for a wrong rank or different batch sizes.
    """

    prompt: torch.Tensor
    negative: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_tensor("text.prompt", self.prompt, 3, "[B, Nt, C]")
        if self.negative is not None:
            _check_tensor("text.negative", self.negative, 3, "[B, Nn, C]")
            if self.negative.shape[0] != self.prompt.shape[0]:
                raise ValueError(
                    f"text.negative has batch size {self.negative.shape[0]}, text.prompt has {self.prompt.shape[0]}"
                )

    @property
    def batch_size(self) -> int:
        """B."""
        return self.prompt.shape[0]


@dataclass(frozen=True)
class DrivingAudio:
    """A driving audio track (audio-to-video, architecture.md §9.2): it sets the clip length and stays fixed.

    Attributes:
        latent: ``[1, L_a, 64]`` float32 encoded latents (a posterior sample); ``L_a`` sets the video length.
        waveform_44k: ``float32 [2, samples]`` the given track itself at 44.1 kHz, written to the output
            instead of a decode of ``latent``.

    Raises:
        ValueError: for a wrong rank or dtype.
    """

    latent: torch.Tensor
    waveform_44k: np.ndarray

    def __post_init__(self) -> None:
        _check_tensor("driving_audio.latent", self.latent, 3, "[1, L_a, 64]")
        if self.latent.dtype != torch.float32:
            raise ValueError(f"driving_audio.latent must be float32, got {self.latent.dtype}")
        if not isinstance(self.waveform_44k, np.ndarray) or self.waveform_44k.ndim != 2:
            raise ValueError("driving_audio.waveform_44k must be a float32 [channels, samples] array")
