"""What ``magihuman extend`` and ``magihuman retake`` share: their options, the checks, loading and writing.

Both take the clip as an argument and the options of ``magihuman generate`` that apply to an edit, with the
same spellings and help (:data:`SHARED_OPTIONS`, read from
:class:`~magihuman.cli.options.GenerateOptions`). Everything is checked before any model loads
(:meth:`~magihuman.pipeline.clip_requests.ExtendRequest.validate_inputs` opens the clip and counts its
frames); the output is a new file, never the input clip.
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from magihuman.cli.errors import Failure
from magihuman.cli.options import GenerateOptions
from magihuman.pipeline.presets import DEFAULT_FADE_FRAMES
from magihuman.pipeline.validation import (
    MAX_BASE_SIDE,
    MAX_FADE_FRAMES,
    MAX_SECONDS,
    MIN_SIZE,
    InputError,
    check_device,
    check_output_file,
    expand_path,
)

__all__ = ["SHARED_OPTIONS", "EDIT_OPTIONS", "ClipArgument", "command_signature", "run_edit"]

#: ``magihuman generate`` options that extend and retake take as they are.
SHARED_OPTIONS = ("prompt", "prompt_file", "seed", "preset", "negative_prompt",
                  "negative_prompt_file", "checkpoint_root", "transformer", "text_encoder",
                  "video_vae", "audio_vae", "turbo_vae", "video_decoder", "demo", "output", "overwrite", "device",
                  "fp8", "fp8_gemm", "batch_cfg", "offload", "offload_blocks_per_group", "compile_blocks",
                  "decode_tile_size", "attention", "lora")

ClipArgument = Annotated[Path, typer.Argument(help="The clip to edit (MP4 or any video PyAV reads; it is only "
                                                   "read, never written).", show_default=False)]

#: Options of both edits whose meaning differs from ``generate``'s (name -> ``(annotation, default)``).
EDIT_OPTIONS = {
    "width": (Annotated[int | None, typer.Option("--width", help=f"Working and output width in pixels, "
              f"{MIN_SIZE}..{MAX_BASE_SIDE}, rounded down to a multiple of 32; the clip is cropped and resized to it. "
              "Default: the clip's width.", show_default=False)], None),
    "height": (Annotated[int | None, typer.Option("--height", help="Working and output height (give with --width). "
               "Default: the clip's height.", show_default=False)], None),
    "window_seconds": (Annotated[float | None, typer.Option("--window-seconds", help=f"Window the DiT sees at once, "
                       f"seconds, at most {MAX_SECONDS:g}. Default: the preset's 5 s.", show_default=False)], None),
    "fade_frames": (Annotated[int | None, typer.Option("--fade-frames", help=f"Frames beside each picture join that "
                    f"fade from the clip's own into their decode, 0..{MAX_FADE_FRAMES} (0: a hard cut, the clip's "
                    f"frames untouched). Default: {DEFAULT_FADE_FRAMES} (extend: at most the frames its held latents "
                    "re-create).", show_default=False)], None),
}


def command_signature(command: Any, own: dict[str, tuple[Any, Any]]) -> Any:
    """Give ``command(ctx, **flags)`` typer's signature: ``ctx``, the ``clip`` argument, ``own`` options
    (name -> ``(annotation, default)``), :data:`EDIT_OPTIONS`, then :data:`SHARED_OPTIONS` as ``generate``
    declares them."""
    hints = get_type_hints(GenerateOptions, include_extras=True)
    defaults = {f.name: f.default for f in GenerateOptions.flag_fields()}
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
              inspect.Parameter("clip", inspect.Parameter.KEYWORD_ONLY, annotation=ClipArgument)]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
               for name, (annotation, default) in {**own, **EDIT_OPTIONS}.items()]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name],
                                 annotation=hints[name]) for name in SHARED_OPTIONS]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def run_edit(ctx: typer.Context, request_type: Any, flags: dict[str, Any], own: tuple[str, ...],
             default_name: str) -> None:
    """Check, load, edit and write: the body of both commands.

    Args:
        ctx: typer's context (where ``--checkpoint-root`` came from).
        request_type: :class:`ExtendRequest` or :class:`RetakeRequest`.
        flags: the parsed flags.
        own: the flags that are request fields of this command only (``seconds``, ``start``, ...); the
            :data:`EDIT_OPTIONS` are request fields too.
        default_name: output file name when ``--output`` is not given (in the current folder).

    Raises:
        InputError: a bad option or clip, before any model loads.
        Failure: loading, editing or writing failed.
    """
    source = ctx.get_parameter_source("checkpoint_root")
    options = GenerateOptions(**{k: flags[k] for k in SHARED_OPTIONS},
                              root_from_env=getattr(source, "name", "") == "ENVIRONMENT")
    request, device, runtime, checkpoints = _checked(options, request_type, flags, own)
    output = check_output_file(options.output or default_name, overwrite=options.overwrite,
                               overwrite_hint="--overwrite")
    if output.resolve() == expand_path(request.clip).resolve():
        raise InputError(f"the output {output} is the input clip; choose another --output (the clip is never "
                         "replaced)", field="output")
    pipe, timings = _load(options, request.preset, device, runtime, request.prompt)
    try:
        out = pipe(request, progress=True)
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise Failure(f"{request_type.__name__.removesuffix('Request').lower()} failed: {type(exc).__name__}: "
                      f"{exc}") from exc
    timings.update(out.timings)
    start = time.perf_counter()
    try:
        path = out.save(output, overwrite=options.overwrite)
    except Exception as exc:  # noqa: BLE001
        raise Failure(f"could not write {output}: {exc}") from exc
    timings["write mp4"] = time.perf_counter() - start
    from magihuman.cli.generate import _print_summary

    _print_summary(path, timings)


def _checked(options: GenerateOptions, request_type: Any, flags: dict[str, Any], own: tuple[str, ...]):
    """The request, device, runtime and checkpoints, every input checked (notices printed)."""
    from pydantic import ValidationError

    from magihuman.cli.generate import _check_loras, _checkpoints, _runtime_options, _text_option, print_notices

    prompt = _text_option(options, "prompt")
    if prompt is None:
        raise InputError("no prompt: pass --prompt TEXT or --prompt-file FILE", field="prompt")
    fields = {k: getattr(options, k) for k in ("seed", "preset")}
    fields.update({k: flags[k] for k in (*own, *EDIT_OPTIONS)}, clip=flags["clip"], prompt=prompt,
                  negative_prompt=_text_option(options, "negative_prompt"))
    try:
        request = request_type(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid settings: {problems}") from None
    device = check_device(options.device)
    runtime = _runtime_options(options)
    _check_loras(options)
    checkpoints = _checkpoints(options, request.preset)
    print_notices(request.validate_inputs(device=device, runtime=runtime, checkpoints=checkpoints or None),
                  options.demo)
    return request, device, runtime, checkpoints


def _load(options: GenerateOptions, preset: str, device: str, runtime: Any, prompt: str | None):
    """The pipeline (``--demo``: what ``generate --demo`` runs, the shipped toy models) and LoRA adapters; the
    load time."""
    from magihuman.cli.generate import _check_loras, _lora_input_errors, demo_root
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

    root = demo_root(prompt) if options.demo else expand_path(options.checkpoint_root)
    typer.echo(f"loading {preset} checkpoints from {root or 'the given paths'} on {device}", err=True)
    start = time.perf_counter()
    components = {k: expand_path(v) for k, v in options.components().items()}
    try:
        pipe = MagiHumanPipeline.from_official(root, **components, preset=preset,
                                               video_decoder=options.video_decoder or "turbo", device=device,
                                               progress=True, runtime=runtime)
    except Exception as exc:  # noqa: BLE001 - reported in one line
        raise Failure(f"could not load the checkpoints: {exc}") from exc
    for path, scale in _check_loras(options):
        _lora_input_errors(lambda p=path, s=scale: pipe.load_lora(p, s))
    return pipe, {"load models": time.perf_counter() - start}


def clip_stem(clip: Path) -> str:
    """The clip's file name without its suffix, for default output names."""
    return Path(os.fspath(clip)).stem or "clip"
