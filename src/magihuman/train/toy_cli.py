"""``magihuman toy train``: the toy world's models from scratch (:mod:`magihuman.train.toy_recipe`).

Registered under the ``toy`` command group by :mod:`magihuman.cli.app` (the toy package itself sits below the
trainers in the layout, so the command that trains lives here).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from magihuman.pipeline.errors import InputError

__all__ = ["toy_ship", "toy_train"]


def toy_train(
    work: Annotated[Path, typer.Argument(help="Work folder (created); run the same command again to resume.")],
    stages: Annotated[list[str] | None, typer.Option("--stage", help="Run only these stages (repeat); default all, "
                                                     "in order: dataset, text_encoder, video_vae, audio_vae, "
                                                     "turbo_vae, cache, base, distill, lora.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny budgets (about a minute): checks the recipe runs, "
                                        "trains nothing useful.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads (default: torch's).")] = None,
    steps: Annotated[list[str] | None, typer.Option("--steps", help="STAGE=N: a training stage's step budget "
                                                    "(repeat); raising it for a finished stage resumes that "
                                                    "stage.")] = None,
) -> None:
    """Train the toy world's codecs, base model, 8-step student and LoRA; the checkpoint root is WORK/bundle."""
    import torch

    from magihuman.train.toy_recipe import STAGES, STEP_FIELDS, ToyRecipe, run_recipe

    chosen = tuple(stages) if stages else STAGES
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise InputError(f"unknown --stage {', '.join(unknown)}; choose from {', '.join(STAGES)}", field="stage")
    target = work.expanduser()
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file; give a work folder", field="work")
    recipe = ToyRecipe.quick() if quick else ToyRecipe()
    budgets = {}
    for item in steps or []:
        stage, _, count = item.partition("=")
        if stage not in STEP_FIELDS or not count.isdigit() or int(count) < 1:
            raise InputError(f"--steps takes STAGE=N with N >= 1 and STAGE one of {', '.join(STEP_FIELDS)}; got "
                             f"{item!r}", field="steps")
        budgets[STEP_FIELDS[stage]] = int(count)
    recipe = replace(recipe, **budgets)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        root = run_recipe(target, recipe, stages=chosen,
                          log=lambda line: typer.echo(line, err=True))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc), field="work") from None
    typer.echo(f"toy checkpoint root: {root}")


def toy_ship(
    work: Annotated[Path, typer.Argument(help="Toy work folder whose stages are all done.")],
    dest: Annotated[Path | None, typer.Option("--dest", help="Destination (default: the package's demo/toy_bundle, "
                                              "which `generate --demo` runs).")] = None,
    reports: Annotated[list[str] | None, typer.Option("--report", help="LABEL=report.json of an eval run on this "
                                                      "bundle, recorded in TOY_BUNDLE.json (repeat).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a bundle already there.")] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype of the weights: bfloat16 (default; matrices "
                                       "and kernels, vectors stay float32) or float32.")] = "bfloat16",
    notes: Annotated[list[str] | None, typer.Option("--note", help="A line recorded in TOY_BUNDLE.json's notes, "
                                                    "e.g. how the run departed from its recipe (repeat).")] = None,
) -> None:
    """Copy WORK/bundle into the package (or --dest) with TOY_BUNDLE.json, so `generate --demo` runs it."""
    from magihuman.train.toy_ship import ship_bundle

    parsed = {}
    for item in reports or []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise InputError(f"--report takes LABEL=path/to/report.json, got {item!r}", field="report")
        parsed[label] = Path(path).expanduser()
    try:
        dest = ship_bundle(work.expanduser(), dest, reports=parsed, overwrite=overwrite, dtype=dtype, notes=notes)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise InputError(str(exc), field="work") from None
    typer.echo(f"shipped toy bundle: {dest}")
