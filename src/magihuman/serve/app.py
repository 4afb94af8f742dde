"""The HTTP API: a FastAPI app in the shape of the OpenAI Videos API, plus health, metrics and the web UI.

Endpoints (``/docs`` documents every field with its unit):

=========================================  ==================================================================
``POST /v1/videos``                        queue a job (JSON, or multipart with file parts); ``Idempotency-Key``
``POST /v1/videos/extend``                 queue a job continuing an uploaded clip (ours; docs/long_clips.md)
``POST /v1/videos/retake``                 queue a job regenerating a time range of an uploaded clip (ours)
``GET /v1/videos``                         list jobs, newest first (``after``, ``limit``, ``order``)
``GET /v1/videos/{id}``                    one job: status, progress 0-100, times, error
``GET /v1/videos/{id}/content``            the MP4 (``variant=video``) or a WebP first frame (``thumbnail``)
``POST /v1/videos/{id}/cancel``            cancel a queued or running job, keep its record (ours)
``DELETE /v1/videos/{id}``                 cancel if needed, then delete the job and its files
``GET /v1/models``                         the presets this server renders and its LoRA adapters
``GET /healthz``                           liveness and queue figures (no key needed)
``GET /metrics``                           Prometheus text
``/``                                      the Gradio page (when enabled)
=========================================  ==================================================================

Every error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status naming the field at
fault in ``param``; only a bug answers 500.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from magihuman import __version__
from magihuman.serve.clip_edits import clip_edit_routes
from magihuman.serve.config import ServeConfig
from magihuman.serve.jobs import UPLOAD_FIELDS, IncomingUpload, JobService, video_object
from magihuman.serve.metrics import CONTENT_TYPE, HttpStats, render_metrics
from magihuman.serve.responses import error_response, queue_job
from magihuman.serve.schemas import (
    CreateVideoRequest,
    ErrorResponse,
    Health,
    LoraAdapter,
    Model,
    ModelList,
    Video,
    VideoDeleted,
    VideoList,
)
from magihuman.serve.store import JobStore
from magihuman.serve.uploads import BodyTooLarge, RequestError

__all__ = ["create_app"]

logger = logging.getLogger("magihuman.serve")

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 415, 429)}


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (by ``Content-Length``, or while streaming)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = error_response(413, f"the request body exceeds {self.limit} bytes; send smaller files",
                                      param="body", code="request_too_large")
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, counted, send)


def _create_video_openapi() -> dict[str, Any]:
    schema = CreateVideoRequest.model_json_schema()
    multipart = {**schema, "properties": dict(schema["properties"])}
    for field in UPLOAD_FIELDS:
        multipart["properties"][field] = {"type": "string", "format": "binary",
                                          "description": schema["properties"][field]["description"]}
    multipart["properties"]["loras"] = {"type": "string", "description": "JSON text of the `loras` list: "
                                        "`[{\"name\": \"style\", \"scale\": 0.8}]`."}
    multipart["properties"]["prompt_schedule"] = {"type": "string", "description": "JSON text of the "
                                                  "`prompt_schedule` list: `[{\"start\": 10, \"prompt\": \"...\"}]`."}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "multipart/form-data": {"schema": multipart}}},
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                            "description": "Any unique string (e.g. a UUID): a retry with the same key and body "
                                           "returns the first job instead of queuing a second."}]}


def create_app(config: ServeConfig, *, store: JobStore | None = None, ui: bool | None = None) -> FastAPI:
    """The FastAPI app of one server.

    Args:
        config: settings (limits, key, CORS, data folder).
        store: the job store (default: opened from ``config.url``).
        ui: mount the Gradio page at ``/`` (default ``config.ui``).

    Returns:
        The app; run it with uvicorn. ``app.state.service`` is the :class:`~magihuman.serve.jobs.JobService`.
    """
    store = store or JobStore(config.url)
    config.videos_dir.mkdir(parents=True, exist_ok=True)
    service = JobService(config, store)
    http = HttpStats()
    app = FastAPI(title="magihuman", version=__version__, description=(
        "Talking-human video with synchronized speech from a prompt (+ first-frame image, + driving audio). "
        "Jobs are queued and rendered by worker processes; poll `GET /v1/videos/{id}` until `status` is "
        "`completed`, then download `/content`."), docs_url="/docs", redoc_url=None)
    app.state.service, app.state.http = service, http
    _install_handlers(app)
    _install_middleware(app, config, http)

    def require_key(request: Request) -> None:
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise RequestError("Authorization", "missing or wrong API key; send 'Authorization: Bearer KEY'",
                               code="invalid_api_key", status=401)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=_ERRORS)
    _video_routes(v1, service)
    clip_edit_routes(v1, service, _read_body)  # POST /v1/videos/extend, /retake (docs/long_clips.md)

    @v1.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def no_such_endpoint(request: Request, rest: str) -> None:
        """Any other ``/v1`` path: a JSON 404 (not the UI's), naming the video id for ``/v1/videos/...``."""
        param = "video_id" if rest.startswith("videos/") else "path"
        raise RequestError(param, f"no endpoint {request.method} /v1/{rest}; see /docs", code="not_found", status=404)

    app.include_router(v1)

    @app.get("/healthz", response_model=Health, tags=["service"], responses={503: {"model": ErrorResponse}})
    async def healthz():
        """Liveness: the job store answers; queue figures. Needs no API key. 503 when the database does not answer."""
        try:
            counts = await run_in_threadpool(store.counts)
        except Exception as exc:  # noqa: BLE001 - reported, not raised: a health check must answer
            logger.warning("health check: the job store did not answer: %s", exc)
            return error_response(503, "the job store does not answer", code="database_unavailable")
        return Health(database=True, queued=counts["queued"], in_progress=counts["in_progress"])

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_key)], tags=["service"])
    async def metrics() -> PlainTextResponse:
        """Prometheus text: queue depth, jobs by status, seconds per pipeline stage, HTTP requests."""
        return PlainTextResponse(await run_in_threadpool(render_metrics, store, http), media_type=CONTENT_TYPE)

    if config.ui if ui is None else ui:
        from magihuman.serve.ui import mount_ui

        app = mount_ui(app, service)
    return app


