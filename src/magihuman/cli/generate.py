"""``magihuman generate``: options -> checked job -> models -> MP4 (architecture.md §13.3).

Everything the user gave is checked by :mod:`magihuman.pipeline.validation` before any model loads
(the reference checks the prompt and output only after loading, architecture.md §13.3); only then
are the checkpoints (or the demo bundle) loaded.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from magihuman.cli.errors import Failure
from magihuman.cli.options import REQUEST_KEYS, GenerateOptions
from magihuman.pipeline.validation import (
    InputError,
    check_checkpoint_root,
    check_device,
    check_output_file,
    expand_path,
)

__all__ = ["generate", "prepare", "default_output_name", "read_text_file", "demo_root", "demo_notes", "print_notices",
           "DEMO_NOTE"]

DEMO_NOTE = (
    "note: --demo runs tiny models with RANDOM weights, so the video and sound are noise; for real output "
    "run `magihuman download --root DIR` and pass --checkpoint-root DIR instead of --demo"
)
TOY_DEMO_NOTE = (
    "note: --demo runs the toy world's small models trained on this project's synthetic cartoon clips (a person "
    "with coloured hair, shirt and wall who says a few words); prompts in the toy caption form work best (README). "
    "For real people run `magihuman download --root DIR` and pass --checkpoint-root DIR instead of --demo"
)

#: The parts every toy caption ends with (``magihuman.toy.captions.make_caption``).
TOY_CAPTION_PARTS = ("Dialogue:", "Background Sound:")
TOY_CAPTION_FORM_NOTE = (
    "note: this caption lacks the toy captions' `Dialogue:` and `Background Sound:` parts; the toy models were "
    "trained on captions that end with both and draw the shirt's colour wrong more often without them (see the "
    "README's demo command; docs/toy_world.md, \"The caption's form\")"
)

TOY_DARK_SKIN_NOTE = (
    "note: the toy's codecs draw no eyes and no mouth on dark skin, so this clip's mouth will not move with its "
    "voice (a known limit of the shipped toy models: docs/toy_world.md, \"Where the shipped run stands\")"
)


@dataclass
class Job:
    """A checked ``generate`` run: what to make, where to write it, what to load."""

    request: Any  # GenerationRequest
    output: Path
    options: GenerateOptions
    checkpoints: dict[str, Path]  # empty for --demo (the bundle is resolved after the checks)
    device: str
    runtime: Any  # RuntimeOptions
    enhancer: Any = None  # --enhance: the prompt enhancer's backend (magihuman.cli.enhance)
    enhanced_prompt: str | None = None


def generate(ctx: typer.Context, **flags: Any) -> None:
    """Generate a talking-human MP4 from a prompt (+ first-frame image, + driving audio).

    All inputs are checked before any model loads; Ctrl-C stops the run (exit code 130). Stage timings
    are printed at the end.
    """
    source = ctx.get_parameter_source("checkpoint_root")  # typer vendors click: compare by name
    options = GenerateOptions.from_flags(flags, root_from_env=getattr(source, "name", "") == "ENVIRONMENT")
    from magihuman.cli.enhance import enhance_job

    run(enhance_job(prepare(options)))


GenerateOptions.command_signature(generate)


def prepare(options: GenerateOptions) -> Job:
    """Check every input, cheapest first; nothing is loaded. Prints the notices.

    Raises:
        InputError: the first problem, naming the option and the fix.
    """
    request = _build_request(options)
    device = check_device(options.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    _check_parallel(options, world)
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    runtime = _runtime_options(options)
    _check_loras(options)
    checkpoints = _checkpoints(options, request.preset)
    from magihuman.pipeline.validation import validate_request

    notices = validate_request(request, device=device, runtime=runtime, checkpoints=checkpoints or None)
    output = check_output_file(_output_path(options, request), overwrite=options.overwrite,
                               overwrite_hint="--overwrite")
    enhancer = _prompt_enhancer(options, output, world)
    print_notices(notices, options.demo)
    return Job(request, output, options, checkpoints, device, runtime, enhancer)


def _prompt_enhancer(options: GenerateOptions, output: Path, world: int):
    """``--enhance``: the enhancer backend (no call yet) and the prompt file checked; None without it."""
    from magihuman.cli.enhance import check_prompt_file, make_backend

    settings = dict(url=options.enhance_url, model=options.enhance_model, local_model=options.enhance_local_model)
    if not options.enhance:
        given = [f"--enhance-{k.replace('_', '-')}" for k, v in settings.items() if v is not None]
        if given:
            raise InputError(f"{given[0]} has no effect without --enhance; add --enhance or drop it", field="enhance")
        return None
    if options.prompt_at:
        raise InputError("--enhance rewrites one prompt, and --prompt-at gives more; enhance each with `magihuman "
                         "enhance` first and pass the results", field="enhance")
    if world > 1:
        raise InputError("--enhance cannot run under torchrun (each rank would get its own prompt); run `magihuman "
                         "enhance` first and pass its output with --prompt-file", field="enhance")
    check_prompt_file(output, overwrite=options.overwrite)
    return make_backend(**settings)


def _build_request(options: GenerateOptions):
    """The ``GenerationRequest`` of the options (SR size picks an SR preset); values are checked later."""
    from pydantic import ValidationError

    from magihuman.pipeline.presets import preset_for_sr_size
    from magihuman.pipeline.request import GenerationRequest

    prompt = _text_option(options, "prompt")
    if prompt is None:
        raise InputError("no prompt: pass --prompt TEXT or --prompt-file FILE", field="prompt")
    fields = {k: getattr(options, k) for k in REQUEST_KEYS}
    fields.update(prompt=prompt, negative_prompt=_text_option(options, "negative_prompt"))
    if options.prompt_at:
        from magihuman.pipeline.prompt_schedule import parse_prompt_at

        fields["prompt_schedule"] = [parse_prompt_at(value) for value in options.prompt_at]
    fields = {k: v for k, v in fields.items() if v is not None}  # unset: the request's own default
    fields.update(_toy_demo_size(options, fields))
    chosen = fields.get("preset", "distill")
    try:
        fields["preset"] = preset_for_sr_size(chosen, fields.get("sr_width"), fields.get("sr_height"))
    except ValueError as exc:
        raise InputError(str(exc), field="sr_width") from None
    if fields["preset"] != chosen:
        typer.echo(f"note: --sr-width/--sr-height given: using preset {fields['preset']}", err=True)
    try:
        return GenerationRequest(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid settings: {problems}") from None


def _toy_demo_size(options: GenerateOptions, fields: dict) -> dict[str, int]:
    """``--demo`` on the trained toy bundle renders the toy's 128x128 frames unless --width/--height say otherwise
    (its models never saw another size; the real model's default, 448x256, is also 7x the tokens)."""
    if not options.demo or "sr_width" in fields:
        return {}
    from magihuman.demo.bundle import demo_is_trained

    if not demo_is_trained():
        return {}
    from magihuman.toy.drawing import HEIGHT, WIDTH

    return {key: value for key, value in (("width", WIDTH), ("height", HEIGHT)) if key not in fields}


def read_text_file(path: str | os.PathLike, what: str = "prompt") -> str:
    """Read a prompt file verbatim: UTF-8, inner quotes and newlines kept, trailing newlines removed.

    The official example prompt starts and ends with a literal ``"`` and holds doubled quotes; they are
    part of the encoded text (architecture.md §13.1, §13.4). Only the trailing ``\\n`` characters are
    dropped, as the reference's ``$(<file)`` shell substitution does (architecture.md §13.1).

    Raises:
        InputError: missing, a folder, unreadable, binary, not UTF-8 or empty.
    """
    flag = f"--{what.replace(' ', '-')}-file"
    field = f"{what.replace(' ', '_')}_file"
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {path}; check {flag}", field=field) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} file {path}: {exc.strerror or exc}; check {flag}", field=field) from None
    if b"\x00" in raw[:8192]:
        raise InputError(f"{what} file {path} is binary, not text; pass a UTF-8 text file to {flag}", field=field)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                         "UTF-8", field=field) from None
    text = re.sub(r"(\r?\n)+\Z", "", text)  # like the reference's `$(<file)`: every trailing newline goes
    if not text.strip():
        raise InputError(f"{what} file {path} is empty; write the {what} into it or pass --{what.replace(' ', '-')}",
                         field=field)
    return text


