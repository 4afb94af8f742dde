"""Settings of one ``magihuman serve`` process: where the data lives, what runs, and the safety limits.

Torch-free: the CLI builds a :class:`ServeConfig` and checks it before anything loads.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["ServeConfig", "ConfigError", "default_data_dir", "is_loopback", "API_KEY_ENV", "DATA_DIR_ENV"]

#: Environment variable holding the API key (so it need not appear in the process list).
API_KEY_ENV = "MAGIHUMAN_API_KEY"
#: Environment variable overriding the default data folder.
DATA_DIR_ENV = "MAGIHUMAN_DATA_DIR"
#: The pipeline factory used unless another is named: loads ``MagiHumanPipeline.from_official``.
OFFICIAL_FACTORY = "magihuman.serve.worker:load_official_pipeline"


class ConfigError(ValueError):
    """A setting that cannot work; the message names the option and the fix."""


def default_data_dir() -> Path:
    """``$MAGIHUMAN_DATA_DIR``, else ``$XDG_DATA_HOME/magihuman/serve``, else ``~/.local/share/magihuman/serve``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "magihuman" / "serve"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``; False for anything else (``0.0.0.0`` too)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """Everything a server, its workers and its UI need; plain data, JSON-serialisable for the workers.

    Attributes:
        host, port: where the HTTP API listens (default loopback only, port 8000).
        data_dir: folder of the SQLite database, the uploads and the outputs (shared by all machines of
            a PostgreSQL deployment).
        database_url: SQLAlchemy URL; None: SQLite (WAL) at ``data_dir/jobs.sqlite3``.
            ``postgresql+psycopg://user:password@host/db`` for a queue shared by several machines.
        checkpoint_root: checkpoint root of the official weights; None: the demo bundle (random weights).
        models: presets the workers of this process load and serve (the API's ``model`` field).
        devices: one worker process per entry (``cpu``, ``cuda:0``, ...); empty: no workers (API only).
        api: run the HTTP API (False: workers only, e.g. a second GPU machine of a shared queue).
        ui: mount the Gradio page at ``/``.
        api_key: bearer token required on ``/v1``, ``/metrics`` and the UI; required when ``host`` is not
            loopback.
        cors_origins: origins allowed by CORS; empty: no CORS headers at all.
        queue_limit: most jobs queued or running at once; further creates get 429 with ``Retry-After``.
        max_upload_bytes: largest accepted upload (image or audio), bytes.
        max_request_bytes: largest accepted request body, bytes (``magihuman serve``: room for two uploads as
            base64 plus 1 MiB).
        max_seconds: longest clip a request may ask for, seconds (None: the pipeline's own limit,
            ``magihuman.pipeline.validation.MAX_LONG_SECONDS``, 60 s in windows; sizes are bounded there too);
            also the longest continuation of ``POST /v1/videos/extend``.
        lease_seconds: a running job's lease; a worker that misses its heartbeats this long loses the job.
        heartbeat_seconds: how often a worker renews its lease (well under ``lease_seconds``).
        max_attempts: runs of one job before it fails with ``worker_lost``.
        poll_seconds: how often an idle worker looks for work.
        pipeline_factory: ``module:function`` returning a loaded pipeline for ``(root, preset, device)``;
            tests and client developers use ``magihuman.serve.fake_pipeline:load_fake_pipeline``.
        runtime: keyword arguments of ``RuntimeOptions`` for every worker (fp8, offload, ...).
        lora_dir: folder of the LoRA adapters requests may name (``<name>.safetensors``); None: no adapters.
        enhance_url, enhance_model: the OpenAI-compatible endpoint and model of the prompt enhancer that requests
            with ``enhance`` use (its key and timeout come from ``$MAGIHUMAN_ENHANCE_API_KEY`` or
            ``$OPENAI_API_KEY`` and ``$MAGIHUMAN_ENHANCE_TIMEOUT``); None: such requests are refused.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    checkpoint_root: Path | None = None
    models: tuple[str, ...] = ("distill",)
    devices: tuple[str, ...] = ("cpu",)
    api: bool = True
    ui: bool = True
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    queue_limit: int = 100
    max_upload_bytes: int = 20 << 20
    max_request_bytes: int = 64 << 20
    max_seconds: float | None = None
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    poll_seconds: float = 0.25
    pipeline_factory: str = OFFICIAL_FACTORY
    runtime: dict = field(default_factory=dict)
    lora_dir: Path | None = None
    enhance_url: str | None = None
    enhance_model: str | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.checkpoint_root is not None:
            self.checkpoint_root = Path(self.checkpoint_root).expanduser()
        if self.lora_dir is not None:
            self.lora_dir = Path(self.lora_dir).expanduser()
        self.models = tuple(self.models)
        self.devices = tuple(self.devices)
        self.cors_origins = tuple(self.cors_origins)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the job store."""
        return self.database_url or f"sqlite:///{self.data_dir / 'jobs.sqlite3'}"

    @property
    def videos_dir(self) -> Path:
        """``data_dir/videos``: one folder per job, named by its random id."""
        return self.data_dir / "videos"

    def check(self) -> None:
        """Refuse settings that cannot work or are unsafe.

        Raises:
            ConfigError: non-loopback host without an API key, no models, bad limits, a lease shorter than
                two heartbeats, an unknown preset, or a ``lora_dir`` that is not a folder.
        """
        from magihuman.pipeline.presets import PRESETS  # plain data, no torch

        if self.api and not is_loopback(self.host) and not self.api_key:
            raise ConfigError(
                f"--host {self.host} makes the API reachable from other machines; set an API key with "
                f"--api-key or {API_KEY_ENV} (clients then send 'Authorization: Bearer KEY'), or keep --host 127.0.0.1"
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        if not self.models:
            raise ConfigError("give at least one --model (a preset: distill, base, sr_540p, sr_1080p)")
        unknown = [name for name in self.models if name not in PRESETS]
        if unknown:
            raise ConfigError(f"unknown --model {unknown[0]!r}; choose from {', '.join(PRESETS)}")
        for name in ("queue_limit", "max_upload_bytes", "max_request_bytes", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"--max-seconds must be positive, got {self.max_seconds}")
        if not 0 < 2 * self.heartbeat_seconds <= self.lease_seconds:
            raise ConfigError(
                f"--lease-seconds ({self.lease_seconds}) must be at least twice --heartbeat-seconds "
                f"({self.heartbeat_seconds}), both positive"
            )
        if self.database_url is not None and not self.database_url.startswith(("sqlite", "postgresql")):
            raise ConfigError(
                "--database-url must be sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST/DB, "
                f"got {self.database_url.split(':', 1)[0]}:..."
            )
        if self.lora_dir is not None and not self.lora_dir.is_dir():
            raise ConfigError(f"--lora-dir {self.lora_dir} is not a folder; create it and put adapter "
                              "<name>.safetensors files (from `magihuman train lora`) in it")
        if self.enhance_url is not None:
            from magihuman.prompting.backends import EnhancerConfigError, backend_from_settings

            try:
                backend_from_settings(url=self.enhance_url, model=self.enhance_model)
            except EnhancerConfigError as exc:
                raise ConfigError(str(exc)) from None
        if ":" not in self.pipeline_factory:
            raise ConfigError(f"--pipeline-factory must be 'module:function', got {self.pipeline_factory!r}")

    def to_json(self) -> str:
        """JSON text for a worker process (paths as strings)."""
        data = asdict(self)
        for key in ("data_dir", "checkpoint_root", "lora_dir"):
            data[key] = None if data[key] is None else str(data[key])
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))
