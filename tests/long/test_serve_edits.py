"""The server with long clips, extend and retake: the fake pipeline through thread workers, the demo
pipeline for one extend."""

from __future__ import annotations

import base64
import io

import av
import pytest

from .conftest import CLIP_FRAMES, CLIP_SIZE

PROMPT = "A woman in a grey coat on a train platform says: \"The last train leaves in ten minutes.\""


@pytest.fixture
def server(tmp_path):
    from serve.serve_helpers import InProcess  # tests/serve

    app = InProcess(tmp_path / "data")
    yield app
    app.close()


def _frames(content: bytes) -> tuple[int, int, int]:
    with av.open(io.BytesIO(content)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), stream.width, stream.height


def test_a_long_clip_is_accepted_and_sixty_one_seconds_refused(server):
    server.start_worker()
    created = server.client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 12, "size": "32x32"})
    assert created.status_code == 200, created.text
    assert any("3 windows of up to 5 s" in n for n in created.json()["notices"])
    done = server.wait(created.json()["id"])
    assert done["status"] == "completed" and done["seconds"] == "12" and done["mode"] == "generate"
    assert _frames(server.client.get(f"/v1/videos/{done['id']}/content").content) == (301, 32, 32)
    refused = server.client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 61})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "seconds"


def test_extend_an_uploaded_clip(server, clip):
    server.start_worker()
    files = {"video": ("anything.bin", clip.read_bytes(), "application/octet-stream")}
    created = server.client.post("/v1/videos/extend", data={"prompt": PROMPT, "seconds": "0.48"}, files=files)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["mode"] == "extend" and body["seconds"] == "0.48" and body["size"] == f"{CLIP_SIZE}x{CLIP_SIZE}"
    assert sorted(p.name for p in (server.config.videos_dir / body["id"]).iterdir()) == ["video.mp4"]
    done = server.wait(body["id"])
    assert done["status"] == "completed"
    content = server.client.get(f"/v1/videos/{body['id']}/content").content
    assert _frames(content) == (CLIP_FRAMES + 12, CLIP_SIZE, CLIP_SIZE)
    # a completed job's video can be extended by its id
    again = server.client.post("/v1/videos/extend", json={"prompt": PROMPT, "seconds": 0.16, "video_id": body["id"]})
    assert again.status_code == 200, again.text
    assert server.wait(again.json()["id"])["status"] == "completed"
    assert _frames(server.client.get(f"/v1/videos/{again.json()['id']}/content").content)[0] == CLIP_FRAMES + 16


def test_retake_with_a_data_url(server, clip):
    server.start_worker()
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    created = server.client.post("/v1/videos/retake", json={"prompt": PROMPT, "video": url, "start": 0.2,
                                                            "end": 0.5, "target": "audio"})
    assert created.status_code == 200, created.text
    done = server.wait(created.json()["id"])
    assert done["status"] == "completed" and done["mode"] == "retake" and done["seconds"] == "0.3"


@pytest.mark.parametrize("path, fields, param, code", [
    ("retake", {"start": 0.5, "end": 2.0}, "end", "invalid_value"),
    ("retake", {"start": 0.5, "end": 0.3}, "end", "invalid_value"),
    ("retake", {"start": 0.1, "end": 0.3, "target": "audio", "silent": True}, "target", "invalid_value"),
    ("extend", {"seconds": 61}, "seconds", "invalid_value"),
    ("retake", {"start": 0.1, "end": 0.3, "fade_frames": 26}, "fade_frames", "invalid_value"),
    ("extend", {"seconds": 1, "no_clip": True}, "video", "missing_field"),
    ("extend", {"seconds": 1, "video_id": "video_" + "0" * 32}, "video_id", "video_not_found"),
    ("extend", {"seconds": 1, "model": "sr_540p"}, "model", "model_not_served"),
])
def test_bad_edits_are_refused_before_queueing(server, clip, silent_clip, path, fields, param, code):
    fields = dict(fields)
    source = silent_clip if fields.pop("silent", False) else clip
    files = {} if fields.pop("no_clip", False) or "video_id" in fields else {"video": ("c.mp4", source.read_bytes())}
    data = {"prompt": PROMPT, **{k: str(v) for k, v in fields.items()}}
    response = server.client.post(f"/v1/videos/{path}", data=data, files=files)
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert server.client.get("/v1/videos").json()["data"] == []  # nothing was queued


def test_not_a_video_is_refused(server):
    files = {"video": ("c.mp4", b"RIFF0000WAVEfmt not really", "video/mp4")}
    response = server.client.post("/v1/videos/extend", data={"prompt": PROMPT}, files=files)
    assert response.status_code == 415 and response.json()["error"]["param"] == "video"


def test_the_worker_runs_an_extend_job_on_the_demo_pipeline(server, clip, distill):
    """The real pipeline behind the queue: the worker's request is an ExtendRequest and progress reaches 100."""
    import threading

    from magihuman.serve.worker import Worker

    stop = threading.Event()
    worker = Worker(server.config, server.store, {"distill": distill}, worker_id="demo", stop=stop)
    files = {"video": ("c.mp4", clip.read_bytes())}
    created = server.client.post("/v1/videos/extend", data={"prompt": PROMPT, "seconds": "0.16",
                                                            "overlap_frames": "1"}, files=files)
    assert created.status_code == 200, created.text
    assert worker.run_once()
    done = server.client.get(f"/v1/videos/{created.json()['id']}").json()
    assert done["status"] == "completed" and done["progress"] == 100, done
    content = server.client.get(f"/v1/videos/{done['id']}/content").content
    assert _frames(content) == (CLIP_FRAMES + 4, CLIP_SIZE, CLIP_SIZE)


def test_an_edit_job_carries_fade_frames_to_the_pipeline_request(clip):
    """The job's stored params become the pipeline's request: fade_frames 0 (a hard cut) reaches it, and a job
    without it leaves the pipeline's default."""
    from magihuman.serve.clip_edits import CLIP_FIELD, clip_edit_request
    from magihuman.serve.store import Job

    def job(**params):
        base = {"mode": "retake", CLIP_FIELD: clip.name, "seed": 5, "start": 0.2, "end": 0.4, "target": "both"}
        return Job("", "queued", "distill", PROMPT, {**base, **params}, 0, 0.0, None, None, 0, 1, None, None, None,
                   None, None)

    assert clip_edit_request(job(fade_frames=0), clip.parent).fade_frames == 0
    request = clip_edit_request(job(), clip.parent)
    assert request.fade_frames is None and request.plan().fade_frames == 8
