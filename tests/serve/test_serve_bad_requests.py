"""Malformed requests against a real server: each gets a 4xx JSON error naming the field, none a 500, and
the server keeps working."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import PIL.Image
import pytest

from .conftest import FAKE_API_KEY
from .serve_helpers import ARTIFACTS, wait_for

pytestmark = pytest.mark.timeout(300)

OK = {"prompt": "A man says hello.", "seconds": 0.4, "size": "64x64"}
MISSING = "video_" + "0" * 32


def _png(width=8, height=8) -> bytes:
    out = io.BytesIO()
    PIL.Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _data(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def _bomb_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (checked before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def json_case(body, param, **extra):
    return ("post", "/v1/videos", {"json": body, **extra}, param)


def form_case(data, files, param):
    return ("post", "/v1/videos", {"data": data, "files": files}, param)


BIG = b"\x89PNG" + b"0" * (2 << 20)  # over the fake server's 1 MiB upload limit
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
TEXT = ("notes.png", b"this is a text file, not an image\n" * 20, "image/png")
FORM = {k: str(v) for k, v in OK.items()}

CUE = {"start": 11, "prompt": "She laughs."}
CASES = {
    # prompt schedules (the fake server's clips over 10 s run in windows of 5 s)
    "prompt cue in a clip made in one pass": json_case({**OK, "prompt_schedule": [{"start": 0.2, "prompt": "x"}]},
                                                       "prompt_schedule"),
    "prompt cue at zero": json_case({**OK, "seconds": 12, "prompt_schedule": [{**CUE, "start": 0}]},
                                    "prompt_schedule"),
    "prompt cue with an unknown key": json_case({**OK, "seconds": 12, "prompt_schedule": [{**CUE, "text": "x"}]},
                                                "prompt_schedule"),
    "prompt cue on the first window": json_case({**OK, "seconds": 12, "prompt_schedule": [{**CUE, "start": 1}]},
                                                "prompt_schedule"),
    "prompt cues out of order": json_case({**OK, "seconds": 12, "prompt_schedule": [CUE, {**CUE, "start": 6}]},
                                          "prompt_schedule"),
    "prompt schedule with enhance": json_case({**OK, "seconds": 12, "enhance": True, "prompt_schedule": [CUE]},
                                              "enhance"),
    "prompt schedule not JSON": form_case({**FORM, "seconds": "12", "prompt_schedule": "[{"}, None,
                                          "prompt_schedule"),
    # JSON fields
    "missing prompt": json_case({"seconds": 1}, "prompt"),
    "empty prompt": json_case({**OK, "prompt": ""}, "prompt"),
    "blank prompt": json_case({**OK, "prompt": "   \n "}, "prompt"),
    "prompt is a number": json_case({**OK, "prompt": 42}, "prompt"),
    "prompt is a list": json_case({**OK, "prompt": ["a", "b"]}, "prompt"),
    "prompt is null": json_case({**OK, "prompt": None}, "prompt"),
    "prompt too long": json_case({**OK, "prompt": "word " * 5000}, "prompt"),
    "negative seconds": json_case({**OK, "seconds": -1}, "seconds"),
    "zero seconds": json_case({**OK, "seconds": 0}, "seconds"),
    "huge seconds": json_case({**OK, "seconds": 1e9}, "seconds"),
    "seconds not a number": json_case({**OK, "seconds": "four"}, "seconds"),
    "seconds NaN": json_case({**OK, "seconds": "NaN"}, "seconds"),
    "seconds infinite": json_case({**OK, "seconds": "inf"}, "seconds"),
    "seconds is a list": json_case({**OK, "seconds": [1]}, "seconds"),
    "seconds is an object": json_case({**OK, "seconds": {"value": 1}}, "seconds"),
    "size without x": json_case({**OK, "size": "64"}, "size"),
    "size letters": json_case({**OK, "size": "axb"}, "size"),
    "size negative": json_case({**OK, "size": "-64x64"}, "size"),
    "size zero": json_case({**OK, "size": "0x0"}, "size"),
    "size too small": json_case({**OK, "size": "16x16"}, "size"),
    "size huge": json_case({**OK, "size": "99999x99999"}, "size"),
    "size is a number": json_case({**OK, "size": 64}, "size"),
    "size three parts": json_case({**OK, "size": "64x64x3"}, "size"),
    "seed negative": json_case({**OK, "seed": -1}, "seed"),
    "seed too large": json_case({**OK, "seed": 2**64}, "seed"),
    "seed not a number": json_case({**OK, "seed": "lucky"}, "seed"),
    "seed fractional": json_case({**OK, "seed": 1.5}, "seed"),
    "unknown preset": json_case({**OK, "model": "sora-2"}, "model"),
    "path-like preset": json_case({**OK, "model": "../../etc/passwd"}, "model"),
    "preset not served": json_case({**OK, "model": "base"}, "model"),
    "preset is a number": json_case({**OK, "model": 5}, "model"),
    "negative prompt is a number": json_case({**OK, "negative_prompt": 3}, "negative_prompt"),
    "unknown field": json_case({**OK, "quality": "hd"}, "quality"),
    "image as a file path": json_case({**OK, "input_reference": "/etc/passwd"}, "input_reference"),
    "image as a relative path": json_case({**OK, "input_reference": "../../data/jobs.sqlite3"}, "input_reference"),
    "image as a web URL": json_case({**OK, "input_reference": "https://example.com/a.png"}, "input_reference"),
    "image as a file URL": json_case({**OK, "input_reference": "file:///etc/passwd"}, "input_reference"),
    "image data URL not base64": json_case({**OK, "input_reference": "data:image/png;base64,!!!"}, "input_reference"),
    "image data URL of text": json_case({**OK, "input_reference": _data("image/png", b"hello" * 10)},
                                        "input_reference"),
    "image data URL of a GIF": json_case({**OK, "input_reference": _data("image/gif", GIF)},
                                         "input_reference"),
    "image claims 10^10 pixels": json_case({**OK, "input_reference": _data("image/png", _bomb_png())},
                                           "input_reference"),
    "image is a number": json_case({**OK, "input_reference": 7}, "input_reference"),
    "audio as a file path": json_case({**OK, "audio": "/etc/hostname"}, "audio"),
    "audio data URL of an image": json_case({**OK, "audio": _data("audio/wav", _png())}, "audio"),
    "audio data URL of text": json_case({**OK, "audio": _data("audio/wav", b"RIFF but not really" * 5)}, "audio"),
    # multipart
    "form: text file as the image": form_case(FORM, {"input_reference": TEXT}, "input_reference"),
    "form: empty image": form_case(FORM, {"input_reference": ("a.png", b"", "image/png")}, "input_reference"),
    "form: truncated PNG": form_case(FORM, {"input_reference": ("a.png", _png(64, 64)[:60], "image/png")},
                                     "input_reference"),
    "form: oversized image": form_case(FORM, {"input_reference": ("big.png", BIG, "image/png")},
                                       "input_reference"),
    "form: text file as the audio": form_case(FORM, {"audio": ("a.wav", b"not audio\n" * 50, "audio/wav")}, "audio"),
    "form: image as the audio": form_case(FORM, {"audio": ("a.wav", _png(), "audio/wav")}, "audio"),
    "form: prompt missing": form_case({"seconds": "1"}, {}, "prompt"),
    "form: seconds not a number": form_case({**FORM, "seconds": "abc"}, {}, "seconds"),
    "form: size not WxH": form_case({**FORM, "size": "big"}, {}, "size"),
    "form: prompt sent as a file": form_case({"seconds": "1"}, {"prompt": ("p.txt", b"hello", "text/plain")}, "prompt"),
    "form: unknown file field": form_case(FORM, {"mask": ("m.png", _png(), "image/png")}, "mask"),
    "form: image given twice": ("post", "/v1/videos", {"data": FORM, "files": [
        ("input_reference", ("a.png", _png(), "image/png")), ("input_reference", ("b.png", _png(), "image/png"))]},
        "input_reference"),
    # body and headers
    "invalid JSON": ("post", "/v1/videos", {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
                     "body"),
    "JSON array": ("post", "/v1/videos", {"json": [OK]}, "body"),
    "plain text body": ("post", "/v1/videos", {"content": b"prompt=hi", "headers": {"Content-Type": "text/plain"}},
                        "Content-Type"),
    "body over the limit": ("post", "/v1/videos", {"content": b"x" * (5 << 20),
                                                   "headers": {"Content-Type": "application/json"}}, "body"),
    "idempotency key too long": json_case(OK, "Idempotency-Key", headers={"Idempotency-Key": "k" * 300}),
    "no API key": ("post", "/v1/videos", {"json": OK, "headers": {"Authorization": ""}}, "Authorization"),
    "wrong API key": ("get", "/v1/videos", {"headers": {"Authorization": "Bearer wrong"}}, "Authorization"),
    "basic auth instead of bearer": ("get", "/v1/models", {"headers": {"Authorization": "Basic dXNlcjpwYXNz"}},
                                     "Authorization"),
    # ids and query parameters
    "unknown video": ("get", f"/v1/videos/{MISSING}", {}, "video_id"),
    "id that is not an id": ("get", "/v1/videos/not-an-id", {}, "video_id"),
    "path traversal id": ("get", "/v1/videos/..%2F..%2Fjobs.sqlite3", {}, "video_id"),
    "content of an unknown video": ("get", f"/v1/videos/{MISSING}/content", {}, "video_id"),
    "unknown content variant": ("get", f"/v1/videos/{MISSING}/content", {"params": {"variant": "spritesheet"}},
                                "variant"),
    "delete an unknown video": ("delete", f"/v1/videos/{MISSING}", {}, "video_id"),
    "cancel an unknown video": ("post", f"/v1/videos/{MISSING}/cancel", {}, "video_id"),
    "list limit zero": ("get", "/v1/videos", {"params": {"limit": 0}}, "limit"),
    "list limit huge": ("get", "/v1/videos", {"params": {"limit": 10**6}}, "limit"),
    "list limit not a number": ("get", "/v1/videos", {"params": {"limit": "ten"}}, "limit"),
    "list order unknown": ("get", "/v1/videos", {"params": {"order": "sideways"}}, "order"),
    "list after an unknown id": ("get", "/v1/videos", {"params": {"after": MISSING}}, "after"),
}


def test_malformed_requests_get_4xx_naming_the_field(fake_server):
    assert len(CASES) >= 50
    results = {}
    with fake_server.client() as client:
        for name, (method, path, kwargs, param) in CASES.items():
            response = client.request(method.upper(), path, **kwargs)
            assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
            assert "error" in response.json(), f"{name}: {response.status_code} {response.text[:300]}"
            error = response.json()["error"]
            assert error["param"] == param, f"{name}: param {error['param']!r}, expected {param!r}: {error}"
            assert error["message"] and error["type"], name
            results[name] = response.status_code
        # the server is still up and still works
        assert client.get("/healthz").json()["status"] == "ok"
        job = client.post("/v1/videos", json=OK).json()
        assert wait_for(client, job["id"], timeout=60)["status"] == "completed"
    assert not list((fake_server.data_dir / "videos").glob("*/.*.upload"))  # no upload left half-written
    by_status: dict[int, int] = {}
    for status in results.values():
        by_status[status] = by_status.get(status, 0) + 1
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "serve_bad_requests.json").write_text(json.dumps(
        {"cases": len(results), "by_status": by_status, "server_errors": 0, "results": results}, indent=2) + "\n")
    print(f"bad requests: {len(results)} cases, by status {dict(sorted(by_status.items()))}, no 5xx")


def test_refused_requests_leave_no_job_folders(fake_server):
    before = {p.name for p in (fake_server.data_dir / "videos").iterdir()}
    with httpx.Client(base_url=fake_server.url, headers={"Authorization": f"Bearer {FAKE_API_KEY}"}) as client:
        for body in ({**OK, "seconds": -1}, {**OK, "input_reference": _data("image/png", b"x" * 40)}):
            assert client.post("/v1/videos", json=body).status_code in (400, 415)
    assert {p.name for p in (fake_server.data_dir / "videos").iterdir()} == before
