"""``magihuman toy train``: train every model of the toy talking world from scratch, in stages, resumably.

The toy world (:mod:`magihuman.toy`) draws a cartoon person who speaks; this recipe trains, with this project's
own trainers, the models that generate it, at small widths but in the official architectures and file layouts:

1. ``dataset``: toy clips (MP4 + captions) and the held-out prompt set (:func:`magihuman.toy.dataset.write_dataset`);
2. ``text_encoder``: a small fixed random T5Gemma whose tokenizer has a merge chain for each toy word;
3. ``video_vae``: the Wan2.2 VAE, reconstruction-trained on clips rendered on the fly
   (:func:`~magihuman.train.autoencoders.video_vae_loss`);
4. ``audio_vae``: the Stable Audio VAE, reconstruction-trained on the toy voices at 51.2 kHz;
5. ``turbo_vae``: the Turbo-VAED decoder, trained to decode the trained Wan encoder's latents, then a phase with
   the mouth weighted and one with the first frame weighted (:mod:`magihuman.train.toy_codec_stages`);
6. ``cache``: ``magihuman train prepare`` on the dataset with the new codecs (one 128x128, 2 s bucket);
7. ``base``: the transformer trained from a random initialisation with the flow-matching trainer
   (first-frame conditioning and text dropout, plus clean-prefix conditioning for continuation);
8. ``voice``: the base continued in six phases (its RoPE bands replaced, then its objective; then samples where
   only the mouth is left to predict from the voice; then its objective with a share of voice-clean samples; then
   that again with the hair weighted too; then that on every clip of the dataset; then that with the audio loss
   weighted), which teach it to move the mouth with the voice (docs/toy_world.md, "The voice stage");
9. ``distill``: the 8-step DMD-2 student from the base model;
10. ``lora``: a LoRA on the base model teaching a shirt colour it never saw (cyan), from its own small dataset
   plus as many ordinary clips of the base's dataset (prior preservation).

Everything goes to one work folder; the assembled checkpoint root is ``WORK/bundle`` (loadable by
``MagiHumanPipeline.from_official``). Each stage writes ``WORK/stages/<name>.done`` (with its wall time) when
complete and is skipped afterwards; the training stages checkpoint every few minutes, so running the same
command again after an interruption resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from magihuman.pipeline.loading import ROOT_LAYOUT, TRANSFORMER_CONFIG_FILE
from magihuman.toy.drawing import HAIR_CAP_REGION, MOUTH_REGION, SHIRT_REGION
from magihuman.toy.palette import HELD_OUT_SHIRT_COLOURS, PART_PALETTES
from magihuman.train.cache import merge_caches
from magihuman.train.toy_codec_stages import CODEC_RUNNERS

__all__ = ["QK_NORM_GAIN", "STAGES", "STEP_FIELDS", "ToyRecipe", "run_recipe", "toy_transformer_init"]

STAGES = ("dataset", "text_encoder", "video_vae", "audio_vae", "turbo_vae", "cache", "base", "voice", "distill",
          "lora")

#: The recipe field holding each training stage's step budget (``magihuman toy train --steps STAGE=N``).
STEP_FIELDS = {"video_vae": "video_vae_steps", "audio_vae": "audio_vae_steps", "turbo_vae": "turbo_steps",
               "base": "base_steps", "distill": "distill_steps", "lora": "lora_steps"}

#: Gain of the toy transformer's query and key RMS norms at initialisation. With QK-norm an attention logit is at
#: most ``sqrt(head_dim) * gain_q * gain_k``: 5.7 at head_dim 32 and gain 1, which cannot single out one caption word
#: among ~300 (that needs a margin of about ln 300 = 5.7 over the rest); the first full run (gains 1 +- 0.1) had not
#: moved them after 2200 steps and ignored the colour and voice words. 1.25 lifts the bound to 8.8.
QK_NORM_GAIN = 1.25

#: RoPE frequency bands of the toy transformer, stored in its checkpoint (``adapter.rope.bands``, which the official
#: loader takes over the formula). The formula ``1/10000**(k/B)`` with the toy's head_dim of 32 (B = 4) gives
#: 1, 0.1, 0.01, 0.001 radians per latent frame: only the first tells neighbouring latent frames apart, and it
#: repeats every 6.3 frames, so a video token cannot single out the voice of its own time within a 2 s clip (13
#: latent frames). Bands that halve one after the other give periods of 6.3 to 50 latent frames; the 15B model's
#: head_dim of 128 has 16 bands, several in between. The voice stage swaps them in after the base stage
#: (docs/toy_world.md, "Sync and the RoPE bands", has the figures).
TOY_ROPE_BANDS = (1.0, 0.5, 0.25, 0.125)

#: Where the LoRA stage's adapter goes inside the bundle (a shirt colour the base model never saw).
LORA_FILE = "loras/cyan_shirt.safetensors"

#: The toy transformer: the 15B model's structure (sandwich experts at both ends, gelu7 then swiglu7, GQA with
#: gates) at a width that trains on a CPU.
TOY_TRANSFORMER_CONFIG = dict(
    num_layers=8, hidden_size=128, head_dim=32, num_query_groups=2, video_in_channels=192,
    audio_in_channels=64, text_in_channels=32, mm_layers=(0, 1, 6, 7), gelu7_layers=(0, 1),
)


@dataclass(frozen=True)
class ToyRecipe:
    """Sizes and budgets of each stage (defaults: the shipped bundle; :meth:`quick` for tests)."""

    seed: int = 0
    clips: int = 2400
    # the base stage and the voice stage's first four phases train on the first early_clips clips of the cache (0:
    # all of them), its wide phase on all: the w9 run had 600 clips, and on them the student drew 91 % of the
    # colours of its training captions against 81 % of held-out ones (docs/toy_world.md, "The wide phase")
    early_clips: int = 600
    held_out: int = 100
    text_hidden: int = 32
    video_vae_width: int = 16
    video_vae_steps: int = 7000
    video_vae_batch: int = 2
    video_crop: tuple[int, int] = (9, 64)  # frames (1 + 4k), pixels (multiple of 16)
    video_long_from: int = 3500  # from this step on, whole-length crops (video_long_crop)
    video_long_crop: tuple[int, int] = (49, 32)
    # from this step on, every other step trains on crops that hold the whole face box (video_face_crop); the
    # steps between keep the whole-length crops (docs/toy_world.md, "Crops over the face")
    video_face_from: int = 4500
    video_face_crop: tuple[int, int] = (17, 64)
    face_weight: float = 4.0  # L1 weight of FACE_REGION's pixels (eyes, mouth) in the video VAE and Turbo losses
    audio_vae_width: int = 12
    audio_vae_steps: int = 4500
    audio_vae_batch: int = 2
    audio_crop_latents: int = 12
    turbo_channels: tuple[int, int, int, int] = (16, 16, 32, 32)
    turbo_steps: int = 3000
    turbo_pool: int = 64
    turbo_crop: int = 4  # latent pixels (x16 image pixels); 0: whole frames
    turbo_window: int = 4  # most latent frames per training window
    turbo_batch: int = 2
    turbo_face_rate: float = 0.5  # share of training windows placed over the whole face box
    # the Turbo stage's mouth phase (0 steps: off): more steps on its pool with the mouth box at this L1 weight
    # (docs/toy_world.md, "The Turbo decoder's mouth phase")
    turbo_mouth_steps: int = 800
    turbo_mouth_weight: float = 8.0
    turbo_mouth_learning_rate: float = 3e-4
    # then its first-frame phase (0 steps: off): first-chunk windows of whole frames only, frame 0 at this L1 weight
    # (docs/toy_world.md, "The Turbo decoder's first-frame phase"; 400 steps until the w17 bundle)
    turbo_first_steps: int = 2000
    turbo_first_weight: float = 8.0
    turbo_first_learning_rate: float = 3e-4
    turbo_first_batch: int = 4
    # the codecs see every shirt colour, the held-out one included, as real codecs are trained on far more than the
    # transformer's data; only the transformer meets cyan first, through the LoRA. The w3 Turbo decoder, trained
    # on the base palette only, drew cyan shirts pale white (docs/toy_world.md, "The codecs and a new colour")
    codec_shirt_colours: tuple[str, ...] = PART_PALETTES["shirt"]
    transformer: dict = field(default_factory=lambda: dict(TOY_TRANSFORMER_CONFIG))
    base_steps: int = 6000
    base_batch: int = 8
    base_learning_rate: float = 5e-4
    # fewer clean-frame conditions and a share of sigma-1 draws: with first frame 0.5, prefix 0.2, range 0.1 and
    # no sigma-1 draws the base took its colours from the noise, not the caption (docs/toy_world.md)
    first_frame_rate: float = 0.3
    prefix_rate: float = 0.1
    range_rate: float = 0.05
    terminal_rate: float = 0.3
    # the base's video loss counts the latent cells over the mouth (MOUTH_REGION) this many times (1: off). The w4
    # base opens the mouth only in the first frames; 1500 steps at 8 did not change that (docs/toy_world.md, "Sync")
    base_mouth_weight: float = 1.0
    distill_steps: int = 150
    # the student's shares of first-frame, clean-prefix and clean-range samples (DistillConfig): distilled without
    # them, the w15 student's 20 s clips fell silent across 19 of 220 joins in 7 of 20 clips; with these, 3 in 3
    # (docs/toy_world.md, "The student's clean conditions")
    distill_first_frame_rate: float = 0.2
    distill_prefix_rate: float = 0.5
    distill_range_rate: float = 0.1
    lora_clips: int = 120
    lora_steps: int = 900
    # ordinary clips of the base's dataset trained beside the new-colour clips (prior preservation): the w3 LoRA,
    # trained on cyan shirts only, turned the shirts of ordinary captions pale (shirt colours 74 % -> 28 %)
    lora_prior_clips: int = 600
    # the new-colour clips are listed this many times in the mixed cache, so that they keep about half the draws beside
    # the prior clips (docs/toy_world.md, "Prior clips for the LoRA")
    lora_new_repeats: int = 5
    lora_rank: int = 16
    lora_learning_rate: float = 1e-3
    # the LoRA's video loss counts the shirt's latent cells (SHIRT_REGION) this many times (1: off): the new colour
    # is all the LoRA has to teach (docs/toy_world.md, "The LoRA")
    lora_shirt_weight: float = 4.0
    qk_norm_gain: float = QK_NORM_GAIN
    # the base stage's RoPE bands; None: the formula's (the voice stage swaps in voice_rope_bands afterwards)
    rope_bands: tuple[float, ...] | None = None
    # the voice stage (docs/toy_world.md, "The voice stage"): continuations of the base, each from the
    # one before's EMA weights with a new optimizer. rebind: voice_rope_bands swapped in (None: keep the base's),
    # then the base's objective; focus: first frame and voice clean in every sample, no text dropout, the mouth's
    # latent cells voice_focus_mouth_weight times (the voice is what is left to learn); mix: the base's objective
    # again with a share of voice-clean samples and the mouth weighted, which brings back the voice and the words
    # the focus phase left untrained. A phase of 0 steps is skipped; with all of them at 0 the base passes through.
    voice_rope_bands: tuple[float, ...] | None = TOY_ROPE_BANDS
    voice_rebind_steps: int = 1000
    voice_focus_steps: int = 1000
    voice_focus_mouth_weight: float = 8.0
    voice_mix_steps: int = 800
    voice_mix_audio_rate: float = 0.3
    voice_mix_mouth_weight: float = 4.0
    # hair: the mix's objective for voice_hair_steps more in a new data order, with the hair cap's latent cells
    # (HAIR_CAP_REGION) weighted voice_hair_weight times: the hair is the smallest part and the one most often
    # wrong (docs/toy_world.md, "The hair phase")
    voice_hair_steps: int = 1000
    voice_hair_weight: float = 4.0
    # wide: the hair phase's objective for voice_wide_steps more on every clip (early_clips is the phases' before it)
    # in another data order (docs/toy_world.md, "The wide phase")
    voice_wide_steps: int = 1500
    # audio: the wide phase's objective for voice_audio_steps more, the audio velocity loss voice_audio_weight times
    # (the word count lives in the audio; docs/toy_world.md, "The audio phase")
    voice_audio_steps: int = 4000
    voice_audio_weight: float = 4.0

    @classmethod
    def quick(cls) -> ToyRecipe:
        """Tiny budgets that run every stage in about a minute (tests, smoke runs)."""
        return cls(clips=6, held_out=4, video_vae_width=8, audio_vae_width=8, turbo_channels=(8, 8, 16, 16),
                   video_vae_steps=2, video_crop=(5, 32), video_long_from=1, video_long_crop=(9, 16),
                   video_face_from=1, video_face_crop=(5, 48), audio_vae_steps=2, turbo_steps=2, turbo_pool=2,
                   turbo_mouth_steps=1, turbo_first_steps=1, turbo_first_batch=1, base_steps=4, base_batch=2,
                   voice_rebind_steps=1, voice_focus_steps=1, voice_mix_steps=1, voice_hair_steps=1,
                   voice_wide_steps=1, voice_audio_steps=1, early_clips=4, distill_steps=1, lora_clips=2,
                   lora_steps=2, lora_prior_clips=2)


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def _stage_dataset(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from magihuman.toy.dataset import write_dataset

    if (work / "data" / "manifest.jsonl").is_file():
        return
    write_dataset(work / "data", clips=recipe.clips, seed=recipe.seed, held_out=recipe.held_out, overwrite=True,
                  progress=lambda done, total: log(f"dataset {done}/{total}") if done % 100 == 0 else None)


def _stage_text_encoder(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from magihuman.demo.random_codecs import save_random_text_encoder
    from magihuman.toy.vocabulary import toy_bare_words, toy_vocabulary

    save_random_text_encoder(work / "bundle" / ROOT_LAYOUT["text_encoder"], hidden_size=recipe.text_hidden,
                             seed=recipe.seed + 2, vocab_size=1536, extra_words=toy_vocabulary(),
                             bare_words=toy_bare_words())


def _stage_cache(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from magihuman.train.dataset import Bucket
    from magihuman.train.prepare import prepare_dataset

    prepare_dataset(work / "data" / "manifest.jsonl", work / "cache", root=work / "bundle",
                    buckets=[Bucket(128, 128, 2.0)], seed=recipe.seed, progress=False)


def _checked_bands(rope_bands: tuple[float, ...], want: int) -> torch.Tensor:
    """``rope_bands`` as a float32 tensor; ValueError unless ``want`` (``head_dim / 8``) positive finite numbers."""
    bands = torch.tensor([float(b) for b in rope_bands], dtype=torch.float32)
    if bands.numel() != want or not bool(torch.isfinite(bands).all() and (bands > 0).all()):
        raise ValueError(f"rope_bands must be {want} positive numbers (head_dim {want * 8} / 8), "
                         f"got {tuple(rope_bands)}")
    return bands


def toy_transformer_init(config: dict, seed: int, qk_norm_gain: float = QK_NORM_GAIN,
                         rope_bands: tuple[float, ...] | None = None) -> dict[str, torch.Tensor]:
    """The toy transformer's starting weights in the official layout: the random demo's linears
    (:func:`~magihuman.demo.random_weights.random_transformer_state_dict`), every RMS-norm gain 1 except the query
    and key norms at ``qk_norm_gain`` (:data:`QK_NORM_GAIN`); gains are stored as ``gain - 1``. ``rope_bands``
    (radians per position, ``head_dim / 8`` of them, e.g. :data:`TOY_ROPE_BANDS`) replaces the formula's
    ``adapter.rope.bands``; training keeps the buffer as it is.

    Raises:
        ValueError: ``rope_bands`` of the wrong count, or not all positive and finite.
    """
    from magihuman.demo.random_weights import random_transformer_state_dict

    state = random_transformer_state_dict(config, seed)
    if rope_bands is not None:
        state["adapter.rope.bands"] = _checked_bands(rope_bands, int(config["head_dim"]) // 8)
    for name, tensor in state.items():
        if "norm" in name and name.endswith(".weight"):
            gain = qk_norm_gain if name.endswith(("q_norm.weight", "k_norm.weight")) else 1.0
            state[name] = torch.full_like(tensor, gain - 1.0)
    return state


def _transformer_run(work: Path, recipe: ToyRecipe, base: Path, name: str, steps: int, warmup: int,
                     seed_offset: int = 0, every_clip: bool = False, **objective):
    """The ``TrainConfig`` of a base-transformer run from checkpoint ``base`` into ``WORK/runs/<name>``: the recipe's
    batch and learning rate, float32, EMA 0.995, a checkpoint every 100 steps, ``min(warmup, steps)`` warm-up
    steps, seed ``recipe.seed + seed_offset`` and the given objective settings (the base stage and the voice
    stage's phases), on the first ``recipe.early_clips`` cached clips (:func:`_early_cache`) unless
    ``every_clip``."""
    from magihuman.train.config import TrainConfig

    cache = work / "cache" if every_clip else _early_cache(work, recipe)
    return TrainConfig(mode="finetune", cache=cache, base=base, output=work / "runs" / name, steps=steps,
                       batch_size=recipe.base_batch, learning_rate=recipe.base_learning_rate,
                       warmup_steps=min(warmup, steps), mixed_precision="fp32", checkpoint_every=100,
                       seed=recipe.seed + seed_offset, ema_decay=0.995, **objective)


def _early_cache(work: Path, recipe: ToyRecipe) -> Path:
    """``WORK/cache``, or when ``0 < recipe.early_clips < recipe.clips`` ``WORK/cache_early``: its first
    ``early_clips`` samples, hard-linked (:func:`~magihuman.train.cache.merge_caches`) the first time."""
    if not 0 < recipe.early_clips < recipe.clips:
        return work / "cache"
    early = work / "cache_early"
    if not (early / "cache.json").is_file():
        shutil.rmtree(early, ignore_errors=True)  # a merge interrupted before its header
        merge_caches([(work / "cache", "", recipe.early_clips)], early)
    return early


def _stage_base(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from magihuman.model.checkpoint import save_official_checkpoint
    from magihuman.train.trainer import Trainer

    init = work / "runs" / "base_init"
    if not (init / "model.safetensors").is_file():
        save_official_checkpoint(toy_transformer_init(recipe.transformer, recipe.seed + 40, recipe.qk_norm_gain,
                                                      recipe.rope_bands), init)
        (init / "magihuman_transformer.json").write_text(json.dumps(recipe.transformer, indent=2) + "\n")
    config = _transformer_run(work, recipe, init, "base", recipe.base_steps, 200,
                              video_region=MOUTH_REGION if recipe.base_mouth_weight != 1 else None,
                              video_region_weight=recipe.base_mouth_weight, **_conditioning(recipe))
    result = Trainer(config).train()
    _replace_folder(result.output, work / "bundle" / "base")


def _stage_voice(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from safetensors.torch import load_file

    from magihuman.model.checkpoint import save_official_checkpoint
    from magihuman.train.trainer import Trainer

    source = work / "runs" / "base" / "transformer"  # the base stage's EMA weights
    if not (source / "model.safetensors").is_file():
        raise FileNotFoundError(f"the voice stage continues {source}, which is missing: run the base stage first "
                                f"(`magihuman toy train {work} --stage base`)")
    if recipe.voice_rope_bands is not None:
        banded = work / "runs" / "voice_bands"
        if not (banded / "model.safetensors").is_file():
            state = load_file(str(source / "model.safetensors"))
            old = state["adapter.rope.bands"]
            state["adapter.rope.bands"] = _checked_bands(recipe.voice_rope_bands, old.numel()).to(old.dtype)
            save_official_checkpoint(state, banded)
            shutil.copyfile(source / TRANSFORMER_CONFIG_FILE, banded / TRANSFORMER_CONFIG_FILE)
        source = banded
    base = _conditioning(recipe)
    mix = dict(base, audio_condition_rate=recipe.voice_mix_audio_rate, video_region=MOUTH_REGION,
               video_region_weight=recipe.voice_mix_mouth_weight)
    hair = dict(mix, seed_offset=1, extra_video_regions=[(*HAIR_CAP_REGION, recipe.voice_hair_weight)])
    phases = (
        ("voice_rebind", recipe.voice_rebind_steps, 200, base),
        ("voice_focus", recipe.voice_focus_steps, 100,
         dict(base, first_frame_rate=1.0, audio_condition_rate=1.0, text_dropout=0.0, video_region=MOUTH_REGION,
              video_region_weight=recipe.voice_focus_mouth_weight)),
        ("voice_mix", recipe.voice_mix_steps, 100, mix),
        # the mix's objective again, in its own data order (seed + 1), with the hair cap's cells weighted too
        ("voice_hair", recipe.voice_hair_steps, 100, hair),
        # the same on every clip of the dataset, in a third data order
        ("voice_wide", recipe.voice_wide_steps, 100, dict(hair, seed_offset=2, every_clip=True)),
        # then with the audio velocity loss weighted, in a fourth data order
        ("voice_audio", recipe.voice_audio_steps, 100,
         dict(hair, seed_offset=3, every_clip=True, audio_loss_weight=recipe.voice_audio_weight)),
    )
    for name, steps, warmup, objective in phases:
        if steps <= 0:
            continue
        source = Trainer(_transformer_run(work, recipe, source, name, steps, warmup, **objective)).train().output
        log(f"voice: {name} done ({steps} steps)")
    _replace_folder(source, work / "bundle" / "base")


def _conditioning(recipe: ToyRecipe) -> dict[str, float]:
    """The shares of training samples with clean frames or at sigma = 1, the same for the base model and its LoRA.

    The LoRA teaches an attribute the base never saw (a new shirt colour); at sigma = 1 only the caption can say it,
    so the LoRA needs the sigma-1 draws that taught the base to read its colours (docs/toy_world.md).
    """
    return dict(first_frame_rate=recipe.first_frame_rate, prefix_rate=recipe.prefix_rate,
                range_rate=recipe.range_rate, terminal_rate=recipe.terminal_rate)


def _stage_distill(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from magihuman.train.config import DistillConfig
    from magihuman.train.distill import Distiller

    config = DistillConfig(cache=work / "cache", teacher=work / "bundle" / "base", output=work / "runs" / "distill",
                           steps=recipe.distill_steps, batch_size=4, fake_steps=3, generator_lr=2e-5,
                           fake_lr=1e-4, mixed_precision="fp32", seed=recipe.seed,
                           first_frame_rate=recipe.distill_first_frame_rate, prefix_rate=recipe.distill_prefix_rate,
                           range_rate=recipe.distill_range_rate)
    result = Distiller(config).train()
    _replace_folder(result.output, work / "bundle" / "distill")


def _stage_lora(work: Path, recipe: ToyRecipe, log: Callable[[str], None]) -> None:
    from magihuman.toy.dataset import write_dataset
    from magihuman.train.config import LoraSettings, TrainConfig
    from magihuman.train.dataset import Bucket
    from magihuman.train.prepare import prepare_dataset
    from magihuman.train.trainer import Trainer

    data = work / "lora_data"
    if not (data / "manifest.jsonl").is_file():
        write_dataset(data, clips=recipe.lora_clips, seed=recipe.seed + 1, held_out=recipe.held_out, overwrite=True,
                      shirt_colours=HELD_OUT_SHIRT_COLOURS)
    prepare_dataset(data / "manifest.jsonl", work / "lora_cache", root=work / "bundle",
                    buckets=[Bucket(128, 128, 2.0)], seed=recipe.seed + 1, progress=False)
    cache = work / "lora_cache"
    if recipe.lora_prior_clips:
        cache = work / "lora_mix_cache"
        if not (cache / "cache.json").is_file():
            merge_caches([(work / "lora_cache", f"new{k}-", None) for k in range(recipe.lora_new_repeats)]
                         + [(work / "cache", "prior-", recipe.lora_prior_clips)],
                         cache)
    shirt = [(*SHIRT_REGION, recipe.lora_shirt_weight)] if recipe.lora_shirt_weight != 1 else []
    config = TrainConfig(mode="lora", cache=cache, base=work / "bundle" / "base",
                         output=work / "runs" / "lora", steps=recipe.lora_steps, batch_size=recipe.base_batch,
                         learning_rate=recipe.lora_learning_rate, warmup_steps=min(20, recipe.lora_steps),
                         mixed_precision="fp32",
                         checkpoint_every=50, seed=recipe.seed + 1, **_conditioning(recipe), extra_video_regions=shirt,
                         lora=LoraSettings(rank=recipe.lora_rank, alpha=float(recipe.lora_rank)))
    result = Trainer(config).train()
    target = work / "bundle" / LORA_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.output, target)


def _replace_folder(source: Path, target: Path) -> None:
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


_RUNNERS = {"dataset": _stage_dataset, "text_encoder": _stage_text_encoder, **CODEC_RUNNERS, "cache": _stage_cache,
            "base": _stage_base, "voice": _stage_voice, "distill": _stage_distill, "lora": _stage_lora}


def run_recipe(work: str | Path, recipe: ToyRecipe | None = None, *, stages: tuple[str, ...] = STAGES,
               log: Callable[[str], None] = print) -> Path:
    """Run the recipe's stages in order into ``work`` (resuming); returns the checkpoint root ``work/bundle``.

    Args:
        work: work folder (created).
        recipe: sizes and budgets (default :class:`ToyRecipe`).
        stages: which stages to run (each needs the ones before it to be done).
        log: receives one line per progress report.

    Raises:
        ValueError: an unknown stage name, a negative ``early_clips``, ``lora_new_repeats`` below 1,
            ``lora_prior_clips`` outside ``[0, clips]``, or a recipe that differs from the one the
            folder was started with other than in step budgets. A raised budget (:data:`STEP_FIELDS`) reopens a
            finished stage, which resumes from its last checkpoint; the stages after it are not redone (delete their
            ``.done`` files).
    """
    recipe = recipe or ToyRecipe()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    if recipe.early_clips < 0:
        raise ValueError(f"early_clips must be >= 0 (0: the early phases train on every clip), "
                         f"got {recipe.early_clips}")
    if recipe.lora_new_repeats < 1:
        raise ValueError(f"lora_new_repeats must be >= 1 (each new clip at least once), got {recipe.lora_new_repeats}")
    if not 0 <= recipe.lora_prior_clips <= recipe.clips:
        raise ValueError(f"lora_prior_clips must be between 0 and clips={recipe.clips} (the ordinary clips there are "
                         f"to draw from), got {recipe.lora_prior_clips}")
    work = Path(work)
    (work / "stages").mkdir(parents=True, exist_ok=True)
    saved = work / "recipe.json"
    settings = json.loads(json.dumps(asdict(recipe)))
    if saved.is_file():
        old = json.loads(saved.read_text())
        changed = sorted(k for k in settings if k in old and old[k] != settings[k] and not k.endswith("_steps"))
        if changed:
            raise ValueError(f"{work} was started with other settings ({', '.join(changed)}; see {saved}); use a new "
                             "folder or the same settings (only step budgets may change on resume)")
    earlier = {}  # stages whose budget was raised after they finished: their seconds so far
    for name, key in STEP_FIELDS.items():
        marker = work / "stages" / f"{name}.done"
        if saved.is_file() and marker.is_file() and name in stages and settings[key] > old.get(key, settings[key]):
            earlier[name] = json.loads(marker.read_text()).get("seconds", 0.0)
            log(f"stage {name}: budget raised from {old[key]} to {settings[key]} steps; resuming it")
            marker.unlink()
    saved.write_text(json.dumps(settings, indent=2) + "\n")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in stages:
        marker = work / "stages" / f"{name}.done"
        if marker.is_file():
            continue
        log(f"stage {name}: start")
        start = time.perf_counter()
        _RUNNERS[name](work, recipe, log)
        seconds = time.perf_counter() - start + earlier.get(name, 0.0)
        marker.write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n")
        log(f"stage {name}: done in {seconds:.0f} s")
    return work / "bundle"
