"""Command line: ``magihuman generate`` and ``magihuman download`` (pipeline.md 1.1).

The CLI is thin: it parses and merges the options (``--config`` file, flags, environment), checks
everything it can **before any model loads** (the reference checks the prompt and output only after
loading all models, pipeline.md 13 pitfall 24), builds a :class:`~magihuman.pipeline.magihuman_pipeline.GenerationRequest`,
calls :class:`~magihuman.pipeline.magihuman_pipeline.MagiHumanPipeline` and writes the MP4.

Exit codes: 0 success; 2 bad input (one-line ``error:`` message, no traceback; also click's own usage
errors); 1 a failure while loading, generating, writing or downloading (set ``MAGIHUMAN_DEBUG=1`` to see
the traceback); 130 interrupted.

Option spellings of the reference entry script are accepted where they mean the same thing
(``--image_path``, ``--audio_path``, ``--br_width``, ``--br_height``, ``--output_path``,
``--save_path_prefix``). Unlike the reference, unknown options are errors.

The heavy modules (torch, diffusers, the pipeline) are imported only when a command runs, so
``magihuman --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import typer

from magihuman import __version__
import magihuman.pipeline.download as hub

__all__ = ["app", "main", "default_output_name", "read_text_file", "CONFIG_KEYS"]

#: ``tuple(magihuman.pipeline.presets.PRESETS)``, repeated here because importing the presets pulls in torch and
#: diffusers (seconds) and ``--help`` should not; tests/test_cli.py checks that the two agree.
PresetName = Literal["distill", "base", "sr_540p", "sr_1080p"]
#: ``download.DIT_PRESETS`` plus ``all``, for the same reason.
DownloadPreset = Literal["distill", "base", "sr_540p", "sr_1080p", "all"]
#: Defaults shown in ``--help``; the values themselves come from ``GenerationRequest`` (the CLI passes
#: nothing for an option that was not given). tests/test_cli.py checks that the two agree.
SHOWN_DEFAULTS = {"seconds": 4.0, "width": 448, "height": 256, "seed": 42, "preset": "distill"}

#: Fields of ``GenerationRequest`` (pipeline.py) the CLI fills.
REQUEST_KEYS = ("prompt", "image", "audio", "seconds", "width", "height", "seed", "preset", "negative_prompt",
                "sr_width", "sr_height", "sr_cfg_number")
#: Checkpoint locations, overriding a root per component (``MagiHumanPipeline.from_official``).
COMPONENT_KEYS = ("transformer", "text_encoder", "video_vae", "audio_vae", "sr_transformer", "turbo_vae")
#: ``magihuman.pipeline.magihuman_pipeline.VIDEO_DECODERS``, repeated for a fast ``--help`` (tests check they agree).
VideoDecoderName = Literal["turbo", "wan"]
#: ``magihuman.pipeline.magihuman_pipeline.OFFLOAD_MODES`` and the ``--attention`` choices, likewise.
OffloadName = Literal["components", "blocks"]
AttentionName = Literal["auto", "sdpa", "flex", "fa3"]
#: Every key a ``--config`` JSON file may hold.
CONFIG_KEYS = (
    *REQUEST_KEYS, "prompt_file", "negative_prompt_file", "checkpoint_root", *COMPONENT_KEYS, "output", "device",
    "video_decoder",
)
#: Config keys whose value is a path or a name (JSON string or null).
_STRING_KEYS = frozenset(CONFIG_KEYS) - {"seconds", "width", "height", "seed", "sr_width", "sr_height", "sr_cfg_number"}
#: Options that form one setting: given on the command line, they replace all of the group's config keys.
_GROUPS = (("prompt", "prompt_file"), ("negative_prompt", "negative_prompt_file"), ("output", "save_path_prefix"))

CHECKPOINT_ROOT_ENV = "MAGIHUMAN_CHECKPOINT_ROOT"
DEBUG_ENV = "MAGIHUMAN_DEBUG"
DEMO_NOTE = (
    "note: --demo runs tiny models with RANDOM weights, so the video and sound are noise; for real output "
    "run `magihuman download --root DIR` and pass --checkpoint-root DIR instead of --demo"
)

app = typer.Typer(
    name="magihuman",
    help="daVinci-MagiHuman: text (+ first-frame image, + driving audio) to a talking-human MP4 with speech.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class BadInput(Exception):
    """A problem with the user's input; reported in one line with exit code 2."""


