"""Reconstruction training of the codecs: the Wan2.2 VAE, the Stable Audio (Oobleck) VAE and the Turbo-VAED decoder.

The transformer never sees pixels or samples, only the latents of these codecs, so a model world trained from
scratch (the toy world, :mod:`magihuman.train.toy_recipe`) needs its own codecs first. Each is trained with the
objective its kind is known for, at any width, and written in the file layout its loader reads unchanged:

* **Wan2.2 VAE** (``AutoencoderKLWan``, architecture.md §11.3): L1 pixel loss on the decoded posterior sample
  (decoded without diffusers' output clamp, whose zero gradient stalls a fresh decoder), plus a small KL
  term measured in the *normalised* latent space (``(mu - mean) / std`` with the published per-channel
  constants, architecture.md §11.1), so the latents the transformer is trained on stay near unit scale.
  Written as ``Wan2.2_VAE.pth`` in the original key layout.
* **Stable Audio VAE** (``AutoencoderOobleck``, architecture.md §11.5): L1 waveform loss, a multi-resolution
  STFT log-magnitude loss (the usual audio-codec reconstruction terms) and a small KL term on the posterior.
  Written as SAO's ``model_config.json`` + ``model.safetensors`` (``pretransform.model.*``).
* **Turbo-VAED** (:class:`~magihuman.codecs.turbo_vae.TurboVAEDecoder`, architecture.md §11.4): a decoder only,
  trained with L1 to map the trained Wan encoder's latents to the pixels, on the sliding windows the decode
  plan calls it with (first-chunk and later windows). Written as the Turbo JSON + ``.ckpt``.

:class:`ReconstructionRun` is the shared loop: AdamW, gradient clipping, ``loss.csv``/``loss.png``, a
resumable checkpoint every ``checkpoint_every`` steps, and batches that are a pure function of
``(seed, step)``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from magihuman.codecs.audio_vae_format import SAO_CONFIG_NAME, SAO_WEIGHTS_NAME, to_sao_state_dict
from magihuman.codecs.turbo_vae import TURBO_VAED_CHECKPOINT_NAME, TURBO_VAED_EMA_KEY
from magihuman.codecs.turbo_vae_config import TURBO_VAED_CONFIG_NAME
from magihuman.codecs.video_vae import WAN22_CHECKPOINT_NAME, WAN22_LATENT_MEAN, WAN22_LATENT_STD
from magihuman.codecs.video_vae_format import to_original_wan22_state_dict
from magihuman.demo.random_codecs import _torch_save
from magihuman.model.checkpoint import write_atomic
from magihuman.train.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from magihuman.train.metrics import LossLog

__all__ = [
    "ReconstructionRun",
    "audio_vae_loss",
    "save_audio_vae",
    "save_turbo_decoder",
    "save_wan22_vae",
    "stft_loss",
    "turbo_decoder_loss",
    "video_vae_loss",
    "weighted_l1",
]

LossFn = Callable[[int], tuple[Tensor, dict[str, float]]]


@dataclass
class ReconstructionRun:
    """One resumable codec training run.

    Args:
        model: the module to train (float32, CPU or GPU); every parameter with ``requires_grad`` is trained.
        folder: run folder (``loss.csv``, ``loss.png``, ``checkpoints/step-N/``).
        loss_fn: ``loss_fn(step) -> (loss, parts)``; draws its batch from ``step`` alone (pure function).
        steps: optimiser steps in total.
        learning_rate: AdamW peak learning rate: a linear warm-up of ``warmup_steps``, constant, then a linear
            decay to ``final_lr_fraction`` x the peak over the last ``decay_fraction`` of ``steps``.
        checkpoint_every: steps between resumable checkpoints (and one at the end).
        max_grad_norm: global gradient-norm clip.
        warmup_steps: linear warm-up steps.
    """

    model: torch.nn.Module
    folder: Path
    loss_fn: LossFn
    steps: int
    learning_rate: float = 1e-3
    checkpoint_every: int = 100
    max_grad_norm: float = 1.0
    warmup_steps: int = 20
    decay_fraction: float = 0.4
    final_lr_fraction: float = 0.1

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based; see the class docstring)."""
        lr = self.learning_rate * min(1.0, (step + 1) / max(1, self.warmup_steps))
        start = self.steps * (1 - self.decay_fraction)
        if step >= start and self.decay_fraction > 0:
            progress = (step - start) / max(1.0, self.steps - start)
            lr *= 1 - (1 - self.final_lr_fraction) * progress
        return lr

    def train(self, *, stop_after: int | None = None, progress: Callable[[int, dict], None] | None = None) -> int:
        """Train to ``steps``, resuming from the folder's latest checkpoint; returns the last step done.

        Args:
            stop_after: stop once this step is done (and checkpointed), as an interruption would.
            progress: called with ``(step, values)`` after every step.
        """
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW(params.values(), lr=self.learning_rate, betas=(0.9, 0.99))
        step = self._resume(folder, params, optimizer)
        log = None
        last = self.steps if stop_after is None else min(self.steps, stop_after)
        start = time.perf_counter()
        self.model.train()
        while step < last:
            lr = self.learning_rate_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss, parts = self.loss_fn(step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), self.max_grad_norm)
            optimizer.step()
            step += 1
            values = {"loss": float(loss.detach()), **parts, "seconds": time.perf_counter() - start}
            if log is None:
                log = LossLog(folder, resume_step=step - 1, columns=("step", *values))
            log.append(step, values)
            if progress is not None:
                progress(step, values)
            if step % self.checkpoint_every == 0 or step == last:
                save_checkpoint(folder, step, {k: v.detach() for k, v in self.model.state_dict().items()},
                                optimizer.state_dict(), None, {"kind": type(self.model).__name__}, keep=2)
                log.plot()
        if log is not None:
            log.close()
        self.model.eval()
        return step

    def _resume(self, folder: Path, params: Mapping[str, Tensor], optimizer: torch.optim.Optimizer) -> int:
        found = latest_checkpoint(folder)
        if found is None:
            return 0
        step, state, optimizer_state, _, _ = load_checkpoint(found)
        self.model.load_state_dict(state)
        optimizer.load_state_dict(optimizer_state)
        return step


