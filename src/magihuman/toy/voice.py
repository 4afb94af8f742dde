"""The toy voice: one voiced syllable per word, a low or high fundamental, formant-like timbre, pauses.

Each syllable is additive synthesis of the harmonics of the voice's fixed fundamental (each harmonic with
the same starting phase in every syllable), weighted by a spectral
envelope with three resonances at the word's vowel formants and a glottal 1/k tilt, with a short noise
burst as its consonant, an attack and a release. Syllables are separated by silence, so the number of
voiced segments equals the number of words, and the loudness per video frame drives the mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SAMPLE_RATE", "VOICE_F0", "PITCH_SPLIT_HZ", "VOWEL_FORMANTS", "OPEN_RMS", "Speech", "synthesise_speech",
    "frame_loudness",
]

#: Audio rate of the toy world: the pipeline's output rate (architecture.md §12.2).
SAMPLE_RATE = 44100
#: The fundamental of each voice in Hz, the same in every clip and syllable (a fixed waveform per voice and
#: vowel is what a small audio VAE can learn to reproduce: docs/toy_world.md, "What the codecs keep").
VOICE_F0 = {"low": 110.0, "high": 230.0}
#: Fundamentals below this are "low", above it "high" (about the geometric middle of the two voices).
PITCH_SPLIT_HZ = 155.0
#: Word -> (F1, F2, F3) of its vowel in Hz (textbook adult averages).
VOWEL_FORMANTS = {
    "one": (640, 1190, 2390), "two": (300, 870, 2240), "three": (270, 2290, 3010), "four": (570, 840, 2410),
    "five": (730, 1090, 2440), "six": (390, 1990, 2550), "eight": (530, 1840, 2480), "nine": (730, 1090, 2440),
    "ten": (530, 1840, 2480), "yes": (530, 1840, 2480), "no": (450, 1000, 2400), "hi": (730, 1090, 2440),
    "stop": (570, 840, 2410), "go": (450, 1000, 2400),
}
#: RMS of a fully stressed syllable's sustain; a frame at this loudness opens the mouth fully.
OPEN_RMS = 0.12
_SPEECH_END_S = 1.85  # every syllable ends before this (the 49-frame video lasts 1.96 s)
_ATTACK_S, _RELEASE_S, _BURST_S = 0.025, 0.045, 0.015
_MAX_HARMONIC_HZ = 5000.0
#: Starting phase of each harmonic (radians), the same in every syllable: a fixed spread (not all zero, which
#: would make a peaky pulse train), so a voice's waveform follows from its pitch, vowel and loudness alone.
_HARMONIC_PHASES = np.random.default_rng(20261130).uniform(0.0, 2 * np.pi, size=64)
#: The fundamental ranges earlier voices drew from; the draws (a fundamental per utterance, a jitter and one phase
#: per harmonic per syllable) are still made, so a seed gives the same blinks as in earlier datasets.
_RETIRED_F0_RANGES = {"low": (100.0, 125.0), "high": (200.0, 240.0)}


@dataclass(frozen=True)
class Speech:
    """A synthesised utterance.

    Attributes:
        waveform: ``float32 [samples]`` mono at :data:`SAMPLE_RATE`, in [-1, 1].
        segments: ``(start, end)`` seconds of each syllable, in order (one per word).
        f0: the base fundamental in Hz.
    """

    waveform: np.ndarray
    segments: tuple[tuple[float, float], ...]
    f0: float


def synthesise_speech(words: tuple[str, ...], voice: str, rng: np.random.Generator, *, seconds: float = 2.0,
                      sample_rate: int = SAMPLE_RATE) -> Speech:
    """Speak ``words`` (one syllable each) in ``voice`` within ``seconds``.

    Timing: a lead silence of 0.06-0.2 s, syllables of 0.16-0.26 s, pauses of 0.09-0.18 s; when they do
    not fit before 1.85 s, syllables and pauses shrink by one common factor.

    Raises:
        KeyError: a word without a vowel entry or an unknown voice.
    """
    n = len(words)
    lead = rng.uniform(0.06, 0.2)
    durations = rng.uniform(0.16, 0.26, size=n)
    pauses = rng.uniform(0.09, 0.18, size=max(n - 1, 0))
    stress = rng.uniform(0.75, 1.0, size=n)
    span = durations.sum() + pauses.sum()
    if lead + span > _SPEECH_END_S:
        durations, pauses = durations * (_SPEECH_END_S - lead) / span, pauses * (_SPEECH_END_S - lead) / span
    f0 = VOICE_F0[voice]
    retired_f0 = float(rng.uniform(*_RETIRED_F0_RANGES[voice]))
    wave = np.zeros(int(round(seconds * sample_rate)), dtype=np.float64)
    segments, t = [], lead
    for i, word in enumerate(words):
        start = int(round(t * sample_rate))
        retired_draws = int(_MAX_HARMONIC_HZ // (retired_f0 * rng.uniform(0.97, 1.05)))
        rng.uniform(0, 2 * np.pi, size=retired_draws)
        syllable = _syllable(word, f0, durations[i], stress[i], rng, sample_rate)
        wave[start:start + len(syllable)] += syllable[: len(wave) - start]
        segments.append((start / sample_rate, (start + len(syllable)) / sample_rate))
        t += durations[i] + (pauses[i] if i < n - 1 else 0.0)
    return Speech(np.clip(wave, -1.0, 1.0).astype(np.float32), tuple(segments), f0)


def _syllable(word: str, f0: float, duration: float, stress: float, rng: np.random.Generator,
              sample_rate: int) -> np.ndarray:
    """One voiced syllable of ``duration`` s: harmonics of ``f0`` (fixed phases) under the vowel's formants,
    RMS-normalised."""
    count = int(round(duration * sample_rate))
    t = np.arange(count) / sample_rate
    phase = 2 * np.pi * f0 * t
    formants = VOWEL_FORMANTS[word]
    wave = np.zeros(count)
    for k in range(1, int(_MAX_HARMONIC_HZ // f0) + 1):
        freq = k * f0
        envelope = sum(1.0 / (1.0 + ((freq - fc) / (60.0 + 0.06 * fc)) ** 2) for fc in formants)
        wave += (envelope + 0.05) / k * np.sin(k * phase + _HARMONIC_PHASES[k - 1])
    wave *= OPEN_RMS * stress / np.sqrt(np.mean(wave ** 2))
    burst = int(_BURST_S * sample_rate)
    wave[:burst] += rng.normal(0.0, 0.3 * OPEN_RMS, size=burst) * np.linspace(1.0, 0.0, burst)
    attack, release = int(_ATTACK_S * sample_rate), int(_RELEASE_S * sample_rate)
    gain = np.ones(count)
    gain[:attack] = np.linspace(0.0, 1.0, attack)
    gain[-release:] = np.minimum(gain[-release:], np.linspace(1.0, 0.0, release))
    return wave * gain


def frame_loudness(waveform: np.ndarray, num_frames: int, *, fps: float = 25.0,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS of the mono ``waveform`` over each video frame's interval ``[i/fps, (i+1)/fps)``.

    Args:
        waveform: ``[samples]`` (or ``[channels, samples]``, averaged to mono) float.
        num_frames: frames to measure; frames past the end of the audio read as 0.

    Returns:
        ``float32 [num_frames]``, same units as the waveform.
    """
    mono = np.asarray(waveform, dtype=np.float64)
    if mono.ndim == 2:
        mono = mono.mean(axis=0)
    edges = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(int)
    out = np.zeros(num_frames, dtype=np.float32)
    for i in range(num_frames):
        chunk = mono[edges[i]:edges[i + 1]]
        out[i] = np.sqrt(np.mean(chunk ** 2)) if chunk.size else 0.0
    return out
