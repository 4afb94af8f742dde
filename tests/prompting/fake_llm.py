"""A fake OpenAI-compatible chat endpoint on 127.0.0.1, and fixed answers (helpers of the prompting tests).

The request's ``model`` field picks the behaviour, so one server serves every case:

* ``good``: a well-formed three-part prompt (:data:`GOOD_ANSWER`); ``demo``: another (:data:`DEMO_ANSWER`), in
  words the demo bundle's tokenizer knows (its text encoder then sees 300 tokens instead of 640: a faster demo run);
* ``fixable``: the same scene with a Mandarin line, in a code fence, with a markdown header, unspaced CJK and
  no ``Background Sound:`` part (every problem mechanical);
* ``no-dialogue``: the main body alone; ``bad-then-good``: that first, then :data:`GOOD_ANSWER`;
* ``empty``: an empty message; ``not-json``: a 200 answer of plain text; ``no-choices``: JSON without choices;
* ``fail500``: HTTP 500 with an OpenAI-style error body; ``slow``: :data:`GOOD_ANSWER` after :data:`SLOW_SECONDS`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = (
    "A woman in her thirties with shoulder-length black hair, wearing a mustard-yellow knit sweater, sits at a "
    "wooden kitchen table in a bright apartment. Her overall mood is warm and quietly amused. She keeps her torso "
    "and shoulders still, facing the camera in a static medium close-up shot at eye level. Her outer brows lift "
    "slightly and the corners of her lips draw upward into a soft, closed-mouth smile. She takes a short breath "
    "through her nose, then her jaw lowers and her lips part as she says, {line} Her voice is warm, unhurried, "
    "medium in pitch and moderate in volume. As she finishes, her cheeks lift and fine creases form at the outer "
    "corners of her eyes. Her head tilts a few degrees to the right and settles. Soft daylight enters from a "
    "window on the left, lighting one side of her face and leaving a gentle shadow on the other. The shelves and "
    "plants behind her stay still and slightly out of focus, while her face remains sharp and centred in the frame."
)
#: 174 words without the quoted line.
BODY_WORDS = 174
ENGLISH_LINE = '"Good morning, everyone, the coffee is ready."'
GOOD_ANSWER = (BODY.format(line=ENGLISH_LINE) + "\n\nDialogue:\n<Woman in yellow sweater, English>: "
               + ENGLISH_LINE + "\n\nBackground Sound:\n<Faint hum of a refrigerator>")
MANDARIN_LINE = '"早上好，咖啡好了。"'
FIXABLE_ANSWER = ("```\n" + BODY.format(line=MANDARIN_LINE) + "\n\n**Dialogue:**\n<Woman in yellow sweater, Mandarin>: "
                  + MANDARIN_LINE + "\n```")
#: What the repairs make of :data:`FIXABLE_ANSWER`.
FIXED_ANSWER = (BODY.format(line='"早 上 好，咖 啡 好 了。"') + "\n\nDialogue:\n<Woman in yellow sweater, Mandarin>: "
                '"早 上 好，咖 啡 好 了。"\n\nBackground Sound:\n<No prominent background sound>')
NO_DIALOGUE_ANSWER = BODY.format(line=ENGLISH_LINE)
DEMO_ANSWER = (
    "A young man with hair, wearing a shirt and a jacket, is sitting in a quiet studio room. His voice is calm and "
    "warm, and his face is friendly. The camera shot is a front view close-up, and the camera is static. His eyes "
    "are looking directly at the camera. His head is very still, and his mouth and lips move slowly as he says, "
    '"hello, thank you." His voice is soft, clear and calm. The light on his face is warm morning light from the '
    "window. The background is a quiet office room, and it is very still. His eyes are smiling, and his lips are "
    "soft. Now his head is still, and his face is calm and happy. The lighting is soft, the background is still, and "
    "his face is clear in the shot. His hands are not in the shot. The sound is quiet, and the room is very still."
    '\n\nDialogue:\n<Young man in shirt, English>: "hello, thank you."\n\nBackground Sound:\n'
    "<No prominent background sound>"
)
SLOW_SECONDS = 2.0


class FakeChatServer:
    """The fake endpoint, serving in a thread; ``requests`` records every JSON body received (with headers)."""

    def __init__(self):
        self.requests: list[dict] = []
        self._seen: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                server.answer(self, body.get("model", ""))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, handler: BaseHTTPRequestHandler, model: str) -> None:
        count = self._seen[model] = self._seen.get(model, 0) + 1
        if model == "fail500":
            return _send(handler, 500, json.dumps({"error": {"message": "the model crashed"}}))
        if model == "not-json":
            return _send(handler, 200, "hello, not json", "text/plain")
        if model == "no-choices":
            return _send(handler, 200, json.dumps({"object": "chat.completion"}))
        if model == "slow":
            time.sleep(SLOW_SECONDS)
        text = {"good": GOOD_ANSWER, "slow": GOOD_ANSWER, "demo": DEMO_ANSWER, "fixable": FIXABLE_ANSWER, "empty": "",
                "no-dialogue": NO_DIALOGUE_ANSWER,
                "bad-then-good": NO_DIALOGUE_ANSWER if count % 2 else GOOD_ANSWER}.get(model, "unknown model")
        _send(handler, 200, json.dumps({"object": "chat.completion", "model": model, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}))

    def for_model(self, model: str) -> list[dict]:
        """The requests received for ``model``."""
        return [r for r in self.requests if r.get("model") == model]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _send(handler: BaseHTTPRequestHandler, status: int, text: str, kind: str = "application/json") -> None:
    data = text.encode()
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout tests)
        pass
