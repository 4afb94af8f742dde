"""Pluggable speech recognition for the intelligibility metric.

Anything with ``transcribe(waveform, sample_rate, language) -> str`` is a :class:`Transcriber`; the default
is :class:`WhisperTranscriber` (transformers' Whisper, any size, imported only when first used). Weights
come from a local folder or the Hugging Face cache; nothing is downloaded unless the caller allows it.
"""

from __future__ import annotations

from math import gcd
from typing import Protocol, runtime_checkable

import numpy as np

from magihuman.eval.text import language_code

__all__ = ["Transcriber", "WhisperTranscriber", "WHISPER_SAMPLE_RATE", "DEFAULT_WHISPER", "to_mono_rate"]

WHISPER_SAMPLE_RATE = 16000
#: Default model id: small enough for a CPU, multilingual.
DEFAULT_WHISPER = "openai/whisper-small"


@runtime_checkable
class Transcriber(Protocol):
    """A speech recogniser."""

    def transcribe(self, waveform: np.ndarray, sample_rate: int, language: str | None = None) -> str:
        """Text spoken in ``waveform`` (``float [samples]`` or ``[channels, samples]`` at ``sample_rate`` Hz);
        ``language`` is a hint (a code such as ``"en"`` or a name such as ``"Chinese"``) or None to detect."""
        ...


def to_mono_rate(waveform: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    """Average channels and resample (polyphase, scipy) to ``target`` Hz; ``float32 [samples]``."""
    from scipy.signal import resample_poly

    mono = np.asarray(waveform, dtype=np.float64)
    if mono.ndim == 2:
        mono = mono.mean(axis=0)
    if sample_rate != target:
        g = gcd(int(sample_rate), int(target))
        mono = resample_poly(mono, target // g, sample_rate // g)
    return mono.astype(np.float32)


class WhisperTranscriber:
    """transformers' Whisper as a :class:`Transcriber`.

    Args:
        model: a model id (``openai/whisper-tiny`` ... ``openai/whisper-large-v3``) or a local folder.
        device: ``"cpu"``, ``"cuda"``, ...
        local_files_only: only use files already on disk (default; set False to allow a download).

    Raises:
        RuntimeError: on first use, when the model cannot be loaded (the message says how to get it).
    """

    def __init__(self, model: str = DEFAULT_WHISPER, *, device: str = "cpu", local_files_only: bool = True):
        self.model, self.device, self.local_files_only = model, device, local_files_only
        self._pipe = None

    def _load(self):
        if self._pipe is None:
            from transformers import pipeline

            try:
                self._pipe = pipeline("automatic-speech-recognition", model=self.model, device=self.device,
                                      model_kwargs={"local_files_only": self.local_files_only})
            except (OSError, ValueError) as exc:
                raise RuntimeError(
                    f"cannot load the Whisper model {self.model!r} ({exc}); pass a local folder with --asr-model, "
                    "download it once (`hf download openai/whisper-small`), or run with --no-asr"
                ) from exc
        return self._pipe

    def transcribe(self, waveform: np.ndarray, sample_rate: int, language: str | None = None) -> str:
        """See :class:`Transcriber`. Long audio is read in 30 s chunks."""
        pipe = self._load()
        audio = to_mono_rate(waveform, sample_rate, WHISPER_SAMPLE_RATE)
        kwargs = {"task": "transcribe"}
        code = language_code(language)
        if code:
            kwargs["language"] = code
        result = pipe({"raw": audio, "sampling_rate": WHISPER_SAMPLE_RATE}, generate_kwargs=kwargs,
                      chunk_length_s=30)
        return str(result["text"]).strip()
