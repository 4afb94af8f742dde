"""``magihuman toy train``: the toy world's models from scratch (:mod:`magihuman.train.toy_recipe`).

Registered under the ``toy`` command group by :mod:`magihuman.cli.app` (the toy package itself sits below the
trainers in the layout, so the command that trains lives here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from magihuman.pipeline.errors import InputError

__all__ = ["toy_train"]


def toy_train(
    work: Annotated[Path, typer.Argument(help="Work folder (created); run the same command again to resume.")],
    stages: Annotated[list[str] | None, typer.Option("--stage", help="Run only these stages (repeat); default all, "
                                                     "in order: dataset, text_encoder, video_vae, audio_vae, "
                                                     "turbo_vae, cache, base, distill, lora.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny budgets (about a minute): checks the recipe runs, "
                                        "trains nothing useful.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads (default: torch's).")] = None,
) -> None:
    """Train the toy world's codecs, base model, 8-step student and LoRA; the checkpoint root is WORK/bundle."""
    import torch

    from magihuman.train.toy_recipe import STAGES, ToyRecipe, run_recipe

    chosen = tuple(stages) if stages else STAGES
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise InputError(f"unknown --stage {', '.join(unknown)}; choose from {', '.join(STAGES)}", field="stage")
    target = work.expanduser()
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file; give a work folder", field="work")
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        root = run_recipe(target, ToyRecipe.quick() if quick else ToyRecipe(), stages=chosen,
                          log=lambda line: typer.echo(line, err=True))
    except ValueError as exc:
        raise InputError(str(exc), field="work") from None
    typer.echo(f"toy checkpoint root: {root}")
