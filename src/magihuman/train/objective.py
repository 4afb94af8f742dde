"""The flow-matching objective of the shipped sampler, for both modalities (pipeline.md 4.3, 4.4, 7.1).

For a clean sample ``(x0_video, x0_audio, text)``:

1. ``u ~ U(0, 1)`` and ``σ = shift·u / (1 + (shift - 1)·u)``: the shifted time the sampler walks
   (:func:`~magihuman.sampling.schedulers.flow_shift`, shift 5); one σ for both modalities, as at inference.
   With probability ``terminal_rate`` (off by default) σ is 1 instead: pure noise in, so the clean latent can
   only come from the text (and any clean frames). The sampler's first step is at σ = 1 and decides there what
   the later steps refine; just below it the input already shows the latent's coarse content, which a model can
   copy instead of reading the text (docs/toy_world.md, "Why the colours came from the noise");
2. ``x_σ = (1 - σ)·x0 + σ·ε`` per modality, target velocity ``v = ε - x0`` (the model is timestep-free);
3. image-to-video with probability ``first_frame_rate``: latent frame 0 is the clean frame (the sampler
   overwrites it at every step, pipeline.md 7.1 step 5) and is left out of the loss;
4. text dropout with probability ``text_dropout``: the text becomes the negative prompt, the unconditional
   input that CFG contrasts with (pipeline.md 5);
5. clean-condition training for continuation and retakes (off by default): with probability ``prefix_rate``
   a random prefix of ``P`` latent frames (1 <= P < T) is held clean together with the audio latents of the
   same time, ``0 .. 4(P-1)`` (latent frame ``t`` covers pixel frames ``4t-3 .. 4t``, audio runs at 25
   latents/s = one per pixel frame); with probability ``range_rate`` everything outside a random range of
   latent frames ``[a, b)`` is held clean (audio ``[4a-3, 4b-3)`` stays noisy). Clean positions are written
   with the clean latents and carry no loss, exactly as the sampler's clean-condition masks overwrite them;
6. loss per sample = mean squared velocity error over the video elements + ``audio_loss_weight`` x the
   audio's, both over the positions that are not held clean (no audio term for video-only samples, whose
   audio input is pure noise); the batch loss is the mean over samples. With a ``video_region`` (a pixel box)
   the video mean is weighted: the latent cells the box touches count ``video_region_weight`` times, the
   others once, and the sum is divided by the sum of the weights (ours: the codecs' L1 weights their face
   region the same way, docs/toy_world.md); ``extra_video_regions`` add more ``(box, weight)`` pairs, whose
   weights multiply where they share a cell;
7. audio-driven training (off by default): with probability ``audio_condition_rate`` every audio latent is
   held clean and carries no loss, as the sampler holds a driving track clean at every step in audio-driven
   generation (pipeline.md 7.1): the only samples where the voice is fully known while the video is noisy. On
   its own it did not teach the toy base to follow the voice (docs/toy_world.md, "Sync and the RoPE bands").

Every random draw of sample ``j`` of global batch ``k`` comes from its own generator seeded by
``(seed, k, j)`` (:func:`sample_generator`), so the result does not depend on how a global batch is split
over processes, and a resumed run draws what the uninterrupted run drew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from magihuman.model.packing import pad_text_batch
from magihuman.sampling.schedulers import flow_shift
from magihuman.train.cache import LatentSample

_MASK64 = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 mixing); equal inputs give equal seeds on every machine."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & ((1 << 64) - 1))) * 0xBF58476D1CE4E5B9 & ((1 << 64) - 1)
        value ^= value >> 31
    return value & _MASK64


def sample_generator(seed: int, batch_index: int, sample_index: int) -> torch.Generator:
    """The CPU generator of sample ``sample_index`` in global batch ``batch_index``."""
    return torch.Generator().manual_seed(derive_seed(seed, 1, batch_index, sample_index))


@dataclass
class NoisedBatch:
    """Model inputs and targets of one (per-process) batch.

    Attributes:
        video, audio: noisy latents ``[B, 48, T, h, w]`` / ``[B, A, 64]`` float32.
        text: ``[B, Nt, C]`` float32, zero-padded; ``text_lengths`` the true lengths.
        video_target, audio_target: velocities ``ε - x0``.
        video_mask: ``[B, 1, T, 1, 1]`` float32, 0 on a conditioning frame; ``[B, 1, T, h, w]`` with a
            ``video_region`` or ``extra_video_regions``, whose cells carry their weights.
        audio_mask: ``[B, A, 1]`` float32, 0 on a clean audio latent.
        audio_weight: ``[B]`` float32, 0 for video-only samples.
        sigma: ``[B]`` float32 noise levels.
    """

    video: torch.Tensor
    audio: torch.Tensor
    text: torch.Tensor
    text_lengths: tuple[int, ...]
    video_target: torch.Tensor
    audio_target: torch.Tensor
    video_mask: torch.Tensor
    audio_mask: torch.Tensor
    audio_weight: torch.Tensor
    sigma: torch.Tensor

    def to(self, device: torch.device) -> NoisedBatch:
        """A copy on ``device``."""
        return NoisedBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()})


@dataclass(frozen=True)
class ObjectiveSettings:
    """The random choices of the objective (see the module docstring)."""

    shift: float = 5.0
    first_frame_rate: float = 0.5
    text_dropout: float = 0.1
    audio_loss_weight: float = 1.0
    prefix_rate: float = 0.0
    range_rate: float = 0.0
    terminal_rate: float = 0.0
    video_region: tuple[int, int, int, int] | None = None
    video_region_weight: float = 1.0
    audio_condition_rate: float = 0.0
    extra_video_regions: tuple[tuple[int, int, int, int, float], ...] = ()


def noise_batch(samples: Sequence[LatentSample], negative: torch.Tensor, settings: ObjectiveSettings,
                generators: Sequence[torch.Generator]) -> NoisedBatch:
    """Draw σ, ε and the dropouts of each sample (one generator each) and build the batch.

    Draw order per sample: u, then only when ``terminal_rate`` is set the terminal-σ u, video ε, audio ε,
    text-dropout u, first-frame u (all float32 on the CPU), then, only when ``prefix_rate`` or ``range_rate`` is
    set, the clean-condition u and its frame indices, then, only when ``audio_condition_rate`` is set, the
    audio-driven u (so runs without the newer settings draw what they drew before).

    Args:
        samples: clips of one shape (one bucket).
        negative: ``[Nn, C]`` negative-prompt states.
        settings: the objective's rates.
        generators: one per sample.

    Raises:
        ValueError: samples of different latent shapes.
    """
    if len({s.shape_key for s in samples}) != 1:
        raise ValueError("a batch must hold samples of one bucket (equal latent shapes)")
    rows = [_noise_one(s, negative, settings, g) for s, g in zip(samples, generators)]
    text, lengths = pad_text_batch([r["text"][None] for r in rows])
    stacked = {k: torch.stack([r[k] for r in rows]) for k in rows[0] if k != "text"}
    return NoisedBatch(text=text, text_lengths=lengths, **stacked)


def _noise_one(sample: LatentSample, negative: torch.Tensor, settings: ObjectiveSettings,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    u = torch.rand((), generator=generator, dtype=torch.float64)
    sigma = torch.tensor(float(flow_shift(u, settings.shift)), dtype=torch.float32)
    if settings.terminal_rate > 0 and torch.rand((), generator=generator).item() < settings.terminal_rate:
        sigma = torch.tensor(1.0)
    x0_video = sample.video_latent.float()
    eps_video = torch.randn(x0_video.shape, generator=generator, dtype=torch.float32)
    audio_shape = (sample.audio_latent.shape if sample.audio_latent is not None
                   else (4 * (x0_video.shape[1] - 1) + 1, 64))
    eps_audio = torch.randn(tuple(audio_shape), generator=generator, dtype=torch.float32)
    drop_text = torch.rand((), generator=generator).item() < settings.text_dropout
    first_frame = torch.rand((), generator=generator).item() < settings.first_frame_rate
    video = (1 - sigma) * x0_video + sigma * eps_video
    video_clean, audio_clean = clean_positions(x0_video.shape[1], audio_shape[0], settings, first_frame, generator)
    if settings.audio_condition_rate > 0 and torch.rand((), generator=generator).item() < settings.audio_condition_rate:
        audio_clean[:] = sample.audio_latent is not None  # a video-only sample has no track to drive it
    video[:, video_clean] = x0_video[:, video_clean]
    mask = (~video_clean).float().view(1, -1, 1, 1)
    boxes = () if settings.video_region is None else ((*settings.video_region, settings.video_region_weight),)
    for *box, weight in (*boxes, *settings.extra_video_regions):
        mask = mask * region_weights(x0_video.shape[-2:], tuple(box), weight)
    audio_mask = torch.ones(audio_shape[0], 1)
    if sample.audio_latent is not None:
        x0_audio = sample.audio_latent.float()
        audio, audio_target, weight = (1 - sigma) * x0_audio + sigma * eps_audio, eps_audio - x0_audio, 1.0
        audio[audio_clean] = x0_audio[audio_clean]
        audio_mask = (~audio_clean).float()[:, None]
    else:  # video-only: the audio stream is pure noise and carries no loss
        audio, audio_target, weight = eps_audio, torch.zeros_like(eps_audio), 0.0
    return {
        "video": video, "audio": audio, "text": negative if drop_text else sample.text_embeds.float(),
        "video_target": eps_video - x0_video, "audio_target": audio_target, "video_mask": mask,
        "audio_mask": audio_mask, "audio_weight": torch.tensor(weight * settings.audio_loss_weight), "sigma": sigma,
    }


def region_weights(cells: tuple[int, int] | torch.Size, box: tuple[int, int, int, int],
                   weight: float) -> torch.Tensor:
    """``[1, 1, h, w]`` float32 loss weights of a latent grid of ``cells = (h, w)``: ``weight`` on every cell of
    16x16 pixels that the pixel box ``(x0, y0, x1, y1)`` (end exclusive) touches, 1 elsewhere.

    Raises:
        ValueError: a box that touches no cell of the grid.
    """
    from magihuman.codecs.video_vae import SPATIAL_STRIDE

    h, w = int(cells[0]), int(cells[1])
    x0, y0, x1, y1 = box
    rows = slice(y0 // SPATIAL_STRIDE, min(h, -(-y1 // SPATIAL_STRIDE)))
    cols = slice(x0 // SPATIAL_STRIDE, min(w, -(-x1 // SPATIAL_STRIDE)))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        raise ValueError(f"video_region {box} lies outside the {w * SPATIAL_STRIDE}x{h * SPATIAL_STRIDE}-pixel frames")
    out = torch.ones(1, 1, h, w)
    out[..., rows, cols] = weight
    return out


def clean_positions(frames: int, audio_latents: int, settings: ObjectiveSettings, first_frame: bool,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Which latent frames and audio latents a sample holds clean (module docstring steps 3 and 5).

    Args:
        frames: latent frames ``T``; audio_latents: ``A``.
        settings: the rates; ``first_frame``: the first-frame draw of this sample.
        generator: the sample's generator (drawn from only when a clean-condition rate is set).

    Returns:
        ``(video_clean [T] bool, audio_clean [A] bool)``.
    """
    video_clean = torch.zeros(frames, dtype=torch.bool)
    audio_clean = torch.zeros(audio_latents, dtype=torch.bool)
    video_clean[0] = first_frame
    if (settings.prefix_rate <= 0 and settings.range_rate <= 0) or frames < 2:
        return video_clean, audio_clean
    u = torch.rand((), generator=generator).item()
    if u < settings.prefix_rate:
        length = int(torch.randint(1, frames, (), generator=generator))
        video_clean[:length] = True
        audio_clean[: 4 * (length - 1) + 1] = True
    elif u < settings.prefix_rate + settings.range_rate:
        a = int(torch.randint(1, frames, (), generator=generator))
        b = int(torch.randint(a + 1, frames + 1, (), generator=generator))
        video_clean[:] = True
        video_clean[a:b] = False
        audio_clean[:] = True
        audio_clean[4 * a - 3 : (4 * b - 3 if b < frames else audio_latents)] = False
    return video_clean, audio_clean


