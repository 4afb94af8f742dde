"""The web page: a Gradio app mounted at ``/`` of the API server, feeding the same job queue.

A person fills the prompt (the placeholder shows the long-prompt structure the model was tuned for,
architecture.md §13.4), optionally a first-frame image and a driving audio track, the preset, length, size and
seed, and for clips over one window up to :data:`UI_PROMPT_CUES` later prompts with their start times (the API's
``prompt_schedule``, docs/long_clips.md), and presses Generate. The page creates a job through
:meth:`JobService.create` (the same checks as the API, uploads decoded), follows the job's ``progress`` in a
progress bar, then plays the MP4 with a download button. A table lists this server's recent jobs. No model is
loaded in this process: the workers render, as for API clients.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

import gradio as gr
from fastapi import FastAPI

from magihuman.pipeline.validation import MAX_LONG_SECONDS
from magihuman.serve.jobs import IncomingUpload, JobService
from magihuman.serve.store import TERMINAL, IdempotencyConflict, QueueFull
from magihuman.serve.uploads import RequestError

__all__ = ["build_ui", "mount_ui", "PROMPT_EXAMPLE", "UI_PROMPT_CUES"]

#: Shown as the prompt's placeholder: the three-paragraph structure of the official prompts (architecture.md §13.4):
#: a dense description (people, scene, what is said in quotes, delivery, camera), then ``Dialogue:`` and
#: ``Background Sound:`` paragraphs. Our own words.
PROMPT_EXAMPLE = (
    "A woman in her thirties with short curly hair and a grey wool coat stands on a quiet train platform at dusk, "
    "facing the camera. Warm station lights glow behind her and a train waits out of focus. She smiles briefly, "
    "then says in a calm, friendly voice, \"The last train leaves in ten minutes, so let's not be late.\" Her "
    "breath shows in the cold air. The camera holds a static medium close-up at eye level with soft, even light.\n\n"
    "Dialogue:\n<Woman in grey coat, English>: \"The last train leaves in ten minutes, so let's not be late.\"\n\n"
    "Background Sound:\n<Distant station announcements and a low hum of the waiting train>"
)
#: Later prompts the page offers (the API takes up to 32).
UI_PROMPT_CUES = 3
_HISTORY_HEADERS = ["id", "status", "progress", "model", "seconds", "size", "created (UTC)"]
_POLL_SECONDS = 0.4


def _history(service: JobService, limit: int = 20) -> list[list[Any]]:
    jobs, _ = service.store.list(limit=limit)
    return [[job.id, job.status, job.progress, job.model, f"{float(job.params['seconds']):g}",
             job.params.get("rendered_size", job.params["size"]),
             datetime.fromtimestamp(job.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")] for job in jobs]


def build_ui(service: JobService) -> gr.Blocks:
    """The page's Blocks; every action goes through ``service`` (the job queue)."""
    config = service.config
    with gr.Blocks(title="magihuman", analytics_enabled=False) as page:
        gr.Markdown("# magihuman\nA talking-human video with synchronized speech from a prompt. Optional: a first "
                    "frame (image-to-video) and a driving speech track (audio-to-video).")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=8, placeholder=PROMPT_EXAMPLE, elem_id="prompt",
                                    info="150-200 words: who, where, what they say in quotes and how; then "
                                         "'Dialogue:' and 'Background Sound:' paragraphs (see the example).")
                with gr.Row():
                    image = gr.Image(label="First frame (optional)", type="filepath", sources=["upload"])
                    audio = gr.Audio(label="Driving audio (optional)", type="filepath", sources=["upload"])
                with gr.Row():
                    model = gr.Dropdown(list(config.models), value=config.models[0], label="Preset", elem_id="model")
                    longest = config.max_seconds or MAX_LONG_SECONDS
                    seconds = gr.Number(min(4.0, longest), label="Seconds", minimum=0.04, maximum=longest, step=0.04,
                                        elem_id="seconds")
                    size = gr.Textbox("448x256", label="Size (WxH, px)", elem_id="size")
                    seed = gr.Number(42, label="Seed", precision=0, minimum=0, elem_id="seed")
                cues = []
                with gr.Accordion("Later prompts (clips over 10 s)", open=False):
                    for k in range(UI_PROMPT_CUES):
                        with gr.Row():
                            cues.append(gr.Number(None, label="From (s)", minimum=0, step=0.04, scale=1,
                                                  elem_id=f"cue{k}_start"))
                            cues.append(gr.Textbox(label=f"Prompt {k + 2}", lines=3, scale=4, elem_id=f"cue{k}_prompt",
                                                   info="Takes over at the window nearest that time; empty: unused."))
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                video = gr.Video(label="Result", interactive=False, buttons=["download"], elem_id="result")
                status = gr.Markdown("", elem_id="status")
        with gr.Accordion("History", open=True):
            history = gr.Dataframe(headers=_HISTORY_HEADERS, value=None, interactive=False, elem_id="history")
            refresh = gr.Button("Refresh", size="sm")

        def run(prompt_text, image_path, audio_path, model_name, length, size_text, seed_value, start1, prompt1,
                start2, prompt2, start3, prompt3, progress=gr.Progress()):  # noqa: B008 - Gradio's progress bar
            job = _create(service, prompt_text, image_path, audio_path, model_name, length, size_text, seed_value,
                          [(start1, prompt1), (start2, prompt2), (start3, prompt3)])
            progress(0.0, desc="queued")
            while job.status not in TERMINAL:
                time.sleep(_POLL_SECONDS)
                job = service.get(job.id)
                if job is None:
                    raise gr.Error("the job was deleted")
                progress(job.progress / 100, desc=job.status.replace("_", " "))
            if job.status != "completed":
                reason = job.error_message or job.status
                raise gr.Error(f"{job.status}: {reason}")
            path = service.content_path(job, "video")
            return str(path), f"`{job.id}` completed", _history(service)

        generate.click(run, [prompt, image, audio, model, seconds, size, seed, *cues], [video, status, history],
                       concurrency_limit=None)
        refresh.click(lambda: _history(service), None, history, queue=False)
        page.load(lambda: _history(service), None, history, queue=False)
    return page