def _text_option(options: GenerateOptions, key: str) -> str | None:
    """The text of ``key`` or of its ``<key>_file`` companion."""
    file = getattr(options, f"{key}_file")
    if file is not None:
        return read_text_file(file, what=key.replace("_", " "))
    return getattr(options, key)


def default_output_name(prompt: str, seconds: float, width: int, height: int, max_words: int = 6) -> str:
    """``<first words of the prompt>_<seconds>s_<W>x<H>.mp4``, safe on every file system.

    Each word keeps its letters and digits in any script (NFC-normalised), ``_`` and ``-``; words that end
    up empty are skipped; at most ``max_words`` words and 48 characters; ``magihuman`` if nothing is left.
    No separator or dot survives, so the name cannot leave the folder. The size is the rendered one
    (rounded to multiples of 32), not the requested one as in the reference (architecture.md §13.2).

    Example: ``'"Ein Mädchen, lächelnd'`` for 2 s at 448x256 gives ``Ein_Mädchen_lächelnd_2s_448x256.mp4``.
    """
    text = unicodedata.normalize("NFC", prompt)
    words = [w for w in (re.sub(r"[^\w-]+", "", word) for word in text.split()) if w]
    stem = "_".join(words[:max_words])[:48].strip("_-") or "magihuman"
    return f"{stem}_{seconds:g}s_{width}x{height}.mp4"


