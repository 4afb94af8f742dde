"""The original Wan2.2 VAE checkpoint format: file name, key layout, conversion to diffusers names.

Fact sheet: ``architecture.md`` 2.1 (architecture), 2.2 (the keys of ``Wan2.2_VAE.pth``), 2.3 (the renames to
diffusers' ``AutoencoderKLWan``). :func:`official_wan22_key_shapes` describes the original file from the
architecture alone, independently of diffusers, so it can audit :func:`convert_wan22_state_dict`;
:func:`infer_wan22_dims` reads the widths back from a state dict. Loading and the latent normalisation
live in :mod:`magihuman.codecs.video_vae`, which re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

__all__ = [
    "WAN22_CHECKPOINT_NAME",
    "check_wan22_widths",
    "convert_wan22_state_dict",
    "infer_wan22_dims",
    "official_wan22_key_shapes",
]

#: File name of the original checkpoint inside ``Wan-AI/Wan2.2-TI2V-5B`` (architecture.md §11.3).
WAN22_CHECKPOINT_NAME = "Wan2.2_VAE.pth"

_DIM_MULT = (1, 2, 4, 4)
_NUM_RES_BLOCKS = 2
_TEMPORAL_DOWNSAMPLE = (False, True, True)
_PATCH = 2
_IMAGE_CHANNELS = 3
_PATCHED_CHANNELS = _IMAGE_CHANNELS * _PATCH * _PATCH  # 12


def check_wan22_widths(base_dim: int, decoder_base_dim: int, z_dim: int) -> None:
    """Raise ``ValueError`` naming the first width that is not a positive integer."""
    for name, value in (("base_dim", base_dim), ("decoder_base_dim", decoder_base_dim), ("z_dim", z_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Original key layout (architecture.md §11.3)
# --------------------------------------------------------------------------------------------------


def _residual_shapes(prefix: str, in_dim: int, out_dim: int) -> dict[str, tuple[int, ...]]:
    """Original ``ResidualBlock`` keys (architecture.md §11.3: RMS, SiLU, conv, RMS, SiLU, dropout, conv)."""
    shapes = {
        f"{prefix}.residual.0.gamma": (in_dim, 1, 1, 1),
        f"{prefix}.residual.2.weight": (out_dim, in_dim, 3, 3, 3),
        f"{prefix}.residual.2.bias": (out_dim,),
        f"{prefix}.residual.3.gamma": (out_dim, 1, 1, 1),
        f"{prefix}.residual.6.weight": (out_dim, out_dim, 3, 3, 3),
        f"{prefix}.residual.6.bias": (out_dim,),
    }
    if in_dim != out_dim:
        shapes[f"{prefix}.shortcut.weight"] = (out_dim, in_dim, 1, 1, 1)
        shapes[f"{prefix}.shortcut.bias"] = (out_dim,)
    return shapes


def _middle_shapes(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    """Original ``middle`` keys: residual, single-head attention, residual (architecture.md §11.3)."""
    shapes = _residual_shapes(f"{prefix}.0", dim, dim)
    shapes.update(
        {
            f"{prefix}.1.norm.gamma": (dim, 1, 1),
            f"{prefix}.1.to_qkv.weight": (3 * dim, dim, 1, 1),
            f"{prefix}.1.to_qkv.bias": (3 * dim,),
            f"{prefix}.1.proj.weight": (dim, dim, 1, 1),
            f"{prefix}.1.proj.bias": (dim,),
        }
    )
    shapes.update(_residual_shapes(f"{prefix}.2", dim, dim))
    return shapes


def _encoder_shapes(dim: int, z_dim: int) -> dict[str, tuple[int, ...]]:
    """Original ``encoder.*`` keys for encoder base width ``dim`` (architecture.md §11.3)."""
    dims = [dim * m for m in (1, *_DIM_MULT)]
    shapes = {"encoder.conv1.weight": (dim, _PATCHED_CHANNELS, 3, 3, 3), "encoder.conv1.bias": (dim,)}
    for s in range(len(_DIM_MULT)):
        in_dim, out_dim = dims[s], dims[s + 1]
        for j in range(_NUM_RES_BLOCKS):
            prefix = f"encoder.downsamples.{s}.downsamples.{j}"
            shapes.update(_residual_shapes(prefix, in_dim if j == 0 else out_dim, out_dim))
        if s < len(_DIM_MULT) - 1:
            prefix = f"encoder.downsamples.{s}.downsamples.{_NUM_RES_BLOCKS}"
            shapes[f"{prefix}.resample.1.weight"] = (out_dim, out_dim, 3, 3)
            shapes[f"{prefix}.resample.1.bias"] = (out_dim,)
            if _TEMPORAL_DOWNSAMPLE[s]:
                shapes[f"{prefix}.time_conv.weight"] = (out_dim, out_dim, 3, 1, 1)
                shapes[f"{prefix}.time_conv.bias"] = (out_dim,)
    top = dims[-1]
    shapes.update(_middle_shapes("encoder.middle", top))
    shapes["encoder.head.0.gamma"] = (top, 1, 1, 1)
    shapes["encoder.head.2.weight"] = (2 * z_dim, top, 3, 3, 3)
    shapes["encoder.head.2.bias"] = (2 * z_dim,)
    return shapes


def _decoder_shapes(dim: int, z_dim: int) -> dict[str, tuple[int, ...]]:
    """Original ``decoder.*`` keys for decoder base width ``dim`` (architecture.md §11.3)."""
    mults = (_DIM_MULT[-1], *_DIM_MULT[::-1])
    dims = [dim * m for m in mults]
    temporal_upsample = _TEMPORAL_DOWNSAMPLE[::-1]
    shapes = {"decoder.conv1.weight": (dims[0], z_dim, 3, 3, 3), "decoder.conv1.bias": (dims[0],)}
    shapes.update(_middle_shapes("decoder.middle", dims[0]))
    for u in range(len(_DIM_MULT)):
        in_dim, out_dim = dims[u], dims[u + 1]
        for j in range(_NUM_RES_BLOCKS + 1):
            prefix = f"decoder.upsamples.{u}.upsamples.{j}"
            shapes.update(_residual_shapes(prefix, in_dim if j == 0 else out_dim, out_dim))
        if u < len(_DIM_MULT) - 1:
            prefix = f"decoder.upsamples.{u}.upsamples.{_NUM_RES_BLOCKS + 1}"
            shapes[f"{prefix}.resample.1.weight"] = (out_dim, out_dim, 3, 3)
            shapes[f"{prefix}.resample.1.bias"] = (out_dim,)
            if temporal_upsample[u]:
                shapes[f"{prefix}.time_conv.weight"] = (2 * out_dim, out_dim, 3, 1, 1)
                shapes[f"{prefix}.time_conv.bias"] = (2 * out_dim,)
    shapes["decoder.head.0.gamma"] = (dim, 1, 1, 1)
    shapes["decoder.head.2.weight"] = (_PATCHED_CHANNELS, dim, 3, 3, 3)
    shapes["decoder.head.2.bias"] = (_PATCHED_CHANNELS,)
    return shapes


def official_wan22_key_shapes(
    base_dim: int = 160, decoder_base_dim: int = 256, z_dim: int = 48
) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of an original ``Wan2.2_VAE.pth`` (architecture.md §11.3).

    Written from the architecture description (architecture.md §11.3), independently of diffusers, so that
    it can audit :func:`convert_wan22_state_dict` against diffusers' model.

    Args:
        base_dim: Encoder base width (official 160).
        decoder_base_dim: Decoder base width (official 256).
        z_dim: Latent channels (official 48).

    Returns:
        Ordered ``{original_key: shape}`` with 196 entries, in the order of the original state dict.

    Raises:
        ValueError: If a width is not a positive integer.
    """
    check_wan22_widths(base_dim, decoder_base_dim, z_dim)
    shapes = _encoder_shapes(base_dim, z_dim)
    shapes["conv1.weight"] = (2 * z_dim, 2 * z_dim, 1, 1, 1)
    shapes["conv1.bias"] = (2 * z_dim,)
    shapes["conv2.weight"] = (z_dim, z_dim, 1, 1, 1)
    shapes["conv2.bias"] = (z_dim,)
    shapes.update(_decoder_shapes(decoder_base_dim, z_dim))
    return shapes


