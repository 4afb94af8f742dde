"""Extend and retake over HTTP: ``POST /v1/videos/extend`` and ``POST /v1/videos/retake`` (docs/long_clips.md).

Each takes the clip to edit as a multipart file part ``video`` (or a ``data:video/mp4;base64,`` URL in JSON),
or names a completed job of this server in ``video_id`` (its MP4 is copied). The request is checked completely
before it is queued, through the pipeline's own checks
(:meth:`magihuman.pipeline.clip_requests.ExtendRequest.validate_inputs`: the clip is opened and its frames
counted); the job then runs on the same queue and workers as ``POST /v1/videos``, and its result is read the
same way (``GET /v1/videos/{id}``, ``/content``). The job's ``mode`` says which edit it is.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from magihuman.pipeline.clip_requests import ExtendRequest, RetakeRequest
from magihuman.pipeline.validation import (
    MAX_FADE_FRAMES,
    MAX_LONG_SECONDS,
    MAX_OVERLAP_FRAMES,
    MAX_PROMPT_CHARS,
    MAX_SECONDS,
    MAX_SEED,
    InputError,
)
from magihuman.serve.jobs import IncomingUpload, JobService, new_job_id, validate_body
from magihuman.serve.responses import queue_job
from magihuman.serve.schemas import SIZE_PATTERN, Video
from magihuman.serve.store import Job
from magihuman.serve.uploads import RequestError, Upload, decode_data_url, remove_folder, save_upload

__all__ = ["ExtendVideoRequest", "RetakeVideoRequest", "clip_edit_routes", "create_clip_edit", "clip_edit_request",
           "CLIP_FIELD", "EDIT_MODES"]

#: The upload field holding the clip.
CLIP_FIELD = "video"
#: ``mode`` of a job created here -> its request model.
EDIT_MODES = ("extend", "retake")
_API_FIELD = {"clip": CLIP_FIELD, "width": "size", "height": "size", "preset": "model"}


class _EditFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="What the new or regenerated part shows and says. Characters, at most 20,000.")
    model: str = Field("distill", description="Preset: `distill` or `base` (the SR presets do not edit clips).")
    video: str | None = Field(None, description="The clip: a multipart file part, or a `data:video/mp4;base64,` URL "
                                                "in JSON. MP4, MOV, MKV or WebM with a video stream.")
    video_id: str | None = Field(None, description="Instead of `video`: a completed job of this server whose MP4 "
                                                   "is the clip.")
    size: str | None = Field(None, pattern=SIZE_PATTERN, description="`WIDTHxHEIGHT` of the work and the output, "
                             "rounded down to multiples of 32; the clip is cropped and resized to it. Default: the "
                             "clip's size.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of every noise draw.")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="Text to steer away from "
                                        "(preset base).")
    window_seconds: float | None = Field(None, gt=0, le=MAX_SECONDS, allow_inf_nan=False,
                                         description="Window the model sees at once, seconds (default 5).")
    fade_frames: int | None = Field(None, ge=0, le=MAX_FADE_FRAMES,
                                    description="Frames beside each picture join that fade from the clip's own into "
                                                "their decode (default 8; 0: a hard cut).")


class ExtendVideoRequest(_EditFields):
    """Body of ``POST /v1/videos/extend``: continue a clip."""

    seconds: float = Field(4.0, gt=0, le=MAX_LONG_SECONDS, allow_inf_nan=False,
                           description="Length of the continuation in seconds, at most 60 (rounded up to 0.16 s).")
    overlap_frames: int | None = Field(None, ge=1, le=MAX_OVERLAP_FRAMES,
                                       description="Latent frames (4 video frames each) of the clip's end held as "
                                                   "they are, and shared between windows (default: 4 of the clip, "
                                                   "fewer for a clip under 13 frames, and 2 between windows).")


class RetakeVideoRequest(_EditFields):
    """Body of ``POST /v1/videos/retake``: regenerate a time range of a clip, keeping the rest."""

    start: float = Field(ge=0, allow_inf_nan=False, description="Start of the range, seconds.")
    end: float = Field(gt=0, allow_inf_nan=False, description="End of the range, seconds (after `start`).")
    target: Literal["both", "video", "audio"] = Field("both", description="What to regenerate in the range: "
                                                      "`both`, `video` (sound kept) or `audio` (frames kept).")


_BODIES = {"extend": ExtendVideoRequest, "retake": RetakeVideoRequest}
_OWN = {"extend": ("seconds", "overlap_frames"), "retake": ("start", "end", "target")}


def clip_edit_request(job: Job, folder: Path) -> ExtendRequest | RetakeRequest:
    """The pipeline's request of an extend or retake job, its clip resolved inside ``folder``."""
    params = job.params
    fields = {k: params.get(k) for k in _OWN[params["mode"]]}
    fields.update(seed=int(params["seed"]), negative_prompt=params.get("negative_prompt"),
                  window_seconds=params.get("window_seconds"), fade_frames=params.get("fade_frames"))
    if params.get("size"):
        fields["width"], fields["height"] = (int(v) for v in params["size"].split("x"))
    request_type = ExtendRequest if params["mode"] == "extend" else RetakeRequest
    return request_type(clip=folder / params[CLIP_FIELD], prompt=job.prompt, preset=job.model,
                        **{k: v for k, v in fields.items() if v is not None})


