"""Stable Audio Open 1.0 audio VAE (Oobleck) in diffusers' ``AutoencoderOobleck``.

Fact sheet: ``codecs.md`` section 4 (architecture, keys, conversion rules), ``pipeline.md`` 7.2
(reference/driving audio encode) and 9.2 (decode and the 441/512 resample).

The 51.2 kHz convention (``pipeline.md`` 9.2, ``codecs.md`` pitfall 12): the VAE hop is 2048 samples
and the DiT runs 25 audio latents per second, so the VAE waveform is treated as
``25 * 2048 = 51200`` Hz audio (:data:`MODEL_SAMPLE_RATE`). Decoded audio is resampled by 441/512 to
44.1 kHz (:func:`resample_to_output_rate`); audio to encode must first be brought to 51.2 kHz.

Encoder-width tie (decision, ``codecs.md`` 4.3): diffusers' ``OobleckEncoder`` makes its last conv
output ``encoder_hidden_size`` channels, i.e. it assumes ``encoder.latent_dim == encoder.channels``
(true for SAO 1.0: 128 == 128). Tiny configs such as the golden one (channels 4, latent_dim 128) break
that tie. After building the diffusers model we therefore replace ``encoder.conv2`` by a weight-normed
``Conv1d(channels * c_mults[-1] -> latent_dim, k=3, p=1)`` whenever the widths differ; the module is
otherwise identical, so real SAO 1.0 loads unchanged and tiny configs encode and decode. Such a model
is flagged with ``model.encoder_output_channels``; its ``config.json`` (if saved with
``save_pretrained``) cannot rebuild the swapped conv by itself, but :func:`load_audio_vae_model`
detects the width from the weights and rebuilds it.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from magihuman.model.checkpoint import load_state_dict_strict, write_atomic
from magihuman.codecs.wrapper import ModelWrapper

__all__ = [
    "HOP_LENGTH",
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
    "save_random_official",
]

#: VAE hop: waveform samples per audio latent (codecs.md 4.1).
HOP_LENGTH = 2048
#: Audio latents per second of model time (pipeline.md 4.2, 9.2).
LATENTS_PER_SECOND = 25
#: Rate the VAE waveform is interpreted at: 25 latents/s x 2048 (pipeline.md 9.2).
MODEL_SAMPLE_RATE = LATENTS_PER_SECOND * HOP_LENGTH  # 51200 Hz
#: Rate of the written audio, SAO's own rate (pipeline.md 9.2).
OUTPUT_SAMPLE_RATE = 44100
#: Channels of one audio latent (the bottleneck latent_dim; DiT audio width).
LATENT_CHANNELS = 64
#: Longest clip encoded in one pass: 29 s at MODEL_SAMPLE_RATE (pipeline.md 7.2).
WINDOW_SAMPLES = 29 * MODEL_SAMPLE_RATE  # 1_484_800 = 725 latents

_PREFIX = "pretransform.model."
_SAO_CONFIG = "model_config.json"
_SAO_WEIGHTS = "model.safetensors"
_DIFFUSERS_CONFIG = "config.json"
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_POSTERIOR_EPS = 1e-4  # std = softplus(scale) + 1e-4 (codecs.md 4.1)
_SAO_STRIDES = (2, 4, 4, 8, 8)  # SAO 1.0 (codecs.md 4.1); product = HOP_LENGTH
_SAO_C_MULTS = (1, 2, 4, 8, 16)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _require(section: Mapping, key: str, where: str):
    if key not in section:
        raise ValueError(f"SAO model_config.json: missing {where}.{key}; cannot build the Oobleck VAE")
    return section[key]


def _pretransform_config(model_config: Mapping) -> Mapping:
    """``model.pretransform.config`` of a full SAO config (or the pretransform config itself)."""
    if "encoder" in model_config and "decoder" in model_config:
        return model_config
    try:
        pretransform = model_config["model"]["pretransform"]
    except (KeyError, TypeError):
        raise ValueError(
            "SAO model_config.json has no model.pretransform section; pass the stable-audio-open-1.0 "
            "model_config.json (codecs.md 4.1)"
        ) from None
    if pretransform.get("type", "autoencoder") != "autoencoder":
        raise ValueError(f"model.pretransform.type must be 'autoencoder', got {pretransform.get('type')!r}")
    return _require(pretransform, "config", "model.pretransform")


def _oobleck_side(pre: Mapping, side: str) -> Mapping:
    """Validated ``encoder``/``decoder`` ``config`` block; rejects what diffusers cannot represent."""
    block = _require(pre, side, "model.pretransform.config")
    where = f"model.pretransform.config.{side}"
    if block.get("type") != "oobleck":
        raise ValueError(f"{where}.type must be 'oobleck' (diffusers AutoencoderOobleck), got {block.get('type')!r}")
    cfg = _require(block, "config", where)
    where += ".config"
    if cfg.get("use_snake") is not True:
        raise ValueError(f"{where}.use_snake must be true: diffusers' Oobleck always uses Snake activations")
    if cfg.get("antialias_activation", False):
        raise ValueError(f"{where}.antialias_activation=true is not supported by diffusers' Oobleck")
    if side == "decoder":
        if "final_tanh" not in cfg:
            raise ValueError(f"{where}.final_tanh is missing (stable-audio-tools defaults it to true); set it")
        if cfg["final_tanh"]:
            raise ValueError(f"{where}.final_tanh=true is not supported: diffusers' decoder has no final tanh")
    for key in ("channels", "c_mults", "strides", "latent_dim"):
        _require(cfg, key, where)
    return cfg


def _parse_sao_config(model_config: Mapping) -> tuple[dict, int]:
    """``(AutoencoderOobleck kwargs, encoder output channels)`` from a SAO config (codecs.md 4.1/4.3)."""
    pre = _pretransform_config(model_config)
    enc, dec = _oobleck_side(pre, "encoder"), _oobleck_side(pre, "decoder")
    bottleneck = pre.get("bottleneck", {}).get("type")
    if bottleneck != "vae":
        raise ValueError(f"model.pretransform.config.bottleneck.type must be 'vae', got {bottleneck!r}")
    if list(enc["strides"]) != list(dec["strides"]) or list(enc["c_mults"]) != list(dec["c_mults"]):
        raise ValueError("encoder and decoder must share strides and c_mults (diffusers ties them)")
    if len(enc["strides"]) != len(enc["c_mults"]):
        raise ValueError(f"strides {enc['strides']} and c_mults {enc['c_mults']} must have the same length")
    in_ch, out_ch = enc.get("in_channels", 2), dec.get("out_channels", 2)
    if in_ch != out_ch:
        raise ValueError(f"encoder in_channels ({in_ch}) must equal decoder out_channels ({out_ch})")
    if enc["latent_dim"] != 2 * dec["latent_dim"]:
        raise ValueError(
            f"encoder latent_dim ({enc['latent_dim']}) must be 2 x decoder latent_dim ({dec['latent_dim']}): "
            "the VAE bottleneck splits it into mean | scale"
        )
    if pre.get("latent_dim", dec["latent_dim"]) != dec["latent_dim"]:
        raise ValueError(f"pretransform latent_dim {pre['latent_dim']} != decoder latent_dim {dec['latent_dim']}")
    hop = math.prod(enc["strides"])
    if pre.get("downsampling_ratio", hop) != hop:
        raise ValueError(f"downsampling_ratio {pre['downsampling_ratio']} != product of strides {hop}")
    kwargs = {
        "encoder_hidden_size": int(enc["channels"]),
        "downsampling_ratios": [int(s) for s in enc["strides"]],
        "channel_multiples": [int(c) for c in enc["c_mults"]],
        "decoder_channels": int(dec["channels"]),
        "decoder_input_channels": int(dec["latent_dim"]),
        "audio_channels": int(in_ch),
        "sampling_rate": int(model_config.get("sample_rate", OUTPUT_SAMPLE_RATE)),
    }
    return kwargs, int(enc["latent_dim"])


def oobleck_config_from_sao_config(model_config: Mapping) -> dict:
    """``AutoencoderOobleck`` kwargs from a Stable Audio Open ``model_config.json`` (codecs.md 4.1, 4.3).

    Reads ``model.pretransform.config`` (encoder/decoder oobleck configs, bottleneck) and the top-level
    ``sample_rate``. For SAO 1.0 this gives diffusers' defaults (128, [2,4,4,8,8], [1,2,4,8,16], 128,
    64, 2, 44100). The encoder's output width (``encoder.latent_dim``) is not a diffusers argument; see
    the module docstring for how the loader handles it.

    Args:
        model_config: The parsed JSON (full SAO config, or its ``model.pretransform.config``).

    Returns:
        Dict of keyword arguments for ``diffusers.AutoencoderOobleck``.

    Raises:
        ValueError: If a needed key is missing, or the config uses something diffusers' Oobleck cannot
            represent (non-oobleck blocks, no Snake, anti-aliasing, final tanh, non-VAE bottleneck,
            different encoder/decoder strides or c_mults, encoder latent_dim != 2 x decoder latent_dim).
    """
    return _parse_sao_config(model_config)[0]


# --------------------------------------------------------------------------------------------------
# Original key layout and conversion (codecs.md 4.2, 4.3)
# --------------------------------------------------------------------------------------------------


def _wn_conv(prefix: str, out_ch: int, in_ch: int, k: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.weight_g": (out_ch, 1, 1), f"{prefix}.weight_v": (out_ch, in_ch, k)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_ch,)
    return shapes


def _snake(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.alpha": (ch,), f"{prefix}.beta": (ch,)}


def _res_unit(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {
        **_snake(f"{prefix}.layers.0", ch),
        **_wn_conv(f"{prefix}.layers.1", ch, ch, 7),
        **_snake(f"{prefix}.layers.2", ch),
        **_wn_conv(f"{prefix}.layers.3", ch, ch, 1),
    }


def official_sao_vae_key_shapes(model_config: Mapping) -> dict[str, tuple[int, ...]]:
    """Every ``pretransform.model.*`` tensor name and shape of a SAO ``model.safetensors`` (codecs.md 4.2).

    Written from the architecture description (codecs.md 4.1), independently of diffusers: used by
    :func:`save_random_official` and by the full-size key audit (365 tensors for SAO 1.0).

    Args:
        model_config: Full SAO config (validated like :func:`oobleck_config_from_sao_config`).

    Returns:
        Ordered ``{key: shape}`` (encoder first, then decoder, in module order).

    Raises:
        ValueError: As :func:`oobleck_config_from_sao_config`.
    """
    kw, enc_out = _parse_sao_config(model_config)
    mults = [1, *kw["channel_multiples"]]
    strides, audio = kw["downsampling_ratios"], kw["audio_channels"]
    n = len(strides)
    shapes: dict[str, tuple[int, ...]] = {}
    c = kw["encoder_hidden_size"]
    p = f"{_PREFIX}encoder.layers"
    shapes.update(_wn_conv(f"{p}.0", c * mults[0], audio, 7))
    for i, stride in enumerate(strides):
        cin, cout = c * mults[i], c * mults[i + 1]
        for r in range(3):
            shapes.update(_res_unit(f"{p}.{i + 1}.layers.{r}", cin))
        shapes.update(_snake(f"{p}.{i + 1}.layers.3", cin))
        shapes.update(_wn_conv(f"{p}.{i + 1}.layers.4", cout, cin, 2 * stride))
    shapes.update(_snake(f"{p}.{n + 1}", c * mults[-1]))
    shapes.update(_wn_conv(f"{p}.{n + 2}", enc_out, c * mults[-1], 3))
    c = kw["decoder_channels"]
    p = f"{_PREFIX}decoder.layers"
    shapes.update(_wn_conv(f"{p}.0", c * mults[-1], kw["decoder_input_channels"], 7))
    for i, stride in enumerate(strides[::-1]):
        cin, cout = c * mults[n - i], c * mults[n - i - 1]
        shapes.update(_snake(f"{p}.{i + 1}.layers.0", cin))
        # weight-normed ConvTranspose1d: weight [in, out, k], norm over dim 0 -> weight_g [in, 1, 1]
        shapes[f"{p}.{i + 1}.layers.1.weight_g"] = (cin, 1, 1)
        shapes[f"{p}.{i + 1}.layers.1.weight_v"] = (cin, cout, 2 * stride)
        shapes[f"{p}.{i + 1}.layers.1.bias"] = (cout,)
        for r in range(3):
            shapes.update(_res_unit(f"{p}.{i + 1}.layers.{r + 2}", cout))
    shapes.update(_snake(f"{p}.{n + 1}", c))
    shapes.update(_wn_conv(f"{p}.{n + 2}", audio, c, 7, bias=False))
    return shapes


_LEAVES = {"alpha", "beta", "weight_g", "weight_v", "bias"}
_RES_UNIT = {"0": "snake1", "1": "conv1", "2": "snake2", "3": "conv2"}
_BLOCK = {
    "encoder": {"0": "res_unit1", "1": "res_unit2", "2": "res_unit3", "3": "snake1", "4": "conv1"},
    "decoder": {"0": "snake1", "1": "conv_t1", "2": "res_unit1", "3": "res_unit2", "4": "res_unit3"},
}
_TOP_RE = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.(.+)")
_SUB_RE = re.compile(r"layers\.(\d+)\.(.+)")


def _convert_block_rest(side: str, rest: str) -> str | None:
    """Inside a block: ``layers.k[.layers.m].leaf`` -> ``res_unitN.snake1.alpha`` etc. (rules 3-5)."""
    match = _SUB_RE.fullmatch(rest)
    if match is None or match.group(1) not in _BLOCK[side]:
        return None
    name, tail = _BLOCK[side][match.group(1)], match.group(2)
    if name.startswith("res_unit"):
        inner = _SUB_RE.fullmatch(tail)
        if inner is None or inner.group(1) not in _RES_UNIT or inner.group(2) not in _LEAVES:
            return None
        return f"{name}.{_RES_UNIT[inner.group(1)]}.{inner.group(2)}"
    return f"{name}.{tail}" if tail in _LEAVES else None


def _convert_sao_key(key: str, last_index: Mapping[str, int]) -> str | None:
    """Diffusers name of one prefix-stripped SAO key, or ``None`` (codecs.md 4.3 rules 2-5)."""
    match = _TOP_RE.fullmatch(key)
    if match is None:
        return None
    side, index, rest = match.group(1), int(match.group(2)), match.group(3)
    last = last_index[side]  # index of the final conv: n_blocks + 2
    if index == 0:
        top = "conv1"
    elif index == last - 1:
        top = "snake1"
    elif index == last:
        top = "conv2"
    elif 1 <= index < last - 1:
        inner = _convert_block_rest(side, rest)
        return None if inner is None else f"{side}.block.{index - 1}.{inner}"
    else:
        return None
    return f"{side}.{top}.{rest}" if rest in _LEAVES else None


def convert_stable_audio_state_dict(full: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SAO single-file keys -> ``AutoencoderOobleck`` keys (codecs.md 4.3).

    Keeps only ``pretransform.model.*`` (the DiT, conditioners and anything else are ignored), drops
    the prefix, renames ``layers.i`` to ``conv1/block.k/snake1/conv2`` and the block/residual-unit
    children, keeps ``weight_g``/``weight_v``/``bias`` as they are and reshapes Snake ``alpha``/``beta``
    from ``[C]`` to ``[1, C, 1]`` (a view, no copy). The number of blocks is read from the keys (the
    final conv has the highest ``layers`` index of its side).

    Args:
        full: ``{key: tensor}`` of a SAO ``model.safetensors`` (whole or only the VAE part).

    Returns:
        ``{diffusers_key: tensor}``; 365 entries for SAO 1.0.

    Raises:
        ValueError: If a ``pretransform.model.*`` key matches no rule (all such keys listed), or if
            there are no ``pretransform.model.*`` keys at all.
    """
    vae = {k[len(_PREFIX):]: v for k, v in full.items() if k.startswith(_PREFIX)}
    if not vae:
        raise ValueError(f"no '{_PREFIX}*' tensors found: is this a Stable Audio Open model.safetensors?")
    last_index = {"encoder": -1, "decoder": -1}
    for key in vae:
        match = _TOP_RE.fullmatch(key)
        if match:
            last_index[match.group(1)] = max(last_index[match.group(1)], int(match.group(2)))
    converted: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in vae.items():
        new_key = _convert_sao_key(key, last_index)
        if new_key is None:
            unknown.append(_PREFIX + key)
            continue
        if new_key.endswith((".alpha", ".beta")):
            tensor = tensor.reshape(1, -1, 1)
        converted[new_key] = tensor
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not part of the SAO Oobleck VAE layout (codecs.md 4.2): "
            f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}"
        )
    return converted


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _build_on_meta(kwargs: Mapping, encoder_out: int | None):
    """``AutoencoderOobleck`` on the meta device, with ``encoder.conv2`` widened if needed."""
    from diffusers import AutoencoderOobleck
    from torch.nn.utils import weight_norm

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        model = AutoencoderOobleck.from_config(dict(kwargs))
        hidden = int(kwargs.get("encoder_hidden_size", 128))
        if encoder_out is not None and encoder_out != hidden:
            d_model = hidden * list(kwargs.get("channel_multiples", [1, 2, 4, 8, 16]))[-1]
            model.encoder.conv2 = weight_norm(torch.nn.Conv1d(d_model, encoder_out, kernel_size=3, padding=1))
    model.encoder_output_channels = encoder_out if encoder_out is not None else hidden
    return model