# --------------------------------------------------------------------------------------------------
# Key conversion (architecture.md §11.3)
# --------------------------------------------------------------------------------------------------

_RESIDUAL_RENAMES = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_RESAMPLE_LEAVES = {"resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias"}
_ATTENTION_LEAVES = {"norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias"}
_TOP_LEVEL = {
    "conv1.weight": "quant_conv.weight",
    "conv1.bias": "quant_conv.bias",
    "conv2.weight": "post_quant_conv.weight",
    "conv2.bias": "post_quant_conv.bias",
}
_SIDE_LEVEL = {
    "conv1.weight": "conv_in.weight",
    "conv1.bias": "conv_in.bias",
    "head.0.gamma": "norm_out.gamma",
    "head.2.weight": "conv_out.weight",
    "head.2.bias": "conv_out.bias",
}
_MIDDLE_RE = re.compile(r"middle\.(\d+)\.(.+)")
_STAGE_RE = {
    "encoder": (re.compile(r"downsamples\.(\d+)\.downsamples\.(\d+)\.(.+)"), "down_blocks", "downsampler"),
    "decoder": (re.compile(r"upsamples\.(\d+)\.upsamples\.(\d+)\.(.+)"), "up_blocks", "upsampler"),
}


def _convert_middle(side: str, rest: str) -> str | None:
    """``X.middle.{0,1,2}.*`` -> ``X.mid_block.{resnets.0, attentions.0, resnets.1}.*``."""
    match = _MIDDLE_RE.fullmatch(rest)
    if match is None:
        return None
    index, leaf = match.groups()
    if index in ("0", "2") and leaf in _RESIDUAL_RENAMES:
        return f"{side}.mid_block.resnets.{int(index) // 2}.{_RESIDUAL_RENAMES[leaf]}"
    if index == "1" and leaf in _ATTENTION_LEAVES:
        return f"{side}.mid_block.attentions.0.{leaf}"
    return None


