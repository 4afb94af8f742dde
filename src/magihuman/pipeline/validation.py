"""The input boundary: every bad input is refused here, before any model loads.

The reference checks the prompt and the output only after loading every model (architecture.md §13.3),
so a typo costs a full model load. Here the CLI, the Python API
(:meth:`GenerationRequest.validate_inputs`) and the HTTP server call the same
:func:`validate_request`, cheapest checks first: numbers and sizes, seed, prompt length, preset
switches, the device and the runtime switches, prompt tokens, then every file opened and decoded
far enough to know it is usable, then the memory estimate against the device.

Every refusal is one :class:`InputError`: a one-line message naming what is wrong and how to fix it,
with :attr:`InputError.field` naming the request field (or option) at fault. Everything that is
accepted but changed (rounding, cut text, audio that sets the length) comes back as a notice.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from magihuman.codecs.audio_vae import LATENTS_PER_SECOND
from magihuman.codecs.video_vae import LATENT_CHANNELS, SPATIAL_STRIDE, latent_frames_for, pixel_frames
from magihuman.pipeline.errors import InputError, MissingInputError, expand_path
from magihuman.pipeline.loading import check_checkpoint_files, check_checkpoint_root
from magihuman.pipeline.presets import get_preset
from magihuman.pipeline.prompt_schedule import check_prompt_schedule
from magihuman.pipeline.windows import TURBO_DECODE_CHUNKS, WindowPlan, plan_windows, window_latent_frames

__all__ = [
    "InputError", "MissingInputError", "MAX_PROMPT_CHARS", "MAX_SEED", "MIN_SIZE", "MAX_BASE_SIDE", "MAX_SR_SIDE",
    "MAX_SECONDS", "MAX_LONG_SECONDS", "MAX_OVERLAP_FRAMES", "MAX_FADE_FRAMES", "long_clip_window", "request_windows",
    "MIN_AUDIO_SECONDS", "MAX_IMAGE_PIXELS", "RECOMMENDED_PROMPT_WORDS", "SHORT_PROMPT_NOTICE", "validate_request",
    "check_device", "check_runtime", "check_output_file", "check_checkpoint_root", "check_checkpoint_files",
    "estimate_memory", "device_memory", "expand_path",
]

#: Longest prompt accepted, in characters. The encoder keeps 640 tokens (architecture.md §11.2), roughly
#: 2,500 characters of English; 20,000 leaves room for any real prompt and refuses pasted files.
MAX_PROMPT_CHARS = 20_000
#: Largest seed: the CPU generator takes a signed 64-bit seed (architecture.md §8.5).
MAX_SEED = 2**63 - 1
#: Smallest rendered side in pixels: one 2x2 patch of 16-px VAE cells (architecture.md §13.2).
MIN_SIZE = 2 * SPATIAL_STRIDE
#: Largest base-stage side in pixels. The base and distilled DiTs generate at 256p (every official
#: example renders 448x256, the reference CLI defaults to 480x272, architecture.md §13.3, §13.1); larger
#: frames come from the SR presets. 896 (the 540p SR width) allows 896x512 or 512x896 directly.
MAX_BASE_SIDE = 896
#: Largest super-resolution side in pixels: the 1080p SR preset's 1920x1088 (architecture.md §13.1).
MAX_SR_SIDE = 1920
#: Longest clip in seconds generated in one pass (and longest window of a long clip): the original examples
#: render 4 s and its published timings are for 5 s clips (architecture.md §13.1, §14); 10 s is twice the
#: longest shown. Longer clips run in windows (docs/long_clips.md).
MAX_SECONDS = 10.0
#: Longest clip of a windowed run, seconds (ours, docs/long_clips.md): memory is one window's, time grows
#: with the number of windows.
MAX_LONG_SECONDS = 60.0
#: Most latent frames a window of a long clip may share with the previous one (ours; 8 = 1.28 s).
MAX_OVERLAP_FRAMES = 8
#: Most frames of a picture fade at an extend or retake join (1 s).
MAX_FADE_FRAMES = 25
#: Least driving audio that encodes to one latent frame (25 per second, architecture.md §11.5).
MIN_AUDIO_SECONDS = 1 / LATENTS_PER_SECOND
#: Largest first-frame image decoded, in pixels (an 8K frame is 33 MP; 50 MP covers phone photos).
MAX_IMAGE_PIXELS = 50_000_000
#: The prompt length the model was tuned for (architecture.md §13.4): shorter prompts give blurrier people.
RECOMMENDED_PROMPT_WORDS = 150
#: The words of the short-prompt notice that name the real model's prompt length (the CLI drops that notice for
#: the trained toy models, whose captions are short by design).
SHORT_PROMPT_NOTICE = "the model was tuned for 150-200 words"
#: Hidden width of the published 15B DiT (architecture.md §2.1), used when a checkpoint states none.
_DIT_HIDDEN = 5120
#: Activations of one DiT layer per token, in hidden-width units (Q/K/V/out plus the MLP input and
#: output, a lower bound: only one layer is alive at a time under inference mode).
_ACTIVATION_WIDTHS = 8
#: Video-latent copies alive in the sampler (noise, sample, velocity, solver history).
_LATENT_COPIES = 6


# ----------------------------------------------------------------------------------------- request
def validate_request(request: Any, *, device: Any = None, runtime: Any = None,
                     checkpoints: Mapping[str, Path] | None = None) -> list[str]:
    """Check a :class:`~magihuman.pipeline.request.GenerationRequest` before any model loads.

    Args:
        request: the request (its ``prompt``, ``image``, ``audio``, ``seconds``, ``width``, ``height``,
            ``seed``, ``preset``, ``negative_prompt``, ``sr_width``, ``sr_height``, ``sr_cfg_number``, and for long
            clips ``window_seconds``, ``overlap_frames``, ``prompt_schedule``).
        device: where it will run (``"cpu"``, ``"cuda:0"``, a ``torch.device``); None skips the device,
            runtime and memory checks.
        runtime: the :class:`RuntimeOptions` (checked against ``device``), or None.
        checkpoints: component name -> resolved path (``transformer``, ``text_encoder``, ...); when given,
            their files are checked, the tokenizer counts the prompt and the DiT size enters the estimate.

    Returns:
        Notices for the user (rounding, long or short prompt, audio that sets or is cut to the length).

    Raises:
        InputError: the first problem found (``MissingInputError`` for a missing file).
    """
    notices = _check_numbers(request)
    notices += _check_prompt(request)
    notices += check_prompt_schedule(request)
    if device is not None:
        device = check_device(device)
        check_runtime(runtime, device)
    if checkpoints:
        check_checkpoint_files(checkpoints)
    notices += _count_tokens(request.prompt, (checkpoints or {}).get("text_encoder"))
    audio_seconds = None
    if request.image is not None:
        notices += _check_image(request)
    if request.audio is not None:
        audio_seconds, more = _check_audio(request)
        notices += more
    if device is not None:
        _check_memory(request, device, runtime, checkpoints, audio_seconds)
    return notices


def _round(size: int) -> int:
    return (size // MIN_SIZE) * MIN_SIZE


def _check_numbers(request: Any) -> list[str]:
    """Seconds, sizes, seed, preset and its switches; notices for rounding."""
    notices: list[str] = []
    seconds = request.seconds
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"seconds must be a positive number, got {seconds}; e.g. 4", field="seconds")
    if seconds > MAX_LONG_SECONDS:
        raise InputError(f"seconds={seconds:g} is over the limit of {MAX_LONG_SECONDS:g} s (clips over "
                         f"{MAX_SECONDS:g} s run in windows); pass at most {MAX_LONG_SECONDS:g}", field="seconds")
    if round(seconds * LATENTS_PER_SECOND) < 1:
        raise InputError(f"seconds={seconds:g} is under one latent frame (1/25 s); pass at least 0.04",
                         field="seconds")
    if abs(seconds * LATENTS_PER_SECOND - round(seconds * LATENTS_PER_SECOND)) > 1e-6:
        notices.append(f"seconds {seconds} rounded to {round(seconds * 25) / 25:g} (1/25 s steps)")
    notices += _check_size(request.width, request.height, MAX_BASE_SIDE, "size", ("width", "height"))
    if isinstance(request.seed, bool) or not 0 <= request.seed <= MAX_SEED:
        raise InputError(f"seed must be in 0..2**63-1 ({MAX_SEED}), got {request.seed}; e.g. 42", field="seed")
    preset = get_preset(request.preset) if request.preset in _preset_names() else None
    if preset is None:
        raise InputError(f"unknown preset {request.preset!r}; choose one of {', '.join(_preset_names())}",
                         field="preset")
    notices += _check_sr(request, preset)
    notices += _check_windows(request, preset)
    uses_cfg = preset.sampler.cfg_number == 2 or (preset.sr is not None and request.sr_cfg_number == 2)
    if request.negative_prompt is not None and not uses_cfg:
        raise InputError(f"negative_prompt has no effect with preset {preset.name} (no CFG pass); drop it, or "
                         "use preset base (or an SR preset) where it steers the CFG pass", field="negative_prompt")
    return notices


def long_clip_window(request: Any) -> float | None:
    """The window length in seconds when ``request`` runs in windows (docs/long_clips.md), else None.

    Windows are used when ``window_seconds`` is given and shorter than ``seconds``, or when it is not given
    and ``seconds`` is over :data:`MAX_SECONDS` (then the preset's ``window_seconds``).
    """
    window = getattr(request, "window_seconds", None)
    if window is None:
        return get_preset(request.preset).window_seconds if request.seconds > MAX_SECONDS else None
    return float(window) if request.seconds > window else None


def request_windows(request: Any, audio_latents: int | None = None, prefix_frames: int = 0,
                    decode_chunks: tuple[int, int] | None = TURBO_DECODE_CHUNKS) -> WindowPlan:
    """The window plan of a long ``request`` (docs/long_clips.md): windows of :func:`long_clip_window` seconds
    sharing ``overlap_frames`` (default 2) latent frames, over a clip of ``audio_latents`` audio latents (None:
    ``25 s + 1`` of generated audio; a driving track's encoded length when there is one) with ``prefix_frames``
    given leading latent frames, for a video decoder whose chunks are ``decode_chunks``
    (:func:`~magihuman.pipeline.windows.decoder_chunks`; None: no chunk borders). Torch-free.

    Raises:
        ValueError: from :func:`~magihuman.pipeline.windows.plan_windows`, for a window that generates nothing.
    """
    from magihuman.pipeline.presets import DEFAULT_OVERLAP_FRAMES

    if audio_latents is None:
        audio_latents = int(round(request.seconds * LATENTS_PER_SECOND)) + 1
    window = long_clip_window(request) or request.seconds
    return plan_windows(latent_frames_for(audio_latents), audio_latents, window_frames=window_latent_frames(window),
                        overlap=request.overlap_frames or DEFAULT_OVERLAP_FRAMES, prefix_frames=prefix_frames,
                        decode_chunks=decode_chunks)


def _check_windows(request: Any, preset: Any) -> list[str]:
    """``window_seconds`` and ``overlap_frames`` of a long clip (docs/long_clips.md)."""
    window, overlap = getattr(request, "window_seconds", None), getattr(request, "overlap_frames", None)
    if window is not None and (not math.isfinite(window) or not 0 < window <= MAX_SECONDS):
        raise InputError(f"window_seconds must be in (0, {MAX_SECONDS:g}] (one pass at most), got {window}; "
                         "e.g. 5", field="window_seconds")
    if overlap is not None and (isinstance(overlap, bool) or not 1 <= overlap <= MAX_OVERLAP_FRAMES):
        raise InputError(f"overlap_frames must be 1..{MAX_OVERLAP_FRAMES} latent frames, got {overlap}; e.g. 2",
                         field="overlap_frames")
    windowed = long_clip_window(request)
    if windowed is None:
        return [] if overlap is None else ["overlap_frames has no effect: the clip is generated in one pass"]
    if preset.sr is not None:
        raise InputError(f"clips over one window ({windowed:g} s) run in windows, which the super-resolution "
                         f"presets do not support yet; use preset distill or base, or at most {windowed:g} s",
                         field="seconds")
    from magihuman.pipeline.presets import DEFAULT_OVERLAP_FRAMES

    frames, overlap = window_latent_frames(windowed), overlap or DEFAULT_OVERLAP_FRAMES
    if frames <= overlap:
        raise InputError(f"a window of {windowed:g} s holds {frames} latent frames, not more than the overlap of "
                         f"{overlap}; use longer windows or a smaller overlap_frames", field="window_seconds")
    count = len(request_windows(request).windows)
    return [f"the clip is generated in {count} windows of up to {windowed:g} s, each holding the last {overlap} latent "
            "frame(s) of the one before (docs/long_clips.md)"]


def _preset_names() -> list[str]:
    from magihuman.pipeline.presets import PRESETS

    return list(PRESETS)


def _check_size(width: int, height: int, limit: int, what: str, fields: tuple[str, str]) -> list[str]:
    for name, value in zip(fields, (width, height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SIZE:
            example = "896x512" if name.startswith("sr_") else "448x256"
            raise InputError(f"{name} must be at least {MIN_SIZE} pixels, got {value}; use e.g. {example}",
                             field=name)
        if value > limit:
            raise InputError(f"{name}={value} is over the limit of {limit} px for the {what}; pass at most "
                             f"{limit}" + ("" if fields[0] == "sr_width" else
                                          f" (for larger frames use an SR preset, up to {MAX_SR_SIDE} px)"),
                             field=name)
    rounded = (_round(width), _round(height))
    if rounded != (width, height):
        label = "size" if what == "size" else "SR size"
        return [f"{label} {width}x{height} rounded down to {rounded[0]}x{rounded[1]} (multiples of {MIN_SIZE} px)"]
    return []


def _check_sr(request: Any, preset: Any) -> list[str]:
    if request.sr_cfg_number is not None:
        if preset.sr is None:
            raise InputError(f"sr_cfg_number needs an SR preset (sr_540p, sr_1080p), not {request.preset!r}",
                             field="sr_cfg_number")
        if request.sr_cfg_number not in (1, 2):
            raise InputError(f"sr_cfg_number must be 1 or 2, got {request.sr_cfg_number}", field="sr_cfg_number")
    if (request.sr_width is None) != (request.sr_height is None):
        raise InputError("give both sr_width and sr_height (--sr-width and --sr-height), or neither",
                         field="sr_height" if request.sr_height is None else "sr_width")
    if request.sr_width is None:
        return []
    if preset.sr is None:
        raise InputError(f"preset {request.preset!r} has no super-resolution stage; use sr_540p or sr_1080p",
                         field="preset")
    return _check_size(request.sr_width, request.sr_height, MAX_SR_SIDE, "SR output", ("sr_width", "sr_height"))


def _check_prompt(request: Any) -> list[str]:
    prompt = request.prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty; pass --prompt TEXT or --prompt-file FILE", field="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt has {len(prompt):,} characters, over the limit of {MAX_PROMPT_CHARS:,} "
                         "(the text encoder keeps 640 tokens, about 2,500 characters); shorten it", field="prompt")
    negative = request.negative_prompt
    if negative is not None and len(negative) > MAX_PROMPT_CHARS:
        raise InputError(f"the negative prompt has {len(negative):,} characters, over the limit of "
                         f"{MAX_PROMPT_CHARS:,}; shorten it", field="negative_prompt")
    words = len(prompt.split())
    if words < RECOMMENDED_PROMPT_WORDS // 3:
        return [f"the prompt has {words} word{'s' if words != 1 else ''}; {SHORT_PROMPT_NOTICE} "
                "(appearance, scene, dialogue, delivery, camera), and short prompts tend to give blurry or ghosted "
                "people"]
    return []


def _count_tokens(prompt: str, text_encoder: Path | None) -> list[str]:
    """A notice when the prompt is over the encoder's 640 tokens (architecture.md §11.2): the rest is cut.

    Every token covers at least one UTF-8 byte (byte-fallback BPE), so a prompt of at most 639 bytes
    needs no count; longer ones are counted with the checkpoint's tokenizer when its folder is known
    (cheap: no model), else estimated at 4 bytes per token.
    """
    from magihuman.codecs.text_encoder import TEXT_MAX_TOKENS

    size = len(prompt.encode("utf-8"))
    if size + 1 <= TEXT_MAX_TOKENS:
        return []
    count, about = None, ""
    if text_encoder is not None and Path(text_encoder).is_dir():
        from magihuman.codecs.t5gemma_snapshot import count_prompt_tokens

        try:
            count = count_prompt_tokens(text_encoder, prompt)
        except Exception:  # noqa: BLE001 - a broken tokenizer is the loader's error to report
            count = None
    if count is None:
        count, about = size // 4, "about "
    if count <= TEXT_MAX_TOKENS:
        return []
    return [f"the prompt is {about}{count} tokens; the text encoder keeps the first {TEXT_MAX_TOKENS} and the rest "
            "has no effect: shorten it to keep all of it"]


# ----------------------------------------------------------------------------------------- files
def _check_image(request: Any) -> list[str]:
    from magihuman.pipeline.media.image import check_image_file

    path = expand_path(request.image)
    if str(request.image).lower().startswith(("http:/", "https:/", "ftp:/")):  # Path() folds the //
        raise InputError(f"image URLs are not supported (offline tool): {request.image}; download the file and pass "
                         "its local path", field="image")
    if not path.exists():
        raise MissingInputError(f"image file not found: {path}; check the path (--image)", field="image")
    try:
        width, height = check_image_file(path, max_pixels=MAX_IMAGE_PIXELS)
    except (ValueError, OSError) as exc:
        raise InputError(f"{exc}", field="image") from None
    if min(width, height) < MIN_SIZE:
        raise InputError(f"image {path} is {width}x{height} pixels, too small for a first frame; pass an image of "
                         f"at least {MIN_SIZE}x{MIN_SIZE} (ideally the frame size or larger)", field="image")
    frame = (_round(request.sr_width or request.width), _round(request.sr_height or request.height))
    if width < frame[0] or height < frame[1]:
        return [f"the image is {width}x{height}, smaller than the {frame[0]}x{frame[1]} frame: it is upscaled "
                "and the first frame will look soft"]
    return []


def _check_audio(request: Any) -> tuple[float, list[str]]:
    """The driving audio's duration and the notices about the clip length it sets."""
    from magihuman.pipeline.media.audio import check_audio_file

    path = expand_path(request.audio)
    if not path.exists():
        raise MissingInputError(f"audio file not found: {path}; check the path (--audio)", field="audio")
    try:
        duration = check_audio_file(path, min_seconds=MIN_AUDIO_SECONDS)
    except (ValueError, OSError) as exc:
        raise InputError(f"{exc}", field="audio") from None
    seconds = round(request.seconds * LATENTS_PER_SECOND) / LATENTS_PER_SECOND
    if duration > seconds + MIN_AUDIO_SECONDS:
        return duration, [f"the driving audio is {duration:.2f} s long; only its first {seconds:g} s are used "
                          f"(seconds={seconds:g}): raise seconds to {min(duration, MAX_LONG_SECONDS):.2f} to use more"]
    if duration < seconds - MIN_AUDIO_SECONDS:
        return duration, [f"seconds={seconds:g} is not used: the driving audio is {duration:.2f} s long and sets "
                          "the clip length"]
    return duration, []


def check_output_file(path: str | os.PathLike, *, overwrite: bool, overwrite_hint: str = "overwrite=True") -> Path:
    """The output path, checked before any model runs (``~`` expanded, ``.mp4``, writable folder).

    Args:
        path: where the MP4 goes.
        overwrite: whether an existing file may be replaced.
        overwrite_hint: how the caller allows that (``"--overwrite"`` on the command line).

    Returns:
        The absolute path.

    Raises:
        InputError: (``field="output"``) a missing or unwritable folder, a folder as the path, a wrong
            suffix, or an existing file without ``overwrite``.
    """
    from magihuman.pipeline.media.mp4 import check_output_path

    try:
        return check_output_path(expand_path(path) or "", overwrite=overwrite)
    except FileExistsError:
        raise InputError(f"output file already exists: {expand_path(path)}; pass {overwrite_hint} to replace it "
                         "or choose another name", field="output") from None
    except (ValueError, OSError) as exc:
        raise InputError(str(exc), field="output") from None


# ----------------------------------------------------------------------------------------- device
def check_device(device: Any = None) -> str:
    """The device name checked against this machine's PyTorch; None or ``"auto"``: cuda if available, else cpu.

    Returns:
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        InputError: (``field="device"``) an unknown name, CUDA asked of a CPU-only PyTorch or a machine
            without a visible GPU, or a GPU index this machine does not have.
    """
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N", field="device") from None
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; use cpu, cuda or cuda:N", field="device")
    if parsed.type == "cuda":
        if torch.version.cuda is None:
            raise InputError(f"device {device!r}: CUDA is not available: this PyTorch is a CPU-only build; use "
                             "--device cpu, or install a CUDA build of torch", field="device")
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: CUDA is not available on this machine (no GPU visible); use "
                             "--device cpu", field="device")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}", field="device")
    return str(parsed)


