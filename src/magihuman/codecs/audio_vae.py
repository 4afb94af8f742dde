"""Stable Audio Open 1.0 audio VAE (Oobleck) in diffusers' ``AutoencoderOobleck``.

Reference: architecture.md §11.5 (architecture, keys, conversion rules), §9.2 (driving audio
encode) and §12.2 (decode and the 441/512 resample).

The 51.2 kHz convention (architecture.md §12.2, §11.5): the VAE hop is 2048 samples
and the DiT runs 25 audio latents per second, so the VAE waveform is treated as
``25 * 2048 = 51200`` Hz audio (:data:`MODEL_SAMPLE_RATE`). Decoded audio is resampled by 441/512 to
44.1 kHz (:func:`resample_to_output_rate`); audio to encode must first be brought to 51.2 kHz.

Encoder-width tie (decision, architecture.md §11.5): diffusers' ``OobleckEncoder`` makes its last conv
output ``encoder_hidden_size`` channels, i.e. it assumes ``encoder.latent_dim == encoder.channels``
(true for SAO 1.0: 128 == 128). Tiny configs such as the golden one (channels 4, latent_dim 128) break
that tie. After building the diffusers model we therefore replace ``encoder.conv2`` by a weight-normed
``Conv1d(channels * c_mults[-1] -> latent_dim, k=3, p=1)`` whenever the widths differ; the module is
otherwise identical, so real SAO 1.0 loads unchanged and tiny configs encode and decode. Such a model
is flagged with ``model.encoder_output_channels``; its ``config.json`` (if saved with
``save_pretrained``) cannot rebuild the swapped conv by itself, but :func:`load_audio_vae_model`
detects the width from the weights and rebuilds it.

The checkpoint format (config parsing, the original key table, the key conversion) is
:mod:`magihuman.codecs.audio_vae_format`, re-exported here. Tiny random checkpoints in the SAO layout
(demo bundle, tests) are written by :func:`magihuman.demo.random_codecs.save_random_audio_vae`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import Tensor

from magihuman.codecs.audio_vae_format import (
    SAO_CONFIG_NAME,
    SAO_VAE_PREFIX,
    SAO_WEIGHTS_NAME,
    _parse_sao_config,
    convert_stable_audio_state_dict,
    official_sao_vae_key_shapes,
    oobleck_config_from_sao_config,
)
from magihuman.codecs.files import (
    OfficialFile,
    read_json_file,
    safetensors_error,
    wrong_contents_error,
)
from magihuman.codecs.wrapper import ModelWrapper
from magihuman.model.checkpoint import CheckpointError, load_state_dict_strict

__all__ = [
    "HOP_LENGTH",
    "build_audio_vae",
    "LATENTS_PER_SECOND",
    "LATENT_CHANNELS",
    "MODEL_SAMPLE_RATE",
    "OUTPUT_SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "AudioVAE",
    "convert_stable_audio_state_dict",
    "load_audio_vae_model",
    "official_sao_vae_key_shapes",
    "oobleck_config_from_sao_config",
    "resample_to_output_rate",
]

#: VAE hop: waveform samples per audio latent (architecture.md §11.5).
HOP_LENGTH = 2048
#: Audio latents per second of model time (architecture.md §11.1, §12.2).
LATENTS_PER_SECOND = 25
#: Rate the VAE waveform is interpreted at: 25 latents/s x 2048 (architecture.md §12.2).
MODEL_SAMPLE_RATE = LATENTS_PER_SECOND * HOP_LENGTH  # 51200 Hz
#: Rate of the written audio, SAO's own rate (architecture.md §12.2).
OUTPUT_SAMPLE_RATE = 44100
#: Channels of one audio latent (the bottleneck latent_dim; DiT audio width).
LATENT_CHANNELS = 64
#: Longest clip encoded in one pass: 29 s at MODEL_SAMPLE_RATE (architecture.md §9.2).
WINDOW_SAMPLES = 29 * MODEL_SAMPLE_RATE  # 1_484_800 = 725 latents

_DIFFUSERS_CONFIG = "config.json"
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_POSTERIOR_EPS = 1e-4  # std = softplus(scale) + 1e-4 (architecture.md §11.5)
_SAO_SOURCE = "the stabilityai/stable-audio-open-1.0 repository"
_SAO_CONFIG_FILE = OfficialFile("Stable Audio Open config", SAO_CONFIG_NAME, _SAO_SOURCE)
_SAO_WEIGHTS_FILE = OfficialFile("Stable Audio Open checkpoint", SAO_WEIGHTS_NAME, _SAO_SOURCE)
_DIFFUSERS_FILE = OfficialFile(
    "Stable Audio Open VAE (diffusers format)", f"vae/{_DIFFUSERS_WEIGHTS} + vae/{_DIFFUSERS_CONFIG}", _SAO_SOURCE
)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _build_on_meta(kwargs: Mapping, encoder_out: int | None, device: str = "meta"):
    """``AutoencoderOobleck`` on ``device`` (meta by default), with ``encoder.conv2`` widened if needed."""
    from diffusers import AutoencoderOobleck
    from torch.nn.utils import weight_norm

    with warnings.catch_warnings(), torch.device(device):
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        model = AutoencoderOobleck.from_config(dict(kwargs))
        hidden = int(kwargs.get("encoder_hidden_size", 128))
        if encoder_out is not None and encoder_out != hidden:
            d_model = hidden * list(kwargs.get("channel_multiples", [1, 2, 4, 8, 16]))[-1]
            model.encoder.conv2 = weight_norm(torch.nn.Conv1d(d_model, encoder_out, kernel_size=3, padding=1))
    model.encoder_output_channels = encoder_out if encoder_out is not None else hidden
    return model


def build_audio_vae(model_config: Mapping) -> torch.nn.Module:
    """A freshly initialised float32 CPU ``AutoencoderOobleck`` described by a SAO ``model_config.json``.

    The model the loader would fill from that config (architecture.md §11.5), for training one from scratch.

    Raises:
        ValueError: As :func:`~magihuman.codecs.audio_vae_format.oobleck_config_from_sao_config`.
    """
    kwargs, encoder_out = _parse_sao_config(model_config)
    return _build_on_meta(kwargs, encoder_out, device="cpu")


def _read_sao_vae_tensors(weights: Path) -> dict[str, Tensor]:
    """Only the ``pretransform.model.*`` tensors of a SAO ``model.safetensors`` (safe_open)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(SAO_VAE_PREFIX)}
    except (SafetensorError, OSError) as exc:
        raise safetensors_error(weights, _SAO_WEIGHTS_FILE, exc) from exc