def _convert_stage(side: str, rest: str) -> str | None:
    """``encoder.downsamples.s.downsamples.j.*`` / ``decoder.upsamples.u.upsamples.j.*`` renames."""
    pattern, blocks, sampler = _STAGE_RE[side]
    match = pattern.fullmatch(rest)
    if match is None:
        return None
    stage, index, leaf = match.groups()
    if leaf in _RESIDUAL_RENAMES:
        return f"{side}.{blocks}.{stage}.resnets.{index}.{_RESIDUAL_RENAMES[leaf]}"
    if leaf in _RESAMPLE_LEAVES:  # the index j of the resample module is dropped
        return f"{side}.{blocks}.{stage}.{sampler}.{leaf}"
    return None


def _convert_wan22_key(key: str) -> str | None:
    """Diffusers name of one original key, or ``None`` when no rule of architecture.md §11.3 applies."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    side, _, rest = key.partition(".")
    if side not in _STAGE_RE:
        return None
    if rest in _SIDE_LEVEL:
        return f"{side}.{_SIDE_LEVEL[rest]}"
    if rest.startswith("middle."):
        return _convert_middle(side, rest)
    return _convert_stage(side, rest)


def convert_wan22_state_dict(original: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original ``Wan2.2_VAE.pth`` state dict to ``AutoencoderKLWan`` names (architecture.md §11.3).

    Tensors are not copied or cast; only the names change. Shapes are identical in both layouts.

    Args:
        original: ``{key: tensor}`` in the original layout (``encoder.*``, ``conv1.*``, ``conv2.*``,
            ``decoder.*``), any dtype/device (meta tensors work, which is how the full-size key audit
            runs).

    Returns:
        A new ``{diffusers_key: tensor}`` dict with the same tensors, in the input order.

    Raises:
        ValueError: If any key matches no rule (all such keys are listed), or if two keys map to
            the same diffusers name.
    """
    converted: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in original.items():
        new_key = _convert_wan22_key(key)
        if new_key is None:
            unknown.append(key)
        elif new_key in converted:
            raise ValueError(f"two original keys map to {new_key!r}; the second one is {key!r}")
        else:
            converted[new_key] = tensor
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not part of the original Wan2.2 VAE layout (architecture.md §11.3): "
            f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}. Pass the state dict of "
            f"{WAN22_CHECKPOINT_NAME} unchanged (no 'module.'/'vae.' prefixes)."
        )
    return converted



_DIM_PROBES = {  # name: ((original key, axis), ...) tried in order (architecture.md §11.3)
    "base_dim": (("encoder.conv1.weight", 0), ("encoder.conv1.bias", 0)),
    "decoder_base_dim": (("decoder.head.2.weight", 1), ("decoder.head.0.gamma", 0)),
    "z_dim": (("conv2.weight", 0), ("conv2.bias", 0), ("decoder.conv1.weight", 1)),
}
_OFFICIAL_DIMS = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48}


def infer_wan22_dims(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """``base_dim``, ``decoder_base_dim``, ``z_dim`` from original tensor shapes (architecture.md §11.3).

    A width whose probe tensors are all absent falls back to the official value; the strict load
    then reports the missing keys together with everything else.
    """
    dims = dict(_OFFICIAL_DIMS)
    for name, probes in _DIM_PROBES.items():
        for key, axis in probes:
            tensor = state_dict.get(key)
            if isinstance(tensor, Tensor) and tensor.dim() > axis:
                dims[name] = int(tensor.shape[axis])
                break
    return dims


def to_original_wan22_state_dict(diffusers_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an ``AutoencoderKLWan`` state dict back to the original ``Wan2.2_VAE.pth`` names.

    The inverse of :func:`convert_wan22_state_dict` (architecture.md §11.3), so a VAE trained with
    diffusers' class is written in the layout the original code and our loader read. The widths are
    inferred from the tensor shapes.

    Args:
        diffusers_state: ``{diffusers_key: tensor}`` of a Wan2.2-structured ``AutoencoderKLWan``.

    Returns:
        ``{original_key: tensor}`` in the original key order; tensors are not copied.

    Raises:
        ValueError: If a key of the original layout has no tensor, or a tensor has no original name
            (each list names the keys).
    """
    dims = {
        "base_dim": int(diffusers_state["encoder.conv_in.weight"].shape[0]),
        "decoder_base_dim": int(diffusers_state["decoder.conv_out.weight"].shape[1]),
        "z_dim": int(diffusers_state["post_quant_conv.weight"].shape[0]),
    }
    names = {_convert_wan22_key(key): key for key in official_wan22_key_shapes(**dims)}
    missing = sorted(set(names) - set(diffusers_state))
    extra = sorted(set(diffusers_state) - set(names))
    if missing or extra:
        raise ValueError(f"not a Wan2.2-structured AutoencoderKLWan state dict: missing {missing[:10]}, "
                         f"unexpected {extra[:10]}")
    return {names[key]: diffusers_state[key] for key in names}