def check_runtime(runtime: Any, device: str) -> None:
    """The memory/speed switches (:class:`RuntimeOptions`) against the device: GPU-only switches on a CPU run,
    and the attention kernel, are refused before any model loads.

    Raises:
        InputError: naming the switch (``field`` ``"fp8_gemm"``, ``"offload"`` or ``"attention"``).
    """
    if runtime is None:
        return
    if not device.startswith("cuda"):
        if runtime.fp8_gemm:
            raise InputError("--fp8-gemm runs FP8 tensor-core GEMMs on a CUDA GPU (compute capability >= 8.9), "
                             "not on cpu; drop it (--fp8 alone stores FP8 weights and runs on the CPU)",
                             field="fp8_gemm")
        for mode in runtime.offload:
            raise InputError(f"--offload {mode} moves weights between host memory and a GPU; on --device cpu "
                             "everything already is in host memory: drop it", field="offload")
    from magihuman.model.attention import resolve_attention_backend

    try:
        resolve_attention_backend(runtime.attention, device)
    except ValueError as exc:
        raise InputError(str(exc), field="attention") from None


# ----------------------------------------------------------------------------------------- memory
def device_memory(device: str) -> int | None:
    """Total memory of ``device`` in bytes (CUDA: ``torch.cuda.mem_get_info``; CPU: physical RAM), or None."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[1])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no check
        return None


def estimate_memory(request: Any, *, device: str, runtime: Any = None,
                    checkpoints: Mapping[str, Path] | None = None,
                    audio_seconds: float | None = None) -> dict[str, int]:
    """A lower-bound estimate of the memory one request needs on ``device``, in bytes, by part.

    Parts: ``weights`` (the DiT files, halved by FP8, none on a GPU with offload or sharding), ``activations``
    (one DiT layer at the longest sequence, bf16; doubled by batched CFG), ``latents`` (float32 video latents
    held by the sampler) and ``frames`` (the decoded ``uint8`` video; host memory, so counted on CPU only).

    Args:
        request: the request; its size, seconds and preset set the sequence length (architecture.md §13.2).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        runtime: the :class:`RuntimeOptions`, or None for everything resident.
        checkpoints: component paths; the DiT folders give the weight size and hidden width (15B defaults
            when absent).
        audio_seconds: the driving audio's length, which caps the clip.
    """
    seconds = min(request.seconds, audio_seconds) if audio_seconds else request.seconds
    clip_frames = latent_frames_for(int(round(seconds * LATENTS_PER_SECOND)) + 1)
    window = long_clip_window(request)  # a long clip holds one window in the DiT at a time
    audio_latents = int(round(min(seconds, window or seconds) * LATENTS_PER_SECOND)) + 1
    frames_t = latent_frames_for(audio_latents)
    sizes = [(_round(request.width), _round(request.height))]
    preset = get_preset(request.preset)
    if preset.sr is not None:
        sizes.append((_round(request.sr_width or preset.sr.width), _round(request.sr_height or preset.sr.height)))
    cells = max(w * h for w, h in sizes) // SPATIAL_STRIDE**2
    tokens = frames_t * cells // 4 + audio_latents + 640
    folders = [Path(checkpoints[k]) for k in ("transformer", "sr_transformer") if checkpoints and checkpoints.get(k)]
    hidden = _DIT_HIDDEN
    for folder in folders[:1]:
        config = folder / "magihuman_transformer.json"
        if config.is_file():
            hidden = int(json.loads(config.read_text()).get("hidden_size", _DIT_HIDDEN))
    weights = sum(f.stat().st_size for folder in folders if folder.is_dir() for f in folder.iterdir() if f.is_file())
    on_gpu = device.startswith("cuda")
    if runtime is not None:
        weights = weights // 2 if runtime.fp8 else weights
        if on_gpu and (runtime.offload or runtime.shard):
            weights = 0
    batch = 2 if preset.sampler.cfg_number == 2 and (runtime is None or runtime.batch_cfg) else 1
    width, height = sizes[-1]
    return {
        "weights": weights,
        "activations": batch * tokens * hidden * 2 * _ACTIVATION_WIDTHS,
        "latents": _LATENT_COPIES * 4 * LATENT_CHANNELS * frames_t * cells,
        "frames": 0 if on_gpu else pixel_frames(clip_frames) * width * height * 3,
    }


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def _check_memory(request: Any, device: str, runtime: Any, checkpoints: Mapping[str, Path] | None,
                  audio_seconds: float | None) -> None:
    parts = estimate_memory(request, device=device, runtime=runtime, checkpoints=checkpoints,
                            audio_seconds=audio_seconds)
    have, need = device_memory(device), sum(parts.values())
    if have is None or need <= have:
        return
    detail = ", ".join(f"{name} {_gb(size)}" for name, size in parts.items() if size)
    hint = "; or --offload blocks / --fp8" if device.startswith("cuda") else ""
    raise InputError(f"this request needs about {_gb(need)} on {device} (estimate: {detail}), more than its "
                     f"{_gb(have)}; use fewer seconds or a smaller width/height{hint}", field="seconds")
