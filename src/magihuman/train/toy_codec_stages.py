"""The toy recipe's codec stages (:mod:`magihuman.train.toy_recipe`): the Wan2.2 VAE, the Stable Audio VAE and the
Turbo-VAED decoder with its mouth and first-frame phases, each a reconstruction run (:class:`ReconstructionRun`) on
data rendered on the fly (:mod:`magihuman.train.toy_codec_data`). docs/toy_world.md explains each setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from magihuman.pipeline.loading import ROOT_LAYOUT
from magihuman.train.autoencoders import (
    ReconstructionRun,
    audio_vae_loss,
    save_audio_vae,
    save_turbo_decoder,
    save_wan22_vae,
    turbo_decoder_loss,
    video_vae_loss,
)
from magihuman.train.objective import derive_seed
from magihuman.train.toy_codec_data import audio_crop, latent_pool, turbo_window, video_crop

if TYPE_CHECKING:
    from magihuman.train.toy_recipe import ToyRecipe

__all__ = ["CODEC_RUNNERS", "turbo_first_frame_phase", "turbo_mouth_phase"]


def _reconstruct(work: Path, name: str, model: torch.nn.Module, loss_fn, steps: int,
                 log: Callable[[str], None], learning_rate: float = 1e-3) -> int:
    """Train a codec stage with :class:`ReconstructionRun` in ``WORK/runs/<name>`` (AdamW at ``learning_rate``, a
    checkpoint every 50 steps, resuming); returns the steps done."""
    run = ReconstructionRun(model, work / "runs" / name, loss_fn, steps, learning_rate=learning_rate,
                            checkpoint_every=50)
    return run.train(progress=_progress(log, name, steps))


def _stage_video_vae(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from diffusers import AutoencoderKLWan

    from magihuman.codecs.video_vae import wan22_vae_config

    torch.manual_seed(derive_seed(recipe.seed, 10))
    model = AutoencoderKLWan(**wan22_vae_config(recipe.video_vae_width, recipe.video_vae_width, 48))

    def loss_fn(step: int):
        crops = [video_crop(recipe, step, j) for j in range(recipe.video_vae_batch)]
        pixels, weight = torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops])
        return video_vae_loss(model, pixels, torch.Generator().manual_seed(derive_seed(recipe.seed, 12, step)),
                              pixel_weight=weight)

    _reconstruct(work, "video_vae", model, loss_fn, recipe.video_vae_steps, log)
    save_wan22_vae(model, work / "bundle" / ROOT_LAYOUT["video_vae"])


def _stage_audio_vae(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from magihuman.codecs.audio_vae import build_audio_vae
    from magihuman.demo.random_codecs import sao_model_config

    torch.manual_seed(derive_seed(recipe.seed, 20))
    config = sao_model_config(recipe.audio_vae_width)
    model = build_audio_vae(config)

    def loss_fn(step: int):
        wave = torch.stack([audio_crop(recipe, step, j) for j in range(recipe.audio_vae_batch)])
        return audio_vae_loss(model, wave, torch.Generator().manual_seed(derive_seed(recipe.seed, 22, step)))

    _reconstruct(work, "audio_vae", model, loss_fn, recipe.audio_vae_steps, log)
    save_audio_vae(model, config, work / "bundle" / ROOT_LAYOUT["audio_vae"])


def _stage_turbo_vae(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from magihuman.codecs.turbo_vae_config import TurboVAEDConfig
    from magihuman.codecs.turbo_vae_network import TurboVAEDecoder
    from magihuman.demo.random_codecs import turbo_vaed_structure

    torch.manual_seed(derive_seed(recipe.seed, 30))
    decoder = TurboVAEDecoder(TurboVAEDConfig.from_dict(turbo_vaed_structure(recipe.turbo_channels),
                                                        source="toy recipe"))
    pool = latent_pool(work, recipe)
    done = _reconstruct(work, "turbo_vae", decoder, _turbo_loss(decoder, pool, recipe), recipe.turbo_steps, log)
    done += turbo_mouth_phase(work, recipe, decoder, log, pool)
    done += turbo_first_frame_phase(work, recipe, decoder, log, pool)
    save_turbo_decoder(decoder, work / "bundle" / ROOT_LAYOUT["turbo_vae"], global_step=done)


def _turbo_loss(decoder: torch.nn.Module, pool: list, recipe: ToyRecipe, **window):
    """The Turbo stage's loss of a step: a :func:`turbo_window` batch (``window``: its keyword settings)."""
    def loss_fn(step: int):
        latents, target, weight, first = turbo_window(pool, recipe, step, **window)
        return turbo_decoder_loss(decoder, latents, target, is_first_chunk=first, pixel_weight=weight)
    return loss_fn


def turbo_mouth_phase(work: Path, recipe: ToyRecipe, decoder: torch.nn.Module, log: Callable, pool=None) -> int:
    """The Turbo stage's mouth phase (``turbo_mouth_*``): ``decoder`` trained in place on the stage's pool (encoded
    when not given), mouth box weighted, in ``WORK/runs/turbo_mouth`` (resuming); returns the steps done."""
    if recipe.turbo_mouth_steps <= 0:
        return 0
    pool = latent_pool(work, recipe) if pool is None else pool
    loss_fn = _turbo_loss(decoder, pool, recipe, stream=32, mouth_weight=recipe.turbo_mouth_weight)
    return _reconstruct(work, "turbo_mouth", decoder, loss_fn, recipe.turbo_mouth_steps, log,
                        learning_rate=recipe.turbo_mouth_learning_rate)


def turbo_first_frame_phase(work: Path, recipe: ToyRecipe, decoder: torch.nn.Module, log: Callable,
                            pool=None) -> int:
    """The Turbo stage's first-frame phase (``turbo_first_*``), after the mouth phase: ``decoder`` trained in place
    on the stage's pool (encoded when not given) with first-chunk windows of whole frames only
    (``turbo_first_batch`` of them), frame 0 at ``turbo_first_weight`` and the mouth phase's weights, in
    ``WORK/runs/turbo_first`` (resuming); returns the steps done.

    A first-frame run holds the given image's latent clean, so its first frame is this decoder's rendering of latent
    frame 0, the one latent that encodes a single frame; the stage's random windows train it as one frame in 5 to 13
    (docs/toy_world.md, "The Turbo decoder's first-frame phase").
    """
    if recipe.turbo_first_steps <= 0:
        return 0
    pool = latent_pool(work, recipe) if pool is None else pool
    whole = replace(recipe, turbo_crop=0, turbo_batch=recipe.turbo_first_batch)
    loss_fn = _turbo_loss(decoder, pool, whole, stream=33, mouth_weight=recipe.turbo_mouth_weight, first_chunk=True,
                          first_frame_weight=recipe.turbo_first_weight)
    return _reconstruct(work, "turbo_first", decoder, loss_fn, recipe.turbo_first_steps, log,
                        learning_rate=recipe.turbo_first_learning_rate)


def _progress(log: Callable[[str], None], name: str, total: int, every: int = 25):
    def report(step: int, values: dict) -> None:
        if step % every == 0 or step == total:
            parts = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            log(f"{name} {step}/{total} {parts}")
    return report


#: The codec stages' runners, ``(work, recipe, log) -> None``, by stage name.
CODEC_RUNNERS = {"video_vae": _stage_video_vae, "audio_vae": _stage_audio_vae, "turbo_vae": _stage_turbo_vae}
