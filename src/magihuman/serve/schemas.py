"""Request and response models of the HTTP API, in the shape of the OpenAI Videos API.

Fields the OpenAI API has keep its names and meanings (``prompt``, ``model``, ``seconds``, ``size``,
``input_reference``, ``status``, ``progress``, ``created_at``, ``completed_at``, ``error``); the fields it
lacks are ours, named plainly (``seed``, ``audio``, ``negative_prompt``, ``started_at``, ``attempts``,
``notices``). Every field says its unit; the OpenAPI page at ``/docs`` shows these descriptions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from magihuman.pipeline.prompt_schedule import MAX_PROMPT_CUES
from magihuman.pipeline.validation import MAX_PROMPT_CHARS, MAX_SEED
from magihuman.serve.adapters import LORA_NAME_PATTERN, MAX_LORA_SCALE, MAX_LORAS

__all__ = [
    "CreateVideoRequest", "Video", "VideoError", "VideoList", "VideoDeleted", "Model", "ModelList",
    "ErrorBody", "ErrorResponse", "Health", "LoraRef", "LoraAdapter", "SIZE_PATTERN", "MAX_SEED", "MAX_PROMPT_CHARS",
]

#: ``WxH`` in pixels, each side 1-5 digits.
SIZE_PATTERN = r"^[0-9]{1,5}x[0-9]{1,5}$"

Status = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


class LoraRef(BaseModel):
    """One adapter of a request: a name from ``GET /v1/models`` (``loras``) and its strength."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=LORA_NAME_PATTERN, description="Adapter name (its file stem in the server's "
                                                              "--lora-dir): letters, digits, `.`, `_`, `-`; 1-64.")
    scale: float = Field(1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE, allow_inf_nan=False,
                         description="Multiplier of the adapter's alpha/rank, in [-4, 4]; 0 turns it off.")


class PromptCueRef(BaseModel):
    """One cue of a request's ``prompt_schedule``: from ``start`` seconds on, ``prompt``."""

    model_config = ConfigDict(extra="forbid")

    start: float = Field(gt=0, allow_inf_nan=False, description="Seconds from the clip's start; the window whose new "
                                                                "frames start nearest it takes the prompt over.")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The prompt from then on.")


