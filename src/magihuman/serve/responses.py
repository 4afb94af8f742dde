"""JSON error bodies in the OpenAI video API's shape, and the answer of a job-creating request.

Shared by the routes of :mod:`magihuman.serve.app` and :mod:`magihuman.serve.clip_edits`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from magihuman.serve.jobs import IncomingUpload, video_object
from magihuman.serve.store import IdempotencyConflict, Job, QueueFull

__all__ = ["ERROR_TYPES", "error_response", "queue_job"]

#: ``error.type`` of each HTTP status (OpenAI's names).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error",
               415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": {...}}`` with ``status``."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def queue_job(create: Callable[[], tuple[Job, bool]], uploads: dict[str, IncomingUpload]) -> JSONResponse:
    """Run ``create`` (a job service call that checks and queues a job) off the event loop and answer it.

    Returns the video object (header ``Idempotent-Replayed: true`` when an ``Idempotency-Key`` matched an
    existing job), 429 ``queue_full`` with ``Retry-After`` (seconds), or 409 ``idempotency_key_reused``. The
    upload files are closed in every case; other errors (``RequestError``) propagate to the app's handler.
    """
    try:
        job, created = await run_in_threadpool(create)
    except QueueFull as exc:
        return error_response(429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)})
    except IdempotencyConflict as exc:
        return error_response(409, str(exc), param="Idempotency-Key", code="idempotency_key_reused")
    finally:
        for part in uploads.values():
            if hasattr(part.source, "close"):
                part.source.close()
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return JSONResponse(video_object(job).model_dump(mode="json"), headers=headers)