def create_clip_edit(service: JobService, mode: str, fields: dict[str, Any], uploads: dict[str, IncomingUpload],
                     idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Check an extend or retake request completely, then queue it (as :meth:`JobService.create` does).

    Raises:
        RequestError: any bad field, upload or header (names it).
        QueueFull, IdempotencyConflict: from the store.
    """
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise RequestError("Idempotency-Key", "the Idempotency-Key header must be 1-255 characters")
    body = _parse(mode, fields, uploads, service)
    job_id = new_job_id()
    folder = service.folder(job_id)
    folder.mkdir(parents=True, exist_ok=False)
    try:
        clip = _store_clip(service, body, uploads, folder)
        params, notices = _checked_params(service, mode, body, clip, folder)
        described = {"mode": mode, "prompt": body.prompt, "model": body.model, "clip": clip.sha256,
                     **{k: v for k, v in params.items() if k != CLIP_FIELD}}
        fingerprint = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
        job, created = service.store.create(
            job_id=job_id, model=body.model, prompt=body.prompt, params=params, notices=notices,
            fingerprint=fingerprint, max_attempts=service.config.max_attempts,
            queue_limit=service.config.queue_limit, idempotency_key=idempotency_key)
    except BaseException:
        remove_folder(folder)
        raise
    if not created:
        remove_folder(folder)
    return job, created


def _parse(mode: str, fields: dict[str, Any], uploads: dict[str, IncomingUpload], service: JobService):
    both = sorted(set(fields) & set(uploads))
    if both:
        raise RequestError(both[0], f"{both[0]} was sent twice (as a file and as a field); send it once")
    body = validate_body(_BODIES[mode], fields, f"POST /v1/videos/{mode}")
    if not body.prompt.strip():
        raise RequestError("prompt", "prompt is empty; describe what the clip should show and say")
    given = (CLIP_FIELD in uploads) + (body.video is not None) + (body.video_id is not None)
    if given != 1:
        raise RequestError(CLIP_FIELD, "send the clip once: a `video` file part, a `video` data URL, or the "
                                       "`video_id` of a completed job", code="missing_field" if not given else
                           "invalid_value")
    if body.model not in service.config.models:
        raise RequestError("model", f"model {body.model!r} is not served here; choose one of "
                                    f"{', '.join(service.config.models)}", code="model_not_served")
    return body


def _store_clip(service: JobService, body, uploads: dict[str, IncomingUpload], folder: Path) -> Upload:
    limit = service.config.max_upload_bytes
    if CLIP_FIELD in uploads:
        part = uploads[CLIP_FIELD]
        if part.size is not None and part.size > limit:
            raise RequestError(CLIP_FIELD, f"video is larger than the {limit}-byte upload limit",
                               code="file_too_large", status=413)
        return save_upload(CLIP_FIELD, part.source, folder, limit)
    if body.video is not None:
        return save_upload(CLIP_FIELD, decode_data_url(CLIP_FIELD, body.video, limit), folder, limit)
    job = service.get(body.video_id)
    path = service.content_path(job, "video") if job is not None else None
    if path is None:
        raise RequestError("video_id", f"video_id {body.video_id!r} names no completed job with a video",
                           code="video_not_found", status=404)
    target = folder / "video.mp4"
    shutil.copyfile(path, target)
    return Upload(target.name, hashlib.sha256(target.read_bytes()).hexdigest(), target.stat().st_size)


def _checked_params(service: JobService, mode: str, body, clip: Upload, folder: Path):
    limit = service.config.max_seconds
    if mode == "extend" and limit is not None and body.seconds > limit:
        raise RequestError("seconds", f"seconds must be at most {limit:g} on this server, got {body.seconds:g}")
    params = {"mode": mode, CLIP_FIELD: clip.name, "seed": body.seed, "negative_prompt": body.negative_prompt,
              "window_seconds": body.window_seconds, "fade_frames": body.fade_frames, "size": body.size,
              **{k: getattr(body, k) for k in _OWN[mode]}}
    job = Job("", "queued", body.model, body.prompt, params, 0, 0.0, None, None, 0, 1, None, None, None, None, None)
    try:
        plan = clip_edit_request(job, folder).plan()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise RequestError(_API_FIELD.get(name, name or None), f"{name}: {first['msg']}") from None
    except InputError as exc:
        field = _API_FIELD.get(exc.field, exc.field) if exc.field else None
        raise RequestError(field, str(exc).replace(str(folder) + "/", "")) from None
    params.update(size=f"{plan.width}x{plan.height}", rendered_size=f"{plan.width}x{plan.height}")
    if mode == "retake":  # the job's `seconds`: the length of what is regenerated
        params["seconds"] = round(body.end - body.start, 6)
    return params, plan.notices


def clip_edit_routes(v1: APIRouter, service: JobService, read_body) -> None:
    """Add ``POST /videos/extend`` and ``POST /videos/retake`` to the ``/v1`` router.

    Args:
        v1: the router.
        service: the job service.
        read_body: ``await read_body(request, config, upload_fields)`` -> ``(fields, uploads)`` (the app's parser).
    """
    for mode in EDIT_MODES:
        _edit_route(v1, service, read_body, mode)


def _edit_route(v1: APIRouter, service: JobService, read_body, mode: str) -> None:
    schema = _BODIES[mode].model_json_schema()
    multipart = {**schema, "properties": {**schema["properties"], CLIP_FIELD: {
        "type": "string", "format": "binary", "description": schema["properties"][CLIP_FIELD]["description"]}}}
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                           "multipart/form-data": {"schema": multipart}}}}
    summary = {"extend": "Queue a job that continues a clip by `seconds`.",
               "retake": "Queue a job that regenerates `[start, end)` of a clip, keeping the rest."}[mode]

    async def create(request: Request) -> JSONResponse:
        fields, uploads = await read_body(request, service.config, (CLIP_FIELD,))
        key = request.headers.get("idempotency-key")
        return await queue_job(lambda: create_clip_edit(service, mode, fields, uploads, key), uploads)

    create.__doc__ = summary + " Every field is checked (the clip by decoding it) before the job is queued."
    v1.add_api_route(f"/videos/{mode}", create, methods=["POST"], response_model=Video, openapi_extra=extra,
                     tags=["videos"], name=f"{mode}_video")
