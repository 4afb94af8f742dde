"""``magihuman serve``: the HTTP API, the job store, the workers and the web UI with one command.

Registered in :mod:`magihuman.cli.app` as ``app.command("serve")(serve)``. Heavy modules (torch, FastAPI,
Gradio) are imported only when the command runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from magihuman.serve.config import (
    API_KEY_ENV,
    DATA_DIR_ENV,
    OFFICIAL_FACTORY,
    ConfigError,
    ServeConfig,
    default_data_dir,
)

__all__ = ["serve", "default_devices"]


def default_devices() -> tuple[str, ...]:
    """One worker per visible GPU (``cuda:0``, ``cuda:1``, ...), or one CPU worker."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return tuple(f"cuda:{i}" for i in range(count)) or ("cpu",)


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but loopback needs an API key.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port of the API and the UI.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar=DATA_DIR_ENV, show_default=False,
        help=f"Folder of the job database, uploads and videos. Default: {default_data_dir()}.")] = None,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", envvar="MAGIHUMAN_DATABASE_URL",
        help="Job store: postgresql+psycopg://USER:PASSWORD@HOST/DB to share one queue between machines "
             "(then --data-dir must be a folder they all share). Default: SQLite in --data-dir.")] = None,
    checkpoint_root: Annotated[Path | None, typer.Option(
        "--checkpoint-root", envvar="MAGIHUMAN_CHECKPOINT_ROOT",
        help="Folder made by `magihuman download`. Default: the demo bundle (tiny RANDOM weights: noise).")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Preset each worker loads and serves (repeat for several): distill, base, sr_540p, "
                        "sr_1080p. Default: distill.")] = None,
    devices: Annotated[str | None, typer.Option(
        "--devices", help="Comma-separated worker devices, one worker process each (e.g. cuda:0,cuda:1 or cpu). "
                          "Default: one per visible GPU, else one CPU worker. 'none': no workers.")] = None,
    api: Annotated[bool, typer.Option("--api/--no-api", help="Run the HTTP API (--no-api: workers only).")] = True,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the web page at /.")] = True,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar=API_KEY_ENV, show_default=False,
        help=f"Require 'Authorization: Bearer KEY' (also the UI password). Prefer ${API_KEY_ENV}.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        "--cors-origin", help="Allow browser calls from this origin (repeat). Default: no CORS.")] = None,
    queue_limit: Annotated[int, typer.Option("--queue-limit", help="Most jobs queued or running; more get 429.")] = 100,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest upload, MiB.")] = 20.0,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", help="Longest clip a request may ask for, s. Default: the pipeline's limit.",
        show_default=False)] = None,
    lease_seconds: Annotated[float, typer.Option(
        "--lease-seconds", help="A job whose worker is silent this long goes back to the queue.")] = 60.0,
    heartbeat_seconds: Annotated[float, typer.Option(
        "--heartbeat-seconds", help="How often a worker renews its lease.")] = 10.0,
    max_attempts: Annotated[int, typer.Option(
        "--max-attempts", help="Runs of one job before it fails with worker_lost.")] = 3,
    pipeline_factory: Annotated[str, typer.Option(
        "--pipeline-factory", help="module:function loading a pipeline for (root, preset, device, runtime); "
                                   "magihuman.serve.fake_pipeline:load_fake_pipeline serves a model-free stand-in "
                                   "for client tests.")] = OFFICIAL_FACTORY,
    lora_dir: Annotated[Path | None, typer.Option(
        "--lora-dir", help="Folder of LoRA adapters (<name>.safetensors from `magihuman train lora`) that requests "
                           "may name in `loras`; GET /v1/models lists them. Default: none.")] = None,
    enhance_url: Annotated[str | None, typer.Option(
        "--enhance-url", envvar="MAGIHUMAN_ENHANCE_URL", show_default=False,
        help="OpenAI-compatible endpoint of the prompt enhancer that requests with `enhance: true` use (key from "
             "$MAGIHUMAN_ENHANCE_API_KEY or $OPENAI_API_KEY). Default: none (such requests are refused).")] = None,
    enhance_model: Annotated[str | None, typer.Option(
        "--enhance-model", envvar="MAGIHUMAN_ENHANCE_MODEL", show_default=False,
        help="Model name at --enhance-url.")] = None,
    fp8: Annotated[bool, typer.Option("--fp8", help="Workers store the DiT block linears in FP8.")] = False,
    offload: Annotated[list[str] | None, typer.Option(
        "--offload", metavar="[components|blocks]", help="Workers' offload mode (as `generate --offload`).")] = None,
) -> None:
    """Serve the model: REST API (OpenAI Videos shape), persistent job queue, worker processes and a web UI.

    Open http://HOST:PORT/ for the page, /docs for the API reference.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if devices is None:
        chosen = default_devices()
    elif devices.strip().lower() == "none":
        chosen = ()
    else:
        chosen = tuple(d.strip() for d in devices.split(",") if d.strip())
    runtime = {"fp8": fp8, **({"offload": tuple(dict.fromkeys(offload))} if offload else {})}
    config = ServeConfig(
        host=host, port=port, data_dir=data_dir or default_data_dir(), database_url=database_url,
        checkpoint_root=checkpoint_root, models=tuple(model or ("distill",)), devices=chosen, api=api, ui=ui,
        api_key=api_key or None, cors_origins=tuple(cors_origin or ()), queue_limit=queue_limit,
        max_upload_bytes=int(max_upload_mb * (1 << 20)),
        max_request_bytes=int(3 * max_upload_mb * (1 << 20)) + (1 << 20),
        max_seconds=max_seconds, lease_seconds=lease_seconds,
        heartbeat_seconds=heartbeat_seconds, max_attempts=max_attempts, pipeline_factory=pipeline_factory,
        runtime={k: v for k, v in runtime.items() if v}, lora_dir=lora_dir, enhance_url=enhance_url or None,
        enhance_model=enhance_model or None,
    )
    if not config.api and not config.devices:
        typer.echo("error: --no-api with --devices none runs nothing", err=True)
        raise typer.Exit(2)
    try:
        config.check()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from magihuman.serve.supervisor import run_server

    if config.api:
        typer.echo(f"magihuman serve: http://{host}:{port}/ (API reference: /docs), data in {config.data_dir}",
                   err=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    run_server(config)