class Failure(Exception):
    """A problem while loading, generating, writing or downloading; exit code 1."""


# ------------------------------------------------------------------------------------------------ root


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"magihuman {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """daVinci-MagiHuman: text (+ first-frame image, + driving audio) to a talking-human MP4 with speech."""


def main() -> None:
    """Console-script entry point (``magihuman``, ``python -m magihuman``)."""
    app(prog_name="magihuman")


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    """Turn :class:`BadInput` into exit 2 and every other failure into exit 1, each with one line."""
    try:
        yield
    except typer.Exit:
        raise
    except BadInput as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line instead of a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        text = str(exc) if isinstance(exc, Failure) else f"{type(exc).__name__}: {exc}"
        if exc.__cause__ is not None or not isinstance(exc, Failure):  # a traceback would show more
            text += f" (set {DEBUG_ENV}=1 for the traceback)"
        typer.echo(f"error: {text}", err=True)
        raise typer.Exit(1) from None


# ------------------------------------------------------------------------------------------------ generate


@dataclass
class _Job:
    """Everything ``generate`` needs after validation."""

    request: Any  # magihuman.pipeline.magihuman_pipeline.GenerationRequest (imported lazily)
    output: Path
    overwrite: bool
    root: Path | None
    components: dict[str, Path | None]
    device: str
    demo: bool
    video_decoder: str = "turbo"
    cp: int = 1
    runtime: Any = None  # magihuman.pipeline.magihuman_pipeline.RuntimeOptions


@app.command(no_args_is_help=True)
def generate(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Option(
        "--prompt", "-p", help="The text prompt.", show_default=False)] = None,
    prompt_file: Annotated[Path | None, typer.Option(
        "--prompt-file", help="Read the prompt from this UTF-8 file, verbatim (quotes kept; trailing "
        "newlines removed). Use instead of --prompt.")] = None,
    image: Annotated[Path | None, typer.Option(
        "--image", "--image_path", "-i", help="First-frame image: image-to-video. Without it: text-to-video.")] = None,
    audio: Annotated[Path | None, typer.Option(
        "--audio", "--audio_path", "-a", help="Driving audio file (speech is kept; it sets the length).")] = None,
    seconds: Annotated[float | None, typer.Option(
        "--seconds", "-s", help=f"Clip length in seconds. Default: {SHOWN_DEFAULTS['seconds']:g}.",
        show_default=False)] = None,
    width: Annotated[int | None, typer.Option(
        "--width", "--br_width", help=f"Width in pixels, rounded down to a multiple of 32. Default: "
        f"{SHOWN_DEFAULTS['width']}.",
        show_default=False)] = None,
    height: Annotated[int | None, typer.Option(
        "--height", "--br_height", help=f"Height in pixels, rounded down to a multiple of 32. Default: "
        f"{SHOWN_DEFAULTS['height']}.",
        show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help=f"Seed of all noise. Default: {SHOWN_DEFAULTS['seed']}.")] = None,
    preset: Annotated[PresetName | None, typer.Option(
        "--preset", help="distill: 8 steps, no CFG (fast). base: 32 steps with CFG. sr_540p / sr_1080p: base, "
        f"then latent super-resolution to 896x512 / 1920x1088. Default: {SHOWN_DEFAULTS['preset']}.")] = None,
    sr_width: Annotated[int | None, typer.Option(
        "--sr-width", "--sr_width", help="Super-resolution output width (picks sr_540p, or sr_1080p above 720 "
        "px high, unless --preset is an SR preset).", show_default=False)] = None,
    sr_height: Annotated[int | None, typer.Option(
        "--sr-height", "--sr_height", help="Super-resolution output height.", show_default=False)] = None,
    sr_cfg_number: Annotated[int | None, typer.Option(
        "--sr-cfg-number", "--sr_cfg_number", help="SR guidance: 1 (default, as the shipped SR examples) or 2 "
        "(negative pass, video scale 3.5 with the first 13 latent frames capped at 2.0).",
        show_default=False)] = None,
    negative_prompt: Annotated[str | None, typer.Option(
        "--negative-prompt", help="Unconditional text for CFG (base preset). Default: a built-in list of "
        "visual, audio and delivery defects.", show_default=False)] = None,
    negative_prompt_file: Annotated[Path | None, typer.Option(
        "--negative-prompt-file", help="Read the negative prompt from a UTF-8 file.")] = None,
    checkpoint_root: Annotated[Path | None, typer.Option(
        "--checkpoint-root", envvar=CHECKPOINT_ROOT_ENV, help="Folder made by `magihuman download`.",
        rich_help_panel="Checkpoints")] = None,
    transformer: Annotated[Path | None, typer.Option(
        "--transformer", help="DiT folder (overrides ROOT/distill or ROOT/base).",
        rich_help_panel="Checkpoints")] = None,
    text_encoder: Annotated[Path | None, typer.Option(
        "--text-encoder", help="T5Gemma folder (overrides ROOT/t5gemma-9b-9b-ul2).",
        rich_help_panel="Checkpoints")] = None,
    video_vae: Annotated[Path | None, typer.Option(
        "--video-vae", help="Wan2.2_VAE.pth or its folder (overrides ROOT/Wan2.2-TI2V-5B).",
        rich_help_panel="Checkpoints")] = None,
    audio_vae: Annotated[Path | None, typer.Option(
        "--audio-vae", help="Stable Audio Open folder (overrides ROOT/stable-audio-open-1.0).",
        rich_help_panel="Checkpoints")] = None,
    sr_transformer: Annotated[Path | None, typer.Option(
        "--sr-transformer", help="Super-resolution DiT folder (overrides ROOT/540p_sr or ROOT/1080p_sr).",
        rich_help_panel="Checkpoints")] = None,
    turbo_vae: Annotated[Path | None, typer.Option(
        "--turbo-vae", help="Turbo-VAED folder: JSON config + .ckpt (overrides ROOT/turbo_vae).",
        rich_help_panel="Checkpoints")] = None,
    video_decoder: Annotated[VideoDecoderName | None, typer.Option(
        "--video-decoder", help="turbo: the distilled Turbo-VAED decoder (default, as the official examples). "
        "wan: the Wan2.2 VAE decoder.", rich_help_panel="Checkpoints")] = None,
    demo: Annotated[bool, typer.Option(
        "--demo", help="Use tiny built-in RANDOM weights (output is noise): checks the install, no download.",
        rich_help_panel="Checkpoints")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", help="JSON file of settings: the option names with underscores (prompt, prompt_file, "
        "seconds, checkpoint_root, output, ...); relative paths are taken from the current folder. Flags "
        "given here win.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "--output_path", "-o", help="Output .mp4. Default: first words of the prompt + "
        "_SECONDSs_WxH.mp4 in the current folder.", rich_help_panel="Output")] = None,
    save_path_prefix: Annotated[Path | None, typer.Option(
        "--save_path_prefix", help="Reference spelling of --output; .mp4 is appended if missing.",
        rich_help_panel="Output")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing output file.", rich_help_panel="Output")] = False,
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda or cuda:N. Default: cuda if available, else cpu.")] = None,
    fp8: Annotated[bool, typer.Option(
        "--fp8", help="Store the DiT block linears in FP8 (e4m3, per-row scale): 15.4 instead of 30.6 GB for the "
        "15B model; computed in bf16.", rich_help_panel="Memory and speed")] = False,
    fp8_gemm: Annotated[bool, typer.Option(
        "--fp8-gemm", help="With FP8 weights (implies --fp8), run the block linears whose width allows it as FP8 "
        "tensor-core GEMMs (GPUs of compute capability >= 8.9; experimental).",
        rich_help_panel="Memory and speed")] = False,
    batch_cfg: Annotated[bool, typer.Option(
        "--batch-cfg/--no-batch-cfg", help="CFG presets: run the prompt and negative-prompt passes as one "
        "batched DiT call (exact). --no-batch-cfg: two calls, half the activation memory.",
        rich_help_panel="Memory and speed")] = True,
    offload: Annotated[list[str] | None, typer.Option(
        "--offload", metavar="[components|blocks]",
        help="components: each model on the GPU only for its own stage. blocks: stream the DiT "
        "layers from host memory (GPU holds ~2 layers). Repeat to combine.",
        rich_help_panel="Memory and speed")] = None,
    offload_blocks_per_group: Annotated[int, typer.Option(
        "--offload-blocks-per-group", min=1, help="Layers per streamed group with --offload blocks.",
        rich_help_panel="Memory and speed")] = 1,
    shard: Annotated[bool, typer.Option(
        "--shard", help="FSDP2-shard the DiT weights over the torchrun ranks: N GPUs each hold ~1/N.",
        rich_help_panel="Memory and speed")] = False,
    compile_blocks: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the repeated transformer layers (first run compiles).",
        rich_help_panel="Memory and speed")] = False,
    decode_tile_size: Annotated[int | None, typer.Option(
        "--decode-tile-size", min=8, help="Decode the video in overlapping spatial tiles of this many latent "
        "pixels (Turbo decoder): less memory at 1080p, small seams.", rich_help_panel="Memory and speed")] = None,
    attention: Annotated[AttentionName, typer.Option(
        "--attention", help="Attention kernel: auto (SDPA: cuDNN/flash; FA3 on Hopper when installed), sdpa, "
        "flex, fa3.", rich_help_panel="Memory and speed")] = "auto",
    cp: Annotated[int, typer.Option(
        "--cp", min=1, help="Sequence-parallel (Ulysses) degree: split each sample over this many processes. "
        "Launch with `torchrun --nproc_per_node N -m magihuman generate --cp N ...`; N must divide the "
        "model's K/V heads (1, 2, 4 or 8 for the 15B model).", rich_help_panel="Parallelism")] = 1,
) -> None:
    """Generate a talking-human MP4 from a prompt (+ first-frame image, + driving audio).

    All inputs are checked before any model loads. Stage timings are printed at the end.
    """
    options = dict(ctx.params)
    with _exit_codes():
        source = ctx.get_parameter_source("checkpoint_root")  # typer vendors click: compare by name
        job = _prepare(options, root_from_env=getattr(source, "name", None) == "ENVIRONMENT")
        _run(job)


def _prepare(options: dict[str, Any], *, root_from_env: bool) -> _Job:
    """Merge the options with the config file and validate everything; no model is loaded.

    Raises:
        BadInput: for any problem, with a message naming the option and the fix.
    """
    settings = _merge(options, _read_config(options["config"]), root_from_env=root_from_env)
    request, notices = _build_request(settings)
    for notice in notices:
        typer.echo(f"note: {notice}", err=True)
    output = _output_path(settings, request)
    from magihuman.pipeline.media import check_output_path

    try:
        output = check_output_path(output, overwrite=options["overwrite"])
    except (ValueError, OSError) as exc:
        raise BadInput(str(exc)) from None
    root, components = _checkpoint_locations(settings, request.preset, demo=options["demo"],
                                             turbo=(settings.get("video_decoder") or "turbo") == "turbo")
    decoder = settings.get("video_decoder") or "turbo"
    if decoder not in get_args(VideoDecoderName):
        raise BadInput(f"video_decoder must be one of {', '.join(get_args(VideoDecoderName))}, got {decoder!r}")
    if decoder != "turbo" and components.get("turbo_vae") is not None:
        raise BadInput("--turbo-vae is only used with --video-decoder turbo")
    cp = options.get("cp") or 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cp > 1 and world % cp:
        raise BadInput(
            f"--cp {cp} needs a multiple of {cp} processes (WORLD_SIZE={world}); launch with "
            f"`torchrun --nproc_per_node {cp} -m magihuman generate --cp {cp} ...`"
        )
    device = _resolve_device(settings["device"])
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    runtime = _runtime_options(options, device, world)
    return _Job(request, output, options["overwrite"], root, components, device, options["demo"], decoder, cp,
                runtime)


def _runtime_options(options: dict[str, Any], device: str, world: int):
    """The memory/speed switches, checked against the device before any model loads."""
    from magihuman.runtime.memory import resolve_attention_backend
    from magihuman.pipeline.magihuman_pipeline import RuntimeOptions

    offload = tuple(dict.fromkeys(options.get("offload") or ()))
    unknown = [mode for mode in offload if mode not in get_args(OffloadName)]
    if unknown:
        raise BadInput(f"--offload {unknown[0]}: choose components or blocks")
    if "components" in offload and not device.startswith("cuda"):
        raise BadInput("--offload components moves models between the CPU and a GPU; on --device cpu drop it")
    if options.get("shard") and world < 2:
        raise BadInput("--shard splits the weights over torchrun ranks; launch with "
                       "`torchrun --nproc_per_node N -m magihuman generate --shard ...`")
    try:
        resolve_attention_backend(options.get("attention") or "auto", device)
        fp8_gemm = bool(options.get("fp8_gemm"))
        return RuntimeOptions(fp8=bool(options.get("fp8")) or fp8_gemm, fp8_gemm=fp8_gemm, offload=offload,
                              blocks_per_group=options.get("offload_blocks_per_group") or 1,
                              shard=bool(options.get("shard")), compile=bool(options.get("compile_blocks")),
                              attention=options.get("attention") or "auto",
                              decode_tile=options.get("decode_tile_size"),
                              batch_cfg=bool(options.get("batch_cfg", True)))
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _run(job: _Job) -> None:
    """Load the models, generate, write the MP4 and print the summary.

    Raises:
        Failure: loading, generating or writing failed.
    """
    from magihuman.model.sequence_parallel import init_sequence_parallel, is_output_rank, shutdown_sequence_parallel
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

    try:
        sp = init_sequence_parallel(cp_size=job.cp) if job.cp > 1 or "WORLD_SIZE" in os.environ else None
    except (ValueError, RuntimeError) as exc:
        raise BadInput(str(exc)) from None
    speaker = is_output_rank()  # only the last rank decodes, writes and prints (pipeline.md 1.5)
    root = job.root
    if job.demo:
        if speaker:
            typer.echo(DEMO_NOTE, err=True)
        from magihuman.demo.bundle import ensure_demo_bundle

        root = ensure_demo_bundle()  # every rank resolves it; the builder is atomic if ranks race
    if speaker:
        typer.echo(f"loading {job.request.preset} checkpoints from {root or 'the given paths'} on {job.device}",
                   err=True)
    start = time.perf_counter()
    try:
        pipe = MagiHumanPipeline.from_official(
            root, **job.components, preset=job.request.preset, video_decoder=job.video_decoder, device=job.device,
            progress=True, runtime=job.runtime
        )
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise Failure(f"could not load the checkpoints: {exc}") from exc
    if sp is not None:
        for model in (pipe.transformer, getattr(pipe, "sr_transformer", None)):
            if model is not None:
                model.enable_sequence_parallel(sp)
    timings = {"load models": time.perf_counter() - start}
    try:
        out = pipe(job.request, progress=speaker, decode=speaker)
    except Exception as exc:  # noqa: BLE001
        raise Failure(f"generation failed: {type(exc).__name__}: {exc}{_oom_hint(exc)}") from exc
    timings.update(out.timings)
    if speaker:
        start = time.perf_counter()
        try:
            path = out.save(job.output, overwrite=job.overwrite)
        except Exception as exc:  # noqa: BLE001
            raise Failure(f"could not write {job.output}: {exc}") from exc
        timings["write mp4"] = time.perf_counter() - start
        _print_summary(path, timings)
    shutdown_sequence_parallel()


# ------------------------------------------------------------------------------------------------ options


def _read_config(path: Path | None) -> dict[str, Any]:
    """The ``--config`` JSON object, checked for unknown keys and value types."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise BadInput(f"config file not found: {path}; check --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read config file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput(f"config file {path} must hold a JSON object of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise BadInput(
            f"unknown key(s) in config file {path}: {', '.join(unknown)}; allowed keys: {', '.join(CONFIG_KEYS)}"
        )
    wrong = sorted(k for k, v in data.items() if k in _STRING_KEYS and not (v is None or isinstance(v, str)))
    if wrong:
        raise BadInput(f"config file {path}: {', '.join(wrong)} must be a string (or null)")
    return data