# --------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------


def _normalised(mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """The posterior in the normalised latent space: ``((mean - m)/s, logvar - 2 log s)`` with the published
    Wan2.2 per-channel ``m``, ``s`` (architecture.md §11.1)."""
    shape = (1, -1) + (1,) * (mean.dim() - 2)
    m = torch.tensor(WAN22_LATENT_MEAN, dtype=mean.dtype, device=mean.device).view(shape)
    s = torch.tensor(WAN22_LATENT_STD, dtype=mean.dtype, device=mean.device).view(shape)
    return (mean - m) / s, logvar - 2 * torch.log(s)


def decode_unclamped(model, z: Tensor) -> Tensor:
    """``AutoencoderKLWan`` decode without the final clamp to [-1, 1].

    diffusers' ``decode`` clamps its output, which zeroes the gradient of every saturated pixel: a freshly
    initialised decoder whose outputs overshoot then never learns them. This runs the same frame-by-frame
    causal decode (``post_quant_conv``, the decoder with its feature cache, unpatchify) and stops before the
    clamp. Inference keeps diffusers' clamped ``decode``.

    Args:
        model: an ``AutoencoderKLWan`` (tiling off).
        z: raw latents ``[B, z_dim, T, h, w]``.

    Returns:
        ``[B, 3, 4T-3, 16h, 16w]``.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    model.clear_cache()
    x = model.post_quant_conv(z)
    outs = []
    for i in range(x.shape[2]):
        model._conv_idx = [0]
        outs.append(model.decoder(x[:, :, i : i + 1], feat_cache=model._feat_map, feat_idx=model._conv_idx,
                                  first_chunk=i == 0))
    out = torch.cat(outs, 2)
    model.clear_cache()
    return unpatchify(out, patch_size=model.config.patch_size) if model.config.patch_size is not None else out


def weighted_l1(recon: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute error, each pixel counted ``weight`` times: ``sum(w |r - t|) / sum(w)`` over the broadcast.

    Args:
        recon, target: ``[B, C, F, H, W]`` float32.
        weight: ``None`` (plain mean) or non-negative weights broadcastable to ``recon`` (``[B, 1, 1, H, W]``).

    Raises:
        ValueError: weights that do not broadcast to ``recon``, are negative or sum to zero.
    """
    error = (recon - target).abs()
    if weight is None:
        return error.mean()
    try:
        weight = weight.to(error.dtype).expand_as(error)
    except RuntimeError as exc:
        raise ValueError(f"pixel weights of shape {tuple(weight.shape)} do not broadcast to "
                         f"{tuple(error.shape)}") from exc
    if bool((weight < 0).any()) or float(weight.sum()) <= 0:
        raise ValueError("pixel weights must be non-negative and not all zero")
    return (error * weight).sum() / weight.sum()


def video_vae_loss(model, pixels: Tensor, generator: torch.Generator, *, kl_weight: float = 1e-5,
                   pixel_weight: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """L1 reconstruction of a posterior sample + ``kl_weight`` x normalised-latent KL (module docstring).

    Args:
        model: an ``AutoencoderKLWan`` with ``z_dim`` 48.
        pixels: ``[B, 3, 1 + 4k, H, W]`` float32 in [-1, 1], ``H`` and ``W`` multiples of 16 pixels.
        generator: draws the posterior sample.
        kl_weight: weight of the KL term.
        pixel_weight: optional ``[B, 1, 1, H, W]`` float32 weights of each pixel's L1 (:func:`weighted_l1`).

    Returns:
        ``(loss, {"l1", "kl", "latent_std"})``; ``latent_std`` is the std of the normalised posterior mean.
    """
    posterior = model.encode(pixels).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, dtype=posterior.mean.dtype)
    z = posterior.mean + posterior.std * noise.to(posterior.mean.device)
    recon = decode_unclamped(model, z)
    l1 = weighted_l1(recon, pixels, pixel_weight)
    mu_n, logvar_n = _normalised(posterior.mean, posterior.logvar)
    kl = 0.5 * (mu_n.pow(2) + logvar_n.exp() - 1 - logvar_n).mean()
    return l1 + kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach()),
                                 "latent_std": float(mu_n.detach().std())}