def _read_sao_vae_tensors(weights: Path) -> dict[str, Tensor]:
    """Only the ``pretransform.model.*`` tensors of a SAO ``model.safetensors`` (safe_open)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt", device="cpu") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(_PREFIX)}


def _cast_in_place(state_dict: dict[str, Tensor], dtype: torch.dtype, device: torch.device | str) -> None:
    for key in list(state_dict):
        state_dict[key] = state_dict[key].to(device=device, dtype=dtype)


def _load_sao_folder(folder: Path, dtype: torch.dtype, device: torch.device | str):
    config = json.loads((folder / _SAO_CONFIG).read_text())
    kwargs, encoder_out = _parse_sao_config(config)
    model = _build_on_meta(kwargs, encoder_out)
    state_dict = convert_stable_audio_state_dict(_read_sao_vae_tensors(folder / _SAO_WEIGHTS))
    _cast_in_place(state_dict, dtype, device)
    load_state_dict_strict(model, state_dict, what=str(folder / _SAO_WEIGHTS))
    return model


def _load_diffusers_folder(folder: Path, dtype: torch.dtype, device: torch.device | str):
    from diffusers import AutoencoderOobleck
    from safetensors.torch import load_file

    config = AutoencoderOobleck.load_config(str(folder))
    state_dict = load_file(str(folder / _DIFFUSERS_WEIGHTS))
    encoder_out = None
    conv2 = state_dict.get("encoder.conv2.weight_v")
    if conv2 is not None and conv2.shape[0] == 2 * int(config.get("decoder_input_channels", 64)):
        encoder_out = int(conv2.shape[0])  # a widened encoder saved by save_pretrained (module docstring)
    model = _build_on_meta(config, encoder_out)
    _cast_in_place(state_dict, dtype, device)
    load_state_dict_strict(model, state_dict, what=str(folder / _DIFFUSERS_WEIGHTS))
    return model


def _resolve_audio_path(path: str | os.PathLike) -> tuple[str, Path]:
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if (folder / _SAO_CONFIG).is_file() and (folder / _SAO_WEIGHTS).is_file():
        return "sao", folder
    for candidate in (folder / "vae", folder):
        if (candidate / _DIFFUSERS_CONFIG).is_file() and (candidate / _DIFFUSERS_WEIGHTS).is_file():
            return "diffusers", candidate
    raise FileNotFoundError(
        f"no Stable Audio Open VAE at {str(path)!r}. Looked for {_SAO_CONFIG} + {_SAO_WEIGHTS} "
        f"(the stabilityai/stable-audio-open-1.0 folder), then {_DIFFUSERS_CONFIG} + {_DIFFUSERS_WEIGHTS} "
        "in its 'vae/' subfolder or in the folder itself."
    )


def load_audio_vae_model(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> "AutoencoderOobleck":  # noqa: F821
    """Load the SAO VAE into diffusers' ``AutoencoderOobleck`` (codecs.md 4.1-4.3).

    Order of preference: the original single-file layout (what the reference reads; only the
    ``pretransform.model.*`` tensors are read, via ``safetensors.safe_open``), then a diffusers
    ``vae/`` subfolder, then the folder itself as a diffusers folder. The model is built on the meta
    device and the tensors are assigned (no second copy). The load is strict.

    Args:
        path: ``stable-audio-open-1.0`` folder (``model_config.json`` + ``model.safetensors``, or
            ``vae/``), a diffusers VAE folder, or a file inside one of them.
        device: Target device.
        dtype: Weight dtype; the reference keeps the SAO VAE in float32 (codecs.md 1).

    Returns:
        ``AutoencoderOobleck`` in eval mode, tiling/slicing off. ``model.encoder_output_channels`` is
        the encoder's output width (``2 * 64``).

    Raises:
        FileNotFoundError: If no checkpoint is found; the message lists what was looked for.
        ValueError: On an unsupported config, unknown keys, or missing/unexpected/mis-shaped keys
            (one error listing them all).
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
            "audio to stereo (pipeline.md 7.2)"
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
    """Merge per-window latents ``[B, C, L]`` placed every ``hop`` latents (pipeline.md 7.2).

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
    """SAO Oobleck VAE with the pipeline's conventions (codecs.md 4, pipeline.md 7.2, 9.2).

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
    ) -> "AudioVAE":
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
        """Decode time-major latents to a waveform (codecs.md 4.1, pipeline.md 9.2).

        Args:
            latent: ``[B, A, 64]`` float, time-major (the pipeline layout); fed to diffusers as
                ``[B, 64, A]`` (never the reference's 2-D trick, codecs.md pitfall 13).

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
        """Deterministic encoder output ``[mean | scale]`` (codecs.md 4.1).

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
        """Encode a waveform to time-major latents by posterior SAMPLING (codecs.md 4.1, pipeline.md 7.2).

        Like the reference, the bottleneck always samples: ``mean + (softplus(scale) + 1e-4) * eps``.
        ``eps`` is drawn as ``torch.randn([B, 64, L], generator=generator)`` in float32 on the CPU
        (channel-major, the shape of the reference's ``randn_like``) and then moved to the model
        device; ``generator=None`` uses the global CPU RNG, as the reference does.

        Clips longer than ``window_samples`` (29 s) are encoded in windows (pipeline.md 7.2):
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
# Resampling (pipeline.md 9.2)
# --------------------------------------------------------------------------------------------------


def resample_to_output_rate(waveform: np.ndarray | Tensor, axis: int = -1) -> np.ndarray:
    """Resample 51.2 kHz model audio to 44.1 kHz output audio (pipeline.md 9.2, codecs.md pitfall 12).

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


