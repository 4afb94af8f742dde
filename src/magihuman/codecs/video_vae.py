"""Wan2.2 video VAE: official ``Wan2.2_VAE.pth`` loading into diffusers' ``AutoencoderKLWan``.

Reference: architecture.md §11.3 (architecture, key layout, conversion rules), §11.1 (the 48-channel
latent normalisation), §9.1 (image encode) and §12.1 (decode).

The VAE itself is diffusers' ``AutoencoderKLWan``; this module only

* converts the original key layout into diffusers names (:func:`convert_wan22_state_dict`, in
  :mod:`magihuman.codecs.video_vae_format` with the key table of the original file, re-exported here),
* loads checkpoints strictly without holding the weights twice (:func:`load_wan22_vae`); a damaged or
  wrong file is one :class:`~magihuman.model.checkpoint.CheckpointError` saying what it is and what to do,
* owns the latent normalisation that the reference keeps inside its wrapper (:class:`VideoVAE`).

Tiny random checkpoints in the original layout (demo bundle, tests) are written by
:func:`magihuman.demo.random_codecs.save_random_wan22_vae`.

Latent normalisation and bf16 (decision, architecture.md §11.1, §9.1, §11.3):
the reference casts its mean/std to the weight dtype and computes ``1/std`` in that dtype, so with the
production bf16 weights ``(mu - mean) * (1/std)`` and ``z / (1/std) + mean`` run in bf16.
:class:`VideoVAE` does the same: the constants are cast to the model dtype, ``1/std`` is computed in
it, and both formulas run in it (plain fp32 for an fp32 model). The bf16 constants are then bit-equal
to the golden ``wrapper_mean_bf16`` / ``wrapper_inv_std_bf16``, and the decoder receives exactly the
reference's bf16 latent. Measured against the golden bf16 tensors (diffusers network in bf16):

* encode.latent: rel_l2 0.01276 (max 0.034) with bf16 normalisation vs 0.01284 (max 0.036) in fp32;
* decode.video: rel_l2 0.02943 (max 0.237) vs 0.02941 (max 0.229): equal within noise.

The remaining gap is diffusers' RMS norm, which upcasts to fp32 where the reference does not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from magihuman.codecs.files import (
    OfficialFile,
    read_json_file,
    safetensors_error,
    torch_load_file,
    wrong_contents_error,
)
from magihuman.codecs.video_vae_format import (
    _DIM_MULT,
    _IMAGE_CHANNELS,
    _NUM_RES_BLOCKS,
    _PATCH,
    _PATCHED_CHANNELS,
    _TEMPORAL_DOWNSAMPLE,
    WAN22_CHECKPOINT_NAME,
    check_wan22_widths,
    convert_wan22_state_dict,
    infer_wan22_dims,
    official_wan22_key_shapes,
)
from magihuman.codecs.wrapper import ModelWrapper
from magihuman.model.checkpoint import load_state_dict_strict

__all__ = [
    "WAN22_LATENT_MEAN",
    "WAN22_LATENT_STD",
    "WAN22_CHECKPOINT_NAME",
    "SPATIAL_STRIDE",
    "TEMPORAL_STRIDE",
    "LATENT_CHANNELS",
    "pixel_frames",
    "latent_frames_for",
    "VideoVAE",
    "convert_wan22_state_dict",
    "load_wan22_vae",
    "official_wan22_key_shapes",
    "wan22_vae_config",
]

#: Per-channel latent mean, channels 0..47 (architecture.md §11.1).
WAN22_LATENT_MEAN: tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
    0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
    -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
    -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
    0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip

#: Per-channel latent standard deviation, channels 0..47 (architecture.md §11.1).
WAN22_LATENT_STD: tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

#: Pixels per latent pixel along height and width (the VAE's 2x2 patchify times three 2x downsamples).
SPATIAL_STRIDE = 16
#: Pixel frames per latent frame after the first: ``F = TEMPORAL_STRIDE * (T - 1) + 1``.
TEMPORAL_STRIDE = 4
#: Channels of the Wan2.2 latent.
LATENT_CHANNELS = 48
_SPATIAL_STRIDE = SPATIAL_STRIDE
_TEMPORAL_STRIDE = TEMPORAL_STRIDE


def pixel_frames(latent_frames: int) -> int:
    """Decoded frames of ``latent_frames`` latent frames: ``4 * (T - 1) + 1`` (causal first frame)."""
    return TEMPORAL_STRIDE * (latent_frames - 1) + 1


def latent_frames_for(pixel_frames: int) -> int:
    """Latent frames that encode ``pixel_frames`` frames: ``(F - 1) // 4 + 1``."""
    return (pixel_frames - 1) // TEMPORAL_STRIDE + 1

