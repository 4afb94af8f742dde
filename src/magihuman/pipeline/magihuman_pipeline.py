"""``MagiHumanPipeline``: prompt (+ first-frame image, + driving audio) to video frames and speech.

One request runs these stages (architecture.md §1.2; each one a function of :mod:`magihuman.pipeline.stages`):

0. check the request (sizes rounded as the reference does, seconds, files) before any model work;
1. encode the prompt (and the negative prompt when the preset uses CFG);
2. prepare latents from a seeded CPU generator: audio noise first, then video noise (architecture.md
   §13.2, §8.5); with a driving audio track, its encoded latents replace the audio noise;
3. encode the first-frame image at the base size (image-to-video, architecture.md §9.1);
4. denoise with the preset's sampler (:func:`magihuman.sampling.loop.denoise`);
5. super-resolution presets: upsample, re-noise and refine with the SR DiT (architecture.md §10.1);
6. decode video (Turbo-VAED or Wan2.2 VAE) and audio (Stable Audio Open VAE, 51.2 kHz -> 44.1 kHz);
7. return frames and waveform; :meth:`GenerationOutput.save` writes the MP4.

Progress and cancellation: ``callback_on_step_end`` is called after every denoising step of every stage
(diffusers' convention), and setting ``pipe.interrupt`` stops generation between two steps or two decode
windows with :exc:`~magihuman.pipeline.progress.GenerationInterrupted`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magihuman.codecs.audio_vae import OUTPUT_SAMPLE_RATE, AudioVAE
from magihuman.codecs.text_encoder import DEFAULT_NEGATIVE_PROMPT, TextEncoder
from magihuman.codecs.turbo_vae import TurboVAE
from magihuman.codecs.video_vae import VideoVAE
from magihuman.model.transformer import MagiHumanTransformer, sr1080_local_attn_layers
from magihuman.pipeline import stages
from magihuman.pipeline.clip_requests import ExtendRequest, RetakeRequest
from magihuman.pipeline.loading import (  # noqa: F401 (ROOT_LAYOUT re-exported for callers of the old module)
    ROOT_LAYOUT,
    check_checkpoint_root,
    check_video_decoder,
    transformer_config,
)
from magihuman.pipeline.media import write_mp4
from magihuman.pipeline.presets import (  # noqa: F401 (VIDEO_DECODERS re-exported)
    DEFAULT_PRESET,
    DEFAULT_VIDEO_DECODER,
    FPS,
    VIDEO_DECODERS,
    Preset,
    get_preset,
)
from magihuman.pipeline.progress import GenerationInterrupted, StageTimer, StepEndCallback, StepReporter  # noqa: F401
from magihuman.pipeline.request import GenerationRequest
from magihuman.pipeline.validation import long_clip_window
from magihuman.runtime.options import RuntimeOptions
from magihuman.runtime.placement import offload_idle_components, place_transformer
from magihuman.sampling.records import DrivingAudio, Latents


# ----------------------------------------------------------------------------------------- output
@dataclass
class GenerationOutput:
    """A generated clip.

    Attributes:
        frames: ``uint8 [F, H, W, 3]`` RGB video frames.
        audio: ``float32 [channels, samples]`` waveform in [-1, 1] (roughly) at ``sample_rate``.
        fps: video frame rate (25).
        sample_rate: audio sample rate in Hz (44100).
        timings: seconds per stage.
        notices: messages for the user collected while checking the request.
        video_latent: ``[1, 48, T, h, w]`` final (normalised) video latent, for later stages.
        audio_latent: ``[1, A, 64]`` final audio latent.
        enhanced_prompt: the prompt rendered when ``enhance`` rewrote it (None: the prompt as given).
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: int
    sample_rate: int
    timings: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    video_latent: torch.Tensor | None = None
    audio_latent: torch.Tensor | None = None
    enhanced_prompt: str | None = None

    @property
    def duration(self) -> float:
        """Video duration in seconds."""
        return self.frames.shape[0] / self.fps

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write an MP4 (H.264 video at ``fps``, AAC audio at ``sample_rate``) atomically.

        Raises:
            FileExistsError: if ``path`` exists and ``overwrite`` is False.
        """
        return write_mp4(path, self.frames, fps=self.fps, audio=self.audio, sample_rate=self.sample_rate,
                         overwrite=overwrite)


# ----------------------------------------------------------------------------------------- pipeline
class MagiHumanPipeline:
    """Text (+ image, + audio) to a talking-human clip with speech.

    Args:
        transformer: the DiT of the chosen preset.
        text_encoder: T5Gemma encoder; its width must equal ``transformer.config.text_in_channels``.
        video_vae: Wan2.2 VAE (encodes the first frame, decodes the video).
        audio_vae: Stable Audio Open VAE.
        preset: name of a :mod:`magihuman.pipeline.presets` preset (its sampler is used).
        negative_prompt: default unconditional text for CFG presets.

    Raises:
        ValueError: when the components do not fit together.
    """

    def __init__(self, transformer: MagiHumanTransformer, text_encoder: TextEncoder, video_vae: VideoVAE,
                 audio_vae: AudioVAE, *, preset: str = DEFAULT_PRESET, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                 sr_transformer: MagiHumanTransformer | None = None, video_decoder=None):
        if text_encoder.hidden_size != transformer.config.text_in_channels:
            raise ValueError(
                f"the text encoder emits {text_encoder.hidden_size}-d states but the transformer expects "
                f"text_in_channels={transformer.config.text_in_channels}; the checkpoints do not belong together"
            )
        self.transformer, self.text_encoder = transformer, text_encoder
        self.video_vae, self.audio_vae = video_vae, audio_vae
        self.preset: Preset = get_preset(preset)
        self.negative_prompt = negative_prompt
        if (self.preset.sr is not None) != (sr_transformer is not None):
            raise ValueError(
                f"preset {preset!r} {'needs' if self.preset.sr else 'takes no'} super-resolution transformer"
            )
        self.sr_transformer = sr_transformer
        #: decodes the final latent to pixels: the Turbo-VAED decoder or the Wan2.2 VAE (same interface)
        self.video_decoder = video_decoder if video_decoder is not None else video_vae
        #: component offload (``--offload components``), set by :meth:`enable_component_offload`
        self.offload = None
        #: spatial tile size of the Turbo decode in latent pixels (None: whole frames; ``--decode-tile-size``)
        self.decode_tile: int | None = None
        #: CFG presets: the conditional and the negative pass as one batched DiT call (``--no-batch-cfg``: two)
        self.batch_cfg: bool = True
        #: set (e.g. from another thread) to stop the running generation at its next step or decode window
        #: with :exc:`GenerationInterrupted`; the check that raises clears it
        self.interrupt: bool = False

    @property
    def device(self) -> torch.device:
        """Where the stages compute and the latents live."""
        if self.offload is not None:
            return self.offload.execution_device
        return next(self.transformer.parameters()).device

    def enable_component_offload(self, device: str | torch.device) -> None:
        """Keep every model on the CPU and lend each to ``device`` for its own stage (``--offload components``)."""
        self.offload = offload_idle_components(self, device)

    def load_lora(self, path: str | Path, scale: float = 1.0, *, fuse: bool = False) -> str:
        """Add a LoRA adapter file to the DiT (see :func:`magihuman.pipeline.lora.load_lora`: errors, scale, fuse)."""
        from magihuman.pipeline.lora import load_lora

        return load_lora(self.transformer, path, scale, fuse=fuse)

    def _lend(self, *names: str):
        """Context in which the named components are on the compute device (no-op without offload)."""
        return self.offload.stage(*names) if self.offload is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------------------- loading
    @classmethod
    def from_official(
        cls, root: str | Path | None = None, *, transformer: str | Path | None = None,
        text_encoder: str | Path | None = None, video_vae: str | Path | None = None,
        audio_vae: str | Path | None = None, sr_transformer: str | Path | None = None,
        turbo_vae: str | Path | None = None, preset: str = DEFAULT_PRESET, video_decoder: str = DEFAULT_VIDEO_DECODER,
        device: str | torch.device = "cpu", progress: bool = False, runtime: RuntimeOptions | None = None,
    ) -> MagiHumanPipeline:
        """Load every component from the official files, unchanged.

        Args:
            root: a checkpoint root (``~`` expanded, as in every path here) laid out as ``magihuman download``
                makes it (docs/design.md):
                ``<preset checkpoint>/``, ``t5gemma-9b-9b-ul2/``, ``Wan2.2-TI2V-5B/``, ``stable-audio-open-1.0/``.
            transformer, text_encoder, video_vae, audio_vae: per-component locations, overriding ``root``.
            sr_transformer: the SR DiT folder (SR presets; default ``ROOT/540p_sr`` or ``ROOT/1080p_sr``).
            turbo_vae: the Turbo-VAED folder (JSON config + ``.ckpt``; default ``ROOT/turbo_vae``).
            video_decoder: ``"turbo"`` (default, as every official example) or ``"wan"`` (the Wan2.2 VAE decoder).
            preset: ``"distill"`` or ``"base"``; picks the DiT sub-folder and the sampler.
            device: where the models run. VAEs run in bf16 on CUDA and float32 on CPU.
            progress: progress bar while loading the DiT shards.
            runtime: memory/speed switches (:class:`RuntimeOptions`); default: everything resident on
                ``device``, automatic attention kernel.

        Raises:
            ValueError: when a component has neither an explicit path nor a root, or for an unknown
                ``video_decoder``.
            CheckpointError, FileNotFoundError: from the component loaders, naming the bad path or key.
        """
        from magihuman.pipeline.validation import check_device

        device = check_device(device)  # one clear error for cuda on a CPU-only torch, before any loading
        chosen = get_preset(preset)
        check_video_decoder(video_decoder)
        explicit = dict(transformer=transformer, text_encoder=text_encoder, video_vae=video_vae, audio_vae=audio_vae)
        if chosen.sr is not None:
            explicit["sr_transformer"] = sr_transformer
        if video_decoder == "turbo":
            explicit["turbo_vae"] = turbo_vae
        paths = check_checkpoint_root(root, explicit, preset=chosen, video_decoder=video_decoder)
        runtime = runtime or RuntimeOptions()
        device = torch.device(device)
        vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # from the execution device
        codec_load = torch.device("cpu") if "components" in runtime.offload else device
        dit, sr_dit = _load_transformers(chosen, paths, runtime, device, progress)
        decoder = None
        if video_decoder == "turbo":
            decoder = TurboVAE.from_official(paths["turbo_vae"], dtype=vae_dtype, device=codec_load)
        pipe = cls(
            dit,
            TextEncoder.from_official(paths["text_encoder"], device=codec_load),
            VideoVAE.from_official(paths["video_vae"], dtype=vae_dtype, device=codec_load),
            AudioVAE.from_official(paths["audio_vae"], device=codec_load),
            preset=preset, sr_transformer=sr_dit, video_decoder=decoder,
        )
        if "components" in runtime.offload:
            pipe.enable_component_offload(device)
        pipe.decode_tile = runtime.decode_tile
        pipe.batch_cfg = runtime.batch_cfg
        return pipe

    # ------------------------------------------------------------------------------- generation
    def __call__(self, prompt: str | GenerationRequest | None = None, image: str | Path | None = None,
                 audio: str | Path | None = None, *, progress: bool = False, decode: bool = True,
                 callback_on_step_end: StepEndCallback | None = None, enhance: Any = False,
                 **fields: Any) -> GenerationOutput:
        """Generate one clip.

        Args:
            prompt: the text prompt, or a whole :class:`GenerationRequest` (then pass nothing else); an
                :class:`ExtendRequest` or :class:`RetakeRequest` runs :meth:`extend` or :meth:`retake`.
            image: optional first-frame image (image-to-video).
            audio: optional driving audio file (its speech is kept in the output).
            progress: show a progress bar per stage.
            decode: decode the latents to frames and audio (False on the non-output ranks of a
                sequence-parallel run, architecture.md §6.4: ``frames``/``audio`` are then empty).
            callback_on_step_end: ``callback(pipe, step_index, timestep, callback_kwargs)`` after every
                denoising step of every stage (diffusers' convention); ``callback_kwargs`` holds ``"stage"``
                (``"denoise"`` or ``"super_resolution"``), ``"num_steps"`` (of that stage), ``"total_steps"``
                (all stages), ``"completed_steps"`` and ``"latents"`` (read only; a returned dict is ignored).
                An exception it raises stops generation at once and propagates (a worker cancels a job so).
            enhance: rewrite the prompt into the three-part structure the model was tuned on before encoding
                it (:func:`magihuman.prompting.enhance_prompt`, docs/prompting.md): True for the endpoint named by
                ``$MAGIHUMAN_ENHANCE_URL``/``$MAGIHUMAN_ENHANCE_MODEL``, or a backend
                (:class:`magihuman.prompting.OpenAIChatBackend`, :class:`~magihuman.prompting.LocalModelBackend`).
                If the enhancer fails, the prompt is used as given and a notice says why.
            **fields: the other :class:`GenerationRequest` fields: ``seconds``, ``width``, ``height``,
                ``seed``, ``negative_prompt``, ``window_seconds``, ``overlap_frames``, ``prompt_schedule``
                (``preset`` defaults to the loaded one). A clip longer than one window (over 10 s, or over
                ``window_seconds``) is generated window by window (:mod:`magihuman.pipeline.long_generation`,
                docs/long_clips.md); ``prompt_schedule``, ``[(start seconds, prompt), ...]``, hands later windows
                other prompts (:mod:`magihuman.pipeline.prompt_schedule`).

        Returns:
            :class:`GenerationOutput` with ``uint8 [F, H, W, 3]`` frames and a ``float32 [2, samples]``
            waveform at 44.1 kHz.

        Raises:
            ValueError, FileNotFoundError: for a bad request, before any model runs.
            GenerationInterrupted: when :attr:`interrupt` was set during generation.
        """
        if isinstance(prompt, (ExtendRequest, RetakeRequest)):  # clip edits (docs/long_clips.md)
            return self._edit(prompt, image, audio, fields, progress=progress, decode=decode,
                              callback_on_step_end=callback_on_step_end)
        request, notices = self._request(prompt, image, audio, fields)
        enhanced = None
        if enhance:  # stage 0b: before any model runs
            request, notices, enhanced = _enhance_request(request, enhance, notices)
        if long_clip_window(request) is not None:  # longer than one window (docs/long_clips.md)
            from magihuman.pipeline.long_generation import generate_long

            output = generate_long(self, request, notices, progress=progress, decode=decode,
                                   callback_on_step_end=callback_on_step_end)
            return dataclasses.replace(output, enhanced_prompt=enhanced) if enhanced is not None else output
        sr_stage = request.sr_stage()
        timer = StageTimer(progress, self.device)
        steps = StepReporter(self, callback_on_step_end, stages.total_steps(self, sr_stage))
        generator = torch.Generator("cpu").manual_seed(request.seed)
        with torch.inference_mode():
            # 1. text
            with timer.stage("text encode"), self._lend("text_encoder"):
                text = stages.encode_text(self, request, sr_stage)
            # 2. latents: driving audio or audio noise first, then video noise (architecture.md §8.5)
            with timer.stage("prepare latents"), self._lend(*(["audio_vae"] if request.audio else [])):
                latents, driving, plan = stages.prepare_latents(self, request, generator)
            # 3. first frame (image-to-video)
            image_latent = self._image_latent(request.image, plan.width, plan.height, timer, "image encode")
            # 4. denoise
            num_steps = self.preset.sampler.num_steps
            with timer.stage("denoise", total=num_steps) as bar, self._lend("transformer"):
                latents = stages.denoise_latents(self, latents, text, image_latent=image_latent,
                                                 audio_fixed=driving is not None, generator=generator,
                                                 callback=steps.for_stage("denoise", num_steps, bar))
            # 5. super-resolution (SR presets): image re-encoded at the SR size, then the SR DiT (architecture.md §10.1)
            if sr_stage is not None:
                image_latent = self._image_latent(request.image, sr_stage.width, sr_stage.height, timer,
                                                  "image encode (SR)")
                num_steps = sr_stage.sampler.num_steps
                with timer.stage("super-resolution", total=num_steps) as bar, self._lend("sr_transformer"):
                    latents = stages.super_resolve_latents(
                        self, sr_stage, latents, text, image_latent=image_latent, generator=generator,
                        callback=steps.for_stage("super_resolution", num_steps, bar))
            # 6. decode
            frames, waveform = self._decode(latents, driving, timer) if decode else stages.empty_outputs(latents.video)
        return GenerationOutput(frames, waveform, FPS, OUTPUT_SAMPLE_RATE, timer.timings, notices,
                                latents.video.cpu(), latents.audio.cpu(), enhanced_prompt=enhanced)

    def extend(self, clip: str | Path, prompt: str, *, seconds: float, progress: bool = False,
               callback_on_step_end: StepEndCallback | None = None, **fields: Any):
        """Continue ``clip`` by ``seconds`` from its last frames and sound (docs/long_clips.md).

        ``fields`` are the other :class:`ExtendRequest` fields (``width``, ``height``, ``seed``,
        ``negative_prompt``, ``window_seconds``, ``overlap_frames``, ``fade_frames``). Returns a
        :class:`~magihuman.pipeline.clip_source.ClipEditOutput` (the clip's frames, then the new ones); the input
        file is never written. Raises ``InputError`` for a bad request before any model runs.
        """
        fields.setdefault("preset", self.preset.name)
        request = ExtendRequest(clip=clip, prompt=prompt, seconds=seconds, **fields)
        return self(request, progress=progress, callback_on_step_end=callback_on_step_end)

    def retake(self, clip: str | Path, prompt: str, *, start: float, end: float, target: str = "both",
               progress: bool = False, callback_on_step_end: StepEndCallback | None = None, **fields: Any):
        """Regenerate ``[start, end)`` seconds of ``clip`` (``target``: ``"both"``, ``"video"`` or ``"audio"``);
        every latent outside the range stays the encoded clip's, bit for bit (docs/long_clips.md).

        ``fields`` are the other :class:`RetakeRequest` fields (``width``, ``height``, ``seed``, ``negative_prompt``,
        ``window_seconds``, ``fade_frames``). Returns a :class:`~magihuman.pipeline.clip_source.ClipEditOutput`. Raises
        ``InputError`` for a bad request before any model runs.
        """
        fields.setdefault("preset", self.preset.name)
        request = RetakeRequest(clip=clip, prompt=prompt, start=start, end=end, target=target, **fields)
        return self(request, progress=progress, callback_on_step_end=callback_on_step_end)

    # ------------------------------------------------------------------------------- helpers
    def _edit(self, request, image, audio, fields, **options):
        """An :class:`ExtendRequest` or :class:`RetakeRequest`, run by its module."""
        if image is not None or audio is not None or fields:
            raise ValueError("pass either an ExtendRequest/RetakeRequest or keyword fields, not both")
        if request.preset != self.preset.name:
            raise ValueError(f"this pipeline was loaded for preset {self.preset.name!r}, the request asks for "
                             f"{request.preset!r}; load a pipeline with from_official(preset={request.preset!r})")
        if isinstance(request, ExtendRequest):
            from magihuman.pipeline.extend import extend_clip

            return extend_clip(self, request, **options)
        from magihuman.pipeline.retake import retake_clip

        return retake_clip(self, request, **options)

    def _request(self, prompt, image, audio, fields: dict[str, Any]) -> tuple[GenerationRequest, list[str]]:
        """The checked request and its notices (stage 0: before any model runs)."""
        if isinstance(prompt, GenerationRequest):
            if image is not None or audio is not None or fields:
                raise ValueError("pass either a GenerationRequest or keyword fields, not both")
            request = prompt
        else:
            fields.setdefault("preset", self.preset.name)
            request = GenerationRequest(prompt=prompt if prompt is not None else fields.pop("prompt", ""),
                                        image=image, audio=audio, **fields)
        notices = request.validate_inputs()
        if request.preset != self.preset.name:
            raise ValueError(
                f"this pipeline was loaded for preset {self.preset.name!r}, the request asks for "
                f"{request.preset!r}; load a pipeline with from_official(preset={request.preset!r})"
            )
        return request, notices

    def _image_latent(self, image, width: int, height: int, timer: StageTimer, stage_name: str):
        """Stage 3 (and its SR repeat) timed and with the video VAE lent; None without an image."""
        if image is None:
            return None
        with timer.stage(stage_name), self._lend("video_vae"):
            return stages.encode_image(self, image, width, height)

    def _decode(self, latents: Latents, driving: DrivingAudio | None, timer: StageTimer):
        """Stage 6: frames from the video latent; the waveform decoded, or the driving track itself."""
        with timer.stage("video decode"), self._lend("video_decoder"):
            frames = stages.decode_video(self, latents.video)
        with timer.stage("audio decode"), self._lend("audio_vae"):
            waveform = driving.waveform_44k if driving is not None else stages.decode_audio(self, latents.audio)
        return frames, waveform


def _enhance_request(request: GenerationRequest, enhance: Any,
                     notices: list[str]) -> tuple[GenerationRequest, list[str], str | None]:
    """The request with its prompt enhanced (re-checked, fresh notices), or as it was plus the enhancer's warning."""
    from magihuman.pipeline.errors import InputError
    from magihuman.prompting.backends import EnhancerConfigError, backend_from_settings
    from magihuman.prompting.enhancer import enhance_prompt

    if request.prompt_schedule:
        raise InputError("enhance rewrites one prompt, and prompt_schedule gives more; enhance each with "
                         "magihuman.prompting.enhance_prompt first and pass the results", field="enhance")
    try:
        backend = backend_from_settings() if enhance is True else enhance
    except EnhancerConfigError as exc:
        raise InputError(str(exc), field=exc.field) from None
    try:
        result = enhance_prompt(request.prompt, backend, has_image=request.image is not None)
    finally:
        if enhance is True:  # ours to close; a caller's backend stays open for its next call
            backend.close()
    warning = [result.warning] if result.warning else []
    if not result.enhanced:
        return request, notices + warning, None
    request = request.model_copy(update={"prompt": result.prompt})
    return request, request.validate_inputs() + warning, result.prompt


def _load_transformers(preset: Preset, paths: dict[str, Path], runtime: RuntimeOptions, device: torch.device,
                       progress: bool) -> tuple[MagiHumanTransformer, MagiHumanTransformer | None]:
    """The preset's DiT and, for SR presets, the SR DiT (with the 1080p recipe's local-attention layers),
    loaded (on the host first when the runtime options convert or stream them) and placed."""
    dit_load = torch.device("cpu") if runtime.loads_on_host else device
    dit = MagiHumanTransformer.from_official(
        paths["transformer"], device=dit_load, progress=progress, **transformer_config(paths["transformer"])
    )
    sr_dit = None
    if preset.sr is not None:
        config = transformer_config(paths["sr_transformer"])
        if preset.sr.local_attention:
            config["local_attn_layers"] = sr1080_local_attn_layers(config.get("num_layers", 40))
        sr_dit = MagiHumanTransformer.from_official(paths["sr_transformer"], device=dit_load, progress=progress,
                                                    **config)
    dit = place_transformer(dit, runtime, device)
    if sr_dit is not None:
        sr_dit = place_transformer(sr_dit, runtime, device)
    return dit, sr_dit
