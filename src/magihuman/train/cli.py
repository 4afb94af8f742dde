"""``magihuman train``: ``prepare``, ``lora``, ``finetune``, ``distill`` (docs/training.md).

Each command checks its inputs before any model loads; a bad dataset, cache or config is one
``error:`` line with exit code 2 (:class:`~magihuman.pipeline.errors.InputError`). Multi-process
training: ``torchrun --nproc_per_node N -m magihuman train lora ...`` (DDP for LoRA, FSDP2 for
``finetune``, gradient averaging for ``distill``; gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from magihuman.pipeline.errors import InputError

train_app = typer.Typer(name="train", help="Prepare a latent cache; train LoRA adapters or the full model; "
                        "distil to the 8-step sampler.", no_args_is_help=True, add_completion=False)

_SET_HELP = "Override one config field: KEY=VALUE (JSON value), dotted for nested blocks (lora.rank=16). Repeat."


def _input_errors(run):
    """Run ``run()``; dataset, cache and config errors become :class:`InputError` (exit code 2)."""
    from magihuman.pipeline.lora_files import LoraError
    from magihuman.train.cache import CacheError
    from magihuman.train.config import ConfigError
    from magihuman.train.dataset import DatasetError

    try:
        return run()
    except (DatasetError, CacheError, ConfigError, LoraError) as exc:
        raise InputError(str(exc)) from None


@train_app.command("prepare", no_args_is_help=True)
def prepare(
    dataset: Annotated[Path, typer.Argument(help="Folder of clips with .txt captions, or a .csv/.jsonl manifest.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Cache folder (resumed when it exists).")],
    checkpoint_root: Annotated[Path | None, typer.Option("--checkpoint-root", help="Folder made by "
                               "`magihuman download` (the T5Gemma, Wan2.2 and Stable Audio encoders).")] = None,
    size: Annotated[list[str], typer.Option("--size", help="Bucket size WxH; repeat for several.")] = ["448x256"],  # noqa: B006
    seconds: Annotated[list[float], typer.Option("--seconds", help="Bucket length; repeat for several.")] = [4.0],  # noqa: B006
    video_only: Annotated[bool, typer.Option("--video-only", help="Train video only: accept silent clips, "
                          "encode no sound.")] = False,
    negative_prompt: Annotated[str | None, typer.Option("--negative-prompt", help="Unconditional text "
                               "(text dropout). Default: the pipeline's.")] = None,
    device: Annotated[str, typer.Option("--device", help="Where the encoders run.")] = "cpu",
    demo: Annotated[bool, typer.Option("--demo", help="Use the tiny RANDOM demo encoders (tests, the guide).")] = False,
) -> None:
    """Encode every clip once into a latent cache (video, audio and text latents, by bucket)."""
    from magihuman.train.dataset import parse_buckets
    from magihuman.train.prepare import prepare_dataset

    root = _root(checkpoint_root, demo)
    out = _input_errors(lambda: prepare_dataset(dataset, output, root=root, buckets=parse_buckets(size, seconds),
                                                video_only=video_only, negative_prompt=negative_prompt, device=device))
    typer.echo(f"latent cache ready: {out}")


def _root(checkpoint_root: Path | None, demo: bool) -> Path | None:
    if demo:
        if checkpoint_root is not None:
            raise InputError("--demo brings its own encoders; drop --checkpoint-root or --demo")
        from magihuman.demo.bundle import ensure_demo_bundle

        return ensure_demo_bundle()
    if checkpoint_root is None:
        raise InputError("pass --checkpoint-root DIR (from `magihuman download`) or --demo")
    if not checkpoint_root.is_dir():
        raise InputError(f"--checkpoint-root {checkpoint_root} is not a folder")
    return checkpoint_root


def _train(mode: str, config: Path | None, overrides: dict, sets: list[str] | None, device: str) -> None:
    from magihuman.train.config import load_config
    from magihuman.train.distributed import init_from_env, shutdown
    from magihuman.train.trainer import Trainer

    settings = _input_errors(lambda: load_config(config, dict(overrides, mode=mode), sets))
    for name in ("cache", "base"):
        if not Path(getattr(settings, name)).exists():
            raise InputError(f"{name} {getattr(settings, name)} does not exist")
    run_device = init_from_env(device)
    try:
        result = _input_errors(lambda: Trainer(settings, device=run_device).train())
    finally:
        shutdown()
    typer.echo(f"trained to step {result.step}: {result.output}")


_CONFIG = typer.Option("--config", help="Training config file (.json or .toml); see --help-config.")
_SET = typer.Option("--set", help=_SET_HELP)


def _help_config(value: bool) -> None:
    if value:
        from magihuman.train.config import describe_fields

        typer.echo("\n".join(describe_fields()))
        raise typer.Exit()


_HELP_CONFIG = typer.Option("--help-config", callback=_help_config, is_eager=True, help="List every config field.")


@train_app.command("lora")
def lora(
    config: Annotated[Path | None, _CONFIG] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Latent cache (train prepare).")] = None,
    base: Annotated[Path | None, typer.Option("--base", help="Transformer folder to adapt (e.g. ROOT/base).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimiser steps.")] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="LoRA rank.")] = None,
    sets: Annotated[list[str] | None, _SET] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    help_config: Annotated[bool, _HELP_CONFIG] = False,
) -> None:
    """Train LoRA adapters (written as OUTPUT/lora.safetensors; use with `generate --lora`)."""
    overrides = {"cache": cache, "base": base, "output": output, "steps": steps}
    if rank is not None:
        overrides["lora.rank"] = rank
    _train("lora", config, overrides, sets, device)


@train_app.command("finetune")
def finetune(
    config: Annotated[Path | None, _CONFIG] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Latent cache (train prepare).")] = None,
    base: Annotated[Path | None, typer.Option("--base", help="Transformer folder to start from.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimiser steps.")] = None,
    sets: Annotated[list[str] | None, _SET] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    help_config: Annotated[bool, _HELP_CONFIG] = False,
) -> None:
    """Train every weight (written as OUTPUT/transformer in the official checkpoint layout)."""
    _train("finetune", config, {"cache": cache, "base": base, "output": output, "steps": steps}, sets, device)


@train_app.command("distill")
def distill(
    config: Annotated[Path | None, _CONFIG] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Latent cache (captions).")] = None,
    teacher: Annotated[Path | None, typer.Option("--teacher", help="Base transformer folder.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (student: OUTPUT/distill).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Generator updates.")] = None,
    sets: Annotated[list[str] | None, _SET] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
) -> None:
    """DMD-2: distil the base model into an 8-step student (OUTPUT/distill, loadable by --preset distill)."""
    from magihuman.train.config import DistillConfig, load_config
    from magihuman.train.distill import Distiller
    from magihuman.train.distributed import init_from_env, shutdown

    settings = _input_errors(lambda: load_config(
        config, {"cache": cache, "teacher": teacher, "output": output, "steps": steps}, sets, model=DistillConfig))
    for name in ("cache", "teacher"):
        if not Path(getattr(settings, name)).exists():
            raise InputError(f"{name} {getattr(settings, name)} does not exist")
    run_device = init_from_env(device)
    try:
        result = _input_errors(lambda: Distiller(settings, device=run_device).train())
    finally:
        shutdown()
    typer.echo(f"student written: {result.output}")