def _video_routes(v1: APIRouter, service: JobService) -> None:
    config = service.config

    @v1.post("/videos", response_model=Video, openapi_extra=_create_video_openapi(), tags=["videos"])
    async def create_video(request: Request) -> JSONResponse:
        """Queue a video job. Every field is checked (uploads by decoding them) before the job is queued."""
        fields, uploads = await _read_body(request, config)
        key = request.headers.get("idempotency-key")
        return await queue_job(lambda: service.create(fields, uploads, key), uploads)

    @v1.get("/videos", response_model=VideoList, tags=["videos"])
    async def list_videos(
        after: str | None = Query(None, description="Id of the last job of the previous page."),
        limit: int = Query(20, ge=1, le=100, description="Jobs per page, 1-100."),
        order: Literal["asc", "desc"] = Query("desc", description="`desc`: newest first; `asc`: oldest first."),
    ) -> VideoList:
        """List jobs, newest first."""
        try:
            jobs, more = await run_in_threadpool(lambda: service.store.list(after=after, limit=limit, order=order))
        except KeyError:
            raise RequestError("after", f"after={after!r} names no job", code="video_not_found", status=404) from None
        data = [video_object(job) for job in jobs]
        return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                         has_more=more)

    async def existing(video_id: str):
        job = await run_in_threadpool(service.get, video_id)
        if job is None:
            raise RequestError("video_id", f"no video {video_id!r}", code="video_not_found", status=404)
        return job

    @v1.get("/videos/{video_id}", response_model=Video, tags=["videos"])
    async def get_video(video_id: str) -> Video:
        """One job: status, progress, times, error."""
        return video_object(await existing(video_id))

    @v1.get("/videos/{video_id}/content", tags=["videos"],
            responses={200: {"content": {"video/mp4": {}, "image/webp": {}}}})
    async def video_content(video_id: str, variant: Literal["video", "thumbnail"] = Query(
            "video", description="`video`: the MP4 (H.264 + AAC, 25 fps); `thumbnail`: its first frame as WebP.")):
        """Download a completed job's MP4 or thumbnail (HTTP range requests supported)."""
        job = await existing(video_id)
        path = service.content_path(job, variant)
        if path is None and job.status == "completed":
            raise RequestError("variant", f"the {variant} of video {video_id} is missing from the data folder",
                               code="content_missing", status=404)
        if path is None:
            raise RequestError("video_id", f"video {video_id} is {job.status}; its content exists once it is completed",
                               code="video_not_ready", status=409)
        media = "video/mp4" if variant == "video" else "image/webp"
        return FileResponse(path, media_type=media, filename=f"{video_id}{path.suffix}")

    @v1.post("/videos/{video_id}/cancel", response_model=Video, tags=["videos"])
    async def cancel_video(video_id: str) -> Video:
        """Cancel a queued or running job (a running one stops after its current denoising step); the record and
        its status ``cancelled`` stay. A finished job is returned unchanged."""
        await existing(video_id)
        return video_object(await run_in_threadpool(service.cancel, video_id))

    @v1.delete("/videos/{video_id}", response_model=VideoDeleted, tags=["videos"])
    async def delete_video(video_id: str) -> VideoDeleted:
        """Cancel the job if it is queued or running, then delete it and its files."""
        await existing(video_id)
        if await run_in_threadpool(service.delete, video_id) is None:
            raise RequestError("video_id", f"no video {video_id!r}", code="video_not_found", status=404)
        return VideoDeleted(id=video_id)

    @v1.get("/models", response_model=ModelList, tags=["models"])
    async def list_models() -> ModelList:
        """The presets this server renders (the ``model`` field of a request) and, under ``loras``, the LoRA
        adapters of its ``--lora-dir`` (the names a request's ``loras`` may use)."""
        from magihuman.pipeline.presets import get_preset
        from magihuman.serve.adapters import list_adapters

        adapters = await run_in_threadpool(list_adapters, config.lora_dir)
        return ModelList(data=[Model(id=name, description=get_preset(name).description) for name in config.models],
                         loras=[LoraAdapter(**entry) for entry in adapters])