def _output_path(options: GenerateOptions, request) -> Path:
    if options.save_path_prefix is not None:
        prefix = str(options.save_path_prefix)
        return Path(prefix if prefix.lower().endswith(".mp4") else prefix + ".mp4")
    if options.output is not None:
        return Path(options.output)
    from magihuman.pipeline.request import round_video_size

    stage = request.sr_stage()
    width, height = (stage.width, stage.height) if stage else round_video_size(request.width, request.height)
    return Path(default_output_name(request.prompt, request.seconds, width, height))


def _checkpoints(options: GenerateOptions, preset: str) -> dict[str, Path]:
    """Component paths, checked to exist; empty for ``--demo`` (its bundle is resolved after the checks)."""
    decoder = options.video_decoder or "turbo"
    if decoder != "turbo" and options.turbo_vae is not None:
        raise InputError("--turbo-vae is only used with --video-decoder turbo; drop one of them", field="turbo_vae")
    if options.demo:
        clashing = [f"--{k.replace('_', '-')}" for k, v in options.components().items() if v is not None]
        if options.checkpoint_root is not None and not options.root_from_env:
            clashing.insert(0, "--checkpoint-root")
        if clashing:
            raise InputError(f"--demo brings its own weights; drop {', '.join(clashing)} or drop --demo", field="demo")
        return {}
    return check_checkpoint_root(options.checkpoint_root, options.components(), preset=preset, video_decoder=decoder)


def _check_parallel(options: GenerateOptions, world: int) -> None:
    if 8 % options.cp:
        raise InputError(f"--cp {options.cp} must divide the model's 8 K/V heads; use 1, 2, 4 or 8", field="cp")
    if options.cp > 1 and world % options.cp:
        raise InputError(f"--cp {options.cp} needs a multiple of {options.cp} processes (WORLD_SIZE={world}); launch "
                         f"with `torchrun --nproc_per_node {options.cp} -m magihuman generate --cp {options.cp} ...`",
                         field="cp")
    if options.shard and world < 2:
        raise InputError("--shard splits the weights over torchrun ranks; launch with `torchrun --nproc_per_node N "
                         "-m magihuman generate --shard ...`", field="shard")


def _runtime_options(options: GenerateOptions):
    """The memory/speed switches as ``RuntimeOptions`` (checked against the device by the validation)."""
    from magihuman.cli.options import OFFLOAD_MODES
    from magihuman.runtime.options import RuntimeOptions

    unknown = [mode for mode in options.offload or () if mode not in OFFLOAD_MODES]
    if unknown:
        raise InputError(f"--offload {unknown[0]}: choose {' or '.join(OFFLOAD_MODES)}", field="offload")
    from magihuman.demo.bundle import demo_is_trained

    fp8 = options.fp8 or options.fp8_gemm
    fp32 = options.fp32 or (options.demo and not fp8 and demo_is_trained())
    try:
        return RuntimeOptions(fp8=fp8, fp8_gemm=options.fp8_gemm, fp32=fp32,
                              offload=tuple(dict.fromkeys(options.offload or ())),
                              blocks_per_group=options.offload_blocks_per_group, shard=options.shard,
                              compile=options.compile_blocks, attention=options.attention,
                              decode_tile=options.decode_tile_size, batch_cfg=options.batch_cfg)
    except ValueError as exc:
        raise InputError(str(exc), field="offload") from None


