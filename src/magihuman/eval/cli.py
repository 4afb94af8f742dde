"""``magihuman eval run | score | compare``: the evaluation kit's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from magihuman.pipeline.errors import InputError

__all__ = ["app", "run", "score", "compare"]

app = typer.Typer(name="eval", help="Evaluate generated clips: intelligibility, sync, prompt adherence, speed.",
                  no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

_PROMPTS = typer.Option("--prompts", help="Prompt set (JSONL: prompt, optional image/audio/dialogue/language).")
_OUT = typer.Option("--out", help="Folder for report.json and report.html (and the clips of `run`).")
_ASR_MODEL = typer.Option("--asr-model", help="Whisper model id or local folder for WER/CER of non-toy prompts.")
_NO_ASR = typer.Option("--no-asr", metavar="", help="Skip intelligibility (WER/CER) of non-toy prompts.")
_FACE = typer.Option("--face-mesh/--no-face-mesh", help="Measure real mouths with mediapipe (eval-face extra).")
_OVERWRITE = typer.Option("--overwrite", metavar="", help="Replace an existing report (and clips) in --out.")


def _checked_out(out: Path, overwrite: bool) -> Path:
    from magihuman.eval.runner import prepare_run_folder

    try:
        return prepare_run_folder(out, overwrite=overwrite)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(str(exc), field="out") from None


def _scorers(entries, asr_model: str, no_asr: bool, face_mesh: bool):
    """The transcriber (only if a non-toy prompt has dialogue) and the face measure (only if asked)."""
    from magihuman.eval.asr import WhisperTranscriber

    needs_asr = not no_asr and any(e.toy is None and e.dialogue for e in entries)
    transcriber = WhisperTranscriber(asr_model) if needs_asr else None
    face = None
    if face_mesh and any(e.toy is None for e in entries):
        from magihuman.eval.face_mesh import FaceMeshMouth, MissingDependencyError

        try:
            face = FaceMeshMouth()
        except MissingDependencyError as exc:
            raise InputError(f"{exc}; or pass --no-face-mesh", field="face_mesh") from None
    return transcriber, face


@app.command("run", no_args_is_help=True)
def run(
    prompts: Annotated[Path, _PROMPTS],
    out: Annotated[Path, _OUT],
    checkpoint_root: Annotated[Path | None, typer.Option("--checkpoint-root", help="Official checkpoint root.")] = None,
    demo: Annotated[bool, typer.Option("--demo", metavar="", help="Use the offline demo bundle.")] = False,
    preset: Annotated[str, typer.Option("--preset", help="distill or base.")] = "distill",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    seconds: Annotated[float | None, typer.Option("--seconds", help="Clip length for prompts without one.")] = None,
    width: Annotated[int | None, typer.Option("--width", help="Width for prompts without one.")] = None,
    height: Annotated[int | None, typer.Option("--height", help="Height for prompts without one.")] = None,
    asr_model: Annotated[str, _ASR_MODEL] = "openai/whisper-small",
    no_asr: Annotated[bool, _NO_ASR] = False,
    face_mesh: Annotated[bool, _FACE] = True,
    overwrite: Annotated[bool, _OVERWRITE] = False,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Override the preset sampler's step count "
                                              "(e.g. base with 8 steps, to compare with the 8-step student).")] = None,
    lora: Annotated[list[str] | None, typer.Option("--lora", help="LoRA adapter FILE[:SCALE] (repeat).")] = None,
    fp32: Annotated[bool, typer.Option("--fp32", metavar="", help="DiT block linears in float32 (models trained in "
                                       "float32, e.g. the toy world's; on by default for a trained --demo).")] = False,
    video_decoder: Annotated[str, typer.Option("--video-decoder", help="turbo (default, as the official examples) "
                                               "or wan (the Wan2.2 VAE decoder).")] = "turbo",
) -> None:
    """Generate every prompt of a set with one pipeline, score the clips, write the report."""
    from magihuman.eval.prompt_set import read_prompt_set
    from magihuman.eval.runner import run_prompt_set

    if demo == (checkpoint_root is not None):
        raise InputError("give exactly one of --checkpoint-root ROOT or --demo", field="checkpoint_root")
    from magihuman.pipeline.presets import VIDEO_DECODERS

    if video_decoder not in VIDEO_DECODERS:
        raise InputError(f"--video-decoder {video_decoder!r}: choose one of {', '.join(VIDEO_DECODERS)}",
                         field="video_decoder")
    adapters = [_lora_spec(spec) for spec in lora or ()]
    entries = read_prompt_set(prompts)
    folder = _checked_out(out, overwrite)
    transcriber, face = _scorers(entries, asr_model, no_asr, face_mesh)
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline
    from magihuman.runtime.options import RuntimeOptions

    if demo:
        from magihuman.demo.bundle import demo_checkpoint_root

        root, trained = demo_checkpoint_root()
        fp32 = fp32 or trained
    else:
        root = checkpoint_root.expanduser()
    pipe = MagiHumanPipeline.from_official(root, preset=preset, device=device, runtime=RuntimeOptions(fp32=fp32),
                                           video_decoder=video_decoder)
    if steps is not None:
        import dataclasses

        pipe.preset = dataclasses.replace(pipe.preset, sampler=dataclasses.replace(pipe.preset.sampler,
                                                                                   num_steps=steps))
    for path, scale in adapters:
        try:
            pipe.load_lora(path, scale)
        except (OSError, ValueError) as exc:
            raise InputError(f"--lora {path}: {exc}", field="lora") from None
    defaults = {"seconds": seconds, "width": width, "height": height}
    scores = run_prompt_set(entries, pipe, folder, transcriber=transcriber, face=face, defaults=defaults,
                            overwrite=overwrite, log=lambda line: typer.echo(line, err=True))
    settings = {"command": "run", "prompts": str(prompts), "checkpoint_root": "demo" if demo else str(root),
                "preset": preset, "device": device, "steps": steps, "lora": list(lora or ()), "fp32": fp32,
                "video_decoder": video_decoder, **defaults}
    _finish(folder, scores, settings)


def _lora_spec(spec: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` -> (existing file, scale), checked before anything loads."""
    path, sep, scale = spec.rpartition(":") if ":" in spec else (spec, "", "")
    try:
        value = float(scale) if sep else 1.0
    except ValueError:
        path, value = spec, 1.0
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"--lora {spec}: no such adapter file {str(file)!r}", field="lora")
    return file, value


