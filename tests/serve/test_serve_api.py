"""The HTTP API in process (httpx through FastAPI's TestClient) with thread workers on a fake pipeline:
every endpoint and every job status."""

from __future__ import annotations

import base64
import io
import json
import time

import av
import numpy as np
import PIL.Image

from .serve_helpers import InProcess
from conftest import write_tone  # tests/conftest.py

PROMPT = "A woman in a grey coat on a train platform says: \"The last train leaves in ten minutes.\""
SMALL = {"prompt": PROMPT, "seconds": 0.4, "size": "64x64"}


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_create_poll_download_json(inproc):
    inproc.start_worker()
    created = inproc.client.post("/v1/videos", json={**SMALL, "seed": 7})
    assert created.status_code == 200
    body = created.json()
    assert body["object"] == "video" and body["status"] == "queued" and body["progress"] == 0
    assert body["id"].startswith("video_") and len(body["id"]) == 38
    assert (body["seconds"], body["size"], body["seed"], body["model"]) == ("0.4", "64x64", 7, "distill")
    assert any("150-200 words" in note for note in body["notices"])
    done = inproc.wait(body["id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["attempts"] == 1
    assert done["completed_at"] >= done["started_at"] >= done["created_at"]
    video = inproc.client.get(f"/v1/videos/{body['id']}/content")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(video.content)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.width, stream.height) == (64, 64)
        assert len(container.streams.audio) == 1
    assert frames == 9  # 0.4 s at 25 fps: 4 * floor(10 / 4) + 1
    thumb = inproc.client.get(f"/v1/videos/{body['id']}/content", params={"variant": "thumbnail"})
    assert thumb.headers["content-type"] == "image/webp"
    assert PIL.Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    ranged = inproc.client.get(f"/v1/videos/{body['id']}/content", headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206 and len(ranged.content) == 100


def test_create_multipart_with_image_and_audio(inproc, tmp_path):
    pipe = inproc.start_worker()
    tone = write_tone(tmp_path / "tone.wav", seconds=0.5)
    files = {"input_reference": ("whatever.txt", png_bytes(), "text/plain"),
             "audio": ("speech.bin", tone.read_bytes(), "application/octet-stream")}
    data = {"prompt": PROMPT, "seconds": "0.4", "size": "64x64", "seed": "3"}
    response = inproc.client.post("/v1/videos", data=data, files=files)
    assert response.status_code == 200, response.text
    job = response.json()
    folder = inproc.config.videos_dir / job["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "input_reference.png"]  # names from content
    assert inproc.wait(job["id"])["status"] == "completed"
    assert pipe.calls == 1


def test_a_prompt_schedule_is_checked_queued_and_shown(inproc, tmp_path):
    from magihuman.serve.jobs import generation_request

    inproc.start_worker()
    cues = [{"start": 6, "prompt": "She laughs."}, {"start": 10, "prompt": "She waves goodbye."}]
    created = inproc.client.post("/v1/videos", json={**SMALL, "seconds": 12, "prompt_schedule": cues})
    assert created.status_code == 200, created.text
    body = created.json()
    # 12 s in the preset's 5 s windows: the second and third windows generate from 5 s and 9.64 s
    assert "the prompt cue at 6 s takes over at 5 s (window 2 of 3)" in body["notices"]
    assert "the prompt cue at 10 s takes over at 9.64 s (window 3 of 3)" in body["notices"]
    assert body["prompt_schedule"] == [{"start": 6.0, "prompt": "She laughs."},
                                       {"start": 10.0, "prompt": "She waves goodbye."}]
    job = inproc.store.get(body["id"])
    request = generation_request(job, tmp_path)
    assert [c.model_dump() for c in request.prompt_schedule] == body["prompt_schedule"]
    assert inproc.wait(body["id"])["status"] == "completed"
    cues[1]["start"] = 7  # the same window as the first
    form = inproc.client.post("/v1/videos", data={**SMALL, "seconds": "12", "prompt_schedule": json.dumps(cues)})
    assert form.status_code == 400 and form.json()["error"]["param"] == "prompt_schedule"
    assert "land on the same window" in form.json()["error"]["message"]


def test_json_data_url_upload(inproc):
    inproc.start_worker()
    url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    response = inproc.client.post("/v1/videos", json={**SMALL, "input_reference": url})
    assert response.status_code == 200, response.text
    assert inproc.wait(response.json()["id"])["status"] == "completed"


def test_list_pagination(inproc):
    ids = [inproc.client.post("/v1/videos", json={**SMALL, "seed": i}).json()["id"] for i in range(5)]
    page = inproc.client.get("/v1/videos", params={"limit": 2}).json()
    assert page["object"] == "list" and [v["id"] for v in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = inproc.client.get("/v1/videos", params={"limit": 10, "after": page["last_id"]}).json()
    assert [v["id"] for v in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
    oldest = inproc.client.get("/v1/videos", params={"order": "asc", "limit": 1}).json()
    assert oldest["first_id"] == ids[0]
    assert inproc.client.get("/v1/videos", params={"after": "video_" + "0" * 32}).status_code == 404


def test_delete_queued_job_removes_it_and_its_files(inproc):
    job = inproc.client.post("/v1/videos", json=SMALL).json()
    folder = inproc.config.videos_dir / job["id"]
    assert folder.is_dir()
    deleted = inproc.client.delete(f"/v1/videos/{job['id']}")
    assert deleted.json() == {"id": job["id"], "object": "video.deleted", "deleted": True}
    assert not folder.exists()
    assert inproc.client.get(f"/v1/videos/{job['id']}").status_code == 404
    assert inproc.client.delete(f"/v1/videos/{job['id']}").status_code == 404
    inproc.start_worker()
    time.sleep(0.3)
    assert inproc.pipelines[0].calls == 0  # a deleted job is never run
    assert inproc.store.counts()["cancelled"] == 1


def test_cancel_running_job_stops_between_steps(inproc):
    pipe = inproc.start_worker(step_seconds=0.2)  # 8 steps: 1.6 s
    job = inproc.client.post("/v1/videos", json=SMALL).json()
    running = inproc.wait(job["id"], statuses=("in_progress",))
    assert running["attempts"] == 1
    deadline = time.monotonic() + 10
    while inproc.client.get(f"/v1/videos/{job['id']}").json()["progress"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    cancelled = inproc.client.post(f"/v1/videos/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
    assert 0 < cancelled["progress"] < 100
    time.sleep(0.6)  # the worker notices at its next step and writes nothing
    after = inproc.client.get(f"/v1/videos/{job['id']}").json()
    assert after["status"] == "cancelled" and after["progress"] == cancelled["progress"]
    assert not list((inproc.config.videos_dir / job["id"]).glob("*.mp4"))
    assert inproc.client.get(f"/v1/videos/{job['id']}/content").status_code == 409
    assert pipe.calls == 1
    # the worker is free again
    nxt = inproc.client.post("/v1/videos", json=SMALL).json()
    assert inproc.wait(nxt["id"])["status"] == "completed"


def test_delete_running_job(inproc):
    inproc.start_worker(step_seconds=0.2)
    job = inproc.client.post("/v1/videos", json=SMALL).json()
    inproc.wait(job["id"], statuses=("in_progress",))
    assert inproc.client.delete(f"/v1/videos/{job['id']}").status_code == 200
    time.sleep(0.6)
    assert not (inproc.config.videos_dir / job["id"]).exists()
    assert inproc.client.get(f"/v1/videos/{job['id']}").status_code == 404


def test_failed_job_reports_the_reason(inproc):
    inproc.start_worker()
    job = inproc.client.post("/v1/videos", json={**SMALL, "prompt": PROMPT + " [[fail]]"}).json()
    done = inproc.wait(job["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"code": "generation_failed",
                             "message": "RuntimeError: fake failure requested by the prompt"}
    assert inproc.client.get(f"/v1/videos/{job['id']}/content").json()["error"]["code"] == "video_not_ready"


def test_idempotency_key(inproc):
    key = {"Idempotency-Key": "client-retry-1"}
    first = inproc.client.post("/v1/videos", json=SMALL, headers=key)
    again = inproc.client.post("/v1/videos", json=SMALL, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert inproc.store.counts()["queued"] == 1
    assert len(list(inproc.config.videos_dir.iterdir())) == 1  # the replay left no folder behind
    other = inproc.client.post("/v1/videos", json={**SMALL, "seed": 1}, headers=key)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"


def test_queue_limit_answers_429_with_retry_after(tmp_path):
    server = InProcess(tmp_path / "data", queue_limit=3)
    try:
        accepted = [server.client.post("/v1/videos", json={**SMALL, "seed": i}) for i in range(3)]
        assert [r.status_code for r in accepted] == [200, 200, 200]
        refused = server.client.post("/v1/videos", json={**SMALL, "seed": 9})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        assert 1 <= int(refused.headers["Retry-After"]) <= 600
        assert server.store.counts()["queued"] == 3 and len(list(server.config.videos_dir.iterdir())) == 3
        server.client.post(f"/v1/videos/{accepted[0].json()['id']}/cancel")  # a slot frees up
        assert server.client.post("/v1/videos", json={**SMALL, "seed": 9}).status_code == 200
    finally:
        server.close()


def test_models_health_metrics(inproc):
    inproc.start_worker()
    models = inproc.client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["distill"]
    inproc.wait(inproc.client.post("/v1/videos", json=SMALL).json()["id"])
    inproc.client.post("/v1/videos", json={**SMALL, "seed": 2})
    health = inproc.client.get("/healthz").json()
    assert health["status"] == "ok" and health["database"] is True
    metrics = inproc.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    lines = metrics.text.splitlines()
    assert 'magihuman_jobs{status="completed"} ' in "\n".join(lines)
    counts = {line.split()[0]: float(line.split()[1]) for line in lines if line and not line.startswith("#")}
    assert counts['magihuman_jobs{status="completed"}'] >= 1
    assert counts["magihuman_queue_depth"] + counts['magihuman_jobs{status="in_progress"}'] + \
        counts['magihuman_jobs{status="completed"}'] == 2
    assert counts['magihuman_stage_seconds_count{stage="denoise"}'] >= 1
    assert counts['magihuman_stage_seconds_sum{stage="denoise"}'] > 0
    assert counts['magihuman_http_requests_total{method="POST",route="/v1/videos",status="200"}'] == 2


def test_api_key_and_cors(tmp_path):
    server = InProcess(tmp_path / "data", api_key="s3cret", cors_origins=("https://app.example",))
    try:
        client = server.client
        for method, path in (("get", "/v1/videos"), ("get", "/v1/models"), ("get", "/metrics"),
                             ("post", "/v1/videos")):
            response = getattr(client, method)(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["param"] == "Authorization"
            assert response.headers["WWW-Authenticate"] == "Bearer"
        wrong = client.get("/v1/videos", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = client.get("/v1/videos", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert client.get("/healthz").status_code == 200  # liveness needs no key
        preflight = client.options("/v1/videos", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    finally:
        server.close()


def test_no_cors_by_default(inproc):
    response = inproc.client.get("/v1/videos", headers={"Origin": "https://elsewhere.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_openapi_documents_fields_with_units(inproc):
    schema = inproc.client.get("/openapi.json").json()
    create = schema["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert set(create) == {"application/json", "multipart/form-data"}
    fields = create["application/json"]["schema"]["properties"]
    assert set(fields) == {"prompt", "model", "seconds", "size", "seed", "negative_prompt", "input_reference", "audio",
                           "loras", "prompt_schedule", "enhance"}
    assert "seconds" in fields["seconds"]["description"] and "pixels" in fields["size"]["description"]
    multipart = create["multipart/form-data"]["schema"]["properties"]
    assert multipart["input_reference"]["format"] == "binary" and multipart["prompt_schedule"]["type"] == "string"
    video = schema["components"]["schemas"]["Video"]["properties"]
    assert "Unix seconds" in video["created_at"]["description"] and "0-100" in video["progress"]["description"]
    assert all(prop.get("description") for name, prop in video.items() if name != "object")


def test_health_answers_503_when_the_database_does_not(inproc, monkeypatch):
    def broken():
        raise OSError("database gone")

    monkeypatch.setattr(inproc.store, "counts", broken)
    response = inproc.client.get("/healthz")
    assert response.status_code == 503 and response.json()["error"]["code"] == "database_unavailable"
