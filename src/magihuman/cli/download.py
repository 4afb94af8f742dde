"""``magihuman download``: fetch the official checkpoints into a checkpoint root."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

import magihuman.pipeline.download as hub
from magihuman.cli.errors import Failure
from magihuman.cli.options import CHECKPOINT_ROOT_ENV
from magihuman.pipeline.validation import InputError

__all__ = ["download"]

#: ``--preset`` choices: the DiT folders, or all of them.
DownloadPreset = Literal[(*hub.DIT_PRESETS, "all")]  # type: ignore[valid-type]


def download(
    root: Annotated[Path, typer.Option(
        "--root", envvar=CHECKPOINT_ROOT_ENV, help="Checkpoint root to fill (created if missing).",
    )] = Path("checkpoints"),
    preset: Annotated[DownloadPreset, typer.Option("--preset", help="Which DiT to fetch.")] = "distill",
    components: Annotated[list[str] | None, typer.Option(
        "--components", "-c", help="Only these (repeat or comma-separate): " + ", ".join(hub.COMPONENTS)
        + ". Default: " + ", ".join(hub.DEFAULT_COMPONENTS) + ".", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", metavar="", help="Show what would be fetched, download nothing.")] = False,
) -> None:
    """Fetch the official checkpoints from the Hugging Face hub into a checkpoint root.

    Files already complete in the root are kept. T5Gemma and Stable Audio Open are gated: accept their
    licences on the hub and log in (`hf auth login`, or set HF_TOKEN) first.
    """
    root = root.expanduser()
    names = [n.strip() for item in components or () for n in item.split(",") if n.strip()]
    try:
        sources = hub.select_sources(preset, names)
    except ValueError as exc:
        raise InputError(str(exc), field="components") from None
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
    typer.echo(f"done: pass --checkpoint-root {done} to `magihuman generate` (or export {CHECKPOINT_ROOT_ENV}={done})")


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
