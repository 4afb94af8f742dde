"""Named generation presets: which checkpoint, which sampler, what size (architecture.md §13.1).

A preset is data, not a code branch: the pipeline reads these fields and nothing else. This module
imports no torch (the CLI's ``--help`` and a server's request parser read it).

Presets (DiT checkpoint; sampler; source):

* ``distill``: ``distill/``; 8 steps, no CFG, re-noising update (architecture.md §13.1, §8.3).
* ``base``: ``base/``; 32 steps FlowUniPC, shift 5, 2-pass CFG (architecture.md §13.1, §8.2, §8.4).
* ``sr_540p``: ``base/`` then ``540p_sr/``; base, then 5 SR steps to 896x512 (architecture.md §13.1,
  §10.1).
* ``sr_1080p``: ``base/`` then ``1080p_sr/``; base, then 5 SR steps to 1920x1088, local attention
  (architecture.md §13.1, §10.1, §2.2).

Both official examples render 448x256 (architecture.md §13.1; the CLI default of the reference, 480x272,
renders 480x256 after rounding). Video is 25 fps and audio 44.1 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass

from magihuman.sampling.config import BASE_SAMPLER, DISTILL_SAMPLER, SamplerConfig, SuperResolutionStage

#: Frames per second of video and the latent-audio rate base (architecture.md §13.3 ``fps``).
FPS = 25
#: Pixel size of the official examples (architecture.md §13.1).
DEFAULT_WIDTH, DEFAULT_HEIGHT = 448, 256
#: Clip length of the official examples, seconds (architecture.md §13.1).
DEFAULT_SECONDS = 4.0
#: Request seed default of the reference (architecture.md §8.5).
DEFAULT_SEED = 42
#: Preset of a request that names none: the distilled model (architecture.md §13.1 "distill" example).
DEFAULT_PRESET = "distill"
#: Window of a long clip, seconds (ours, docs/long_clips.md): clips over ``MAX_SECONDS`` (10 s) are generated in
#: windows of this length. The training clip length of the published models is not stated; their examples
#: render 4 s and their published timings are for 5 s clips (architecture.md §13.1, §14).
DEFAULT_WINDOW_SECONDS = 5.0
#: Latent frames each window of a long clip shares with the previous one, held clean (docs/long_clips.md):
#: two frames (8 pixel frames, 9 audio latents) carry motion across the join.
DEFAULT_OVERLAP_FRAMES = 2
#: Latent frames of the clip's end an extension holds clean when ``overlap_frames`` is not given (fewer when the
#: clip is shorter than their 13 frames): four (13 pixel frames, 0.52 s, with their sound). The re-encoded frames
#: are not the latents the model made; on the toy model, with four the extension's join steps like the clip's own
#: latent-frame boundaries far more often than with two (docs/benchmarks.md, "Seams against the steps across
#: latent-frame boundaries"). Windows of a long continuation still share ``DEFAULT_OVERLAP_FRAMES`` with each other.
DEFAULT_EXTEND_PREFIX_FRAMES = 4
#: Frames on the kept side of each picture join of extend and retake that fade from the clip's own frames into
#: their decode (docs/long_clips.md, "Joins in pixels"): 8 frames, 0.32 s. Extend has at most the
#: ``4(K - 1) + 1`` frames its held latents re-create.
DEFAULT_FADE_FRAMES = 8
#: Video decoders: the distilled Turbo-VAED (default, architecture.md §12.1 ``use_turbo_vae``) or the Wan2.2 VAE's own.
VIDEO_DECODERS = ("turbo", "wan")
#: Video decoder used when none is named.
DEFAULT_VIDEO_DECODER = "turbo"


@dataclass(frozen=True)
class Preset:
    """A named recipe.

    Attributes:
        name: preset name used by the API and the CLI.
        checkpoint: sub-folder of the checkpoint root holding the DiT (``distill``, ``base``).
        sampler: the denoising loop's settings.
        description: one line for ``--help`` and the README.
        gpu_memory: rough GPU memory need, for the README's hardware table.
        sr: the super-resolution stage, if any (its size is the output size).
        window_seconds: window length of long clips, extend and retake (docs/long_clips.md).
    """

    name: str
    checkpoint: str
    sampler: SamplerConfig
    description: str
    gpu_memory: str
    sr: SuperResolutionStage | None = None
    window_seconds: float = DEFAULT_WINDOW_SECONDS


PRESETS: dict[str, Preset] = {
    "distill": Preset(
        "distill", "distill", DISTILL_SAMPLER,
        "distilled DiT, 8 steps, no CFG: the fast default",
        "about 31 GB of DiT weights (bf16) + 18 GB text encoder (offloadable)",
    ),
    "base": Preset(
        "base", "base", BASE_SAMPLER,
        "base DiT, 32 FlowUniPC steps with 2-pass CFG: slower, the reference quality",
        "about 31 GB of DiT weights (bf16) + 18 GB text encoder (offloadable)",
    ),
    "sr_540p": Preset(
        "sr_540p", "base", BASE_SAMPLER,
        "base DiT at 448x256, then the 540p SR DiT (5 steps) to 896x512",
        "two 15B DiTs (~62 GB bf16; one at a time with offload) + text encoder",
        SuperResolutionStage("540p_sr", 896, 512),
    ),
    "sr_1080p": Preset(
        "sr_1080p", "base", BASE_SAMPLER,
        "base DiT at 448x256, then the 1080p SR DiT (5 steps, local attention) to 1920x1088",
        "two 15B DiTs + ~54k-token attention at 1080p; the reference needs offload even on 80 GB",
        SuperResolutionStage("1080p_sr", 1920, 1088, local_attention=True),
    ),
}


def preset_for_sr_size(name: str, sr_width: int | None, sr_height: int | None) -> str:
    """The preset to load when ``--sr-width/--sr-height`` are given: ``name`` itself if it has an SR stage,
    else ``sr_1080p`` for SR heights above 720 px and ``sr_540p`` otherwise.

    Raises:
        ValueError: if only one of the two SR sizes is given.
    """
    if sr_width is None and sr_height is None:
        return name
    if sr_width is None or sr_height is None:
        raise ValueError("give both --sr-width and --sr-height (or neither)")
    if get_preset(name).sr is not None:
        return name
    return "sr_1080p" if sr_height > 720 else "sr_540p"


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
