"""Turbo-VAED network: layers and the decoder with the checkpoint's parameter names (architecture.md §11.4).

In data-flow order: :class:`ReplicatePadConv3d` (the reference's misnamed "causal" conv),
:class:`ChannelRMSNorm`, :class:`ResnetBlock3d`, :class:`Upsampler`, :class:`MidBlock`, :class:`UpBlock`,
:class:`DecoderTrunk`, and :class:`TurboVAEDecoder` whose ``state_dict()`` keys are the checkpoint's
``ema_state_dict`` keys after the ``module.`` prefix is stripped. There is no Turbo-VAED class in
diffusers (architecture.md §11), so the network is written here from the fact sheet.

Numerics (architecture.md §11.4): RMS norms and the nearest-exact upsampling run in float32 and are cast back;
everything else runs in the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from magihuman.codecs.turbo_vae_config import TurboVAEDConfig

__all__ = [
    "ReplicatePadConv3d",
    "ChannelRMSNorm",
    "ResnetBlock3d",
    "Upsampler",
    "MidBlock",
    "UpBlock",
    "DecoderTrunk",
    "TurboVAEDecoder",
]

_NORM_EPS = 1e-8  # norm1 / norm2 / the decoder's final norm (architecture.md §11.4)


class ReplicatePadConv3d(nn.Module):
    """3D conv with **replicate** temporal padding on both sides (architecture.md §11.4).

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
    """Parameter-free RMS norm over the channel axis, computed in float32 (architecture.md §11.4).

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
    """Turbo-VAED resnet block (architecture.md §11.4).

    ``norm1 -> act_a -> conv1 (3^3) -> norm2 -> SiLU -> conv2 (3^3)`` plus a shortcut that is the
    identity, or ``norm3 -> conv_shortcut (1^3)`` when the widths differ; the two paths are added.

    Args:
        in_channels: Input width.
        out_channels: Output width.
        shortcut_eps: Epsilon of ``norm3`` (the config's ``resnet_norm_eps``).
        relu_first: ``act_a`` is ReLU instead of SiLU (the reference's ``is_upsampler_modified``: true for
            the resnets of an up block that has an upsampler, architecture.md §11.4).

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
    """Turbo-VAED upsampler, 3D or 2D-only (architecture.md §11.4).

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

    This order differs from Wan's, which upsamples last (architecture.md §11.4).

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
    """The network under the ``decoder.`` prefix (architecture.md §11.4).

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
    """The Turbo-VAED decoder with the checkpoint's parameter names (architecture.md §11.4).

    ``state_dict()`` keys are exactly the ``ema_state_dict`` keys after stripping ``module.``:
    ``decoder.conv_in.conv.weight``, ``decoder.mid_block.resnets.{i}.conv{1,2}.conv.*``,
    ``decoder.up_blocks.{i}.conv_in.*``, ``.upsamplers.0.resample.1.*``,
    ``.upsamplers.0.time_conv.conv.*``, ``.resnets.{j}.*``, ``decoder.conv_out.conv.*``. Norms have no
    parameters. The mean/std normalisation lives in :class:`TurboVAE`, not here (architecture.md §11.4).

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