def _cast_in_place(state_dict: dict[str, Tensor], dtype: torch.dtype, device: torch.device | str) -> None:
    for key in list(state_dict):
        state_dict[key] = state_dict[key].to(device=device, dtype=dtype)


def _load_sao_folder(folder: Path, dtype: torch.dtype, device: torch.device | str):
    config_file, weights = folder / SAO_CONFIG_NAME, folder / SAO_WEIGHTS_NAME
    config = read_json_file(config_file, _SAO_CONFIG_FILE)
    try:
        if not isinstance(config, Mapping):
            raise ValueError(f"it holds a JSON {type(config).__name__}, not an object")
        kwargs, encoder_out = _parse_sao_config(config)
    except ValueError as exc:
        raise wrong_contents_error(config_file, _SAO_CONFIG_FILE, str(exc)) from None
    model = _build_on_meta(kwargs, encoder_out)
    tensors = _read_sao_vae_tensors(weights)
    try:
        state_dict = convert_stable_audio_state_dict(tensors)
        del tensors
        _cast_in_place(state_dict, dtype, device)
        load_state_dict_strict(model, state_dict, what=str(weights))
    except CheckpointError as exc:  # missing / unexpected / mis-shaped keys
        raise wrong_contents_error(weights, _SAO_WEIGHTS_FILE, f"it does not match {config_file}.\n{exc}") from None
    except ValueError as exc:  # no or unknown pretransform.model.* keys
        raise wrong_contents_error(weights, _SAO_WEIGHTS_FILE, str(exc)) from None
    return model


