"""Named generation presets: which checkpoint, which sampler, what size (pipeline.md 1.3).

A preset is data, not a code branch: the pipeline reads these fields and nothing else.

| preset | DiT checkpoint | sampler | source |
|---|---|---|---|
| ``distill`` | ``distill/`` | 8 steps, no CFG, re-noising update | pipeline.md 1.3 "distill" example, 4.5 |
| ``base`` | ``base/`` | 32 steps FlowUniPC, shift 5, 2-pass CFG | pipeline.md 1.3 "base" example, 4.4, 5 |

Both official examples render 448x256 (pipeline.md 1.3; the CLI default of the reference, 480x272,
renders 480x256 after rounding). Video is 25 fps and audio 44.1 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sampling import BASE_SAMPLER, DISTILL_SAMPLER, SamplerConfig

#: Frames per second of video and the latent-audio rate base (pipeline.md 1.2 ``fps``).
FPS = 25
#: Pixel size of the official examples (pipeline.md 1.3).
DEFAULT_WIDTH, DEFAULT_HEIGHT = 448, 256
#: Clip length of the official examples, seconds (pipeline.md 1.3).
DEFAULT_SECONDS = 4.0
#: Request seed default of the reference (pipeline.md 12).
DEFAULT_SEED = 42


@dataclass(frozen=True)
class Preset:
    """A named recipe.

    Attributes:
        name: preset name used by the API and the CLI.
        checkpoint: sub-folder of the checkpoint root holding the DiT (``distill``, ``base``).
        sampler: the denoising loop's settings.
        description: one line for ``--help`` and the README.
        gpu_memory: rough GPU memory need, for the README's hardware table.
    """

    name: str
    checkpoint: str
    sampler: SamplerConfig
    description: str
    gpu_memory: str


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
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
