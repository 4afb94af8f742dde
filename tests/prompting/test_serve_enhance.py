"""``POST /v1/videos`` with ``enhance``: the server's enhancer rewrites the prompt before queueing, the job keeps
and returns it, and the worker's request (``generation_request``) carries it."""

from __future__ import annotations

import pytest

from magihuman.serve.config import ConfigError, ServeConfig
from magihuman.serve.jobs import generation_request

from .fake_llm import GOOD_ANSWER

IDEA = "a woman in a yellow sweater says good morning"


@pytest.fixture(scope="module")
def app(tmp_path_factory, llm):
    """One in-process app for the module (no workers); each test sets its enhancer model."""
    from serve.serve_helpers import InProcess

    server = InProcess(tmp_path_factory.mktemp("serve-enhance") / "data", enhance_url=llm.url)
    yield server
    server.close()


@pytest.fixture
def server(app, llm):
    yield app
    app.config.enhance_url, app.config.enhance_model = llm.url, None


def rendered_prompt(server, video_id: str) -> str:
    job = server.store.get(video_id)
    return generation_request(job, server.config.videos_dir / job.id).prompt


def test_enhanced_prompt_is_stored_returned_and_rendered(server):
    server.config.enhance_model = "good"
    created = server.client.post("/v1/videos", json={"prompt": IDEA, "enhance": True, "seconds": 1})
    assert created.status_code == 200, created.text
    body = created.json()
    assert (body["prompt"], body["enhanced_prompt"]) == (IDEA, GOOD_ANSWER)
    assert not any("the prompt has" in n for n in body["notices"])  # the short-prompt note was about the idea
    assert server.client.get(f"/v1/videos/{body['id']}").json()["enhanced_prompt"] == GOOD_ANSWER
    assert rendered_prompt(server, body["id"]) == GOOD_ANSWER
    plain = server.client.post("/v1/videos", data={"prompt": IDEA, "seconds": "1", "enhance": "false"}).json()
    assert plain["enhanced_prompt"] is None and any("the prompt has 9 words" in n for n in plain["notices"])
    assert rendered_prompt(server, plain["id"]) == IDEA


def test_failed_enhancement_renders_the_prompt_with_a_notice(server):
    server.config.enhance_model = "fail500"
    body = server.client.post("/v1/videos", data={"prompt": IDEA, "enhance": "true", "seconds": "1"}).json()
    assert body["enhanced_prompt"] is None
    assert any(n.startswith("prompt enhancement failed") and "HTTP 500" in n for n in body["notices"])
    assert rendered_prompt(server, body["id"]) == IDEA


def test_enhance_without_an_enhancer_is_refused(server, llm):
    server.config.enhance_url = None
    before = len(llm.requests)
    answer = server.client.post("/v1/videos", json={"prompt": IDEA, "enhance": True})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == ("enhance", "enhance_unavailable")
    assert "--enhance-url" in error["message"] and len(llm.requests) == before


def test_bad_request_costs_no_enhancer_call(server, llm):
    server.config.enhance_model = "good"
    before = len(llm.requests)
    answer = server.client.post("/v1/videos", json={"prompt": IDEA, "enhance": True, "size": "10x10"})
    assert answer.status_code == 400 and len(llm.requests) == before


def test_server_enhancer_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="not an http"):
        ServeConfig(data_dir=tmp_path, enhance_url="localhost:9", enhance_model="m").check()
    ServeConfig(data_dir=tmp_path, enhance_url="http://localhost:9/v1", enhance_model="m").check()