def _merge(options: dict[str, Any], config: dict[str, Any], *, root_from_env: bool) -> dict[str, Any]:
    """Command line > config file > environment > the request's defaults (``None`` here: not set)."""
    settings = dict(options)
    given = {k for k, v in options.items() if v is not None and not (k == "checkpoint_root" and root_from_env)}
    for group in _GROUPS:
        if given & set(group):  # one setting given on the command line: ignore the file's spelling of it
            config = {k: v for k, v in config.items() if k not in group}
    for key, value in config.items():
        if key not in given:
            settings[key] = value
    # An environment root is a standing default: --demo and the config file may replace it silently.
    settings["_root_from_env"] = root_from_env and "checkpoint_root" not in config
    for first, second in _GROUPS[:2]:
        flag, other = (f"--{k.replace('_', '-')}" for k in (first, second))
        if settings.get(first) is not None and settings.get(second) is not None:
            raise BadInput(f"give either {flag} or {other}, not both")
    if settings.get("output") is not None and settings.get("save_path_prefix") is not None:
        raise BadInput("give either --output or --save_path_prefix, not both")
    return settings


def read_text_file(path: str | os.PathLike, what: str = "prompt") -> str:
    """Read a prompt file verbatim: UTF-8, inner quotes and newlines kept, trailing newlines removed.

    The official example prompt starts and ends with a literal ``"`` and holds doubled quotes; they are
    part of the encoded text (pipeline.md 1.3, 13 pitfall 28). Bytes are decoded as they are (no
    newline translation); only the trailing ``\\n`` characters are dropped, as the reference's
    ``$(<file)`` shell substitution does (pipeline.md 1.3).

    Args:
        path: the file.
        what: what it holds, for error messages.

    Returns:
        The text.

    Raises:
        BadInput: missing, unreadable or not UTF-8.
    """
    try:
        raw = Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise BadInput(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{what} file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    return re.sub(r"(\r?\n)+\Z", "", text)  # like the reference's `$(<file)`: every trailing newline goes


def _text_option(settings: dict[str, Any], key: str) -> str | None:
    """The text of ``key`` or of its ``<key>_file`` companion."""
    if settings.get(f"{key}_file") is not None:
        return read_text_file(settings[f"{key}_file"], what=key.replace("_", " "))
    return settings.get(key)


def _build_request(settings: dict[str, Any]):
    """A checked ``GenerationRequest`` and its notices (rounding, short prompt)."""
    prompt = _text_option(settings, "prompt")
    if prompt is None:
        raise BadInput("no prompt: pass --prompt TEXT or --prompt-file FILE")
    fields = {k: settings.get(k) for k in REQUEST_KEYS}
    fields.update(prompt=prompt, negative_prompt=_text_option(settings, "negative_prompt"))
    fields = {k: v for k, v in fields.items() if v is not None}  # unset: the request's own default
    from pydantic import ValidationError

    from magihuman.pipeline.magihuman_pipeline import GenerationRequest
    from magihuman.pipeline.presets import preset_for_sr_size

    chosen = fields.get("preset", SHOWN_DEFAULTS["preset"])
    try:
        resolved = preset_for_sr_size(chosen, fields.get("sr_width"), fields.get("sr_height"))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    sr_notice = [] if resolved == chosen else [f"--sr-width/--sr-height given: using preset {resolved}"]
    fields["preset"] = resolved

    try:
        request = GenerationRequest(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadInput(f"invalid settings: {problems}") from None
    try:
        notices = request.validate_inputs()
    except (ValueError, OSError) as exc:
        raise BadInput(str(exc)) from None
    return request, sr_notice + notices


def default_output_name(prompt: str, seconds: float, width: int, height: int, max_words: int = 6) -> str:
    """``<first words of the prompt>_<seconds>s_<W>x<H>.mp4``, safe on every file system.

    Each word keeps only ``[A-Za-z0-9_-]``; words that end up empty are skipped; at most ``max_words``
    words and 48 characters; ``magihuman`` if nothing is left. The size is the rendered one (rounded
    to multiples of 32), not the requested one as in the reference (pipeline.md 13 pitfall 13).

    Example: ``'"A young woman, smiling'`` for 2 s at 448x256 gives ``A_young_woman_smiling_2s_448x256.mp4``.
    """
    words = [w for w in (re.sub(r"[^A-Za-z0-9_-]+", "", word) for word in prompt.split()) if w]
    stem = "_".join(words[:max_words])[:48].strip("_-") or "magihuman"
    return f"{stem}_{seconds:g}s_{width}x{height}.mp4"


def _output_path(settings: dict[str, Any], request) -> Path:
    if settings.get("save_path_prefix") is not None:
        prefix = str(settings["save_path_prefix"])
        return Path(prefix if prefix.lower().endswith(".mp4") else prefix + ".mp4")
    if settings.get("output") is not None:
        return Path(settings["output"])
    from magihuman.pipeline.magihuman_pipeline import round_video_size

    stage = request.sr_stage()
    width, height = (stage.width, stage.height) if stage else round_video_size(request.width, request.height)
    return Path(default_output_name(request.prompt, request.seconds, width, height))


def _checkpoint_locations(settings: dict[str, Any], preset: str, *, demo: bool, turbo: bool = True):
    """(root, per-component paths), checked to exist; the demo bundle is resolved later."""
    components = {k: Path(settings[k]).expanduser() if settings.get(k) else None for k in COMPONENT_KEYS}
    root = settings.get("checkpoint_root")
    if demo:
        clashing = [f"--{k.replace('_', '-')}" for k, v in components.items() if v is not None]
        if root is not None and not settings.get("_root_from_env"):
            clashing.insert(0, "--checkpoint-root")
        if clashing:
            raise BadInput(f"--demo brings its own weights; drop {', '.join(clashing)} or drop --demo")
        return None, components
    for key, path in components.items():
        if path is not None and not path.exists():
            raise BadInput(f"--{key.replace('_', '-')} path not found: {path}")
    if root is None:
        from magihuman.pipeline.presets import get_preset

        optional = {"sr_transformer"} if get_preset(preset).sr is None else set()
        optional |= set() if turbo else {"turbo_vae"}
        unset = [f"--{k.replace('_', '-')}" for k, v in components.items() if v is None and k not in optional]
        if unset:
            raise BadInput(
                f"no checkpoint root: fetch the weights with `magihuman download --root DIR`, then pass "
                f"--checkpoint-root DIR (or set {CHECKPOINT_ROOT_ENV}); or give {', '.join(unset)}; "
                "or try --demo (random weights)"
            )
        return None, components
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BadInput(
            f"checkpoint root {root} is not a folder; fetch the weights with `magihuman download --root {root}` "
            "or fix --checkpoint-root"
        )
    from magihuman.pipeline.magihuman_pipeline import component_layout
    from magihuman.pipeline.presets import get_preset

    layout = component_layout(get_preset(preset), video_decoder="turbo" if turbo else "wan")
    lacking = [f"{layout[k]}/" for k, v in components.items()
               if v is None and layout[k] is not None and not (root / layout[k]).is_dir()]
    if lacking:
        raise BadInput(
            f"checkpoint root {root} lacks {', '.join(lacking)}; fetch it with `magihuman download --root {root} "
            f"--preset {preset}` or give the component's own path (--transformer, --text-encoder, --video-vae, "
            "--audio-vae)"
        )
    return root, components


def _resolve_device(name: str | None) -> str:
    """``name`` checked against this machine; ``None``/``auto``: cuda if available, else cpu."""
    import torch

    if name is None or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInput(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return str(device)


def _oom_hint(exc: Exception) -> str:
    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
        return "; try fewer --seconds, a smaller --width/--height, or --device cpu"
    return ""


def _print_summary(path: Path, timings: dict[str, float]) -> None:
    """Stage timings as a table, then the written file and what it holds."""
    from rich.console import Console
    from rich.table import Table

    from magihuman.pipeline.media import probe_media

    table = Table(title="Timings")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.2f}")
    table.add_section()
    table.add_row("total", f"{sum(timings.values()):.2f}", style="bold")
    console = Console()
    console.print(table)
    try:
        info = probe_media(path, count_frames=False)
    except (ValueError, OSError) as exc:  # the file is written; only the summary is lost
        typer.echo(f"wrote {path} (could not read it back: {exc})")
        return
    facts = f"{info['num_frames']} frames, {info['width']}x{info['height']} at {info['fps']:g} fps"
    if info["num_audio_streams"]:
        seconds = info["audio_header_duration"] or info["audio_duration"] or 0.0
        facts += f", {info['audio_codec']} audio {info['sample_rate']} Hz, {seconds:.2f} s"
    typer.echo(f"wrote {path} ({facts})")


# ------------------------------------------------------------------------------------------------ download


@app.command("download")
def download(
    root: Annotated[Path, typer.Option(
        "--root", envvar=CHECKPOINT_ROOT_ENV, help="Checkpoint root to fill (created if missing).",
    )] = Path("checkpoints"),
    preset: Annotated[DownloadPreset, typer.Option(
        "--preset", help="Which DiT to fetch.")] = "distill",
    components: Annotated[list[str] | None, typer.Option(
        "--components", "-c", help="Only these (repeat or comma-separate): " + ", ".join(hub.COMPONENTS)
        + ". Default: " + ", ".join(hub.DEFAULT_COMPONENTS) + ".", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be fetched, download nothing.")] = False,
) -> None:
    """Fetch the official checkpoints from the Hugging Face hub into a checkpoint root.

    Files already complete in the root are kept. T5Gemma and Stable Audio Open are gated: accept their
    licences on the hub and log in (`huggingface-cli login` or HF_TOKEN) first.
    """
    with _exit_codes():
        names = [n.strip() for item in components or () for n in item.split(",") if n.strip()]
        try:
            sources = hub.select_sources(preset, names)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        if any(source.gated for source in sources):
            typer.echo(f"note: {hub.GATED_NOTE}", err=True)
        try:
            planned = hub.plan_download(sources, root)
            _print_plan(planned, root)
            if dry_run:
                return
            hub.check_free_space(planned, root)
            done = hub.download_sources(sources, root)
        except hub.DownloadError as exc:
            raise Failure(str(exc)) from None
        typer.echo(
            f"done: pass --checkpoint-root {done} to `magihuman generate` (or export {CHECKPOINT_ROOT_ENV}={done})"
        )


def _print_plan(planned: list[hub.PlannedSource], root: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Download into {os.path.abspath(root)}")
    for column in ("folder", "repository", "files", "size", "to fetch"):
        table.add_column(column, justify="right" if column in ("files", "size", "to fetch") else "left")
    for item in planned:
        src = item.source
        table.add_row(f"{src.folder}/", src.repo_id + (" (gated)" if src.gated else ""), str(item.num_files),
                      hub.format_size(item.total_bytes), hub.format_size(item.missing_bytes))
    known = all(p.missing_bytes is not None for p in planned)
    table.add_section()
    table.add_row("total", "", "", "", hub.format_size(sum(p.missing_bytes or 0 for p in planned) if known else None))
    Console(file=sys.stderr).print(table)


from magihuman.serve.cli import serve as _serve  # noqa: E402 - issue 10: `magihuman serve`

app.command("serve")(_serve)
