"""Creating, reading and removing video jobs: the one path shared by the HTTP API and the web UI.

:meth:`JobService.create` is the input boundary of the server: every field is checked (the request model,
the server's limits, the uploads' formats, then :func:`magihuman.pipeline.validation.validate_request`, the
input boundary the CLI uses, which decodes every file; architecture.md §13.3) **before** the job is queued,
so a bad request never reaches a worker.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ValidationError

from magihuman.pipeline.presets import PRESETS, get_preset
from magihuman.pipeline.request import GenerationRequest
from magihuman.pipeline.validation import InputError, validate_request
from magihuman.serve.adapters import check_request_loras
from magihuman.serve.config import ServeConfig
from magihuman.serve.schemas import CreateVideoRequest, Video, VideoError
from magihuman.serve.store import Job, JobStore
from magihuman.serve.uploads import RequestError, Upload, decode_data_url, remove_folder, save_upload

__all__ = ["JobService", "new_job_id", "is_job_id", "video_object", "generation_request", "JOB_ID_PATTERN",
           "THUMBNAIL_NAME", "UPLOAD_FIELDS"]

#: Job ids: ``video_`` + 32 lowercase hex digits (128 random bits).
JOB_ID_PATTERN = re.compile(r"^video_[0-9a-f]{32}$")
#: File name of a completed job's thumbnail (first frame, WebP).
THUMBNAIL_NAME = "thumbnail.webp"
#: Request fields that carry files.
UPLOAD_FIELDS = ("input_reference", "audio")
#: Pipeline field -> API field, for the pipeline's own error messages.
_API_FIELD = {"width": "size", "height": "size", "preset": "model", "image": "input_reference"}


def new_job_id() -> str:
    """A fresh random job id (``video_`` + 32 hex digits)."""
    return f"video_{secrets.token_hex(16)}"


def is_job_id(value: str) -> bool:
    """True when ``value`` has the shape of a job id (so it is safe as a folder name)."""
    return bool(JOB_ID_PATTERN.match(value))


def generation_request(job: Job, folder: Path):
    """The pipeline's ``GenerationRequest`` for ``job`` (with its enhanced prompt if any), its input files
    resolved inside ``folder`` (an ``ExtendRequest`` or ``RetakeRequest`` for the jobs of
    :mod:`magihuman.serve.clip_edits`)."""
    params = job.params
    if params.get("mode", "generate") != "generate":
        from magihuman.serve.clip_edits import clip_edit_request

        return clip_edit_request(job, folder)
    width, height = (int(v) for v in params["size"].split("x"))
    return GenerationRequest(
        prompt=params.get("enhanced_prompt") or job.prompt, preset=job.model, seconds=float(params["seconds"]),
        width=width, height=height,
        seed=int(params["seed"]), negative_prompt=params.get("negative_prompt"),
        prompt_schedule=params.get("prompt_schedule"),
        image=folder / params["input_reference"] if params.get("input_reference") else None,
        audio=folder / params["audio"] if params.get("audio") else None,
    )


def rendered_size(model: str, size: str) -> str:
    """The output ``WxH``: the SR stage's size for SR presets, else ``size`` rounded down to multiples of 32."""
    stage = get_preset(model).sr
    if stage is not None:
        return f"{stage.width}x{stage.height}"
    width, height = (int(v) // 32 * 32 for v in size.split("x"))
    return f"{width}x{height}"


def video_object(job: Job) -> Video:
    """The API's view of a job."""
    error = VideoError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    seconds = float(job.params["seconds"])
    return Video(
        id=job.id, model=job.model, status=job.status, progress=job.progress, created_at=int(job.created_at),
        started_at=None if job.started_at is None else int(job.started_at),
        completed_at=None if job.completed_at is None else int(job.completed_at),
        seconds=f"{seconds:g}", size=job.params.get("rendered_size", job.params["size"]), prompt=job.prompt,
        seed=int(job.params["seed"]), attempts=job.attempts, notices=job.notices, error=error,
        loras=job.params.get("loras") or [], enhanced_prompt=job.params.get("enhanced_prompt"),
        prompt_schedule=job.params.get("prompt_schedule") or [],
        mode=job.params.get("mode", "generate"),
    )


def validate_body(model: type[BaseModel], fields: dict[str, Any], route: str) -> Any:
    """``model.model_validate(fields)``, its first problem raised as a :class:`RequestError` (400): a missing
    field (``missing_field``), an unknown one (``unknown_field``, naming ``route`` whose /docs list the fields),
    or the field's own message."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None
        if first["type"] == "missing":
            raise RequestError(field, f"{field} is required", code="missing_field") from None
        if first["type"] == "extra_forbidden":
            raise RequestError(field, f"unknown field {field!r}; see /docs for the fields of {route}",
                               code="unknown_field") from None
        raise RequestError(field, f"{field}: {first['msg']}") from None


@dataclass
class IncomingUpload:
    """A file part of a request: a readable binary file object or the bytes of a decoded data URL."""

    source: BinaryIO | bytes
    size: int | None = None


class JobService:
    """Jobs as the API and the UI see them.

    Args:
        config: the server's settings (limits, served models, data folder).
        store: the job store.
    """

    def __init__(self, config: ServeConfig, store: JobStore):
        self.config, self.store = config, store

    def folder(self, job_id: str) -> Path:
        """The job's own folder (inputs, outputs); the name is the random id, never client text."""
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.config.videos_dir / job_id

    # ------------------------------------------------------------------------------------------ create
    def create(self, fields: dict[str, Any], uploads: dict[str, IncomingUpload],
               idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Check a request completely, then queue it.

        Args:
            fields: the text fields (JSON values or form strings); ``input_reference``/``audio`` may be data URLs.
            uploads: file parts by field name.
            idempotency_key: the client's ``Idempotency-Key`` header, if any.

        Returns:
            ``(job, created)``; ``created`` is False when the key replayed an earlier identical request.

        Raises:
            RequestError: any bad field, upload or header (names it).
            magihuman.serve.store.QueueFull: too many active jobs.
            magihuman.serve.store.IdempotencyConflict: the key belongs to a different request.
        """
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise RequestError("Idempotency-Key", "the Idempotency-Key header must be 1-255 characters")
        body = self._parse_fields(fields, uploads)
        job_id = new_job_id()
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=False)
        try:
            stored = self._store_uploads(body, uploads, folder)
            params, notices = self._checked_params(body, stored, folder)
            if body.enhance:
                params, notices = self._enhance(body, params, notices, folder)
            described = {"prompt": body.prompt, "model": body.model, **({"enhance": True} if body.enhance else {}),
                         **{k: v for k, v in params.items() if k not in (*UPLOAD_FIELDS, "enhanced_prompt")},
                         **{k: u.sha256 for k, u in stored.items()}}
            fingerprint = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
            job, created = self.store.create(
                job_id=job_id, model=body.model, prompt=body.prompt, params=params, notices=notices,
                fingerprint=fingerprint, max_attempts=self.config.max_attempts, queue_limit=self.config.queue_limit,
                idempotency_key=idempotency_key,
            )
        except BaseException:
            remove_folder(folder)
            raise
        if not created:
            remove_folder(folder)
        return job, created

    def _parse_fields(self, fields: dict[str, Any], uploads: dict[str, IncomingUpload]) -> CreateVideoRequest:
        both = sorted(set(fields) & set(uploads))
        if both:
            raise RequestError(both[0], f"{both[0]} was sent twice (as a file and as a field); send it once")
        for name, example in (("loras", '[{"name": "style", "scale": 0.8}]'),
                              ("prompt_schedule", '[{"start": 10, "prompt": "..."}]')):
            if isinstance(fields.get(name), str):  # multipart: the list as JSON text
                try:
                    fields = {**fields, name: json.loads(fields[name] or "[]")}
                except ValueError:
                    raise RequestError(name, f"{name} must be JSON: {example}") from None
        body = validate_body(CreateVideoRequest, fields, "POST /v1/videos")
        if not body.prompt.strip():
            raise RequestError("prompt", "prompt is empty; describe the clip (150-200 words work best)")
        return body

    def _store_uploads(self, body: CreateVideoRequest, uploads: dict[str, IncomingUpload],
                       folder: Path) -> dict[str, Upload]:
        stored: dict[str, Upload] = {}
        limit = self.config.max_upload_bytes
        for field in UPLOAD_FIELDS:
            value = getattr(body, field)
            if field in uploads:
                part = uploads[field]
                if part.size is not None and part.size > limit:
                    raise RequestError(field, f"{field} is larger than the {limit}-byte upload limit",
                                       code="file_too_large", status=413)
                stored[field] = save_upload(field, part.source, folder, limit)
            elif value is not None:
                stored[field] = save_upload(field, decode_data_url(field, value, limit), folder, limit)
        return stored

    def _checked_params(self, body: CreateVideoRequest, stored: dict[str, Upload],
                        folder: Path) -> tuple[dict[str, Any], list[str]]:
        config = self.config
        if body.model not in PRESETS:
            raise RequestError("model", f"unknown model {body.model!r}; choose one of {', '.join(config.models)}",
                               code="model_not_found")
        if body.model not in config.models:
            raise RequestError("model", f"model {body.model!r} is not served here; choose one of "
                                      f"{', '.join(config.models)}", code="model_not_served")
        if config.max_seconds is not None and body.seconds > config.max_seconds:
            raise RequestError("seconds", f"seconds must be at most {config.max_seconds:g} on this server, "
                                          f"got {body.seconds:g}")
        try:
            loras = check_request_loras(body.loras, config.lora_dir)
        except ValueError as exc:
            code = "lora_not_found" if "no adapter" in str(exc) else "invalid_value"
            raise RequestError("loras", str(exc), code=code) from None
        if body.enhance and body.prompt_schedule:
            raise RequestError("enhance", "enhance rewrites one prompt, and prompt_schedule gives more; send the "
                                          "request without enhance, with prompts in the model's structure")
        if body.enhance and config.enhance_url is None:
            raise RequestError("enhance", "this server has no prompt enhancer; send the request without enhance, or "
                                          "start the server with --enhance-url and --enhance-model",
                               code="enhance_unavailable")
        params = {"seconds": body.seconds, "size": body.size, "seed": body.seed,
                  "negative_prompt": body.negative_prompt, "rendered_size": rendered_size(body.model, body.size),
                  **({"prompt_schedule": [c.model_dump() for c in body.prompt_schedule]} if body.prompt_schedule
                     else {}),
                  **{k: (stored[k].name if k in stored else None) for k in UPLOAD_FIELDS},
                  **({"loras": loras} if loras else {})}
        return params, self._notices(body, params, folder)

    def _notices(self, body: CreateVideoRequest, params: dict[str, Any], folder: Path) -> list[str]:
        """``validate_request`` of what the worker will render (the enhanced prompt, once there is one)."""
        job = Job("", "queued", body.model, body.prompt, params, 0, 0.0, None, None, 0, 1, None, None, None, None, None)
        try:
            return validate_request(generation_request(job, folder))
        except ValidationError as exc:
            first = exc.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else ""
            raise RequestError(_API_FIELD.get(name, name or None), f"{name}: {first['msg']}") from None
        except InputError as exc:
            field = _API_FIELD.get(exc.field, exc.field) if exc.field else None
            raise RequestError(field, str(exc).replace(str(folder) + "/", "")) from None

    def _enhance(self, body: CreateVideoRequest, params: dict[str, Any], notices: list[str],
                 folder: Path) -> tuple[dict[str, Any], list[str]]:
        """The params with ``enhanced_prompt`` (and fresh notices), or as they were plus the enhancer's warning."""
        from magihuman.prompting.backends import backend_from_settings
        from magihuman.prompting.enhancer import enhance_prompt

        backend = backend_from_settings(url=self.config.enhance_url, model=self.config.enhance_model)
        try:
            result = enhance_prompt(body.prompt, backend, has_image=params.get("input_reference") is not None)
        finally:
            backend.close()
        warning = [result.warning] if result.warning else []
        if not result.enhanced:
            return params, notices + warning
        params = {**params, "enhanced_prompt": result.prompt}
        return params, self._notices(body, params, folder) + warning

    # ------------------------------------------------------------------------------------------ read / remove
    def get(self, job_id: str) -> Job | None:
        """The job, or None (unknown, deleted, or not an id at all)."""
        return self.store.get(job_id) if is_job_id(job_id) else None

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job; None if unknown."""
        return self.store.cancel(job_id) if self.get(job_id) is not None else None

    def delete(self, job_id: str) -> Job | None:
        """Cancel (if active) and delete a job and its files; None if unknown."""
        job = self.store.delete(job_id) if is_job_id(job_id) else None
        if job is not None:
            remove_folder(self.folder(job_id))
        return job

    def content_path(self, job: Job, variant: str) -> Path | None:
        """The file of a completed job: ``variant`` ``video`` (MP4) or ``thumbnail`` (WebP); None if absent."""
        if job.status != "completed" or job.output is None:
            return None
        path = self.folder(job.id) / (job.output if variant == "video" else THUMBNAIL_NAME)
        return path if path.is_file() else None
