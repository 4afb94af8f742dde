"""The Stable Audio Open 1.0 checkpoint format: ``model_config.json`` and the VAE keys of ``model.safetensors``.

Fact sheet: architecture.md §11.5 (architecture and config), 4.2 (the ``pretransform.model.*`` keys of the
original single file), 4.3 (the renames to diffusers' ``AutoencoderOobleck``). The config parser refuses
what diffusers' Oobleck cannot represent; :func:`official_sao_vae_key_shapes` describes the original file
from the architecture alone, independently of diffusers, so it can audit
:func:`convert_stable_audio_state_dict`. Loading and encode/decode live in
:mod:`magihuman.codecs.audio_vae`, which re-exports these names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from torch import Tensor

__all__ = [
    "SAO_CONFIG_NAME",
    "SAO_VAE_PREFIX",
    "SAO_WEIGHTS_NAME",
    "convert_stable_audio_state_dict",
    "official_sao_vae_key_shapes",
    "oobleck_config_from_sao_config",
]

#: The config file of the ``stabilityai/stable-audio-open-1.0`` repository (architecture.md §11.5).
SAO_CONFIG_NAME = "model_config.json"
#: The single weights file of that repository (whole model; the VAE is under :data:`SAO_VAE_PREFIX`).
SAO_WEIGHTS_NAME = "model.safetensors"
#: Prefix of the VAE tensors inside :data:`SAO_WEIGHTS_NAME` (architecture.md §11.5).
SAO_VAE_PREFIX = "pretransform.model."
_SAO_SAMPLE_RATE = 44100  # the config's ``sample_rate`` when it has none (SAO's own rate, architecture.md §11.5)


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
            "model_config.json (architecture.md §11.5)"
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
    """``(AutoencoderOobleck kwargs, encoder output channels)`` from a SAO config (architecture.md §11.5)."""
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
        "sampling_rate": int(model_config.get("sample_rate", _SAO_SAMPLE_RATE)),
    }
    return kwargs, int(enc["latent_dim"])


def oobleck_config_from_sao_config(model_config: Mapping) -> dict:
    """``AutoencoderOobleck`` kwargs from a Stable Audio Open ``model_config.json`` (architecture.md §11.5).

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
# Original key layout and conversion (architecture.md §11.5)
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
    """Every ``pretransform.model.*`` tensor name and shape of a SAO ``model.safetensors`` (architecture.md §11.5).

    Written from the architecture description (architecture.md §11.5), independently of diffusers: used by
    :func:`magihuman.demo.random_codecs.save_random_audio_vae` and by the full-size key audit (365 tensors for SAO 1.0).

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
    p = f"{SAO_VAE_PREFIX}encoder.layers"
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
    p = f"{SAO_VAE_PREFIX}decoder.layers"
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
    """Diffusers name of one prefix-stripped SAO key, or ``None`` (architecture.md §11.5)."""
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
    """SAO single-file keys -> ``AutoencoderOobleck`` keys (architecture.md §11.5).

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
    vae = {k[len(SAO_VAE_PREFIX):]: v for k, v in full.items() if k.startswith(SAO_VAE_PREFIX)}
    if not vae:
        raise ValueError(f"no '{SAO_VAE_PREFIX}*' tensors found: is this a Stable Audio Open model.safetensors?")
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
            unknown.append(SAO_VAE_PREFIX + key)
            continue
        if new_key.endswith((".alpha", ".beta")):
            tensor = tensor.reshape(1, -1, 1)
        converted[new_key] = tensor
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not part of the SAO Oobleck VAE layout (architecture.md §11.5): "
            f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}"
        )
    return converted


def to_sao_state_dict(diffusers_state: Mapping[str, Tensor], model_config: Mapping) -> dict[str, Tensor]:
    """An ``AutoencoderOobleck`` state dict under the SAO ``model.safetensors`` names (``pretransform.model.*``).

    The inverse of :func:`convert_stable_audio_state_dict` (architecture.md §11.5): Snake ``alpha``/``beta``
    go back from ``[1, C, 1]`` to ``[C]``; weight-norm ``weight_g``/``weight_v`` keep their shapes.

    Args:
        diffusers_state: ``{diffusers_key: tensor}`` of the VAE described by ``model_config``.
        model_config: The full SAO ``model_config.json`` content the file will be shipped with.

    Returns:
        ``{sao_key: tensor}`` in the order of :func:`official_sao_vae_key_shapes`.

    Raises:
        ValueError: If a key is missing or left over, or a shape differs from the config's (keys named).
    """
    shapes = official_sao_vae_key_shapes(model_config)
    last_index = {"encoder": -1, "decoder": -1}
    for key in shapes:
        match = _TOP_RE.fullmatch(key[len(SAO_VAE_PREFIX):])
        if match:
            last_index[match.group(1)] = max(last_index[match.group(1)], int(match.group(2)))
    names = {_convert_sao_key(key[len(SAO_VAE_PREFIX):], last_index): key for key in shapes}
    missing = sorted(set(names) - set(diffusers_state))
    extra = sorted(set(diffusers_state) - set(names))
    if missing or extra:
        raise ValueError(f"state dict does not match the SAO config: missing {missing[:10]}, unexpected {extra[:10]}")
    out: dict[str, Tensor] = {}
    for new_key, key in names.items():
        tensor = diffusers_state[new_key].reshape(shapes[key])
        out[key] = tensor
    return out