_DIFFUSERS_CONFIG = "config.json"
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_OFFICIAL_FILE = OfficialFile("Wan2.2 VAE checkpoint", WAN22_CHECKPOINT_NAME, "the Wan-AI/Wan2.2-TI2V-5B repository")
_DIFFUSERS_FILE = OfficialFile(
    "Wan2.2 VAE (diffusers format)",
    f"{_DIFFUSERS_CONFIG} + {_DIFFUSERS_WEIGHTS}",
    "a diffusers export of the Wan2.2 VAE",
)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def wan22_vae_config(base_dim: int = 160, decoder_base_dim: int = 256, z_dim: int = 48) -> dict:
    """Keyword arguments for ``diffusers.AutoencoderKLWan`` describing a Wan2.2 VAE (architecture.md §11.3).

    Args:
        base_dim: Encoder base width (official 160).
        decoder_base_dim: Decoder base width (official 256; the reference never overrides it).
        z_dim: Latent channels (official 48). The normalisation constants have 48 entries; for any
            other ``z_dim`` they are omitted and diffusers' defaults are kept (unused by this module).

    Returns:
        A fresh dict, e.g. ``AutoencoderKLWan(**wan22_vae_config())`` builds the 704.7 M-parameter
        official model.

    Raises:
        ValueError: If a width is not a positive integer.
    """
    check_wan22_widths(base_dim, decoder_base_dim, z_dim)
    config = {
        "base_dim": base_dim,
        "decoder_base_dim": decoder_base_dim,
        "z_dim": z_dim,
        "dim_mult": list(_DIM_MULT),
        "num_res_blocks": _NUM_RES_BLOCKS,
        "attn_scales": [],
        "temperal_downsample": list(_TEMPORAL_DOWNSAMPLE),
        "is_residual": True,
        "in_channels": _PATCHED_CHANNELS,
        "out_channels": _PATCHED_CHANNELS,
        "patch_size": _PATCH,
        "scale_factor_temporal": _TEMPORAL_STRIDE,
        "scale_factor_spatial": _SPATIAL_STRIDE,
    }
    if z_dim == len(WAN22_LATENT_MEAN):
        config["latents_mean"] = list(WAN22_LATENT_MEAN)
        config["latents_std"] = list(WAN22_LATENT_STD)
    return config




# --------------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------------


def _cast_in_place(state_dict: dict[str, Tensor], dtype: torch.dtype, device: torch.device | str) -> None:
    """Cast each tensor in turn so the old copy can be freed before the next one is made."""
    for key in list(state_dict):
        state_dict[key] = state_dict[key].to(device=device, dtype=dtype)