# --------------------------------------------------------------------------------------------------
# Tiny random checkpoints in the SAO layout
# --------------------------------------------------------------------------------------------------


def _tiny_sao_config(channels: int) -> dict:
    """A SAO-layout ``model_config.json`` with real strides/c_mults/latent dims and tiny widths."""
    shared = {"channels": channels, "c_mults": list(_SAO_C_MULTS), "strides": list(_SAO_STRIDES), "use_snake": True}
    return {
        "model_type": "diffusion_cond",
        "sample_size": 2097152,
        "sample_rate": OUTPUT_SAMPLE_RATE,
        "audio_channels": 2,
        "model": {
            "pretransform": {
                "type": "autoencoder",
                "iterate_batch": True,
                "config": {
                    "encoder": {
                        "type": "oobleck",
                        "config": {"in_channels": 2, **shared, "latent_dim": 2 * LATENT_CHANNELS},
                    },
                    "decoder": {
                        "type": "oobleck",
                        "config": {"out_channels": 2, **shared, "latent_dim": LATENT_CHANNELS, "final_tanh": False},
                    },
                    "bottleneck": {"type": "vae"},
                    "latent_dim": LATENT_CHANNELS,
                    "downsampling_ratio": HOP_LENGTH,
                    "io_channels": 2,
                },
            }
        },
    }


