"""``magihuman toy ...``: commands of the toy talking world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from magihuman.pipeline.errors import InputError

__all__ = ["app", "make_dataset"]

app = typer.Typer(name="toy", help="The toy talking world: synthetic clips of a cartoon person who speaks.",
                  no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


@app.command("make-dataset", no_args_is_help=True)
def make_dataset(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to create (must not exist or be empty).")],
    clips: Annotated[int, typer.Option("--clips", help="Training clips to write.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Dataset seed (same seed, same clips).")] = 0,
    held_out: Annotated[int, typer.Option("--held-out", help="Held-out captions for evaluation.")] = 100,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing folder.")] = False,
) -> None:
    """Write toy clips (MP4 + manifest.jsonl) and a held-out prompt set (held_out.jsonl)."""
    from magihuman.toy.dataset import write_dataset

    if clips < 1:
        raise InputError(f"--clips must be at least 1, got {clips}", field="clips")
    if held_out < 0:
        raise InputError(f"--held-out must be 0 or more, got {held_out}", field="held_out")
    target = out.expanduser()
    if target.exists() and not target.is_dir():
        raise InputError(f"--out {target} is a file; give a folder", field="out")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise InputError(f"{target} exists and is not empty; choose another --out or pass --overwrite", field="out")

    def report(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            typer.echo(f"{done}/{total} clips", err=True)

    summary = write_dataset(target, clips=clips, seed=seed, held_out=held_out, overwrite=overwrite,
                            progress=report)
    typer.echo(f"wrote {summary.clips} training clips ({summary.first_frame_clips} with a first frame) and "
               f"{summary.held_out} held-out prompts to {summary.root}")