def _create(service: JobService, prompt_text, image_path, audio_path, model_name, length, size_text, seed_value,
            cues=()):
    fields = {"prompt": prompt_text or "", "model": model_name, "seconds": length, "size": (size_text or "").strip(),
              "seed": int(seed_value) if seed_value is not None else 42}
    schedule = _schedule(cues)
    if schedule:
        fields["prompt_schedule"] = schedule
    uploads: dict[str, IncomingUpload] = {}
    try:
        for field, path in (("input_reference", image_path), ("audio", audio_path)):
            if path:
                uploads[field] = IncomingUpload(open(path, "rb"))
        job, _ = service.create(fields, uploads)
    except RequestError as exc:
        raise gr.Error(f"{exc.field or 'request'}: {exc}") from None
    except (QueueFull, IdempotencyConflict) as exc:
        raise gr.Error(str(exc)) from None
    finally:
        for part in uploads.values():
            part.source.close()
    return job


def _schedule(cues) -> list[dict[str, Any]]:
    """The filled ``(start, prompt)`` rows as the API's ``prompt_schedule``; a prompt without a start, or a start
    without a prompt, is a :class:`gr.Error` naming the row."""
    schedule = []
    for k, (start, text) in enumerate(cues, start=2):
        if not (text or "").strip() and start is None:
            continue
        if start is None or not (text or "").strip():
            raise gr.Error(f"prompt {k}: give both its start time and its text, or neither")
        schedule.append({"start": float(start), "prompt": text})
    return schedule


def mount_ui(app: FastAPI, service: JobService) -> FastAPI:
    """Mount the page at ``/`` of ``app``; with an API key the page asks for it as the password (any user name)."""
    key: str | None = service.config.api_key
    auth = (lambda _user, password: secrets.compare_digest(str(password).encode(), key.encode())) if key else None
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # system fonts: no web font download
    return gr.mount_gradio_app(app, build_ui(service), path="/", auth=auth,
                               allowed_paths=[str(service.config.videos_dir)],
                               theme=theme, footer_links=["api"], ssr_mode=False,
                               max_file_size=service.config.max_upload_bytes)