def _load_diffusers_folder(folder: Path, dtype: torch.dtype, device: torch.device | str):
    from diffusers import AutoencoderOobleck
    from safetensors.torch import load_file

    if not isinstance(read_json_file(folder / _DIFFUSERS_CONFIG, _DIFFUSERS_FILE), Mapping):
        raise wrong_contents_error(folder / _DIFFUSERS_CONFIG, _DIFFUSERS_FILE, "it is not a JSON object")
    config = AutoencoderOobleck.load_config(str(folder))
    try:
        state_dict = load_file(str(folder / _DIFFUSERS_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise safetensors_error(folder / _DIFFUSERS_WEIGHTS, _DIFFUSERS_FILE, exc) from exc
    encoder_out = None
    conv2 = state_dict.get("encoder.conv2.weight_v")
    if conv2 is not None and conv2.shape[0] == 2 * int(config.get("decoder_input_channels", 64)):
        encoder_out = int(conv2.shape[0])  # a widened encoder saved by save_pretrained (module docstring)
    model = _build_on_meta(config, encoder_out)
    _cast_in_place(state_dict, dtype, device)
    load_state_dict_strict(model, state_dict, what=str(folder / _DIFFUSERS_WEIGHTS))
    return model


def _resolve_audio_path(path: str | os.PathLike) -> tuple[str, Path]:
    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    if (folder / SAO_CONFIG_NAME).is_file() and (folder / SAO_WEIGHTS_NAME).is_file():
        return "sao", folder
    for candidate in (folder / "vae", folder):
        if (candidate / _DIFFUSERS_CONFIG).is_file() and (candidate / _DIFFUSERS_WEIGHTS).is_file():
            return "diffusers", candidate
    raise FileNotFoundError(
        f"no Stable Audio Open VAE at {str(path)!r}. Looked for {SAO_CONFIG_NAME} + {SAO_WEIGHTS_NAME} "
        f"(the stabilityai/stable-audio-open-1.0 folder), then {_DIFFUSERS_CONFIG} + {_DIFFUSERS_WEIGHTS} "
        "in its 'vae/' subfolder or in the folder itself."
    )


def load_audio_vae_model(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> AutoencoderOobleck:  # noqa: F821
    """Load the SAO VAE into diffusers' ``AutoencoderOobleck`` (architecture.md §11.5).

    Order of preference: the original single-file layout (what the reference reads; only the
    ``pretransform.model.*`` tensors are read, via ``safetensors.safe_open``), then a diffusers
    ``vae/`` subfolder, then the folder itself as a diffusers folder. The model is built on the meta
    device and the tensors are assigned (no second copy). The load is strict.

    Args:
        path: ``stable-audio-open-1.0`` folder (``model_config.json`` + ``model.safetensors``, or
            ``vae/``), a diffusers VAE folder, or a file inside one of them.
        device: Target device.
        dtype: Weight dtype; the reference keeps the SAO VAE in float32 (architecture.md §11).

    Returns:
        ``AutoencoderOobleck`` in eval mode, tiling/slicing off. ``model.encoder_output_channels`` is
        the encoder's output width (``2 * 64``).

    Raises:
        FileNotFoundError: If no checkpoint is found; the message lists what was looked for.
        CheckpointError: (a ``ValueError``) one error naming the file, what is wrong and the fix: a
            damaged ``model_config.json`` (empty, not JSON) or safetensors file (truncated, a text file),
            an unsupported config, unknown keys, or missing/unexpected/mis-shaped keys (all listed).
    """
    kind, folder = _resolve_audio_path(path)
    loader = _load_sao_folder if kind == "sao" else _load_diffusers_folder
    return loader(folder, dtype, device).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# Wrapper
# --------------------------------------------------------------------------------------------------


def _check_waveform(waveform: Tensor, channels: int) -> None:
    if not isinstance(waveform, Tensor) or waveform.dim() != 3:
        shape = tuple(waveform.shape) if isinstance(waveform, Tensor) else type(waveform).__name__
        raise ValueError(f"waveform must be a 3-D tensor [B, {channels}, N], got {shape}; use .unsqueeze(0)")
    if waveform.shape[1] != channels:
        raise ValueError(
            f"waveform must have {channels} channels on axis 1, got {waveform.shape[1]}; duplicate mono "
            "audio to stereo (architecture.md §9.2)"
        )
    if not waveform.is_floating_point():
        raise ValueError(f"waveform must be a float tensor, got {waveform.dtype}")
    if waveform.shape[2] < HOP_LENGTH:
        raise ValueError(
            f"waveform has {waveform.shape[2]} samples; at least {HOP_LENGTH} (one latent, 40 ms at "
            f"{MODEL_SAMPLE_RATE} Hz) are needed"
        )


def _check_window(window_samples: int) -> int:
    if window_samples % HOP_LENGTH or window_samples < 2 * HOP_LENGTH:
        raise ValueError(
            f"window_samples must be a multiple of {HOP_LENGTH} and at least {2 * HOP_LENGTH}, got {window_samples}"
        )
    return window_samples // HOP_LENGTH


def _crossfade_merge(chunks: list[Tensor], hop: int) -> Tensor:
    """Merge per-window latents ``[B, C, L]`` placed every ``hop`` latents (architecture.md §9.2).

    In each overlap of ``L - hop`` latents the earlier window fades out and the later one fades in
    linearly: ``w = linspace(0, 1, overlap)``, ``merged = (1 - w) * earlier + w * later``.
    """
    length = chunks[0].shape[-1]
    overlap = length - hop
    out = chunks[0].new_zeros(*chunks[0].shape[:2], hop * (len(chunks) - 1) + length)
    out[..., :length] = chunks[0]
    ramp = torch.linspace(0.0, 1.0, overlap, dtype=out.dtype, device=out.device)
    for k, chunk in enumerate(chunks[1:], start=1):
        start = k * hop
        region = out[..., start : start + overlap]
        out[..., start : start + overlap] = region * (1.0 - ramp) + chunk[..., :overlap] * ramp
        out[..., start + overlap : start + length] = chunk[..., overlap:]
    return out


class AudioVAE(ModelWrapper):
    """SAO Oobleck VAE with the pipeline's conventions (architecture.md §11.5, §9.2, §12.2).

    Latents are time-major ``[B, A, 64]`` float32, raw Oobleck space (no normalisation), 25 per second;
    waveforms are ``[B, 2, 2048 * A]`` float32 at :data:`MODEL_SAMPLE_RATE` (51.2 kHz).

    Args:
        model: A loaded ``AutoencoderOobleck`` (see :func:`load_audio_vae_model`).
    """

    def __init__(self, model) -> None:
        self.model = model

    @classmethod
    def from_official(
        cls, path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> AudioVAE:
        """Load from any path accepted by :func:`load_audio_vae_model` (same arguments and errors)."""
        return cls(load_audio_vae_model(path, device=device, dtype=dtype))

    @property
    def latent_channels(self) -> int:
        """Channels of one latent (64 for SAO 1.0)."""
        return int(self.model.config.decoder_input_channels)

    @property
    def audio_channels(self) -> int:
        """Waveform channels (2: stereo)."""
        return int(self.model.config.audio_channels)

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Decode time-major latents to a waveform (architecture.md §11.5, §12.2).

        Args:
            latent: ``[B, A, 64]`` float, time-major (the pipeline layout); fed to diffusers as
                ``[B, 64, A]`` (never the reference's 2-D trick, architecture.md §11.5).

        Returns:
            ``[B, 2, 2048 * A]`` float32 waveform at :data:`MODEL_SAMPLE_RATE` (51.2 kHz); resample with
            :func:`resample_to_output_rate` before writing at 44.1 kHz. Not clipped (no tanh).

        Raises:
            ValueError: If ``latent`` is not ``[B, A, 64]`` float with ``A >= 1``.
        """
        channels = self.latent_channels
        if not isinstance(latent, Tensor) or latent.dim() != 3 or latent.shape[2] != channels:
            shape = tuple(latent.shape) if isinstance(latent, Tensor) else type(latent).__name__
            raise ValueError(f"latent must be time-major [B, A, {channels}], got {shape}")
        if not latent.is_floating_point() or latent.shape[1] < 1:
            raise ValueError(f"latent must be a non-empty float tensor, got {latent.dtype} {tuple(latent.shape)}")
        z = latent.to(device=self.device, dtype=self.dtype).transpose(1, 2)
        return self.model.decode(z).sample.float()

    @torch.no_grad()
    def pre_bottleneck(self, waveform: Tensor) -> Tensor:
        """Deterministic encoder output ``[mean | scale]`` (architecture.md §11.5).

        Args:
            waveform: ``[B, 2, N]`` float at :data:`MODEL_SAMPLE_RATE`, ``N >= 2048``.

        Returns:
            ``[B, 128, N // 2048]`` float32: channels 0..63 the posterior mean, 64..127 the raw scale.

        Raises:
            ValueError: On a wrong rank, channel count, dtype or a clip shorter than 2048 samples.
        """
        _check_waveform(waveform, self.audio_channels)
        return self.model.encoder(waveform.to(device=self.device, dtype=self.dtype)).float()

    def _sample(self, waveform: Tensor, generator: torch.Generator | None) -> Tensor:
        """Posterior sample ``mean + (softplus(scale) + 1e-4) * randn``, ``[B, 64, L]`` float32."""
        mean, scale = self.pre_bottleneck(waveform).chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
        return mean + (torch.nn.functional.softplus(scale) + _POSTERIOR_EPS) * noise

    @torch.no_grad()
    def encode(
        self,
        waveform: Tensor,
        *,
        generator: torch.Generator | None = None,
        window_samples: int = WINDOW_SAMPLES,
    ) -> Tensor:
        """Encode a waveform to time-major latents by posterior SAMPLING (architecture.md §11.5, §9.2).

        Like the reference, the bottleneck always samples: ``mean + (softplus(scale) + 1e-4) * eps``.
        ``eps`` is drawn as ``torch.randn([B, 64, L], generator=generator)`` in float32 on the CPU
        (channel-major, the shape of the reference's ``randn_like``) and then moved to the model
        device; ``generator=None`` uses the global CPU RNG, as the reference does.

        Clips longer than ``window_samples`` (29 s) are encoded in windows (architecture.md §9.2):
        ``L_win = window_samples / 2048`` latents per window, windows start every
        ``hop = ceil(L_win / 2)`` latents (``2048 * hop`` samples, i.e. 50 % up to half a latent, so
        windows stay latent-aligned), each window is zero-padded to ``window_samples`` and sampled
        (noise drawn window by window, in order), consecutive windows are merged with a linear
        cross-fade over their ``L_win - hop`` shared latents, and the result is trimmed to
        ``ceil(N / 2048)`` latents. Shorter clips are encoded in one pass and give ``N // 2048``.

        Args:
            waveform: ``[B, 2, N]`` float at :data:`MODEL_SAMPLE_RATE` (51.2 kHz), ``N >= 2048``
                (mono audio must be duplicated to stereo first).
            generator: Optional CPU ``torch.Generator`` for the posterior noise.
            window_samples: Longest single pass in samples (a multiple of 2048, >= 4096); the
                default is 29 s. Exposed so that the windowing can be tested on short clips.

        Returns:
            ``[B, L, 64]`` float32, time-major, raw Oobleck latent space.

        Raises:
            ValueError: On a bad waveform, a non-CPU generator or a bad ``window_samples``.
        """
        _check_waveform(waveform, self.audio_channels)
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (noise is drawn on CPU), got {generator.device}")
        latents_per_window = _check_window(window_samples)
        total = waveform.shape[-1]
        if total <= window_samples:
            return self._sample(waveform, generator).transpose(1, 2).contiguous()
        hop = (latents_per_window + 1) // 2
        num_windows = 1 + math.ceil((total - window_samples) / (hop * HOP_LENGTH))
        chunks = []
        for k in range(num_windows):
            piece = waveform[..., k * hop * HOP_LENGTH : k * hop * HOP_LENGTH + window_samples]
            piece = torch.nn.functional.pad(piece, (0, window_samples - piece.shape[-1]))
            chunks.append(self._sample(piece, generator))
        merged = _crossfade_merge(chunks, hop)[..., : math.ceil(total / HOP_LENGTH)]
        return merged.transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# Resampling (architecture.md §12.2)
# --------------------------------------------------------------------------------------------------


def resample_to_output_rate(waveform: np.ndarray | Tensor, axis: int = -1) -> np.ndarray:
    """Resample 51.2 kHz model audio to 44.1 kHz output audio (architecture.md §12.2, §11.5).

    ``scipy.signal.resample`` (FFT) to ``int(n * 441 / 512)`` samples along ``axis``, computed in
    float32 like the reference (a float32 input keeps scipy's FFT in single precision).

    Args:
        waveform: Array or tensor with ``n`` samples along ``axis`` (e.g. ``[2, n]``, or ``[n, 2]``
            with ``axis=0`` as the reference does). Converted to float32.
        axis: Sample axis.

    Returns:
        float32 ``np.ndarray`` with ``n * 441 // 512`` samples along ``axis``; write it at
        :data:`OUTPUT_SAMPLE_RATE`.

    Raises:
        ValueError: If the array is empty along ``axis``.
    """
    from scipy.signal import resample

    if isinstance(waveform, Tensor):
        waveform = waveform.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(waveform, dtype=np.float32)
    n = array.shape[axis]
    if n == 0:
        raise ValueError("cannot resample an empty waveform")
    num = n * OUTPUT_SAMPLE_RATE // MODEL_SAMPLE_RATE  # == int(n * 441 / 512), exact integer arithmetic
    return np.asarray(resample(array, num, axis=axis), dtype=np.float32)