def stft_loss(recon: Tensor, target: Tensor, sizes: tuple[int, ...] = (256, 1024, 4096),
              floor: float = 1e-2) -> Tensor:
    """Multi-resolution STFT loss: mean over window sizes of L1 between log magnitudes (+ spectral convergence).

    Args:
        recon, target: ``[B, C, S]`` float32 waveforms.
        sizes: FFT sizes (hop = size / 4, Hann window).
        floor: added to magnitudes before the log, so near-silent bins (the pauses between words) do not
            dominate the loss; ``floor·sqrt(bins)`` is also added to the spectral-convergence denominator, so a
            silent target gives a bounded term.
    """
    flat_r, flat_t = recon.flatten(0, 1), target.flatten(0, 1)
    total = recon.new_zeros(())
    for n in sizes:
        window = torch.hann_window(n, device=recon.device)
        spec_r = torch.stft(flat_r, n, n // 4, window=window, return_complex=True).abs()
        spec_t = torch.stft(flat_t, n, n // 4, window=window, return_complex=True).abs()
        log_term = (torch.log(spec_r + floor) - torch.log(spec_t + floor)).abs().mean()
        # the floor also bounds the convergence term: over a silent target (a pause) ||S_t|| is ~0, and a bare
        # epsilon lets it explode (docs/toy_world.md, "The audio VAE's loss on silent crops")
        convergence = torch.linalg.norm(spec_t - spec_r) / (torch.linalg.norm(spec_t) + floor * spec_t.numel() ** 0.5)
        total = total + log_term + convergence
    return total / len(sizes)


def audio_vae_loss(model, waveform: Tensor, generator: torch.Generator, *, kl_weight: float = 1e-5,
                   stft_weight: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """Waveform L1 + ``stft_weight`` x :func:`stft_loss` + ``kl_weight`` x posterior KL (module docstring).

    Args:
        model: an ``AutoencoderOobleck``.
        waveform: ``[B, 2, 2048·k]`` float32 at the model rate (51.2 kHz).
        generator: draws the posterior sample.

    Returns:
        ``(loss, {"l1", "stft", "kl", "latent_std"})``.
    """
    posterior = model.encode(waveform).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, dtype=posterior.mean.dtype)
    z = posterior.mean + posterior.std * noise.to(posterior.mean.device)
    recon = model.decode(z).sample[..., : waveform.shape[-1]]
    l1 = (recon - waveform).abs().mean()
    spectral = stft_loss(recon, waveform)
    var = posterior.std.pow(2)
    kl = 0.5 * (posterior.mean.pow(2) + var - 1 - torch.log(var)).mean()
    loss = l1 + stft_weight * spectral + kl_weight * kl
    return loss, {"l1": float(l1.detach()), "stft": float(spectral.detach()), "kl": float(kl.detach()),
                  "latent_std": float(posterior.mean.detach().std())}


def turbo_decoder_loss(decoder, raw_latent: Tensor, pixels: Tensor, *, is_first_chunk: bool,
                       pixel_weight: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """L1 between the decoder's window output and the pixels it stands for.

    Args:
        decoder: a :class:`~magihuman.codecs.turbo_vae.TurboVAEDecoder`.
        raw_latent: ``[B, 48, n, h, w]`` raw (de-normalised) Wan latents of one decode window.
        pixels: ``[B, 3, f, 16h, 16w]`` float32 in [-1, 1] with ``f = 4n - 3`` for a first chunk, else ``4n``
            (the frames the window covers, architecture.md §11.4).
        is_first_chunk: the decoder's first-chunk mode.
        pixel_weight: optional ``[B, 1, 1, 16h, 16w]`` weights of each pixel's L1 (:func:`weighted_l1`).
    """
    recon = decoder(raw_latent, is_first_chunk=is_first_chunk).float()
    l1 = weighted_l1(recon, pixels, pixel_weight)
    return l1, {"l1": float(l1.detach())}


# --------------------------------------------------------------------------------------------------
# Writers in the official layouts
# --------------------------------------------------------------------------------------------------


def save_wan22_vae(model, folder: str | Path) -> Path:
    """Write an ``AutoencoderKLWan`` as ``folder/Wan2.2_VAE.pth`` (original key layout, float32), atomically."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in to_original_wan22_state_dict(model.state_dict()).items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return write_atomic(folder / WAN22_CHECKPOINT_NAME, lambda tmp: _torch_save(state, tmp))


def save_audio_vae(model, model_config: Mapping, folder: str | Path) -> Path:
    """Write an ``AutoencoderOobleck`` as SAO's ``model_config.json`` + ``model.safetensors``; returns ``folder``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in to_sao_state_dict(model.state_dict(), model_config).items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / SAO_CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(dict(model_config), indent=2)))
    write_atomic(folder / SAO_WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return folder


def save_turbo_decoder(decoder, folder: str | Path, *, global_step: int = 0) -> Path:
    """Write a :class:`TurboVAEDecoder` as the Turbo JSON + ``.ckpt`` (``module.``-prefixed EMA dict); returns
    ``folder``."""
    ema = {f"module.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in decoder.state_dict().items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(decoder.config.to_dict(), indent=2) + "\n"
    write_atomic(folder / TURBO_VAED_CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_atomic(folder / TURBO_VAED_CHECKPOINT_NAME,
                 lambda tmp: _torch_save({TURBO_VAED_EMA_KEY: ema, "global_step": global_step}, tmp))
    return folder