async def _read_body(request: Request, config: ServeConfig, upload_fields: tuple[str, ...] = UPLOAD_FIELDS,
                     ) -> tuple[dict[str, Any], dict[str, IncomingUpload]]:
    """Text fields and file parts (``upload_fields``) of a JSON, multipart or URL-encoded form request."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            fields = await request.json()
        except ValueError:
            raise RequestError("body", "the body is not valid JSON", code="invalid_json") from None
        if not isinstance(fields, dict):
            raise RequestError("body", "the JSON body must be an object of fields", code="invalid_json")
        return fields, {}
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise RequestError("Content-Type", "send application/json or multipart/form-data",
                           code="unsupported_media_type", status=415)
    try:
        form = await request.form(max_files=len(upload_fields), max_fields=32, max_part_size=config.max_request_bytes)
    except MultiPartException as exc:
        raise RequestError("body", f"malformed multipart body: {exc.message}", code="invalid_multipart") from None
    fields: dict[str, Any] = {}
    uploads: dict[str, IncomingUpload] = {}
    for name, value in form.multi_items():
        if name in fields or name in uploads:
            raise RequestError(name, f"{name} was given more than once")
        if isinstance(value, UploadFile):
            if name not in upload_fields:
                raise RequestError(name, f"{name} must be a text field, not a file", code="unexpected_file")
            uploads[name] = IncomingUpload(value.file, value.size)
        else:
            fields[name] = value
    return fields, uploads


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _input_error(_request: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, str(exc), param=exc.field, code=exc.code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header")]
        param = loc[0] if loc else None
        return error_response(400, f"{param or 'request'}: {first.get('msg', 'invalid')}", param=param,
                              code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error: %s", exc)
        return error_response(500, "internal error; see the server log", code="internal_error")


def _install_middleware(app: FastAPI, config: ServeConfig, http: HttpStats) -> None:
    @app.middleware("http")
    async def _count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or ("/" if not request.url.path.startswith("/v1") else "other")
        http.observe(request.method, template, response.status_code, time.perf_counter() - start)
        return response

    app.add_middleware(_BodyLimit, limit=config.max_request_bytes)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After", "Idempotent-Replayed"])
