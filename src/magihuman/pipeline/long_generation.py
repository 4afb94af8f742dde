"""Long clips: generation window by window, each window held clean where it meets the previous one (ours).

A request longer than one window (:func:`magihuman.pipeline.validation.long_clip_window`) runs as
(docs/long_clips.md):

1. encode the prompt once (every window uses it, or with a prompt schedule each cue's prompt once, for the
   windows from its cue on: :mod:`magihuman.pipeline.prompt_schedule`); with a driving track, encode the whole
   track once (:func:`magihuman.pipeline.stages.load_driving_audio`; the VAE windows tracks over 29 s itself);
2. plan the windows (:func:`magihuman.pipeline.windows.plan_windows`): windows of the preset's length (or up
   to 3 latent frames shorter, to keep the joins off the loaded video decoder's chunk borders, when it has
   any), ``K`` latent frames of overlap, the last window moved back to end with the clip;
3. per window, from the request's one seeded CPU generator: the audio noise (or the driving track's slice
   of latents), then the video noise, as a single pass draws them (architecture.md §8.5); the frames it shares
   with the joined clip so far, video and the matching audio latents (``4(c - 1) + 1`` for ``c`` frames),
   are held clean (:class:`~magihuman.sampling.conditioning.CleanCondition`); the first window holds the
   first-frame image (architecture.md §9.1) or a given prefix (extend); then the preset's sampler. A window's
   first latent frame is its first pixel frame alone, as the Wan2.2 VAE's causal encoder makes latent frame 0
   (architecture.md §11.3) and as the audio plan counts it (a window at latent frame ``s`` starts at audio
   latent ``4s``), while the joined clip's latent frame ``s`` holds pixel frames ``4s - 3 .. 4s``. So a window
   that starts inside the clip holds, at its first position, pixel frame ``4s`` decoded and encoded alone
   (:func:`first_frame_latent`), and its other held frames as they stand;
4. write each window's new latents into the joined clip (the shared part is already there, unchanged);
5. decode the joined latents once: video with the usual decoder (Turbo-VAED decodes in sliding windows,
   architecture.md §11.4), audio in pieces (:func:`magihuman.pipeline.long_decode.decode_audio_long`); a
   driving track is kept as given.

Memory is that of one window in the DiT; the joined latents are small (48 x T x h x w floats) and the
decoded frames are ``uint8``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from magihuman.codecs.audio_vae import OUTPUT_SAMPLE_RATE
from magihuman.codecs.video_vae import LATENT_CHANNELS
from magihuman.pipeline import stages
from magihuman.pipeline.long_decode import decode_audio_long
from magihuman.pipeline.presets import FPS
from magihuman.pipeline.progress import StageTimer, StepEndCallback, StepReporter
from magihuman.pipeline.prompt_schedule import window_prompt_indices
from magihuman.pipeline.request import GenerationRequest
from magihuman.pipeline.validation import request_windows
from magihuman.pipeline.windows import TURBO_DECODE_CHUNKS, WindowPlan, decoder_chunks
from magihuman.sampling.conditioning import CleanCondition
from magihuman.sampling.loop import draw_noise
from magihuman.sampling.records import DrivingAudio, Latents, TextConditioning

if TYPE_CHECKING:
    from magihuman.pipeline.magihuman_pipeline import GenerationOutput, MagiHumanPipeline

__all__ = ["generate_long", "denoise_windows", "first_frame_latent", "window_condition"]


def generate_long(pipe: MagiHumanPipeline, request: GenerationRequest, notices: list[str], *, progress: bool = False,
                  decode: bool = True, callback_on_step_end: StepEndCallback | None = None) -> GenerationOutput:
    """Generate a checked long ``request`` window by window (module docstring); the arguments are those of
    :meth:`MagiHumanPipeline.__call__`.

    Returns:
        :class:`~magihuman.pipeline.magihuman_pipeline.GenerationOutput` of the whole clip:
        ``4(T - 1) + 1`` frames, and the joined latents ``[1, 48, T, h, w]`` / ``[1, A, 64]``.

    Raises:
        GenerationInterrupted: when ``pipe.interrupt`` was set.
    """
    from magihuman.pipeline.magihuman_pipeline import GenerationOutput

    timer = StageTimer(progress, pipe.device)
    generator = torch.Generator("cpu").manual_seed(request.seed)
    plan_size = request.plan()
    with torch.inference_mode():
        driving = None
        if request.audio is not None:
            with timer.stage("prepare latents"), pipe._lend("audio_vae"):
                driving = stages.load_driving_audio(pipe, request.audio, request.seconds, generator)
        audio_latents = plan_size.audio_latents if driving is None else driving.latent.shape[1]
        chunks = decoder_chunks(pipe.video_decoder)
        windows = request_windows(request, audio_latents, decode_chunks=chunks)
        checked = windows if chunks == TURBO_DECODE_CHUNKS else request_windows(request, audio_latents)
        if len(windows.windows) != len(checked.windows):  # the input checks counted the default decoder's windows
            notices.append(f"the loaded video decoder's chunks ({'none' if chunks is None else chunks}) differ from "
                           f"the default Turbo-VAED's: the clip runs in {len(windows.windows)} windows")
        with timer.stage("text encode"), pipe._lend("text_encoder"):
            text = stages.encode_text(pipe, request, None)
            texts = scheduled_texts(pipe, request, text, windows, notices)
        first = None
        if request.image is not None:
            with timer.stage("image encode"), pipe._lend("video_vae"):
                image = stages.encode_image(pipe, request.image, plan_size.width, plan_size.height)
            first = CleanCondition.first_frame(image, windows.windows[0].frames)
        reporter = StepReporter(pipe, callback_on_step_end, len(windows.windows) * pipe.preset.sampler.num_steps)
        joined = empty_latents(windows, plan_size.latent_size, pipe.device)
        latents = denoise_windows(pipe, windows, text, joined, generator=generator, reporter=reporter, timer=timer,
                                  first=first, driving=driving, texts=texts)
        if decode:
            frames, waveform = decode_long(pipe, latents, driving, timer)
        else:
            frames, waveform = stages.empty_outputs(latents.video)
    return GenerationOutput(frames, waveform, FPS, OUTPUT_SAMPLE_RATE, timer.timings, notices,
                            latents.video.cpu(), latents.audio.cpu())


def scheduled_texts(pipe: MagiHumanPipeline, request: GenerationRequest, text: TextConditioning, windows: WindowPlan,
                    notices: list[str]) -> list[TextConditioning] | None:
    """Each window's text with a prompt schedule: every cue's prompt encoded once (the negative prompt shared),
    per window the prompt that holds there (:func:`~magihuman.pipeline.prompt_schedule.window_prompt_indices`,
    whose notices are added to ``notices``); None without a schedule. Runs where the text encoder is lent."""
    if not request.prompt_schedule:
        return None
    indices, dropped = window_prompt_indices(windows, request.prompt_schedule)
    notices.extend(dropped)
    texts = [text]
    for cue in request.prompt_schedule:
        embedding, _ = pipe.text_encoder.encode(cue.prompt)
        texts.append(TextConditioning(embedding.to(pipe.device), text.negative))
    return [texts[i] for i in indices]


def empty_latents(windows: WindowPlan, latent_size: tuple[int, int], device: torch.device) -> Latents:
    """Zeros for the joined clip: video ``[1, 48, T, h, w]`` and audio ``[1, A, 64]`` float32."""
    return Latents(torch.zeros(1, LATENT_CHANNELS, windows.latent_frames, *latent_size, device=device),
                   torch.zeros(1, windows.audio_latents, 64, device=device))


def denoise_windows(pipe: MagiHumanPipeline, windows: WindowPlan, text: TextConditioning, joined: Latents, *,
                    generator: torch.Generator, reporter: StepReporter, timer: StageTimer,
                    first: CleanCondition | None = None, driving: DrivingAudio | None = None,
                    texts: list[TextConditioning] | None = None) -> Latents:
    """Run the preset's sampler over every window of ``windows``, writing into ``joined`` (module docstring).

    Args:
        pipe: the pipeline (its DiT, sampler and device).
        windows: the plan.
        text: the prompt (and negative) embeddings, used by every window unless ``texts`` is given.
        joined: the clip's latents ``[1, 48, T, h, w]`` / ``[1, A, 64]`` float32, written in place; a given
            prefix (the first window's ``clean_frames``) must already be in it.
        generator: the request's CPU generator: per window the audio noise (unless driving), then the video noise.
        reporter: progress and the step callback over all windows.
        timer: stage timings; the windows add up under ``"denoise"``, the first frames the windows hold rebuilt
            (:func:`window_condition`) under ``"window first frames"``.
        first: the first window's condition when it holds no prefix (e.g. the first-frame image).
        driving: a driving track whose latents (``[1, A, 64]``) stay fixed in every window.
        texts: one text per window (a prompt schedule, :func:`scheduled_texts`); None: ``text`` in every window.

    Returns:
        ``joined``, filled.
    """
    steps = pipe.preset.sampler.num_steps
    for window in windows.windows:
        audio_range = slice(window.audio_start, window.audio_start + window.audio_latents)
        if driving is not None:
            audio = driving.latent[:, audio_range].to(pipe.device)
        else:
            audio = draw_noise((1, window.audio_latents, joined.audio.shape[2]), generator, pipe.device)
        video = draw_noise((1, *joined.video.shape[1:2], window.frames, *joined.video.shape[3:]), generator,
                           pipe.device)
        state = Latents(video, audio)
        if window.index == 0 and window.clean_frames == 0:
            condition = first
        elif window.start == 0:  # a given prefix (extend): its first frame is one already
            condition = window_condition(pipe, joined, window, audio_held=driving is None)
        else:  # before the transformer is lent: with offload, the VAE and the DiT are never on the device together
            with timer.stage(_FIRST_FRAME_STAGE):
                condition = window_condition(pipe, joined, window, audio_held=driving is None)
        with pipe._lend("transformer"), timer.stage("denoise", total=steps) as bar:
            window_text = text if texts is None else texts[window.index]
            out = stages.denoise_latents(pipe, state, window_text, image_latent=None, condition=condition,
                                         audio_fixed=driving is not None, generator=generator,
                                         callback=reporter.for_stage("denoise", steps, bar))
        new = window.start + window.clean_frames
        joined.video[:, :, new:window.stop] = out.video[:, :, window.clean_frames:]
        joined.audio[:, audio_range] = out.audio
    return joined


def window_condition(pipe: MagiHumanPipeline, joined: Latents, window, *, audio_held: bool = True
                     ) -> CleanCondition | None:
    """The window's leading ``clean_frames`` latent frames and ``4(c - 1) + 1`` audio latents as a clean prefix;
    None without clean frames.

    The video frames are those of ``joined``, except that a window starting inside the clip (``start >= 1``)
    holds :func:`first_frame_latent` at its first position (module docstring, step 3); a window at the clip's
    start (the first window's given prefix) holds its frames as they stand.
    """
    if window.clean_frames == 0:
        return None
    video = joined.video[:, :, window.start:window.start + window.clean_frames]
    if window.start > 0:
        video = torch.cat([first_frame_latent(pipe, joined.video, window.start), video[:, :, 1:]], dim=2)
    audio = None
    if audio_held:
        audio = joined.audio[:, window.audio_start:window.audio_start + window.clean_audio_latents]
    return CleanCondition.prefix(video, audio, num_frames=window.frames, audio_latents=window.audio_latents)


#: Latent frames decoded before the one :func:`first_frame_latent` rebuilds (the Wan2.2 decoder is causal:
#: each frame depends on the frames before it). Chosen on the toy model (1, 2, 4 and 8 tried): docs/benchmarks.md,
#: "A window's first frame as a first frame".
FIRST_FRAME_CONTEXT = 4
_FIRST_FRAME_STAGE = "window first frames"


def first_frame_latent(pipe: MagiHumanPipeline, video: torch.Tensor, index: int) -> torch.Tensor:
    """Pixel frame ``4 index`` of ``video``, the last of the four that latent frame ``index`` holds, as the Wan2.2
    VAE encodes a first frame (architecture.md §11.3).

    The frame is decoded by the Wan2.2 VAE (``pipe.video_vae``: the encoder's own decoder, also when the Turbo
    decoder makes the output) from latent frames ``index - FIRST_FRAME_CONTEXT .. index`` (from 0 when fewer lie
    before it) and encoded alone.

    Args:
        pipe: the pipeline; its Wan2.2 VAE is lent to the device for the call.
        video: ``[1, 48, T, h, w]`` float32 normalised latents.
        index: the latent frame, ``1 <= index < T``.

    Returns:
        ``[1, 48, 1, h, w]`` float32 on ``video``'s device.

    Raises:
        ValueError: ``index`` outside ``1 .. T - 1``.
    """
    if not 1 <= index < video.shape[2]:
        raise ValueError(f"index must lie in 1..{video.shape[2] - 1}, got {index}")
    first = max(0, index - FIRST_FRAME_CONTEXT)
    with pipe._lend("video_vae"):
        pixels = pipe.video_vae.decode(video[:, :, first:index + 1].float())
        # 1 + 4 (index - first) frames: the last is pixel frame 4 index of the clip
        return pipe.video_vae.encode(pixels[:, :, -1:]).float().to(video.device)


def decode_long(pipe: MagiHumanPipeline, latents: Latents, driving: DrivingAudio | None, timer: StageTimer):
    """Frames ``uint8 [4T - 3, H, W, 3]`` and the 44.1 kHz waveform of the joined latents (module docstring)."""
    with timer.stage("video decode"), pipe._lend("video_decoder"):
        frames = stages.decode_video(pipe, latents.video, crossfade=True)
    with timer.stage("audio decode"), pipe._lend("audio_vae"):
        waveform = driving.waveform_44k if driving is not None else decode_audio_long(pipe, latents.audio)
    return frames, waveform