def flow_matching_loss(model, batch: NoisedBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over samples of the per-sample velocity loss (module docstring step 5).

    Args:
        model: ``model(video, audio, text, text_lengths=...) -> (v_video, v_audio)`` (a
            :class:`~magihuman.model.transformer.MagiHumanTransformer`, possibly wrapped by DDP/PEFT).
        batch: from :func:`noise_batch`, on the model's device.

    Returns:
        ``(loss, parts)``: a 0-d float32 tensor with gradient, and float ``video``/``audio`` loss parts.
    """
    v_video, v_audio = model(batch.video, batch.audio, batch.text, text_lengths=batch.text_lengths)
    video_err = (v_video.float() - batch.video_target).pow(2) * batch.video_mask
    video_count = batch.video_mask.flatten(1).sum(1) * (video_err[0].numel() / batch.video_mask[0].numel())
    video_loss = video_err.flatten(1).sum(1) / video_count
    audio_err = (v_audio.float() - batch.audio_target).pow(2)
    if bool(batch.audio_mask.all()):
        audio_loss = audio_err.flatten(1).mean(1) * batch.audio_weight
    else:
        audio_count = batch.audio_mask.flatten(1).sum(1).clamp_min(1) * audio_err.shape[-1]
        audio_loss = (audio_err * batch.audio_mask).flatten(1).sum(1) / audio_count * batch.audio_weight
    loss = (video_loss + audio_loss).mean()
    return loss, {"video": float(video_loss.detach().mean()), "audio": float(audio_loss.detach().mean())}