def _read_safetensors_folder(folder: Path) -> dict[str, Tensor]:
    """All tensors of a diffusers weights file, single or sharded (``.index.json``)."""
    from safetensors.torch import load_file

    single = folder / _DIFFUSERS_WEIGHTS
    files = [single]
    if not single.is_file():
        index = read_json_file(folder / _DIFFUSERS_INDEX, _DIFFUSERS_FILE)
        try:
            files = [folder / shard for shard in sorted(set(index["weight_map"].values()))]
        except (KeyError, TypeError, AttributeError) as exc:
            detail = "it has no 'weight_map' object (tensor name -> shard file)"
            raise wrong_contents_error(folder / _DIFFUSERS_INDEX, _DIFFUSERS_FILE, detail) from exc
    tensors: dict[str, Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except (SafetensorError, OSError) as exc:
            raise safetensors_error(file, _DIFFUSERS_FILE, exc) from exc
    return tensors


def _is_diffusers_folder(folder: Path) -> bool:
    has_weights = (folder / _DIFFUSERS_WEIGHTS).is_file() or (folder / _DIFFUSERS_INDEX).is_file()
    return (folder / _DIFFUSERS_CONFIG).is_file() and has_weights


def _resolve_wan22_path(path: str | os.PathLike) -> tuple[str, Path]:
    """``("official", file)`` or ``("diffusers", folder)`` for any accepted form of ``path``."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix in (".json", ".safetensors"):  # a file of a diffusers folder
        path = path.parent
    if path.is_file():
        return "official", path
    if path.is_dir():
        if (path / WAN22_CHECKPOINT_NAME).is_file():
            return "official", path / WAN22_CHECKPOINT_NAME
        for folder in (path, path / "vae"):
            if _is_diffusers_folder(folder):
                return "diffusers", folder
    raise FileNotFoundError(
        f"no Wan2.2 VAE checkpoint at {str(path)!r}. Looked for: the file itself, "
        f"{WAN22_CHECKPOINT_NAME} inside it (e.g. the Wan-AI/Wan2.2-TI2V-5B folder), or a diffusers "
        f"folder with {_DIFFUSERS_CONFIG} + {_DIFFUSERS_WEIGHTS} (itself or its 'vae/' subfolder)."
    )



def _build_on_meta(config: Mapping) -> AutoencoderKLWan:  # noqa: F821
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        return AutoencoderKLWan.from_config(dict(config))


def _load_official_wan22(file: Path, dtype: torch.dtype, device: torch.device | str):
    original = torch_load_file(file, _OFFICIAL_FILE)
    if not isinstance(original, Mapping):
        raise wrong_contents_error(file, _OFFICIAL_FILE, f"it holds a {type(original).__name__}, not a state dict")
    try:
        model = _build_on_meta(wan22_vae_config(**infer_wan22_dims(original)))
        state_dict = convert_wan22_state_dict(original)
        del original
        _cast_in_place(state_dict, dtype, device)
        load_state_dict_strict(model, state_dict, what=str(file))
    except ValueError as exc:  # unknown keys (conversion) or missing/mis-shaped keys (strict load)
        detail = f"its tensors are not those of the Wan2.2 VAE.\n{exc}"
        raise wrong_contents_error(file, _OFFICIAL_FILE, detail) from None
    return model


def _load_diffusers_wan22(folder: Path, dtype: torch.dtype, device: torch.device | str):
    from diffusers import AutoencoderKLWan

    if not isinstance(read_json_file(folder / _DIFFUSERS_CONFIG, _DIFFUSERS_FILE), Mapping):
        raise wrong_contents_error(folder / _DIFFUSERS_CONFIG, _DIFFUSERS_FILE, "it is not a JSON object")
    model = _build_on_meta(AutoencoderKLWan.load_config(str(folder)))
    state_dict = _read_safetensors_folder(folder)
    _cast_in_place(state_dict, dtype, device)
    load_state_dict_strict(model, state_dict, what=str(folder))
    return model


def load_wan22_vae(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> AutoencoderKLWan:  # noqa: F821
    """Load a Wan2.2 VAE into diffusers' ``AutoencoderKLWan`` (architecture.md §11.3).

    The model is built on the meta device and the checkpoint tensors are assigned into it (the
    reference also loads with ``assign=True``, strictly), so the weights are never held twice. The
    original ``.pth`` is read with ``torch.load(weights_only=True, mmap=True)``.

    Args:
        path: One of: the original ``Wan2.2_VAE.pth`` file; a folder containing it (e.g. the
            ``Wan-AI/Wan2.2-TI2V-5B`` folder); a diffusers folder (``config.json`` +
            ``diffusion_pytorch_model.safetensors``) or a folder with such a ``vae/`` subfolder.
            For the ``.pth`` the widths (``base_dim``, ``decoder_base_dim``, ``z_dim``; official
            160/256/48) are inferred from the tensor shapes.
        dtype: Weight dtype. The reference runs bf16 (architecture.md §11).
        device: Target device of the weights.

    Returns:
        ``AutoencoderKLWan`` in eval mode, tiling and slicing off (they change numerics).

    Raises:
        FileNotFoundError: If no checkpoint is found; the message lists what was looked for.
        CheckpointError: (a ``ValueError``) one error naming the file, what it is and the fix: the
            ``.pth`` is empty, truncated or not a ``torch.save`` file (e.g. a text file), holds something
            other than a plain state dict, or its keys are unknown, missing, unexpected or mis-shaped (all
            listed); or a diffusers folder's JSON or safetensors file is damaged.
    """
    kind, location = _resolve_wan22_path(path)
    if kind == "official":
        model = _load_official_wan22(location, dtype, device)
    else:
        model = _load_diffusers_wan22(location, dtype, device)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# Wrapper with the latent normalisation
# --------------------------------------------------------------------------------------------------


def _check_pixels(pixels: Tensor) -> None:
    """Validate an encode input: ``[B,3,F,H,W]`` float, ``F = 1 + 4k``, ``H, W`` multiples of 16."""
    if not isinstance(pixels, Tensor) or pixels.dim() != 5:
        shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
        raise ValueError(
            f"pixels must be a 5-D tensor [B, 3, F, H, W], got {shape}; add the batch/time axes "
            "(a single image is [1, 3, 1, H, W])"
        )
    _, channels, frames, height, width = pixels.shape
    if channels != _IMAGE_CHANNELS:
        raise ValueError(f"pixels must have 3 (RGB) channels on axis 1, got {channels}: layout is [B,3,F,H,W]")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be a float tensor in [-1, 1], got {pixels.dtype}; use x / 127.5 - 1")
    if frames < 1 or (frames - 1) % _TEMPORAL_STRIDE:
        raise ValueError(
            f"the number of frames must be 1 + 4k (1, 5, 9, ...), got {frames} (architecture.md §11.3); "
            f"trim to {max(1, (frames - 1) // 4 * 4 + 1)} frames"
        )
    if height % _SPATIAL_STRIDE or width % _SPATIAL_STRIDE or height == 0 or width == 0:
        raise ValueError(
            f"height and width must be positive multiples of 16 pixels, got {height}x{width}; "
            "crop or resize first (architecture.md §13.2)"
        )


def check_video_latent(latent: Tensor, z_dim: int) -> None:
    """Validate a video decoder input: ``[B, z_dim, T, h, w]`` float with non-empty T, h and w
    (the Wan2.2 VAE's and the Turbo-VAED's decode).

    Raises:
        ValueError: naming the wrong rank, channel count, dtype or empty axis.
    """
    if not isinstance(latent, Tensor) or latent.dim() != 5:
        shape = tuple(latent.shape) if isinstance(latent, Tensor) else type(latent).__name__
        raise ValueError(f"latent must be a 5-D tensor [B, {z_dim}, T, h, w], got {shape}")
    if latent.shape[1] != z_dim:
        raise ValueError(f"latent must have {z_dim} channels on axis 1, got {latent.shape[1]} ([B,C,T,h,w] layout)")
    if not latent.is_floating_point():
        raise ValueError(f"latent must be a float tensor, got {latent.dtype}")
    if min(latent.shape[2:]) < 1:
        raise ValueError(f"latent has an empty time/height/width axis: {tuple(latent.shape)}")


class VideoVAE(ModelWrapper):
    """Wan2.2 VAE with the reference's latent normalisation (architecture.md §11.3, §11.1).

    Wraps a diffusers ``AutoencoderKLWan`` (``.model``). Latents seen by the rest of the project are
    *normalised*: ``z = (mu - mean) * (1/std)``; :meth:`decode` inverts it as ``mu = z / (1/std) + mean``
    (the reference's exact division form). Both run in the model dtype with ``mean`` cast to that
    dtype and ``1/std`` computed in it, as the reference does (bf16 in production; see the module
    docstring for why).

    Args:
        model: A loaded ``AutoencoderKLWan`` with ``z_dim == 48``.

    Raises:
        ValueError: If the model's ``z_dim`` is not 48 (the normalisation has 48 channels).
    """

    def __init__(self, model) -> None:
        z_dim = int(model.config.z_dim)
        if z_dim != len(WAN22_LATENT_MEAN):
            raise ValueError(f"VideoVAE needs a Wan2.2 VAE with z_dim=48, got z_dim={z_dim}")
        self.model = model
        self.z_dim = z_dim

    @classmethod
    def from_official(
        cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
    ) -> VideoVAE:
        """Load from any path accepted by :func:`load_wan22_vae` (same arguments and errors)."""
        return cls(load_wan22_vae(path, dtype=dtype, device=device))

    def normalization_constants(self) -> tuple[Tensor, Tensor]:
        """The reference wrapper's ``mean`` and ``1/std`` (architecture.md §11.1).

        Returns:
            ``(mean, inv_std)``, each ``[1, 48, 1, 1, 1]`` in the model dtype on the model device;
            ``mean`` is the float32 constant cast to the model dtype and ``inv_std = 1 / std`` is
            computed in the model dtype after casting ``std`` (bf16: bit-identical to the reference).
        """
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(WAN22_LATENT_MEAN, dtype=torch.float32).to(self.dtype).view(shape)
        std = torch.tensor(WAN22_LATENT_STD, dtype=torch.float32).to(self.dtype)
        inv_std = (1.0 / std).view(shape)
        return mean.to(self.device), inv_std.to(self.device)

    def normalize(self, mu: Tensor) -> Tensor:
        """``(mu - mean) * (1/std)`` in the model dtype, returned as float32 (architecture.md §11.1).

        Args:
            mu: Raw posterior mean ``[B, 48, T, h, w]``, any float dtype.

        Returns:
            Normalised latent, same shape, float32.
        """
        mean, inv_std = self.normalization_constants()
        return ((mu.to(device=self.device, dtype=self.dtype) - mean) * inv_std).float()

    def denormalize(self, latent: Tensor) -> Tensor:
        """``z / (1/std) + mean`` in the model dtype (architecture.md §11.1); returns the model dtype.

        Args:
            latent: Normalised latent ``[B, 48, T, h, w]``, any float dtype.

        Returns:
            Raw VAE latent ``mu``, same shape, model dtype, on the model device.
        """
        mean, inv_std = self.normalization_constants()
        return latent.to(device=self.device, dtype=self.dtype) / inv_std + mean

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """Encode pixels to normalised latents using the posterior **mean** (architecture.md §11.3).

        Args:
            pixels: ``[B, 3, F, H, W]`` float in [-1, 1]; ``F = 1 + 4k`` frames, ``H`` and ``W``
                multiples of 16 pixels. Cast to the model dtype before encoding (the reference casts
                the image to bf16, architecture.md §9.1).

        Returns:
            ``[B, 48, 1 + (F-1)/4, H/16, W/16]`` float32, normalised latent space.

        Raises:
            ValueError: On a wrong rank, channel count, dtype, frame count or spatial size.
        """
        _check_pixels(pixels)
        x = pixels.to(device=self.device, dtype=self.dtype)
        mu = self.model.encode(x).latent_dist.mode()
        return self.normalize(mu)

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Decode normalised latents to pixels (architecture.md §11.3, §12.1, Wan branch).

        Args:
            latent: ``[B, 48, T, h, w]`` float (normally float32), normalised latent space.

        Returns:
            ``[B, 3, 4T-3, 16h, 16w]`` float32, clamped to [-1, 1]. Convert to uint8 frames with
            ``((x*0.5+0.5).clamp(0,1)*255).to(uint8)`` (truncation, architecture.md §12.1).

        Raises:
            ValueError: On a wrong rank, channel count or dtype.
        """
        check_video_latent(latent, self.z_dim)
        mu = self.denormalize(latent)
        video = self.model.decode(mu).sample
        return video.float().clamp_(-1.0, 1.0)
