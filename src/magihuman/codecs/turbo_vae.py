"""Turbo-VAED: the distilled student video decoder that daVinci-MagiHuman uses instead of Wan2.2's.

Reference: architecture.md §11.4 (files and loading, configuration keys, layers, sliding-window
decode) and §12.1 (how the pipeline calls it). There is no Turbo-VAED class in diffusers
(architecture.md §11), so the network is written here from that description.

The codec is split by concept; this module loads it and wraps the decode:

* :mod:`magihuman.codecs.turbo_vae_config` - :class:`TurboVAEDConfig`, the typed record of the official
  JSON; every key that changes the computation must be present (architecture.md §15 item 22).
* :mod:`magihuman.codecs.turbo_vae_network` - the layers and :class:`TurboVAEDecoder`, with parameter
  names exactly as the checkpoint's ``ema_state_dict`` (``decoder.*`` after ``module.`` is stripped).
* :mod:`magihuman.codecs.turbo_vae_window` - :func:`sliding_window_plan` (architecture.md §11.4) and the spatial
  tiling.
* here: :func:`load_turbo_vaed` (strict loading of ``<config>.json`` + ``<checkpoint>.ckpt``) and
  :class:`TurboVAE` (normalised latent in, float32 pixels out, same interface as
  :meth:`magihuman.codecs.video_vae.VideoVAE.decode`; streaming with :meth:`TurboVAE.decode_chunks` and
  optional spatial tiling for 1080p). All public names of the other three modules are re-exported.

Tiny random weights in the official layout are written by
:func:`magihuman.demo.random_codecs.save_random_turbo_vae` (demo bundle, tests).

Numerics (architecture.md §11.4, §11.1): the pipeline casts the float32 latent to the model dtype
(bf16) first, de-normalises it in float32 with float32 constants, ``z / (1/std) + mean``, and casts the
result back; RMS norms and the nearest-exact upsampling run in float32 and are cast back; everything
else runs in the model dtype. This is the reference's op order; how close the bf16 decode comes to the
golden one depends on the CPU's bf16 kernels (docs/parity.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from magihuman.codecs.files import OfficialFile, torch_load_file, wrong_contents_error
from magihuman.codecs.turbo_vae_config import TURBO_VAED_CONFIG_NAME, TurboVAEDConfig
from magihuman.codecs.turbo_vae_network import (
    ChannelRMSNorm,
    DecoderTrunk,
    MidBlock,
    ReplicatePadConv3d,
    ResnetBlock3d,
    TurboVAEDecoder,
    UpBlock,
    Upsampler,
)
from magihuman.codecs.turbo_vae_window import (
    WindowChunk,
    WindowPlan,
    _check_tiling,
    decode_tiled,
    sliding_window_plan,
)
from magihuman.codecs.video_vae import (
    WAN22_LATENT_MEAN,
    WAN22_LATENT_STD,
    check_video_latent,
)
from magihuman.codecs.wrapper import ModelWrapper
from magihuman.model.checkpoint import CheckpointError, load_state_dict_strict

__all__ = [
    "TURBO_VAED_CONFIG_NAME",
    "TURBO_VAED_CHECKPOINT_NAME",
    "TURBO_VAED_EMA_KEY",
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
]

#: Checkpoint file name inside the published ``turbo_vae/`` folder (architecture.md §11.4).
TURBO_VAED_CHECKPOINT_NAME = "checkpoint-340000.ckpt"
#: The checkpoint entry holding the decoder weights the reference uses (architecture.md §11.4).
TURBO_VAED_EMA_KEY = "ema_state_dict"

_CHECKPOINT = OfficialFile(
    "Turbo-VAED checkpoint", TURBO_VAED_CHECKPOINT_NAME, "the turbo_vae/ folder of GAIR/daVinci-MagiHuman"
)
_TRUST_HINT = (
    "If, and only if, the file comes from a trusted source (the official GAIR/daVinci-MagiHuman repository), "
    "pass trust_checkpoint=True to load it with weights_only=False, which can execute code stored in the file."
)


# --------------------------------------------------------------------------------------------------
# Loading (architecture.md §11.4)
# --------------------------------------------------------------------------------------------------


def _decoder_state_dict(checkpoint: Any, path: Path) -> dict[str, Tensor]:
    """``ema_state_dict`` with ``module.`` stripped and ``decoder.`` added when absent (architecture.md §11.4)."""
    key = TURBO_VAED_EMA_KEY
    if not isinstance(checkpoint, Mapping):
        detail = f"it holds a {type(checkpoint).__name__}, not a dict with an {key!r} entry"
        raise wrong_contents_error(path, _CHECKPOINT, detail)
    if key not in checkpoint:
        detail = (f"it has no {key!r} entry (the reference decodes with the EMA weights only); keys found: "
                  f"{sorted(map(str, checkpoint))}")
        raise wrong_contents_error(path, _CHECKPOINT, detail)
    ema = checkpoint[key]
    if not isinstance(ema, Mapping) or not all(isinstance(v, Tensor) for v in ema.values()):
        raise wrong_contents_error(path, _CHECKPOINT, f"its {key!r} entry is not a mapping of tensors")
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
    """Load the official Turbo-VAED decoder strictly (architecture.md §11.4).

    Steps: validate the JSON (:class:`TurboVAEDConfig`); ``torch.load`` the checkpoint with
    ``weights_only=True`` (memory-mapped when possible); take ``ema_state_dict``; strip a leading
    ``module.``; prefix ``decoder.`` when no key has it (the reference's fallback); cast each tensor to
    ``dtype``/``device``; build the model on the meta device and assign the tensors after a strict
    key/shape check (the reference loads with ``strict=False`` and silently keeps random weights).

    Args:
        config_path: The official JSON, e.g. ``turbo_vae/TurboV3-Wan22-TinyShallow_7_7.json``.
        checkpoint_path: The pickle, e.g. ``turbo_vae/checkpoint-340000.ckpt``.
        dtype: Weight dtype (bf16 in the reference pipeline, architecture.md §11).
        device: Target device.
        trust_checkpoint: Load with ``weights_only=False``. Only for a file from a trusted source:
            unpickling can run arbitrary code.

    Returns:
        The decoder in eval mode, ``requires_grad`` off.

    Raises:
        FileNotFoundError: A file does not exist.
        ValueError: The config is invalid (see :meth:`TurboVAEDConfig.from_dict`).
        CheckpointError: (a ``ValueError``) one error naming the file and what to do: the checkpoint is
            empty, truncated or not a ``torch.save`` file (e.g. text; says what it is, to re-download),
            holds non-tensor objects (needs ``trust_checkpoint=True``), has no ``ema_state_dict`` (the keys
            found are listed), or its keys/shapes do not match the config (every missing, unexpected and
            mis-shaped key is listed); or the config JSON is damaged.
    """
    config = TurboVAEDConfig.from_json(config_path)
    checkpoint_path = Path(checkpoint_path).expanduser()
    checkpoint = torch_load_file(
        checkpoint_path, _CHECKPOINT, trust_checkpoint=trust_checkpoint, untrusted_hint=_TRUST_HINT
    )
    state = _decoder_state_dict(checkpoint, checkpoint_path)
    del checkpoint  # drop optimiser state etc. before casting
    for key in list(state):  # copy=True: no tensor keeps the memory-mapped file alive
        state[key] = state[key].to(device=device, dtype=dtype, copy=True)
    with torch.device("meta"):
        model = TurboVAEDecoder(config)
    try:
        load_state_dict_strict(model, state, what=str(checkpoint_path))
    except CheckpointError as exc:
        detail = f"its weights do not match the config {config_path}.\n{exc}"
        raise wrong_contents_error(checkpoint_path, _CHECKPOINT, detail) from None
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


class TurboVAE(ModelWrapper):
    """Turbo-VAED decode of normalised Wan2.2 latents (architecture.md §11.4, §12.1 (default decoder)).

    Same decode interface as :class:`magihuman.codecs.video_vae.VideoVAE`, so the pipeline can use
    either: ``decode(latent [B, 48, T, h, w] float32 normalised) -> [B, 3, 4T-3, 16h, 16w] float32``.
    Unlike Wan's decoder the output is **not clamped** (architecture.md §11.4, §12.1); the pipeline's
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
    ) -> TurboVAE:
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
        config_path, checkpoint_path = _find_official_files(Path(path).expanduser())
        return cls.from_files(config_path, checkpoint_path, dtype=dtype, device=device,
                              trust_checkpoint=trust_checkpoint)

    @classmethod
    def from_files(
        cls,
        config_path: str | os.PathLike,
        checkpoint_path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        trust_checkpoint: bool = False,
    ) -> TurboVAE:
        """Load from an explicit config + checkpoint pair (same arguments and errors as :func:`load_turbo_vaed`)."""
        return cls(
            load_turbo_vaed(config_path, checkpoint_path, dtype=dtype, device=device, trust_checkpoint=trust_checkpoint)
        )

    # -- decode --------------------------------------------------------------------------------

    def denormalize(self, latent: Tensor) -> Tensor:
        """``z / (1/std) + mean`` (architecture.md §11.4, §11.1); returns the model dtype.

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
        return decode_tiled(
            lambda tile: self.model(tile, is_first_chunk=is_first_chunk),
            z,
            scale=self.config.spatial_upsample_factor,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
        )

    def decode_chunks(
        self,
        latent: Tensor,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        output_device: torch.device | str | None = None,
        crossfade: bool = False,
    ) -> Iterator[Tensor]:
        """Sliding-window decode (architecture.md §11.4), yielding the output chunk by chunk.

        Concatenating the chunks along time gives :meth:`decode`'s result, so a writer can stream
        frames without holding the whole video twice. Chunk ``k`` holds ``plan.chunks[k].kept_frames``
        frames (25/28/12 for ``T = 17`` with the 7/7 windows; see :meth:`plan`).

        Args:
            latent: ``[B, 48, T, h, w]`` float (normally float32), normalised latent space.
            tile_size: ``None`` (default) for whole-frame decoding; otherwise each window is decoded in
                evenly spaced, overlapping spatial tiles of at most ``tile_size`` x ``tile_size`` latent
                pixels (to bound activation memory at 1080p), and the tiles are cross-faded linearly in
                the middle half of each overlap (the outer quarters, whose receptive field crosses a tile
                border, are discarded). Inexact where the overlap is below the receptive field (about 13
                latent pixels); measured errors: docs/parity.md.
            tile_overlap: Minimum overlap of neighbouring tiles in latent pixels,
                ``0 <= tile_overlap < tile_size``; ``None`` means ``tile_size // 3`` (e.g. 48 -> 16).
            output_device: Where to put each yielded chunk (e.g. ``"cpu"`` to offload from a GPU);
                ``None`` keeps the model device.
            crossfade: ``False`` (default) joins the chunks with the reference's hard cut. ``True`` (our own,
                not in the reference) fades each chunk's first ``r = 4`` kept frames in linearly from the frames
                the chunk before decoded for the same times and the reference drops (weights ``j / (r + 1)``,
                ``j = 1..r``, for the new chunk), so a decoder that draws a window's ends differently shows no
                jump at the chunk border; the chunk lengths are unchanged and frames away from the borders are
                bit for bit the hard cut's.

        Yields:
            ``[B, 3, f_k, 16h, 16w]`` float32, unclamped.

        Raises:
            ValueError: On a wrong rank, channel count, dtype, empty axis or tiling argument.
        """
        _check_latent(latent, self.config.latent_channels)
        overlap = _check_tiling(tile_size, tile_overlap)
        return self._iter_chunks(latent, tile_size, overlap, output_device, crossfade)

    def _iter_chunks(
        self, latent: Tensor, tile_size: int | None, tile_overlap: int, output_device: torch.device | str | None,
        crossfade: bool = False,
    ) -> Iterator[Tensor]:
        plan = self.plan(latent.shape[2])
        with torch.no_grad():
            z = self.denormalize(latent)
            if plan.pad_frames:
                z = torch.cat([z, z[:, :, -1:].expand(-1, -1, plan.pad_frames, -1, -1)], dim=2)
        tail = None  # the frames the chunk before decoded past its kept ones (crossfade)
        for chunk in plan.chunks:
            if chunk.kept_frames == 0:  # only padding frames: nothing of it reaches the output
                continue
            with torch.no_grad():
                window = z[:, :, chunk.start : chunk.stop]
                decoded = self._decode_window(window, chunk.is_first_chunk, tile_size, tile_overlap)
            video = decoded[:, :, chunk.keep_start : chunk.keep_stop]
            if tail is not None:
                video = _fade_in(tail, video)
            # a copy of the few dropped frames, so the whole decoded window is not held through the next decode
            tail = decoded[:, :, chunk.keep_stop :].clone() if crossfade else None
            del decoded
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
        crossfade: bool = False,
    ) -> Tensor:
        """Decode normalised latents to pixels (architecture.md §11.4, §12.1).

        Args:
            latent: ``[B, 48, T, h, w]`` float (normally float32), normalised latent space.
            tile_size: Optional spatial tiling, see :meth:`decode_chunks`.
            tile_overlap: Tile overlap in latent pixels (``None``: ``tile_size // 3``).
            output_device: See :meth:`decode_chunks`.
            crossfade: Fade the chunk borders instead of the reference's hard cut, see :meth:`decode_chunks`.

        Returns:
            ``[B, 3, 4T-3, 16h, 16w]`` float32, **unclamped** (nominally [-1, 1]). Convert to uint8
            frames with ``magihuman.pipeline.media.video_to_uint8`` (truncation, architecture.md §12.1).

        Raises:
            ValueError: On a wrong rank, channel count, dtype, empty axis or tiling argument.
        """
        chunks = self.decode_chunks(latent, tile_size=tile_size, tile_overlap=tile_overlap, output_device=output_device,
                                    crossfade=crossfade)
        return torch.cat(list(chunks), dim=2)


def _fade_in(tail: Tensor, video: Tensor) -> Tensor:
    """``video`` (a chunk's kept frames, ``[B, 3, f, H, W]``) with its first ``n = min(tail frames, f)`` frames
    blended from ``tail`` (the chunk before's frames for the same times): frame ``j`` (1-based) takes
    ``j / (n + 1)`` of ``video`` and the rest of ``tail``."""
    n = min(tail.shape[2], video.shape[2])
    if n == 0:
        return video
    weight = torch.arange(1, n + 1, dtype=video.dtype, device=video.device).view(1, 1, n, 1, 1) / (n + 1)
    head = torch.lerp(tail[:, :, :n].to(video.device), video[:, :, :n], weight)
    return torch.cat([head, video[:, :, n:]], dim=2)
