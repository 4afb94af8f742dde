"""Turbo-VAED configuration: the typed, validated record of the official JSON (architecture.md §11.4, §15 item 22).

Every key that changes the computation must be present in the JSON (architecture.md §15 item 22: the reference's
code defaults are traps); the lists are kept in encoder order and reversed by the ``decoder_*``
properties (architecture.md §11.4). The network is :mod:`magihuman.codecs.turbo_vae_network`; loading and the
decode wrapper are :mod:`magihuman.codecs.turbo_vae`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magihuman.codecs.files import OfficialFile, read_json_file

__all__ = ["TURBO_VAED_CONFIG_NAME", "TurboVAEDConfig"]

#: Config file name inside the published ``turbo_vae/`` folder (architecture.md §11.4).
TURBO_VAED_CONFIG_NAME = "TurboV3-Wan22-TinyShallow_7_7.json"

_CONFIG_FILE = OfficialFile(
    "Turbo-VAED config", TURBO_VAED_CONFIG_NAME, "the turbo_vae/ folder of GAIR/daVinci-MagiHuman"
)

# Keys whose value changes the network or the decode: they must be in the JSON (architecture.md §11.4).
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
# Keys the reference stores but never computes with (architecture.md §11.4: "stored only", "unused", "only
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
    """Every key of the official Turbo-VAED JSON that the reference reads (architecture.md §11.4).

    Lists are stored as given, in **encoder order**; the decoder reverses them (architecture.md §11.4), see the
    ``decoder_*`` properties. The shipped values quoted in architecture.md §11.4 are **[3rd-party,
    unverified]** (widths 64/128/256/512, layers (2,2,2,3,3), chunks 7/7, ...), and architecture.md §11.4 marks the 7/7 chunk values as unverified too: that is why every one of them is a field read
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
        first_chunk_size: ``F`` of the sliding-window decode (architecture.md §11.4), in latent frames.
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
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> TurboVAEDConfig:
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
                f"fall back to LTX-style constructor defaults (architecture.md §11.4); use the official JSON."
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
    def from_json(cls, path: str | os.PathLike) -> TurboVAEDConfig:
        """Read and validate an official JSON file (see :meth:`from_dict` for the rules).

        Raises:
            FileNotFoundError: The file does not exist.
            CheckpointError: (a ``ValueError``) the file is empty, not text or not valid JSON; the message
                names the official file and says to re-download it.
            ValueError: Any rule of :meth:`from_dict` fails.
        """
        path = Path(path).expanduser()
        values = read_json_file(path, _CONFIG_FILE)
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

    # -- decoder-order views (architecture.md §11.4) -------------------------------------------------------

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
        self._validate_blocks()
        self._validate_head_and_window()
        spatial = self.spatial_compression_ratio
        if spatial is not None and spatial != self.spatial_upsample_factor:
            warnings.warn(
                f"Turbo-VAED config: spatial_compression_ratio={spatial} but the network upsamples by "
                f"{self.spatial_upsample_factor}; the reference only stores this value, so it is ignored",
                UserWarning,
                stacklevel=3,
            )

    def _store(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # the dataclass is frozen

    def _validate_blocks(self) -> None:
        """Widths, per-block resnet counts and upsampler flags (one per width, mid block + one per width)."""
        store = self._store
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
                "uses plain convs, architecture.md §11.4)"
            )

    def _validate_head_and_window(self) -> None:
        """The output head, the norm epsilon, the sliding-window sizes and the stored-only keys."""
        store = self._store
        if _int_field("patch_size", self.patch_size, minimum=1) != 2:
            raise ValueError(
                f"Turbo-VAED config key 'patch_size' must be 2 (the reference asserts it), got {self.patch_size}"
            )
        if not _bool_field("use_unpatchify", self.use_unpatchify):
            raise ValueError(
                "Turbo-VAED config key 'use_unpatchify' = false selects the pixel-shuffle head, which this "
                "implementation does not build (the shipped config uses the 2x2 unpatchify, architecture.md §11.4)"
            )
        if _bool_field("decoder_causal", self.decoder_causal):
            raise ValueError(
                "Turbo-VAED config key 'decoder_causal' = true is rejected by the reference (assert); "
                "only false is supported (architecture.md §11.4)"
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