@app.command("score", no_args_is_help=True)
def score(
    clips: Annotated[Path, typer.Option("--clips", help="Folder of <id>.mp4 clips to score.")],
    prompts: Annotated[Path, _PROMPTS],
    out: Annotated[Path, _OUT],
    asr_model: Annotated[str, _ASR_MODEL] = "openai/whisper-small",
    no_asr: Annotated[bool, _NO_ASR] = False,
    face_mesh: Annotated[bool, _FACE] = True,
    overwrite: Annotated[bool, _OVERWRITE] = False,
) -> None:
    """Score MP4s that already exist (clip <id>.mp4 for each prompt id) and write the report."""
    from magihuman.eval.prompt_set import read_prompt_set
    from magihuman.eval.runner import score_folder

    entries = read_prompt_set(prompts)
    folder = clips.expanduser()
    if not folder.is_dir():
        raise InputError(f"--clips {str(folder)!r} is not a folder", field="clips")
    target = _checked_out(out, overwrite)
    transcriber, face = _scorers(entries, asr_model, no_asr, face_mesh)
    try:
        scores = score_folder(entries, folder, transcriber=transcriber, face=face,
                              log=lambda line: typer.echo(line, err=True))
    except FileNotFoundError as exc:
        raise InputError(str(exc), field="clips") from None
    _finish(target, scores, {"command": "score", "prompts": str(prompts), "clips": str(folder)})


@app.command("compare", no_args_is_help=True)
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run folder (A).", show_default=False)],
    run_b: Annotated[Path, typer.Argument(help="Second run folder (B).", show_default=False)],
    out: Annotated[Path, _OUT],
    overwrite: Annotated[bool, _OVERWRITE] = False,
) -> None:
    """Compare two run reports side by side (B - A per figure)."""
    from magihuman.eval.runner import compare_reports, load_report

    try:
        reports = [load_report(run_a), load_report(run_b)]
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc), field="run") from None
    folder = _checked_out(out, overwrite)
    comparison = compare_reports(*reports, folder)
    for key, row in comparison["metrics"].items():
        if row["b_minus_a"] is not None and not isinstance(row["a"], bool):
            typer.echo(f"{key}: {row['a']:.4g} -> {row['b']:.4g}")
    typer.echo(f"wrote {folder / 'report.html'}")


def _finish(folder: Path, scores: list[dict], settings: dict) -> None:
    from magihuman.eval.runner import write_report

    report = write_report(folder, scores, settings)
    for key, value in report["aggregate"].items():
        if isinstance(value, float):
            typer.echo(f"{key}: {value:.4g}")
    typer.echo(f"wrote {folder / 'report.html'}")