class CreateVideoRequest(BaseModel):
    """Body of ``POST /v1/videos`` as JSON, or the text fields of the same request as multipart form data.

    As multipart, ``input_reference`` and ``audio`` are file parts. As JSON they are ``data:`` URLs
    (``data:image/png;base64,...``); file paths and web URLs are refused (the server never reads a path
    given by a client).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS,
        description="What to render: the scene, the people, what they say (in quotes) and how. The model was "
                    "tuned for 150-200 words; short prompts give blurry people. Characters, at most 20,000.")
    model: str = Field("distill", description="Preset: `distill` (8 steps, fast), `base` (32 steps with guidance), "
                                              "`sr_540p` or `sr_1080p` (base, then latent super-resolution). "
                                              "`GET /v1/models` lists the ones this server serves.")
    seconds: float = Field(4.0, gt=0, allow_inf_nan=False,
                           description="Clip length in seconds (a number or a decimal string), rounded to 1/25 s. "
                                       "With `audio`, at most the track's length is used.")
    size: str = Field("448x256", pattern=SIZE_PATTERN,
                      description="`WIDTHxHEIGHT` in pixels of the base stage; each side is rounded down to a multiple "
                                  "of 32 (480x272 renders 480x256). SR presets render their own output size.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of every noise draw: the same request and seed give "
                                                          "the same clip on the same hardware.")
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS,
        description="Text to steer away from (presets with guidance: base, sr_*). Default: a built-in list of defects.")
    input_reference: str | None = Field(
        None, description="First-frame image (image-to-video): a multipart file part, or a `data:image/...;base64,` "
                          "URL in JSON. PNG, JPEG, WebP or BMP; checked by decoding it.")
    audio: str | None = Field(
        None, description="Driving speech track (audio-to-video): a multipart file part, or a `data:audio/...;base64,` "
                          "URL in JSON. WAV, MP3, FLAC, OGG or M4A; checked by decoding it. Its speech is kept.")
    loras: list[LoraRef] = Field(
        default_factory=list, max_length=MAX_LORAS,
        description="LoRA adapters for this job only, at most 8: `[{\"name\": \"style\", \"scale\": 0.8}]` (in "
                    "multipart: a `loras` field holding that JSON). Names come from `GET /v1/models`.")
    prompt_schedule: list[PromptCueRef] = Field(
        default_factory=list, max_length=MAX_PROMPT_CUES,
        description="Clips made in windows (over 10 s): later prompts, in time order, at most 32: `[{\"start\": 10, "
                    "\"prompt\": \"...\"}]` (in multipart: a `prompt_schedule` field holding that JSON). `prompt` "
                    "holds from 0 s; the notices say when each cue takes over.")
    enhance: bool = Field(
        False, description="Rewrite the prompt into the 150-200-word three-part structure the model was tuned on, "
                           "with the server's language model (started with --enhance-url), before queueing; the "
                           "request waits for it. If the enhancer fails, the prompt is rendered as given and a "
                           "notice says why.")


class VideoError(BaseModel):
    """Why a job failed or was cancelled."""

    code: str = Field(description="Machine-readable reason: `generation_failed`, `worker_lost` (its worker stopped "
                                  "responding on every attempt), `cancelled`, `output_failed`, `lora_mismatch` "
                                  "(an adapter does not fit the loaded model), `lora_unsupported`.")
    message: str = Field(description="What happened, for a person.")


class Video(BaseModel):
    """A video job and, once completed, its result."""

    id: str = Field(description="Job id: `video_` followed by 32 random hex digits.")
    object: Literal["video"] = "video"
    model: str = Field(description="The preset rendering it.")
    status: Status = Field(description="`queued`, `in_progress`, `completed`, `failed` or `cancelled`.")
    progress: int = Field(ge=0, le=100, description="Percent done, 0-100, counted in denoising steps over all stages.")
    created_at: int = Field(description="When the job was accepted, Unix seconds.")
    started_at: int | None = Field(None, description="When its current (last) run started, Unix seconds.")
    completed_at: int | None = Field(None, description="When it completed, failed or was cancelled, Unix seconds.")
    expires_at: int | None = Field(None, description="Always null: results are kept until deleted.")
    seconds: str = Field(description="Requested clip length in seconds, as a decimal string.")
    size: str = Field(description="Rendered `WIDTHxHEIGHT` in pixels (SR presets: the SR output size).")
    prompt: str = Field(description="The prompt.")
    seed: int = Field(description="The seed.")
    attempts: int = Field(description="Runs started (more than 1 when a worker died and the job was re-run).")
    notices: list[str] = Field(default_factory=list,
                               description="Notes from the input checks: rounding of sizes and seconds, short prompts.")
    loras: list[LoraRef] = Field(default_factory=list, description="The adapters the job renders with.")
    enhanced_prompt: str | None = Field(None, description="The prompt rendered, when `enhance` rewrote `prompt`; "
                                                          "null otherwise.")
    prompt_schedule: list[PromptCueRef] = Field(default_factory=list, description="The later prompts, as requested.")
    error: VideoError | None = Field(None, description="Set when `status` is `failed` or `cancelled`.")
    mode: Literal["generate", "extend", "retake"] = Field(
        "generate", description="`generate` (`POST /v1/videos`), `extend` or `retake` (`POST /v1/videos/extend`, "
                                "`/retake`: `seconds` is then the length added or regenerated).")


class VideoList(BaseModel):
    """A page of jobs, newest first."""

    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = Field(None, description="Id of the first job on this page.")
    last_id: str | None = Field(None, description="Id of the last job on this page: pass it as `after` for the next.")
    has_more: bool = Field(description="Whether more jobs follow this page.")


class VideoDeleted(BaseModel):
    """Answer of ``DELETE /v1/videos/{id}``."""

    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class Model(BaseModel):
    """A preset this server renders."""

    id: str = Field(description="Preset name, the `model` field of a request.")
    object: Literal["model"] = "model"
    created: int = Field(0, description="Unix seconds; 0 (the presets have no release time).")
    owned_by: str = "magihuman"
    description: str = Field("", description="Sampler and size of the preset.")


class LoraAdapter(BaseModel):
    """A LoRA adapter a request may name in ``loras``."""

    name: str = Field(description="The name to use in a request's `loras` (the file stem).")
    object: Literal["lora"] = "lora"
    rank: int = Field(description="Rank of its low-rank pairs.")
    alpha: float = Field(description="Its alpha: the scale multiplies alpha/rank.")


class ModelList(BaseModel):
    """Presets this server renders, and the LoRA adapters requests may name."""

    object: Literal["list"] = "list"
    data: list[Model]
    loras: list[LoraAdapter] = Field(default_factory=list,
                                     description="Adapters in the server's --lora-dir (empty without one).")


class ErrorBody(BaseModel):
    """One error."""

    message: str = Field(description="What is wrong and how to fix it.")
    type: str = Field(description="`invalid_request_error`, `authentication_error`, `not_found_error`, "
                                  "`rate_limit_error`, `conflict_error` or `server_error`.")
    param: str | None = Field(None, description="The field (or header) at fault, when there is one.")
    code: str | None = Field(None, description="Machine-readable reason.")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of the API."""

    error: ErrorBody


class Health(BaseModel):
    """``GET /healthz``."""

    status: Literal["ok"] = "ok"
    database: bool = Field(description="The job store answered.")
    queued: int = Field(description="Jobs waiting for a worker.")
    in_progress: int = Field(description="Jobs running.")