def run(job: Job) -> None:
    """Load the models, generate, write the MP4 and print the summary.

    Raises:
        Failure: loading, generating or writing failed.
    """
    from magihuman.model.sequence_parallel import init_sequence_parallel, is_output_rank, shutdown_sequence_parallel
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

    options = job.options
    try:
        sp = init_sequence_parallel(cp_size=options.cp) if options.cp > 1 or "WORLD_SIZE" in os.environ else None
    except (ValueError, RuntimeError) as exc:
        raise InputError(str(exc), field="cp") from None
    speaker = is_output_rank()  # only the last rank decodes, writes and prints (architecture.md §6.4)
    # --demo: every rank resolves the bundle (the builder is atomic if ranks race); `~` expanded for every loader
    root = demo_root(job.request.prompt, announce=speaker) if options.demo else expand_path(options.checkpoint_root)
    components = {k: expand_path(v) for k, v in options.components().items()}
    if speaker:
        typer.echo(f"loading {job.request.preset} checkpoints from {root or 'the given paths'} on {job.device}",
                   err=True)
    start = time.perf_counter()
    try:
        pipe = MagiHumanPipeline.from_official(
            root, **components, preset=job.request.preset, video_decoder=options.video_decoder or "turbo",
            device=job.device, progress=True, runtime=job.runtime)
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise Failure(f"could not load the checkpoints: {exc}") from exc
    for path, scale in _check_loras(options):
        _lora_input_errors(lambda p=path, s=scale: pipe.load_lora(p, s))
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
            path = out.save(job.output, overwrite=options.overwrite)
        except Exception as exc:  # noqa: BLE001
            raise Failure(f"could not write {job.output}: {exc}") from exc
        timings["write mp4"] = time.perf_counter() - start
        from magihuman.cli.enhance import write_enhanced_prompt

        saved = write_enhanced_prompt(job)
        _print_summary(path, timings)
        if saved is not None:
            typer.echo(f"wrote {saved} (the enhanced prompt)")
    shutdown_sequence_parallel()


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
    Console().print(table)
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


def _check_loras(options: GenerateOptions) -> list:
    """``--lora FILE[:SCALE]`` parsed and the files checked (before any model loads)."""
    from magihuman.pipeline.lora_files import check_lora_specs

    return _lora_input_errors(lambda: check_lora_specs(options.lora or ()))


def _lora_input_errors(run):
    from magihuman.pipeline.lora_files import LoraError

    try:
        return run()
    except LoraError as exc:
        raise InputError(str(exc), field="lora") from None


def print_notices(notices: list[str], demo: bool) -> None:
    """Print the validation notices to stderr, each as ``note: ...``; with ``demo`` on the trained toy models,
    without the real model's short-prompt notice (:data:`~magihuman.pipeline.validation.SHORT_PROMPT_NOTICE`):
    the toy captions are short by design, and :data:`TOY_CAPTION_FORM_NOTE` says what they need."""
    from magihuman.demo.bundle import demo_is_trained
    from magihuman.pipeline.validation import SHORT_PROMPT_NOTICE

    toy = demo and demo_is_trained()
    for notice in notices:
        if not (toy and SHORT_PROMPT_NOTICE in notice):
            typer.echo(f"note: {notice}", err=True)


def demo_root(prompt: str | None, *, announce: bool = True) -> Path:
    """The checkpoint root ``--demo`` runs (:func:`magihuman.demo.bundle.demo_checkpoint_root`: the shipped toy
    models, or random ones), after printing what it is and :func:`demo_notes` for ``prompt`` to stderr when
    ``announce``; ``generate``, ``extend`` and ``retake`` share it."""
    from magihuman.demo.bundle import demo_checkpoint_root

    root, trained = demo_checkpoint_root()
    if announce:
        for note in demo_notes(prompt, trained):
            typer.echo(note, err=True)
    return root


def demo_notes(prompt: str | None, trained: bool) -> list[str]:
    """What ``--demo`` tells the user: which models run, and for the trained toy models what a caption asks that
    they do badly (dark skin; a caption without the ``Dialogue:`` and ``Background Sound:`` parts the toy's
    captions all have, ``magihuman.toy.captions.make_caption``)."""
    if not trained:
        return [DEMO_NOTE]
    from magihuman.toy.captions import parse_caption

    notes = [TOY_DEMO_NOTE]
    if prompt and parse_caption(prompt).get("skin") == "dark":
        notes.append(TOY_DARK_SKIN_NOTE)
    if prompt and not all(part in prompt for part in TOY_CAPTION_PARTS):
        notes.append(TOY_CAPTION_FORM_NOTE)
    return notes