def _random_sao_tensor(key: str, shape: tuple[int, ...], output_conv: str, generator: torch.Generator) -> Tensor:
    """Init: ``weight_v`` randn, ``weight_g`` ``0.7*(1+0.1*randn)`` (halved for the decoder's output
    conv), bias ``0.05*randn``, Snake ``alpha``/``beta`` ``0.1*randn`` (log scale). Gives an audible,
    unclipped waveform (std ~0.05, peak ~0.5)."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if key.endswith(".weight_g"):
        return (0.35 if key.startswith(output_conv) else 0.7) * (1.0 + 0.1 * noise)
    if key.endswith(".bias"):
        return 0.05 * noise
    if key.endswith((".alpha", ".beta")):
        return 0.1 * noise
    return noise


def save_random_official(folder: str | os.PathLike, *, channels: int = 4, seed: int = 0) -> Path:
    """Write a tiny random SAO checkpoint in the ORIGINAL layout (codecs.md 4.2).

    ``model_config.json`` (full SAO structure; real strides, c_mults, latent dims 128/64 and the 2048
    hop; width ``channels``) and ``model.safetensors`` with the 365 ``pretransform.model.*`` float32
    tensors (weight-norm ``weight_g``/``weight_v``, Snake ``alpha``/``beta``) plus two unrelated
    stand-in tensors that a loader must ignore. Deterministic: tensors are drawn from
    ``torch.Generator().manual_seed(seed)`` in key order. Files are written atomically.

    Args:
        folder: Output folder (created if needed).
        channels: Base width (SAO 1.0 uses 128; default 4 gives ~0.2 M parameters).
        seed: RNG seed.

    Returns:
        The folder, loadable with :meth:`AudioVAE.from_official`.

    Raises:
        ValueError: If ``channels`` is not a positive integer.
    """
    from safetensors.torch import save_file

    if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    config = _tiny_sao_config(channels)
    generator = torch.Generator().manual_seed(seed)
    shapes = official_sao_vae_key_shapes(config)
    output_conv = f"{_PREFIX}decoder.layers.{len(_SAO_STRIDES) + 2}."  # the last WN conv (codecs.md 4.1)
    tensors = {k: _random_sao_tensor(k, s, output_conv, generator) for k, s in shapes.items()}
    tensors["model.model.stand_in_dit_weight"] = torch.randn(4, 4, generator=generator)
    tensors["conditioner.conditioners.prompt.stand_in_weight"] = torch.randn(4, generator=generator)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / _SAO_CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
    write_atomic(folder / _SAO_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return folder
