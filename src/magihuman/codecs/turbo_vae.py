"""Turbo-VAED: the distilled student video decoder that daVinci-MagiHuman uses instead of Wan2.2's.

Fact sheet: ``codecs.md`` section 3 (3.1 files and loading, 3.2 config keys, 3.3 module tree and
parameter names, 3.4 layer semantics, 3.5 sliding-window decode) and pitfalls 5-11 in section 6;
``pipeline.md`` section 9.1 (how the pipeline calls it). There is no Turbo-VAED class in diffusers
(codecs.md 0), so the network is written here from the fact sheet.

Layout of this module, in data-flow order:

* :class:`TurboVAEDConfig` - typed record of the official JSON; every key that changes the
  computation must be present (pitfall 8: the code defaults are LTX-like traps).
* Layers: :class:`ReplicatePadConv3d` (the reference's misnamed "causal" conv), :class:`ChannelRMSNorm`,
  :class:`ResnetBlock3d`, :class:`Upsampler`, :class:`MidBlock`, :class:`UpBlock`, :class:`DecoderTrunk`.
* :class:`TurboVAEDecoder` - the decoder with parameter names exactly as the checkpoint's
  ``ema_state_dict`` (``decoder.*`` after the ``module.`` prefix is stripped).
* :func:`sliding_window_plan` - the pure chunk arithmetic of codecs.md 3.5.
* :func:`load_turbo_vaed` - strict loading of ``<config>.json`` + ``<checkpoint>.ckpt``.
* :class:`TurboVAE` - normalised latent in, float32 pixels out, same interface as
  :meth:`magihuman.codecs.video_vae.VideoVAE.decode`; streaming (:meth:`TurboVAE.decode_chunks`) and
  optional spatial tiling for 1080p.
* :func:`save_random_official` - tiny random weights in the official layout (demo bundle, tests).

Numerics (codecs.md 3.4, 3.5, pitfall 5): the pipeline casts the float32 latent to the model dtype
(bf16) first, de-normalises it in float32 with float32 constants, ``z / (1/std) + mean``, and casts the
result back; RMS norms and the nearest-exact upsampling run in float32 and are cast back; everything
else runs in the model dtype. This is the reference's op order, and on CPU it reproduces the golden
bf16 decode bit for bit (see ``tests/test_turbo_vae.py`` for the measured numbers).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from magihuman.model.checkpoint import CheckpointError, load_state_dict_strict, write_atomic
from magihuman.codecs.video_vae import WAN22_LATENT_MEAN, WAN22_LATENT_STD, check_video_latent
from magihuman.codecs.wrapper import ModelWrapper

__all__ = [
    "TURBO_VAED_CONFIG_NAME",
    "TURBO_VAED_CHECKPOINT_NAME",
    "TurboVAEDConfig",
    "ReplicatePadConv3d",
    "ChannelRMSNorm",
    "ResnetBlock3d",
    "Upsampler",
    "MidBlock",
    "UpBlock",
    "DecoderTrunk",
    "TurboVAEDecoder",
    "WindowChunk",
    "WindowPlan",
    "sliding_window_plan",
    "load_turbo_vaed",
    "TurboVAE",
    "save_random_official",
]

#: Config file name inside the published ``turbo_vae/`` folder (codecs.md 3.1).
TURBO_VAED_CONFIG_NAME = "TurboV3-Wan22-TinyShallow_7_7.json"
#: Checkpoint file name inside the published ``turbo_vae/`` folder (codecs.md 3.1).
TURBO_VAED_CHECKPOINT_NAME = "checkpoint-340000.ckpt"

_EMA_KEY = "ema_state_dict"
_NORM_EPS = 1e-8  # norm1 / norm2 / the decoder's final norm (codecs.md 3.4)


# --------------------------------------------------------------------------------------------------
# Configuration (codecs.md 3.2)
# --------------------------------------------------------------------------------------------------

# Keys whose value changes the network or the decode: they must be in the JSON (pitfall 8).
_REQUIRED_KEYS = (
    "latent_channels",
    "out_channels",
    "decoder_block_out_channels",
    "decoder_layers_per_block",
    "decoder_spatio_temporal_scaling",
    "decoder_spatio_only",
    "decoder_is_dw_conv",
    "patch_size",
    "use_unpatchify",
    "decoder_causal",
    "resnet_norm_eps",
    "first_chunk_size",
    "step_size",
    "temporal_compression_ratio",
)
# Keys the reference stores but never computes with (codecs.md 3.2: "stored only", "unused", "only
# used with dw convs"). A missing one cannot fall back to a harmful default, so it may be absent.
_OPTIONAL_KEYS = (
    "decoder_dw_kernel_size",
    "spatial_compression_ratio",
    "in_channels",
    "patch_size_t",
    "scaling_factor",
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(name: str, value: object, *, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"Turbo-VAED config key {name!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _int_list(name: str, value: object, length: int, *, minimum: int, why: str = "") -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(
        _is_int(v) and v >= minimum for v in value
    ):
        raise ValueError(
            f"Turbo-VAED config key {name!r} must be a list of {length} integers >= {minimum}{why}, got {value!r}"
        )
    return tuple(int(v) for v in value)


def _bool_list(name: str, value: object, length: int, *, why: str = "") -> tuple[bool, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(isinstance(v, bool) for v in value):
        raise ValueError(f"Turbo-VAED config key {name!r} must be a list of {length} booleans{why}, got {value!r}")
    return tuple(value)


def _bool_field(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"Turbo-VAED config key {name!r} must be true or false, got {value!r}")
    return value


def _float_field(name: str, value: object, *, positive: bool) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"Turbo-VAED config key {name!r} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"Turbo-VAED config key {name!r} must be > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TurboVAEDConfig:
    """Every key of the official Turbo-VAED JSON that the reference reads (codecs.md 3.2).

    Lists are stored as given, in **encoder order**; the decoder reverses them (pitfall 9), see the
    ``decoder_*`` properties. The shipped values quoted in codecs.md 3.2 are **[3rd-party,
    unverified]** (widths 64/128/256/512, layers (2,2,2,3,3), chunks 7/7, ...), and ``pipeline.md``
    9.1 marks the 7/7 chunk override as unverified too: that is why every one of them is a field read
    from the JSON, never a constant in this module.

    Attributes:
        latent_channels: ``z``, input channels of ``conv_in`` (48 for the Wan2.2 latent space).
        out_channels: Image channels (3); ``conv_out`` has ``out_channels * patch_size**2``.
        decoder_block_out_channels: Widths in encoder order, e.g. ``(64, 128, 256, 512)``.
        decoder_layers_per_block: Resnet counts in encoder order, one more entry than the widths;
            after reversal entry 0 is the mid block.
        decoder_spatio_temporal_scaling: Per width, whether that up block has an upsampler.
        decoder_spatio_only: Per width, whether that upsampler is 2D-only (no ``time_conv``).
        decoder_is_dw_conv: Per block (mid + ups), depthwise-separable convs. Must be all false.
        patch_size: Spatial unpatchify factor. Must be 2 (the reference asserts it).
        use_unpatchify: Final x2 by unpatchify. Must be true (the pixel-shuffle head is not built).
        decoder_causal: Must be false (the reference asserts it; its convs are not causal anyway).
        resnet_norm_eps: Epsilon of the shortcut-path RMS norm (``norm3``) only.
        first_chunk_size: ``F`` of the sliding-window decode (codecs.md 3.5), in latent frames.
        step_size: ``S`` of the sliding-window decode, in latent frames.
        temporal_compression_ratio: Pixel frames per latent frame; the overlap trim of the window.
            Must equal ``2 ** (number of 3D upsamplers)``.
        decoder_dw_kernel_size: Only used with depthwise convs; ``None`` if absent from the JSON.
        spatial_compression_ratio: Stored only (checked against the architecture, warning if it
            disagrees); ``None`` if absent.
        in_channels: Unused by the decoder; ``None`` if absent.
        patch_size_t: Unused; ``None`` if absent.
        scaling_factor: Unused; ``None`` if absent.
    """

    latent_channels: int
    out_channels: int
    decoder_block_out_channels: tuple[int, ...]
    decoder_layers_per_block: tuple[int, ...]
    decoder_spatio_temporal_scaling: tuple[bool, ...]
    decoder_spatio_only: tuple[bool, ...]
    decoder_is_dw_conv: tuple[bool, ...]
    patch_size: int
    use_unpatchify: bool
    decoder_causal: bool
    resnet_norm_eps: float
    first_chunk_size: int
    step_size: int
    temporal_compression_ratio: int
    decoder_dw_kernel_size: int | None = None
    spatial_compression_ratio: int | None = None
    in_channels: int | None = None
    patch_size_t: int | None = None
    scaling_factor: float | None = None

    def __post_init__(self) -> None:
        self._validate()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> "TurboVAEDConfig":
        """Build from the parsed JSON object.

        Keys starting with ``_`` (diffusers metadata such as ``_class_name``) are ignored silently;
        other unknown keys are ignored with one ``UserWarning`` that lists them.

        Args:
            values: The JSON object.
            source: Name of the file for messages.

        Returns:
            The validated config.

        Raises:
            ValueError: A required key is missing (all are named), a value has the wrong type or
                length, or asks for something this implementation cannot honour (``patch_size != 2``,
                ``decoder_causal``, depthwise convs, ``use_unpatchify=false``, a
                ``temporal_compression_ratio`` that the architecture does not produce).
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"Turbo-VAED {source} must be a JSON object, got {type(values).__name__}")
        missing = [key for key in _REQUIRED_KEYS if key not in values]
        if missing:
            raise ValueError(
                f"Turbo-VAED {source} is missing required key(s) {missing}. The reference would silently "
                f"fall back to LTX-style constructor defaults (codecs.md pitfall 8); use the official JSON."
            )
        known = set(_REQUIRED_KEYS) | set(_OPTIONAL_KEYS)
        unknown = sorted(k for k in values if k not in known and not str(k).startswith("_"))
        if unknown:
            warnings.warn(f"Turbo-VAED {source}: ignoring unknown key(s) {unknown}", UserWarning, stacklevel=2)
        kwargs = {key: values[key] for key in (*_REQUIRED_KEYS, *_OPTIONAL_KEYS) if key in values}
        for key, value in kwargs.items():
            if isinstance(value, list):
                kwargs[key] = tuple(value)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TurboVAEDConfig":
        """Read and validate an official JSON file (see :meth:`from_dict` for the rules).

        Raises:
            FileNotFoundError: The file does not exist.
            ValueError: The file is not valid JSON, or any rule of :meth:`from_dict` fails.
        """
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"Turbo-VAED config {path} does not exist") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"Turbo-VAED config {path} is not valid JSON ({exc})") from exc
        return cls.from_dict(values, source=f"config {path}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every key (lists for tuples; absent optional keys are omitted)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    # -- decoder-order views (pitfall 9) -------------------------------------------------------

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        """Widths in decoder order ``(c0, c1, ...)``: ``c0`` is conv_in / mid block width."""
        return tuple(reversed(self.decoder_block_out_channels))

    @property
    def decoder_layers(self) -> tuple[int, ...]:
        """Resnet counts in decoder order: ``[0]`` is the mid block, ``[i+1]`` up block ``i``."""
        return tuple(reversed(self.decoder_layers_per_block))

    @property
    def up_block_upsamples(self) -> tuple[bool, ...]:
        """Per up block (decoder order): whether it has an upsampler."""
        return tuple(reversed(self.decoder_spatio_temporal_scaling))

    @property
    def up_block_spatio_only(self) -> tuple[bool, ...]:
        """Per up block (decoder order): whether its upsampler is 2D-only."""
        return tuple(reversed(self.decoder_spatio_only))

    @property
    def temporal_upsample_factor(self) -> int:
        """``2 ** (number of 3D upsamplers)``: pixel frames per latent frame of the network."""
        count = sum(up and not only for up, only in zip(self.up_block_upsamples, self.up_block_spatio_only))
        return 2**count

    @property
    def spatial_upsample_factor(self) -> int:
        """``2 ** (number of upsamplers) * patch_size``: pixels per latent pixel (16 when shipped)."""
        return 2 ** sum(self.up_block_upsamples) * self.patch_size

    # -- validation ----------------------------------------------------------------------------

    def _validate(self) -> None:
        """Check types and supported values, normalising lists to tuples (called by ``__init__``)."""

        def store(name: str, value: object) -> None:
            object.__setattr__(self, name, value)  # the dataclass is frozen

        _int_field("latent_channels", self.latent_channels, minimum=1)
        _int_field("out_channels", self.out_channels, minimum=1)
        widths = self.decoder_block_out_channels
        if not isinstance(widths, (list, tuple)) or not widths:
            raise ValueError(
                f"Turbo-VAED config key 'decoder_block_out_channels' must be a non-empty list, got {widths!r}"
            )
        n = len(widths)
        store("decoder_block_out_channels", _int_list("decoder_block_out_channels", widths, n, minimum=1))
        per_width = f" (one per entry of decoder_block_out_channels = {list(widths)})"
        per_block = f" (mid block + one per entry of decoder_block_out_channels = {list(widths)})"
        store(
            "decoder_layers_per_block",
            _int_list("decoder_layers_per_block", self.decoder_layers_per_block, n + 1, minimum=0, why=per_block),
        )
        for name in ("decoder_spatio_temporal_scaling", "decoder_spatio_only"):
            store(name, _bool_list(name, getattr(self, name), n, why=per_width))
        store("decoder_is_dw_conv", _bool_list("decoder_is_dw_conv", self.decoder_is_dw_conv, n + 1, why=per_block))
        if any(self.decoder_is_dw_conv):
            raise ValueError(
                f"Turbo-VAED config key 'decoder_is_dw_conv' = {list(self.decoder_is_dw_conv)} asks for "
                "depthwise-separable convs, which this implementation does not build (the shipped config "
                "uses plain convs, codecs.md 3.2/3.3)"
            )
        if _int_field("patch_size", self.patch_size, minimum=1) != 2:
            raise ValueError(
                f"Turbo-VAED config key 'patch_size' must be 2 (the reference asserts it), got {self.patch_size}"
            )
        if not _bool_field("use_unpatchify", self.use_unpatchify):
            raise ValueError(
                "Turbo-VAED config key 'use_unpatchify' = false selects the pixel-shuffle head, which this "
                "implementation does not build (the shipped config uses the 2x2 unpatchify, codecs.md 3.3)"
            )
        if _bool_field("decoder_causal", self.decoder_causal):
            raise ValueError(
                "Turbo-VAED config key 'decoder_causal' = true is rejected by the reference (assert); "
                "only false is supported (codecs.md pitfall 7)"
            )
        store("resnet_norm_eps", _float_field("resnet_norm_eps", self.resnet_norm_eps, positive=True))
        _int_field("first_chunk_size", self.first_chunk_size, minimum=1)
        _int_field("step_size", self.step_size, minimum=1)
        ratio = _int_field("temporal_compression_ratio", self.temporal_compression_ratio, minimum=1)
        if ratio != self.temporal_upsample_factor:
            raise ValueError(
                f"Turbo-VAED config key 'temporal_compression_ratio' = {ratio} does not match the network, "
                f"whose 3D upsamplers give {self.temporal_upsample_factor} frames per latent frame; the "
                "sliding-window trims would cut the wrong frames"
            )
        for name in ("decoder_dw_kernel_size", "spatial_compression_ratio", "in_channels", "patch_size_t"):
            if getattr(self, name) is not None:
                _int_field(name, getattr(self, name), minimum=1)
        if self.scaling_factor is not None:
            store("scaling_factor", _float_field("scaling_factor", self.scaling_factor, positive=False))
        spatial = self.spatial_compression_ratio
        if spatial is not None and spatial != self.spatial_upsample_factor:
            warnings.warn(
                f"Turbo-VAED config: spatial_compression_ratio={spatial} but the network upsamples by "
                f"{self.spatial_upsample_factor}; the reference only stores this value, so it is ignored",
                UserWarning,
                stacklevel=3,
            )


# --------------------------------------------------------------------------------------------------
# Layers (codecs.md 3.3, 3.4)
# --------------------------------------------------------------------------------------------------


class ReplicatePadConv3d(nn.Module):
    """3D conv with **replicate** temporal padding on both sides (codecs.md 3.4, pitfall 7).

    The reference calls this a "causal" conv, but it pads ``(kT-1)/2`` copies of the first frame on the
    left and of the last frame on the right, so it sees the future. Spatial padding is zero padding of
    ``k//2`` done by the inner ``Conv3d``; stride 1.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: ``(kT, kH, kW)``, odd sizes.

    Parameters: ``conv.weight [out, in, kT, kH, kW]``, ``conv.bias [out]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int]) -> None:
        super().__init__()
        kt, kh, kw = kernel_size
        self.time_pad = (kt - 1) // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=(0, kh // 2, kw // 2))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H, W]``, same dtype."""
        p = self.time_pad
        if p:
            x = torch.cat([x[:, :, :1].expand(-1, -1, p, -1, -1), x, x[:, :, -1:].expand(-1, -1, p, -1, -1)], dim=2)
        return self.conv(x)


class ChannelRMSNorm(nn.Module):
    """Parameter-free RMS norm over the channel axis, computed in float32 (codecs.md 3.4).

    ``y = x * rsqrt(mean_C(x^2) + eps)`` in float32, cast back to ``x.dtype``.

    Args:
        eps: Added to the mean square (1e-8 for norm1/norm2/final, ``resnet_norm_eps`` for norm3).
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, ...]`` -> same shape and dtype."""
        xf = x.float()
        variance = xf.pow(2).mean(dim=1, keepdim=True)
        return (xf * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class ResnetBlock3d(nn.Module):
    """Turbo-VAED resnet block (codecs.md 3.4).

    ``norm1 -> act_a -> conv1 (3^3) -> norm2 -> SiLU -> conv2 (3^3)`` plus a shortcut that is the
    identity, or ``norm3 -> conv_shortcut (1^3)`` when the widths differ; the two paths are added.

    Args:
        in_channels: Input width.
        out_channels: Output width.
        shortcut_eps: Epsilon of ``norm3`` (the config's ``resnet_norm_eps``).
        relu_first: ``act_a`` is ReLU instead of SiLU (the reference's ``is_upsampler_modified``: true for
            the resnets of an up block that has an upsampler, pitfall 10).

    Parameters: ``conv1.conv.*``, ``conv2.conv.*`` and, if the widths differ, ``conv_shortcut.conv.*``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, shortcut_eps: float, relu_first: bool) -> None:
        super().__init__()
        self.relu_first = relu_first
        self.norm1 = ChannelRMSNorm(_NORM_EPS)
        self.conv1 = ReplicatePadConv3d(in_channels, out_channels, (3, 3, 3))
        self.norm2 = ChannelRMSNorm(_NORM_EPS)
        self.conv2 = ReplicatePadConv3d(out_channels, out_channels, (3, 3, 3))
        if in_channels != out_channels:
            self.norm3 = ChannelRMSNorm(shortcut_eps)
            self.conv_shortcut = ReplicatePadConv3d(in_channels, out_channels, (1, 1, 1))
        else:
            self.norm3 = None
            self.conv_shortcut = None

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H, W]``, same dtype."""
        h = self.norm1(x)
        h = F.relu(h) if self.relu_first else F.silu(h)
        h = self.conv1(h)
        h = F.silu(self.norm2(h))
        h = self.conv2(h)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(self.norm3(x))
        return x + h


class _NearestUp2x(nn.Module):
    """Parameter-free ``nearest-exact`` x2 of ``[N, C, H, W]``, computed in float32 and cast back."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Upsampler(nn.Module):
    """Turbo-VAED upsampler, 3D or 2D-only (codecs.md 3.4).

    3D mode: ``time_conv`` (3x1x1, C -> 2C, replicate-padded), channel block ``k`` becomes output frame
    ``2t + k`` (T -> 2T), output frame 0 is dropped on a first chunk (T -> 2T - 1), then per frame a
    nearest-exact x2 (fp32) and a 3x3 Conv2d. 2D mode: only the per-frame part.

    Args:
        channels: Width ``C`` (unchanged).
        temporal: Build ``time_conv`` (3D mode).

    Parameters: ``resample.1.weight [C, C, 3, 3]`` + bias; in 3D mode ``time_conv.conv.weight
    [2C, C, 3, 1, 1]`` + bias.
    """

    def __init__(self, channels: int, *, temporal: bool) -> None:
        super().__init__()
        self.channels = channels
        self.resample = nn.Sequential(_NearestUp2x(), nn.Conv2d(channels, channels, 3, padding=1))
        self.time_conv = ReplicatePadConv3d(channels, 2 * channels, (3, 1, 1)) if temporal else None

    def forward(self, x: Tensor, *, is_first_chunk: bool) -> Tensor:
        """``[B, C, T, H, W]`` -> ``[B, C, T', 2H, 2W]``; ``T' = T`` (2D), ``2T`` or ``2T-1`` (3D, first chunk)."""
        b, c, t, h, w = x.shape
        if self.time_conv is not None:
            x = self.time_conv(x).view(b, 2, c, t, h, w)
            x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # frame 2t+k <- block k
            if is_first_chunk:
                x = x[:, :, 1:]
            t = x.shape[2]
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames = self.resample(frames)
        return frames.view(b, t, c, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)


class MidBlock(nn.Module):
    """Mid block: ``num_layers`` resnets at width ``channels``, SiLU first activation, no attention."""

    def __init__(self, channels: int, num_layers: int, *, shortcut_eps: float) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3d(channels, channels, shortcut_eps=shortcut_eps, relu_first=False) for _ in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T, H, W]`` -> same shape."""
        for resnet in self.resnets:
            x = resnet(x)
        return x


class UpBlock(nn.Module):
    """One up block: ``conv_in`` resnet (only if the width changes) -> upsampler (optional) -> resnets.

    This order differs from Wan's, which upsamples last (codecs.md 3.4).

    Args:
        in_channels: Width of the previous block.
        out_channels: Width of this block.
        num_layers: Number of resnets after the upsampler.
        upsample: Whether the block has an upsampler (``upsamplers.0``).
        spatio_only: The upsampler is 2D-only.
        shortcut_eps: ``resnet_norm_eps``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        *,
        upsample: bool,
        spatio_only: bool,
        shortcut_eps: float,
    ) -> None:
        super().__init__()
        self.conv_in = (
            ResnetBlock3d(in_channels, out_channels, shortcut_eps=shortcut_eps, relu_first=False)
            if in_channels != out_channels
            else None
        )
        self.upsamplers = nn.ModuleList([Upsampler(out_channels, temporal=not spatio_only)]) if upsample else None
        self.resnets = nn.ModuleList(
            ResnetBlock3d(out_channels, out_channels, shortcut_eps=shortcut_eps, relu_first=upsample)
            for _ in range(num_layers)
        )

    def forward(self, x: Tensor, *, is_first_chunk: bool) -> Tensor:
        """``[B, C_in, T, H, W]`` -> ``[B, C_out, T', H', W']`` (see :class:`Upsampler`)."""
        if self.conv_in is not None:
            x = self.conv_in(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, is_first_chunk=is_first_chunk)
        for resnet in self.resnets:
            x = resnet(x)
        return x


class DecoderTrunk(nn.Module):
    """The network under the ``decoder.`` prefix (codecs.md 3.3, 3.4).

    ``conv_in (z -> c0) -> mid_block -> up_blocks -> RMSNorm(1e-8) -> SiLU -> conv_out (c_last ->
    out_channels * 4) -> 2x2 unpatchify``.

    Args:
        config: A validated :class:`TurboVAEDConfig`.
    """

    def __init__(self, config: TurboVAEDConfig) -> None:
        super().__init__()
        channels, layers, eps = config.decoder_channels, config.decoder_layers, config.resnet_norm_eps
        self.patch_size = config.patch_size
        self.out_channels = config.out_channels
        self.conv_in = ReplicatePadConv3d(config.latent_channels, channels[0], (3, 3, 3))
        self.mid_block = MidBlock(channels[0], layers[0], shortcut_eps=eps)
        self.up_blocks = nn.ModuleList(
            UpBlock(
                channels[i - 1] if i > 0 else channels[0],
                channels[i],
                layers[i + 1],
                upsample=config.up_block_upsamples[i],
                spatio_only=config.up_block_spatio_only[i],
                shortcut_eps=eps,
            )
            for i in range(len(channels))
        )
        self.norm_out = ChannelRMSNorm(_NORM_EPS)
        self.conv_out = ReplicatePadConv3d(channels[-1], config.out_channels * self.patch_size**2, (3, 3, 3))

    def forward(self, z: Tensor, *, is_first_chunk: bool) -> Tensor:
        """De-normalised latent ``[B, z, T, h, w]`` -> pixels ``[B, out, T', 16h, 16w]`` (model dtype).

        ``T' = 4T - 3`` on a first chunk, else ``4T`` (shipped structure).
        """
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x, is_first_chunk=is_first_chunk)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return _unpatchify(x, self.out_channels, self.patch_size)


def _unpatchify(x: Tensor, channels: int, p: int) -> Tensor:
    """``[B, c*p*p, T, H, W]`` -> ``[B, c, T, pH, pW]``; channel index ``c*p*p + wphase*p + hphase``."""
    b, _, t, h, w = x.shape
    x = x.view(b, channels, p, p, t, h, w)  # (c, wphase, hphase)
    x = x.permute(0, 1, 4, 5, 3, 6, 2)  # (b, c, t, h, hphase, w, wphase)
    return x.reshape(b, channels, t, h * p, w * p)


class TurboVAEDecoder(nn.Module):
    """The Turbo-VAED decoder with the checkpoint's parameter names (codecs.md 3.3).

    ``state_dict()`` keys are exactly the ``ema_state_dict`` keys after stripping ``module.``:
    ``decoder.conv_in.conv.weight``, ``decoder.mid_block.resnets.{i}.conv{1,2}.conv.*``,
    ``decoder.up_blocks.{i}.conv_in.*``, ``.upsamplers.0.resample.1.*``,
    ``.upsamplers.0.time_conv.conv.*``, ``.resnets.{j}.*``, ``decoder.conv_out.conv.*``. Norms have no
    parameters. The mean/std normalisation lives in :class:`TurboVAE`, not here (codecs.md 3.1).

    Args:
        config: A validated :class:`TurboVAEDConfig`.
    """

    def __init__(self, config: TurboVAEDConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = DecoderTrunk(config)

    def forward(self, z: Tensor, *, is_first_chunk: bool = True) -> Tensor:
        """One pass of the network over a de-normalised latent window (no sliding window).

        Args:
            z: ``[B, latent_channels, T, h, w]`` in the model dtype, *de-normalised*.
            is_first_chunk: Drop frame 0 after each temporal upsampling (``T' = rT - (r-1)``).

        Returns:
            ``[B, out_channels, T', s*h, s*w]`` in the model dtype, unclamped; ``s`` is
            :attr:`TurboVAEDConfig.spatial_upsample_factor`, ``r`` the temporal factor.
        """
        return self.decoder(z, is_first_chunk=is_first_chunk)


# --------------------------------------------------------------------------------------------------
# Sliding-window plan (codecs.md 3.5)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowChunk:
    """One decoder call of the sliding window.

    Attributes:
        start: First latent frame (inclusive) in the padded latent.
        stop: Last latent frame (exclusive) in the padded latent.
        is_first_chunk: Decoded in first-chunk mode.
        pixel_frames: Frames the decoder returns for it (``r*k - (r-1)`` first, else ``r*k``).
        keep_start: First returned frame that goes to the output (after the overlap trim).
        keep_stop: End of the kept frames (after the overlap trim and the removal of padding frames).
    """

    start: int
    stop: int
    is_first_chunk: bool
    pixel_frames: int
    keep_start: int
    keep_stop: int

    @property
    def latent_frames(self) -> int:
        """Latent frames in the call."""
        return self.stop - self.start

    @property
    def kept_frames(self) -> int:
        """Pixel frames that reach the output."""
        return self.keep_stop - self.keep_start


@dataclass(frozen=True)
class WindowPlan:
    """The whole sliding-window decode of ``num_latent_frames`` frames.

    Attributes:
        num_latent_frames: ``T`` of the input.
        padded_frames: ``T' = F + n*S`` (at least ``F``) after repeating the last frame.
        pad_frames: ``T' - T``.
        chunks: The decoder calls, in order.
        num_pixel_frames: Output frames, ``r*T - (r-1)`` (``4T - 3``).
    """

    num_latent_frames: int
    padded_frames: int
    pad_frames: int
    chunks: tuple[WindowChunk, ...]
    num_pixel_frames: int


def sliding_window_plan(
    num_latent_frames: int, first_chunk_size: int, step_size: int, *, temporal_ratio: int = 4
) -> WindowPlan:
    """Chunk arithmetic of the reference's sliding-window decode (codecs.md 3.5, pipeline.md 9.1).

    With ``F = first_chunk_size``, ``S = step_size``, ``r = temporal_ratio`` and an overlap of one
    latent frame (``r`` pixel frames):

    1. pad ``T`` by repeating the last frame up to ``T' = F + n*S >= T`` (at least ``F``);
    2. if ``T' == F``: one first-chunk call on ``[0, F)``;
    3. else a first-chunk call on ``[0, F+1)`` dropping its last ``r`` frames, then for ``i = F, F+S,
       ..., T'-S`` a call on ``[i-1, i+S+1)`` (the last one, ``i = T'-S``, on ``[i-1, T')``) dropping its
       first ``r`` frames and, unless it is the last, its last ``r`` frames;
    4. the trailing ``r * (T' - T)`` frames of the concatenation are removed (folded into the
       ``keep_stop`` of the last chunk(s) here, so chunks can be streamed).

    Args:
        num_latent_frames: ``T >= 1``.
        first_chunk_size: ``F >= 1`` (config ``first_chunk_size``).
        step_size: ``S >= 1`` (config ``step_size``).
        temporal_ratio: ``r >= 1`` (config ``temporal_compression_ratio``).

    Returns:
        The :class:`WindowPlan`; e.g. ``T = 17, F = S = 7``: chunks of 8/9/8 latent frames giving
        29/36/32 pixel frames and 65 output frames.

    Raises:
        ValueError: If an argument is not an integer >= 1.
    """
    for name, value in (
        ("num_latent_frames", num_latent_frames),
        ("first_chunk_size", first_chunk_size),
        ("step_size", step_size),
        ("temporal_ratio", temporal_ratio),
    ):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    t, f, s, r = num_latent_frames, first_chunk_size, step_size, temporal_ratio
    padded = f if t <= f else f + -(-(t - f) // s) * s
    # (start, stop, is_first, drop_front, drop_back) before the padding removal
    raw: list[tuple[int, int, bool, int, int]] = []
    if padded == f:
        raw.append((0, f, True, 0, 0))
    else:
        raw.append((0, f + 1, True, 0, r))
        for i in range(f, padded, s):
            last = i + s >= padded
            raw.append((i - 1, padded if last else i + s + 1, False, r, 0 if last else r))
    num_out = r * t - (r - 1)
    chunks, position = [], 0
    for start, stop, first, front, back in raw:
        produced = r * (stop - start) - ((r - 1) if first else 0)
        kept = produced - front - back
        kept_here = max(0, min(position + kept, num_out) - position)
        chunks.append(WindowChunk(start, stop, first, produced, front, front + kept_here))
        position += kept
    return WindowPlan(t, padded, padded - t, tuple(chunks), num_out)


# --------------------------------------------------------------------------------------------------
# Loading (codecs.md 3.1)
# --------------------------------------------------------------------------------------------------


def _torch_load(path: Path, *, trust_checkpoint: bool) -> Any:
    """``torch.load`` on CPU, memory-mapped when the file format allows it (the real file is 1.7 GiB)."""
    kwargs = {"map_location": "cpu", "weights_only": not trust_checkpoint}
    try:
        try:
            return torch.load(path, mmap=True, **kwargs)
        except RuntimeError as exc:  # legacy (non-zip) format: mmap is not available
            if "mmap can only be used" not in str(exc):
                raise
            return torch.load(path, **kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(f"Turbo-VAED checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as exc:
        detail = str(exc)
        if not trust_checkpoint and ("Unsupported global" in detail or "can still be loaded" in detail):
            unsupported = [line.strip() for line in detail.splitlines() if "Unsupported global" in line]
            raise CheckpointError(
                f"Turbo-VAED checkpoint {path} could not be loaded with torch.load(weights_only=True): the "
                "file contains non-tensor objects (e.g. optimiser or training state"
                f"{'; ' + unsupported[0] if unsupported else ''}). If, and only if, the file comes from a "
                "trusted source (the official GAIR/daVinci-MagiHuman repository), pass trust_checkpoint=True "
                "to load it with weights_only=False, which can execute code stored in the file."
            ) from exc
        raise CheckpointError(_damaged_message(path, exc)) from exc
    except (EOFError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(_damaged_message(path, exc)) from exc


def _damaged_message(path: Path, exc: Exception) -> str:
    if isinstance(exc, pickle.UnpicklingError):
        reason = "invalid pickle data"
    else:
        reason = (str(exc).strip().splitlines() or [""])[0][:200] or "no detail"
    return (
        f"cannot read Turbo-VAED checkpoint {path} ({type(exc).__name__}: {reason}); it is not a "
        "torch.save file or it is damaged (an incomplete download?): delete it and download it again"
    )


def _decoder_state_dict(checkpoint: Any, what: str) -> dict[str, Tensor]:
    """``ema_state_dict`` with ``module.`` stripped and ``decoder.`` added when absent (codecs.md 3.1)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"Turbo-VAED checkpoint {what} holds a {type(checkpoint).__name__}, expected a dict with "
            f"an {_EMA_KEY!r} entry"
        )
    if _EMA_KEY not in checkpoint:
        raise CheckpointError(
            f"Turbo-VAED checkpoint {what} has no {_EMA_KEY!r} entry (the reference decodes with the EMA "
            f"weights only); keys found: {sorted(map(str, checkpoint))}"
        )
    ema = checkpoint[_EMA_KEY]
    if not isinstance(ema, Mapping) or not all(isinstance(v, Tensor) for v in ema.values()):
        raise CheckpointError(f"Turbo-VAED checkpoint {what}: {_EMA_KEY!r} is not a mapping of tensors")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in ema.items()}
    if state and not any(k.startswith("decoder.") for k in state):
        # the reference's fallback: a bare decoder state dict is loaded into `.decoder`
        state = {f"decoder.{k}": v for k, v in state.items()}
    return state


def load_turbo_vaed(
    config_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    trust_checkpoint: bool = False,
) -> TurboVAEDecoder:
    """Load the official Turbo-VAED decoder strictly (codecs.md 3.1, pitfalls 8 and 20).

    Steps: validate the JSON (:class:`TurboVAEDConfig`); ``torch.load`` the checkpoint with
    ``weights_only=True`` (memory-mapped when possible); take ``ema_state_dict``; strip a leading
    ``module.``; prefix ``decoder.`` when no key has it (the reference's fallback); cast each tensor to
    ``dtype``/``device``; build the model on the meta device and assign the tensors after a strict
    key/shape check (the reference loads with ``strict=False`` and silently keeps random weights).

    Args:
        config_path: The official JSON, e.g. ``turbo_vae/TurboV3-Wan22-TinyShallow_7_7.json``.
        checkpoint_path: The pickle, e.g. ``turbo_vae/checkpoint-340000.ckpt``.
        dtype: Weight dtype (bf16 in the reference pipeline, codecs.md 1).
        device: Target device.
        trust_checkpoint: Load with ``weights_only=False``. Only for a file from a trusted source:
            unpickling can run arbitrary code.

    Returns:
        The decoder in eval mode, ``requires_grad`` off.

    Raises:
        FileNotFoundError: A file does not exist.
        ValueError: The config is invalid (see :meth:`TurboVAEDConfig.from_dict`).
        CheckpointError: (a ``ValueError``) the pickle needs ``trust_checkpoint=True``, cannot be read,
            has no ``ema_state_dict`` (the keys found are listed), or its keys/shapes do not match the
            config (one error listing every missing, unexpected and mis-shaped key).
    """
    config = TurboVAEDConfig.from_json(config_path)
    checkpoint_path = Path(checkpoint_path)
    checkpoint = _torch_load(checkpoint_path, trust_checkpoint=trust_checkpoint)
    state = _decoder_state_dict(checkpoint, str(checkpoint_path))
    del checkpoint  # drop optimiser state etc. before casting
    for key in list(state):  # copy=True: no tensor keeps the memory-mapped file alive
        state[key] = state[key].to(device=device, dtype=dtype, copy=True)
    with torch.device("meta"):
        model = TurboVAEDecoder(config)
    load_state_dict_strict(model, state, what=str(checkpoint_path))
    model.requires_grad_(False)
    return model.eval()


def _find_official_files(folder: Path) -> tuple[Path, Path]:
    """The config JSON and checkpoint of a published ``turbo_vae/`` folder."""
    if folder.is_file():  # one of the two files was given: use its folder
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"Turbo-VAED folder {folder} does not exist (expected ROOT/turbo_vae/)")
    if not any(folder.glob("*.ckpt")) and (folder / "turbo_vae").is_dir():  # a checkpoint root was given
        folder = folder / "turbo_vae"
    picked = []
    for pattern, preferred, what in (
        ("*.json", TURBO_VAED_CONFIG_NAME, "config"),
        ("*.ckpt", TURBO_VAED_CHECKPOINT_NAME, "checkpoint"),
    ):
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) == 1:
            picked.append(found[0])
        elif (folder / preferred).is_file():
            picked.append(folder / preferred)
        elif not found:
            raise FileNotFoundError(
                f"no Turbo-VAED {what} ({pattern}) in {folder}; expected {preferred} from the turbo_vae/ "
                "folder of GAIR/daVinci-MagiHuman (`magihuman download`)"
            )
        else:
            raise FileNotFoundError(
                f"several Turbo-VAED {what} files in {folder} and none is named {preferred}: "
                f"{[p.name for p in found]}; pass the files explicitly with TurboVAE.from_files(config, ckpt)"
            )
    return picked[0], picked[1]


# --------------------------------------------------------------------------------------------------
# The decoder with normalisation, sliding window and tiling
# --------------------------------------------------------------------------------------------------


def _check_latent(latent: object, channels: int) -> None:
    """:func:`~magihuman.codecs.video_vae.check_video_latent`, and a non-empty batch."""
    check_video_latent(latent, channels)
    if latent.shape[0] < 1:
        raise ValueError(f"latent has an empty axis: {tuple(latent.shape)}")


def _check_tiling(tile_size: int | None, tile_overlap: int | None) -> int:
    """Validate the tiling arguments; returns the overlap to use (``tile_size // 3`` when ``None``)."""
    if tile_size is None:
        return 0
    if not _is_int(tile_size) or tile_size < 1:
        raise ValueError(f"tile_size must be None or an integer >= 1 (latent pixels), got {tile_size!r}")
    if tile_overlap is None:
        return tile_size // 3
    if not _is_int(tile_overlap) or not 0 <= tile_overlap < tile_size:
        raise ValueError(f"tile_overlap must be an integer in [0, tile_size={tile_size}), got {tile_overlap!r}")
    return tile_overlap


def _tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Evenly spaced tiles ``[a, b)`` of size ``tile`` covering ``[0, length)``, overlapping by >= ``overlap``."""
    if length <= tile:
        return [(0, length)]
    count = -(-(length - tile) // (tile - overlap)) + 1
    return [((k * (length - tile)) // (count - 1), (k * (length - tile)) // (count - 1) + tile) for k in range(count)]


def _band_ramp(band: int, device: torch.device) -> Tensor:
    """Weights rising from 0 to 1 across an overlap band of ``band`` pixels (see :func:`_tile_weights`)."""
    margin = band // 4
    length = band - 2 * margin
    ramp = (torch.arange(length, dtype=torch.float32, device=device) + 0.5) / length
    return torch.cat([torch.zeros(margin, device=device), ramp, torch.ones(margin, device=device)])


def _tile_weights(spans: list[tuple[int, int]], index: int, scale: int, device: torch.device) -> Tensor:
    """1-D blend weights (pixels) of tile ``index`` along one axis.

    In the band shared with a neighbour, the quarter next to this tile's border gets weight 0 (the
    decoder's receptive field crosses the border there: on random weights the error is still ~1e-2 at
    8 latent pixels from a border and reaches float noise at ~13), the middle half is a linear
    cross-fade ``(k + 0.5)/L``, and the quarter on the far side gets weight 1. The two tiles' weights
    over a band sum to one; elsewhere the weight is 1.
    """
    a, b = spans[index]
    weights = torch.ones((b - a) * scale, dtype=torch.float32, device=device)
    if index > 0:
        band = (spans[index - 1][1] - a) * scale
        if band > 0:
            weights[:band] = torch.minimum(weights[:band], _band_ramp(band, device))
    if index + 1 < len(spans):
        band = (b - spans[index + 1][0]) * scale
        if band > 0:
            weights[-band:] = torch.minimum(weights[-band:], _band_ramp(band, device).flip(0))
    return weights


class TurboVAE(ModelWrapper):
    """Turbo-VAED decode of normalised Wan2.2 latents (codecs.md 3, pipeline.md 9.1 default branch).

    Same decode interface as :class:`magihuman.codecs.video_vae.VideoVAE`, so the pipeline can use
    either: ``decode(latent [B, 48, T, h, w] float32 normalised) -> [B, 3, 4T-3, 16h, 16w] float32``.
    Unlike Wan's decoder the output is **not clamped** (codecs.md 3.4, pitfall 6); the pipeline's
    ``x*0.5+0.5``, clamp and truncating uint8 cast (``magihuman.pipeline.media.video_to_uint8``) handle range.

    Args:
        model: A loaded :class:`TurboVAEDecoder` whose ``latent_channels`` is 48.

    Raises:
        ValueError: ``latent_channels`` is not 48 (the Wan2.2 normalisation has 48 channels).
    """

    def __init__(self, model: TurboVAEDecoder) -> None:
        if model.config.latent_channels != len(WAN22_LATENT_MEAN):
            raise ValueError(
                f"TurboVAE needs latent_channels={len(WAN22_LATENT_MEAN)} (Wan2.2 latent space), "
                f"got {model.config.latent_channels}"
            )
        self.model = model
        self.config = model.config

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_official(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        trust_checkpoint: bool = False,
    ) -> "TurboVAE":
        """Load from the published ``turbo_vae/`` folder (or a checkpoint root holding one, or a file in it).

        The folder must hold one ``*.json`` and one ``*.ckpt``; when there are several, the official
        names ``TurboV3-Wan22-TinyShallow_7_7.json`` / ``checkpoint-340000.ckpt`` are taken.

        Args:
            path: The folder.
            dtype: Weight dtype (bf16 as in the reference).
            device: Target device.
            trust_checkpoint: See :func:`load_turbo_vaed`.

        Raises:
            FileNotFoundError: The folder or a file is missing, or the choice is ambiguous (listed).
            ValueError, CheckpointError: As :func:`load_turbo_vaed`.
        """
        config_path, checkpoint_path = _find_official_files(Path(path))
        return cls.from_files(config_path, checkpoint_path, dtype=dtype, device=device, trust_checkpoint=trust_checkpoint)

    @classmethod
    def from_files(
        cls,
        config_path: str | os.PathLike,
        checkpoint_path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        trust_checkpoint: bool = False,
    ) -> "TurboVAE":
        """Load from an explicit config + checkpoint pair (same arguments and errors as :func:`load_turbo_vaed`)."""
        return cls(
            load_turbo_vaed(config_path, checkpoint_path, dtype=dtype, device=device, trust_checkpoint=trust_checkpoint)
        )

    # -- decode --------------------------------------------------------------------------------

    def denormalize(self, latent: Tensor) -> Tensor:
        """``z / (1/std) + mean`` (codecs.md 3.5 step 1, pitfall 5); returns the model dtype.

        As the pipeline does, ``latent`` is first cast to the model dtype; the arithmetic then runs in
        float32 with float32 constants (Turbo keeps them fp32, unlike Wan), and the result is cast back.

        Args:
            latent: Normalised ``[B, 48, T, h, w]``, any float dtype.

        Returns:
            Raw latent, same shape, model dtype, on the model device.
        """
        z = latent.to(device=self.device, dtype=self.dtype)
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(WAN22_LATENT_MEAN, dtype=torch.float32, device=z.device).view(shape)
        std = torch.tensor(WAN22_LATENT_STD, dtype=torch.float32, device=z.device).view(shape)
        return (z.float() / (1.0 / std) + mean).to(self.dtype)

    def plan(self, num_latent_frames: int) -> WindowPlan:
        """The :func:`sliding_window_plan` for this config's chunk sizes."""
        c = self.config
        return sliding_window_plan(
            num_latent_frames, c.first_chunk_size, c.step_size, temporal_ratio=c.temporal_compression_ratio
        )

    def _decode_window(self, z: Tensor, is_first_chunk: bool, tile_size: int | None, tile_overlap: int) -> Tensor:
        """One decoder call on a latent window, tiled spatially when asked; returns float32."""
        h, w = z.shape[-2:]
        if tile_size is None or (h <= tile_size and w <= tile_size):
            return self.model(z, is_first_chunk=is_first_chunk).float()
        scale = self.config.spatial_upsample_factor
        rows, cols = _tile_spans(h, tile_size, tile_overlap), _tile_spans(w, tile_size, tile_overlap)
        out = weight_sum = None
        for i, (r0, r1) in enumerate(rows):
            wy = _tile_weights(rows, i, scale, z.device)
            for j, (c0, c1) in enumerate(cols):
                tile = self.model(z[..., r0:r1, c0:c1], is_first_chunk=is_first_chunk).float()
                if out is None:
                    b, c, t = tile.shape[:3]
                    out = torch.zeros((b, c, t, h * scale, w * scale), dtype=torch.float32, device=z.device)
                    weight_sum = torch.zeros((h * scale, w * scale), dtype=torch.float32, device=z.device)
                weight = wy[:, None] * _tile_weights(cols, j, scale, z.device)[None, :]
                ys, xs = slice(r0 * scale, r1 * scale), slice(c0 * scale, c1 * scale)
                out[..., ys, xs] += tile * weight
                weight_sum[ys, xs] += weight
                del tile
        return out.div_(weight_sum)

    def decode_chunks(
        self,
        latent: Tensor,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        output_device: torch.device | str | None = None,
    ) -> Iterator[Tensor]:
        """Sliding-window decode (codecs.md 3.5), yielding the output chunk by chunk.

        Concatenating the chunks along time gives :meth:`decode`'s result, so a writer can stream
        frames without holding the whole video twice. Chunk ``k`` holds ``plan.chunks[k].kept_frames``
        frames (25/28/12 for ``T = 17`` with the 7/7 windows; see :meth:`plan`).

        Args:
            latent: ``[B, 48, T, h, w]`` float (normally float32), normalised latent space.
            tile_size: ``None`` (default) for whole-frame decoding; otherwise each window is decoded in
                evenly spaced, overlapping spatial tiles of at most ``tile_size`` x ``tile_size`` latent
                pixels (to bound activation memory at 1080p), and the tiles are cross-faded linearly in
                the middle half of each overlap (the outer quarters, whose receptive field crosses a tile
                border, are discarded). Inexact: the decoder's receptive field is about 13 latent pixels,
                so seams vanish only for overlaps of ~48 or more on random weights; trained weights are
                far more local. Measured errors are in ``tests/test_turbo_vae.py``.
            tile_overlap: Minimum overlap of neighbouring tiles in latent pixels,
                ``0 <= tile_overlap < tile_size``; ``None`` means ``tile_size // 3`` (e.g. 48 -> 16).
            output_device: Where to put each yielded chunk (e.g. ``"cpu"`` to offload from a GPU);
                ``None`` keeps the model device.

        Yields:
            ``[B, 3, f_k, 16h, 16w]`` float32, unclamped.

        Raises:
            ValueError: On a wrong rank, channel count, dtype, empty axis or tiling argument.
        """
        _check_latent(latent, self.config.latent_channels)
        overlap = _check_tiling(tile_size, tile_overlap)
        return self._iter_chunks(latent, tile_size, overlap, output_device)

    def _iter_chunks(
        self, latent: Tensor, tile_size: int | None, tile_overlap: int, output_device: torch.device | str | None
    ) -> Iterator[Tensor]:
        plan = self.plan(latent.shape[2])
        with torch.no_grad():
            z = self.denormalize(latent)
            if plan.pad_frames:
                z = torch.cat([z, z[:, :, -1:].expand(-1, -1, plan.pad_frames, -1, -1)], dim=2)
        for chunk in plan.chunks:
            if chunk.kept_frames == 0:  # only padding frames: nothing of it reaches the output
                continue
            with torch.no_grad():
                window = z[:, :, chunk.start : chunk.stop]
                video = self._decode_window(window, chunk.is_first_chunk, tile_size, tile_overlap)
            video = video[:, :, chunk.keep_start : chunk.keep_stop]
            if output_device is not None:
                video = video.to(output_device)
            yield video
            del video

    @torch.no_grad()
    def decode(
        self,
        latent: Tensor,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        output_device: torch.device | str | None = None,
    ) -> Tensor:
        """Decode normalised latents to pixels (codecs.md 3.5, pipeline.md 9.1).

        Args:
            latent: ``[B, 48, T, h, w]`` float (normally float32), normalised latent space.
            tile_size: Optional spatial tiling, see :meth:`decode_chunks`.
            tile_overlap: Tile overlap in latent pixels (``None``: ``tile_size // 3``).
            output_device: See :meth:`decode_chunks`.

        Returns:
            ``[B, 3, 4T-3, 16h, 16w]`` float32, **unclamped** (nominally [-1, 1]). Convert to uint8
            frames with ``magihuman.pipeline.media.video_to_uint8`` (truncation, pipeline.md 9.1).

        Raises:
            ValueError: On a wrong rank, channel count, dtype, empty axis or tiling argument.
        """
        chunks = self.decode_chunks(latent, tile_size=tile_size, tile_overlap=tile_overlap, output_device=output_device)
        return torch.cat(list(chunks), dim=2)


# --------------------------------------------------------------------------------------------------
# Tiny random checkpoints in the official layout
# --------------------------------------------------------------------------------------------------


def _shipped_structure(channels: Sequence[int]) -> dict[str, Any]:
    """Official JSON with the shipped structure flags (codecs.md 3.2) and the given widths."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": len(WAN22_LATENT_MEAN),
        "decoder_block_out_channels": list(channels),
        "decoder_layers_per_block": [2, 2, 2, 3, 3],
        "decoder_spatio_temporal_scaling": [False, True, True, True],
        "decoder_spatio_only": [False, True, False, False],
        "decoder_is_dw_conv": [False] * 5,
        "decoder_dw_kernel_size": 3,
        "decoder_causal": False,
        "patch_size": 2,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-6,
        "scaling_factor": 1.0,
        "use_unpatchify": True,
        "first_chunk_size": 7,
        "step_size": 7,
        "spatial_compression_ratio": 16,
        "temporal_compression_ratio": 4,
    }


def save_random_official(
    folder: str | os.PathLike, *, channels: Sequence[int] = (8, 8, 16, 16), seed: int = 0
) -> Path:
    """Write a tiny random Turbo-VAED in the official layout (codecs.md 3.1, 3.3).

    Files: ``TurboV3-Wan22-TinyShallow_7_7.json`` (every key, shipped structure flags, widths
    ``channels``) and ``checkpoint-340000.ckpt`` = ``torch.save({"ema_state_dict":
    {"module.decoder.<name>": fp32 tensor}, "global_step": 0})``, both written atomically. Tensors are
    drawn from ``torch.Generator().manual_seed(seed)`` in state-dict order: conv weights
    ``randn / sqrt(fan_in)``, biases ``0.05 * randn`` (the golden case's rule; the decoded video has a
    standard deviation around 0.5, so uint8 frames are neither flat nor saturated).

    Args:
        folder: Output folder (created), e.g. ``ROOT/turbo_vae``.
        channels: Widths in encoder order (4 entries; the shipped model has 64, 128, 256, 512). The
            default (8, 8, 16, 16) is chosen for CPU speed, not size: float32 CPU convolutions with
            few channels fall back to PyTorch's slow native kernel, so the demo decode (13 latent
            frames at 16x28) takes ~2.5 s on 2 cores here versus ~13 s with (4, 8, 12, 16).
        seed: RNG seed.

    Returns:
        ``folder`` as a :class:`~pathlib.Path` (loadable with :meth:`TurboVAE.from_official`).

    Raises:
        ValueError: ``channels`` is not 4 positive integers.
    """
    config = TurboVAEDConfig.from_dict(_shipped_structure(channels), source="random config")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in TurboVAEDecoder(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    ema = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        ema[f"module.{key}"] = 0.05 * noise if key.endswith(".bias") else noise / math.prod(shape[1:]) ** 0.5
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    write_atomic(folder / TURBO_VAED_CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_atomic(
        folder / TURBO_VAED_CHECKPOINT_NAME, lambda tmp: torch.save({_EMA_KEY: ema, "global_step": 0}, tmp)
    )
    return folder
