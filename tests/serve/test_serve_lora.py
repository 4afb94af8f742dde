"""LoRA adapters through the server: ``--lora-dir`` listed by ``GET /v1/models``, the request's ``loras`` checked
before queueing (fake pipeline), and a worker on the demo pipeline applying a job's adapter for that job only."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from magihuman.pipeline.lora import inject_lora, lora_config, lora_layers, save_lora_file, target_regex
from magihuman.pipeline.lora_files import METADATA_KEY
from magihuman.serve.config import ConfigError, ServeConfig
from magihuman.serve.worker import Worker, load_official_pipeline

from .serve_helpers import InProcess

PROMPT = "A man in a blue shirt stands in a kitchen and says: \"Good morning.\""
SMALL = {"prompt": PROMPT, "seconds": 0.4, "size": "64x64"}


def write_header_only_adapter(path, rank: int = 4) -> None:
    """An adapter file by its header (rank 4, alpha 4) whose one tensor fits no transformer."""
    settings = {"rank": rank, "alpha": float(rank), "target_modules": "x", "base_config": {}}
    save_file({"block.layers.99.nothing.lora_A.weight": torch.zeros(rank, 8)}, str(path),
              metadata={"format": "pt", METADATA_KEY: json.dumps(settings)})


@pytest.fixture
def lora_server(tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    write_header_only_adapter(loras / "style.safetensors")
    write_header_only_adapter(loras / "v2.face-1.safetensors", rank=2)
    (loras / "notes.safetensors").write_bytes(b"not a safetensors file")
    (loras / "readme.txt").write_text("ignored")
    server = InProcess(tmp_path / "data", lora_dir=loras)
    yield server
    server.close()


def test_models_lists_the_adapters_of_the_lora_dir(lora_server, inproc):
    body = lora_server.client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == ["distill"]
    assert body["loras"] == [{"name": "style", "object": "lora", "rank": 4, "alpha": 4.0},
                             {"name": "v2.face-1", "object": "lora", "rank": 2, "alpha": 2.0}]
    assert inproc.client.get("/v1/models").json()["loras"] == []  # no --lora-dir: none


def test_valid_loras_are_queued_and_shown_json_and_multipart(lora_server):
    created = lora_server.client.post("/v1/videos", json={**SMALL, "loras": [{"name": "style", "scale": -0.5},
                                                                             {"name": "v2.face-1"}]})
    assert created.status_code == 200, created.text
    assert created.json()["loras"] == [{"name": "style", "scale": -0.5}, {"name": "v2.face-1", "scale": 1.0}]
    form = {**SMALL, "seconds": "0.4", "loras": json.dumps([{"name": "style", "scale": 4}])}
    created = lora_server.client.post("/v1/videos", data=form)
    assert created.status_code == 200, created.text
    assert created.json()["loras"] == [{"name": "style", "scale": 4.0}]
    job = lora_server.store.get(created.json()["id"])
    assert job.params["loras"] == [{"name": "style", "scale": 4.0}]
    plain = lora_server.client.post("/v1/videos", json=SMALL).json()
    assert plain["loras"] == [] and "loras" not in lora_server.store.get(plain["id"]).params


@pytest.mark.parametrize("loras, code", [
    ([{"name": "missing", "scale": 1}], "lora_not_found"),
    ([{"name": "notes", "scale": 1}], "lora_not_found"),  # a file that is not an adapter
    ([{"name": "../style", "scale": 1}], "invalid_value"),
    ([{"name": "x" * 65}], "invalid_value"),
    ([{"name": "style", "scale": 4.5}], "invalid_value"),
    ([{"name": "style", "scale": -4.01}], "invalid_value"),
    ([{"name": "style", "scale": "nan"}], "invalid_value"),
    ([{"name": "style", "scale": "inf"}], "invalid_value"),
    ([{"name": "style", "path": "/etc/passwd"}], "unknown_field"),
    ([{"name": "style"}, {"name": "style", "scale": 0.5}], "invalid_value"),
    ("style", "invalid_value"),
    ([{"name": "style"}] * 9, "invalid_value"),
])
def test_bad_loras_are_refused_before_queueing(lora_server, loras, code):
    answer = lora_server.client.post("/v1/videos", json={**SMALL, "loras": loras})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "loras" and error["code"] == code, error
    assert lora_server.store.count_active() == 0
    assert not list(lora_server.config.videos_dir.glob("video_*"))


def test_multipart_loras_must_be_json(lora_server):
    schema = lora_server.client.get("/openapi.json").json()["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert schema["multipart/form-data"]["schema"]["properties"]["loras"]["type"] == "string"
    assert schema["application/json"]["schema"]["properties"]["loras"]["type"] == "array"
    answer = lora_server.client.post("/v1/videos", data={**SMALL, "seconds": "0.4", "loras": "style:0.8"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "loras"


def test_loras_on_a_server_without_lora_dir_are_refused(inproc):
    answer = inproc.client.post("/v1/videos", json={**SMALL, "loras": [{"name": "style"}]})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "loras" and "--lora-dir" in answer.json()["error"]["message"]


def test_lora_dir_must_be_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="--lora-dir"):
        ServeConfig(data_dir=tmp_path, lora_dir=tmp_path / "absent").check()
    config = ServeConfig(data_dir=tmp_path, lora_dir=tmp_path)
    assert ServeConfig.from_json(config.to_json()).lora_dir == tmp_path


def test_fake_pipeline_worker_fails_a_lora_job_with_a_clear_code(lora_server):
    lora_server.start_worker()
    job = lora_server.client.post("/v1/videos", json={**SMALL, "loras": [{"name": "style"}]}).json()
    done = lora_server.wait(job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "lora_unsupported"
    plain = lora_server.client.post("/v1/videos", json=SMALL).json()
    assert lora_server.wait(plain["id"])["status"] == "completed"


class RecordingWorker(Worker):
    """A worker keeping every pipeline output (frames and audio) for bitwise comparison."""

    outputs: list

    def _call_pipeline(self, pipe, request, on_step_end):
        out = super()._call_pipeline(pipe, request, on_step_end)
        self.outputs.append(out)
        return out


def write_tiny_adapter(transformer, path) -> None:
    """A rank-2 adapter on every attention QKV linear with non-zero B (so it changes the output)."""
    model = copy.deepcopy(transformer)
    inject_lora(model, lora_config(2, 2.0, target_regex([r"attention\.linear_qkv"])))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model):
            weight = layer.lora_B["default"].weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    save_lora_file(model, path)


@pytest.mark.timeout(300)
def test_demo_worker_applies_a_jobs_adapter_for_that_job_only(tmp_path, demo_root):
    loras = tmp_path / "loras"
    loras.mkdir()
    pipe = load_official_pipeline(demo_root, "distill", "cpu")
    write_tiny_adapter(pipe.transformer, loras / "tiny.safetensors")
    write_header_only_adapter(loras / "other-model.safetensors")
    server = InProcess(tmp_path / "data", lora_dir=loras)
    worker = RecordingWorker(server.config, server.store, {"distill": pipe}, worker_id="demo")
    worker.outputs = []

    def run(body: dict) -> dict:
        job = server.client.post("/v1/videos", json=body)
        assert job.status_code == 200, job.text
        assert worker.run_once()
        return server.client.get(f"/v1/videos/{job.json()['id']}").json()

    try:
        assert run(SMALL)["status"] == "completed"
        assert run({**SMALL, "loras": [{"name": "tiny", "scale": 1.0}]})["status"] == "completed"
        assert all(layer.scaling["serve_0"] == 0 for layer in lora_layers(pipe.transformer))  # restored
        assert run(SMALL)["status"] == "completed"
        failed = run({**SMALL, "loras": [{"name": "other-model"}]})
        assert failed["status"] == "failed" and failed["error"]["code"] == "lora_mismatch"
        assert "does not fit" in failed["error"]["message"]
        assert run(SMALL)["status"] == "completed"
    finally:
        server.close()
    base, adapted, again, after_failure = worker.outputs
    assert not np.array_equal(base.frames, adapted.frames)
    for out in (again, after_failure):  # the base output bit for bit after an adapter job and a failed one
        assert np.array_equal(base.frames, out.frames) and np.array_equal(base.audio, out.audio)
