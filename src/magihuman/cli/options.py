"""``magihuman generate``'s options as one typed record, :class:`GenerateOptions`, built once.

Each field is one flag: its type, spellings, help and the limit it is held to are declared here and
nowhere else (the command's signature is made from these fields), and the code that acts on it reads
it by the same name (``options.seconds``, ``options.offload``, ...). The choices come from the
library's own tables (presets, video decoders, offload modes, attention kernels) and the limits from
:mod:`magihuman.pipeline.validation`, so ``--help`` states what the checks enforce.

A ``--config`` JSON file fills what the command line left unset (architecture.md §13.3 describes the
reference's layered settings; ours are: flags > config file > environment > defaults).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import typer

# The runtime's name tables, imported in this one place (they move to magihuman.runtime.options).
from magihuman.pipeline.presets import (
    DEFAULT_HEIGHT,
    DEFAULT_OVERLAP_FRAMES,
    DEFAULT_SECONDS,
    DEFAULT_SEED,
    DEFAULT_WIDTH,
    PRESETS,
    VIDEO_DECODERS,  # noqa: E402
)
from magihuman.pipeline.validation import (
    MAX_BASE_SIDE,
    MAX_IMAGE_PIXELS,
    MAX_LONG_SECONDS,
    MAX_OVERLAP_FRAMES,
    MAX_PROMPT_CHARS,
    MAX_SECONDS,
    MAX_SR_SIDE,
    MIN_AUDIO_SECONDS,
    MIN_SIZE,
    InputError,
)
from magihuman.runtime.options import ATTENTION_CHOICES, OFFLOAD_MODES  # noqa: E402

__all__ = ["GenerateOptions", "CONFIG_KEYS", "CHECKPOINT_ROOT_ENV", "COMPONENT_KEYS", "REQUEST_KEYS"]

CHECKPOINT_ROOT_ENV = "MAGIHUMAN_CHECKPOINT_ROOT"
#: Choice types built from the library's tables.
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
VideoDecoderName = Literal[tuple(VIDEO_DECODERS)]  # type: ignore[valid-type]
AttentionName = Literal[tuple(ATTENTION_CHOICES)]  # type: ignore[valid-type]

#: Fields of ``GenerationRequest`` the options fill.
REQUEST_KEYS = ("prompt", "image", "audio", "seconds", "width", "height", "seed", "preset", "negative_prompt",
                "sr_width", "sr_height", "sr_cfg_number", "window_seconds", "overlap_frames")
#: Per-component checkpoint locations, overriding the root (``MagiHumanPipeline.from_official``).
COMPONENT_KEYS = ("transformer", "text_encoder", "video_vae", "audio_vae", "sr_transformer", "turbo_vae")
_CKPT, _OUT, _MEM, _ENH, _LONG = "Checkpoints", "Output", "Memory and speed", "Prompt enhancement", "Long clips"


def _flag(*names: str, help: str, panel: str | None = None) -> Any:
    """An on/off switch: shown as ``--name`` alone in ``--help`` (no value placeholder)."""
    return typer.Option(*names, help=help, metavar="", rich_help_panel=panel, show_default=False)


def _opt(*names: str, help: str, panel: str | None = None, **kwargs: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False, **kwargs)


@dataclass(frozen=True)
class GenerateOptions:
    """Every ``magihuman generate`` option after merging the command line with ``--config``.

    ``None`` means "not given": the request's own default applies. Paths are as given (``~`` is
    expanded where they are used).
    """

    prompt: Annotated[str | None, _opt("--prompt", "-p", help=f"The text prompt (at most {MAX_PROMPT_CHARS:,} "
        "characters; the text encoder keeps the first 640 tokens).")] = None
    prompt_file: Annotated[Path | None, _opt("--prompt-file", help="Read the prompt from this UTF-8 file, "
        "verbatim (quotes kept; trailing newlines removed). Use instead of --prompt.")] = None
    image: Annotated[Path | None, _opt("--image", "--image_path", "-i", help="First-frame image: image-to-video "
        f"(at least {MIN_SIZE}x{MIN_SIZE}, at most {MAX_IMAGE_PIXELS // 1_000_000} MP). "
        "Without it: text-to-video.")] = None
    audio: Annotated[Path | None, _opt("--audio", "--audio_path", "-a", help="Driving audio file (its speech is "
        f"kept; it sets the length, cut to --seconds; at least {MIN_AUDIO_SECONDS:g} s).")] = None
    seconds: Annotated[float | None, _opt("--seconds", "-s", help=f"Clip length in seconds, up to "
        f"{MAX_LONG_SECONDS:g} (in 1/25 s steps); over {MAX_SECONDS:g} s the clip is generated in windows "
        f"(--window-seconds). Default: {DEFAULT_SECONDS:g}.")] = None
    width: Annotated[int | None, _opt("--width", "--br_width", help=f"Width in pixels, {MIN_SIZE}..{MAX_BASE_SIDE}, "
        f"rounded down to a multiple of 32. Default: {DEFAULT_WIDTH}.")] = None
    height: Annotated[int | None, _opt("--height", "--br_height", help=f"Height in pixels, {MIN_SIZE}.."
        f"{MAX_BASE_SIDE}, rounded down to a multiple of 32. Default: {DEFAULT_HEIGHT}.")] = None
    seed: Annotated[int | None, _opt("--seed", help=f"Seed of all noise, 0..2**63-1. Default: {DEFAULT_SEED}.")] = None
    preset: Annotated[PresetName | None, _opt("--preset", help="distill: 8 steps, no CFG (fast, default). base: 32 "
        "steps with CFG. sr_540p / sr_1080p: base, then latent super-resolution to 896x512 / 1920x1088.")] = None
    sr_width: Annotated[int | None, _opt("--sr-width", "--sr_width", help=f"Super-resolution output width, "
        f"{MIN_SIZE}..{MAX_SR_SIDE} (picks sr_540p, or sr_1080p above 720 px high, unless --preset is an SR "
        "preset). Give with --sr-height.")] = None
    sr_height: Annotated[int | None, _opt("--sr-height", "--sr_height", help=f"Super-resolution output height, "
        f"{MIN_SIZE}..{MAX_SR_SIDE}.")] = None
    sr_cfg_number: Annotated[int | None, _opt("--sr-cfg-number", "--sr_cfg_number", help="SR guidance: 1 "
        "(default, as the shipped SR examples) or 2 (negative pass, video scale 3.5 with the first 13 latent frames "
        "capped at 2.0).")] = None
    window_seconds: Annotated[float | None, _opt("--window-seconds", help=f"Long clips: generate in windows of "
        f"this many seconds (at most {MAX_SECONDS:g}), each continuing the previous one; memory is one window's. "
        f"Default: one pass up to {MAX_SECONDS:g} s, windows of the preset's 5 s beyond.", panel=_LONG)] = None
    overlap_frames: Annotated[int | None, _opt("--overlap-frames", help=f"Long clips: latent frames (4 video "
        f"frames each) a window shares with the previous one, held as generated, 1..{MAX_OVERLAP_FRAMES}. "
        f"Default: {DEFAULT_OVERLAP_FRAMES}.", panel=_LONG)] = None
    prompt_at: Annotated[list[str] | None, _opt("--prompt-at", metavar="SECONDS=TEXT", help="Long clips: from "
        "about SECONDS on, use the prompt TEXT (the window whose new frames start nearest it takes it over; the held "
        "frames keep the clip continuous). Repeat for more; --prompt holds from 0 s. E.g. --prompt-at "
        "\"10=$(cat part2.txt)\" (docs/long_clips.md).", panel=_LONG)] = None
    negative_prompt: Annotated[str | None, _opt("--negative-prompt", help="Unconditional text for CFG (base and SR "
        "presets; refused with distill, which has no CFG). Default: a built-in list of defects.")] = None
    negative_prompt_file: Annotated[Path | None, _opt("--negative-prompt-file", help="Read the negative prompt "
        "from a UTF-8 file.")] = None
    checkpoint_root: Annotated[Path | None, _opt("--checkpoint-root", envvar=CHECKPOINT_ROOT_ENV, help="Folder "
        f"made by `magihuman download` (or set {CHECKPOINT_ROOT_ENV}).", panel=_CKPT)] = None
    transformer: Annotated[Path | None, _opt("--transformer", help="DiT folder (overrides ROOT/distill or "
        "ROOT/base).", panel=_CKPT)] = None
    text_encoder: Annotated[Path | None, _opt("--text-encoder", help="T5Gemma folder (overrides "
        "ROOT/t5gemma-9b-9b-ul2).", panel=_CKPT)] = None
    video_vae: Annotated[Path | None, _opt("--video-vae", help="Wan2.2_VAE.pth or its folder (overrides "
        "ROOT/Wan2.2-TI2V-5B).", panel=_CKPT)] = None
    audio_vae: Annotated[Path | None, _opt("--audio-vae", help="Stable Audio Open folder (overrides "
        "ROOT/stable-audio-open-1.0).", panel=_CKPT)] = None
    sr_transformer: Annotated[Path | None, _opt("--sr-transformer", help="Super-resolution DiT folder (overrides "
        "ROOT/540p_sr or ROOT/1080p_sr).", panel=_CKPT)] = None
    turbo_vae: Annotated[Path | None, _opt("--turbo-vae", help="Turbo-VAED folder: JSON config + .ckpt "
        "(overrides ROOT/turbo_vae).", panel=_CKPT)] = None
    video_decoder: Annotated[VideoDecoderName | None, _opt("--video-decoder", help="turbo: the distilled "
        "Turbo-VAED decoder (default, as the official examples). wan: the Wan2.2 VAE decoder.", panel=_CKPT)] = None
    demo: Annotated[bool, _flag("--demo", help="Use the built-in toy models, no download: small models trained "
        "here on synthetic clips of a cartoon person who speaks (with MAGIHUMAN_DEMO_DIR set: tiny RANDOM weights "
        "built there, whose output is noise).", panel=_CKPT)] = False
    config: Annotated[Path | None, _opt("--config", help="JSON file of settings: the option names with "
        "underscores (prompt, prompt_file, seconds, checkpoint_root, output, ...); relative paths are taken from the "
        "current folder. Flags given here win.")] = None
    output: Annotated[Path | None, _opt("--output", "--output_path", "-o", help="Output .mp4 (never replaced "
        "without --overwrite). Default: first words of the prompt + _SECONDSs_WxH.mp4 in the current folder.",
        panel=_OUT)] = None
    save_path_prefix: Annotated[Path | None, _opt("--save_path_prefix", help="Reference spelling of --output; "
        ".mp4 is appended if missing.", panel=_OUT)] = None
    overwrite: Annotated[bool, _flag("--overwrite", help="Replace an existing output file.", panel=_OUT)] = False
    device: Annotated[str | None, _opt("--device", help="cpu, cuda or cuda:N. Default: cuda if available, else "
        "cpu.")] = None
    fp8: Annotated[bool, _flag("--fp8", help="Store the DiT block linears in FP8 (e4m3, per-row scale): 15.4 instead "
        "of 30.6 GB for the 15B model; computed in bf16.", panel=_MEM)] = False
    fp8_gemm: Annotated[bool, _flag("--fp8-gemm", help="With FP8 weights (implies --fp8), run the block linears whose "
        "width allows it as FP8 tensor-core GEMMs (CUDA GPUs of compute capability >= 8.9 only; experimental).",
        panel=_MEM)] = False
    fp32: Annotated[bool, _flag("--fp32", help="Run the DiT block linears in float32 instead of bf16: faster on CPUs "
        "without bf16 GEMMs, and how the toy world's models were trained (on by default for a trained --demo).",
        panel=_MEM)] = False
    batch_cfg: Annotated[bool, _flag("--batch-cfg/--no-batch-cfg", help="CFG presets: run the prompt and "
        "negative-prompt passes as one batched DiT call (exact, default). --no-batch-cfg: two calls, half the "
        "activation memory.", panel=_MEM)] = True
    offload: Annotated[list[str] | None, _opt(
        "--offload", metavar="[" + "|".join(OFFLOAD_MODES) + "]", help="GPU only. components: each model on the "
        "GPU only for its own stage. blocks: stream the DiT layers from host memory (GPU holds ~2 layers). Repeat "
        "to combine.", panel=_MEM)] = None
    offload_blocks_per_group: Annotated[int, _opt("--offload-blocks-per-group", min=1, help="Layers per streamed "
        "group with --offload blocks (default 1).", panel=_MEM)] = 1
    shard: Annotated[bool, _flag("--shard", help="FSDP2-shard the DiT weights over the torchrun ranks: N GPUs each "
        "hold ~1/N.", panel=_MEM)] = False
    compile_blocks: Annotated[bool, _flag("--compile", help="torch.compile the repeated transformer layers (first "
        "run compiles).", panel=_MEM)] = False
    decode_tile_size: Annotated[int | None, _opt("--decode-tile-size", min=8, help="Decode the video in "
        "overlapping spatial tiles of this many latent pixels (Turbo decoder): less memory at 1080p, small seams.",
        panel=_MEM)] = None
    attention: Annotated[AttentionName, _opt("--attention", help="Attention kernel: auto (default; SDPA: "
        "cuDNN/flash; FA3 on Hopper when installed), sdpa, flex, fa3 (Hopper GPUs only).", panel=_MEM)] = "auto"
    cp: Annotated[int, _opt("--cp", min=1, help="Sequence-parallel (Ulysses) degree: split each sample over this "
        "many processes. Launch with `torchrun --nproc_per_node N -m magihuman generate --cp N ...`; N must divide "
        "the model's 8 K/V heads (1, 2, 4 or 8).", panel="Parallelism")] = 1
    lora: Annotated[list[str] | None, _opt("--lora", metavar="FILE[:SCALE]", help="LoRA adapter from `magihuman "
        "train lora`, at SCALE (default 1.0); repeat to combine several.", panel="Adapters")] = None
    enhance: Annotated[bool, _flag("--enhance", help="Rewrite the prompt into the 150-200-word three-part prompt the "
        "model was tuned on, with a language model, before the video models load; it is printed and saved as "
        "OUTPUT.prompt.txt. If the enhancer fails, the prompt is used as given (docs/prompting.md).",
        panel=_ENH)] = False
    enhance_url: Annotated[str | None, _opt("--enhance-url", help="OpenAI-compatible endpoint for --enhance. "
        "Default: $MAGIHUMAN_ENHANCE_URL; key from $MAGIHUMAN_ENHANCE_API_KEY or $OPENAI_API_KEY.", panel=_ENH)] = None
    enhance_model: Annotated[str | None, _opt("--enhance-model", help="Model name at --enhance-url. Default: "
        "$MAGIHUMAN_ENHANCE_MODEL.", panel=_ENH)] = None
    enhance_local_model: Annotated[str | None, _opt("--enhance-local-model", help="A transformers causal LM (Hugging "
        "Face id or folder) for --enhance instead of an endpoint; freed before the video models load.",
        panel=_ENH)] = None
    #: Not a flag: the checkpoint root came from the environment (``--demo`` and ``--config`` may replace it).
    root_from_env: bool = field(default=False, metadata={"flag": False})

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def flag_fields(cls) -> list[dataclasses.Field]:
        """The fields that are command-line flags, in ``--help`` order."""
        return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]

    @classmethod
    def command_signature(cls, command: Any) -> Any:
        """Give ``command(ctx, **flags)`` the signature typer reads: ``ctx`` and one keyword per flag."""
        hints = get_type_hints(cls, include_extras=True)
        params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                     annotation=hints[f.name]) for f in cls.flag_fields()]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    @classmethod
    def from_flags(cls, flags: dict[str, Any], *, root_from_env: bool = False) -> GenerateOptions:
        """The record from the parsed flags merged with their ``--config`` file (flags win).

        Raises:
            InputError: an unreadable config file, unknown keys, wrong value types, or a setting given twice.
        """
        config = _read_config(flags.get("config"))
        given = {k for k, v in flags.items() if v is not None and not (k == "checkpoint_root" and root_from_env)}
        for group in _GROUPS:
            if given & set(group):  # one setting given on the command line: ignore the file's spelling of it
                config = {k: v for k, v in config.items() if k not in group}
        merged = dict(flags)
        merged.update({k: v for k, v in config.items() if k not in given})
        merged["root_from_env"] = root_from_env and "checkpoint_root" not in config
        for first, second in _GROUPS:
            if merged.get(first) is not None and merged.get(second) is not None:
                a, b = (("--save_path_prefix" if k == "save_path_prefix" else f"--{k.replace('_', '-')}")
                        for k in (first, second))
                raise InputError(f"give either {a} or {b}, not both", field=first)
        return cls(**merged)

    def components(self) -> dict[str, Path | None]:
        """The per-component checkpoint paths given (None: from the root)."""
        return {k: getattr(self, k) for k in COMPONENT_KEYS}


#: Every key a ``--config`` JSON file may hold.
CONFIG_KEYS = (*REQUEST_KEYS, "prompt_file", "negative_prompt_file", "checkpoint_root", *COMPONENT_KEYS, "output",
               "device", "video_decoder", "prompt_at")
#: Config keys whose value is a path or a name (JSON string or null).
_STRING_KEYS = frozenset(CONFIG_KEYS) - {"seconds", "width", "height", "seed", "sr_width", "sr_height", "sr_cfg_number",
                                          "window_seconds", "overlap_frames", "prompt_at"}
#: Options that form one setting: given on the command line, they replace all of the group's config keys.
_GROUPS = (("prompt", "prompt_file"), ("negative_prompt", "negative_prompt_file"), ("output", "save_path_prefix"))


def _read_config(path: Path | None) -> dict[str, Any]:
    """The ``--config`` JSON object, checked for unknown keys and value types."""
    if path is None:
        return {}
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}; check --config", field="config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read config file {path}: {exc}; pass a UTF-8 JSON file", field="config") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"config file {path} is not valid JSON: {exc}; fix it or drop --config",
                         field="config") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a JSON object of settings, got {type(data).__name__}",
                         field="config")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(f"unknown key(s) in config file {path}: {', '.join(unknown)}; allowed keys: "
                         f"{', '.join(CONFIG_KEYS)}", field="config")
    wrong = sorted(k for k, v in data.items() if k in _STRING_KEYS and not (v is None or isinstance(v, str)))
    if wrong:
        raise InputError(f"config file {path}: {', '.join(wrong)} must be a string (or null)", field="config")
    cues = data.get("prompt_at")
    if cues is not None and not (isinstance(cues, list) and all(isinstance(c, str) for c in cues)):
        raise InputError(f"config file {path}: prompt_at must be a list of \"SECONDS=TEXT\" strings (or null)",
                         field="config")
    return data
