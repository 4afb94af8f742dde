"""``MagiHumanPipeline``: prompt (+ first-frame image, + driving audio) to video frames and speech.

One request runs these stages (pipeline.md 0 and 14):

1. check the request (sizes rounded as the reference does, seconds, files) before any model work;
2. encode the prompt (and the negative prompt when the preset uses CFG);
3. prepare latents from a seeded CPU generator: audio noise first, then video noise (pipeline.md
   4.1, 12); with a driving audio track, its encoded latents replace the audio noise;
4. encode the first-frame image at the base size (image-to-video, pipeline.md 7.1);
5. denoise with the preset's sampler (:func:`magihuman.sampling.loop.denoise`);
6. decode video (Wan2.2 VAE) and audio (Stable Audio Open VAE, 51.2 kHz -> 44.1 kHz);
7. return frames and waveform; :meth:`GenerationOutput.save` writes the MP4.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, field_validator
from tqdm.auto import tqdm

from magihuman.codecs.audio_vae import LATENTS_PER_SECOND, MODEL_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, AudioVAE, resample_to_output_rate
from magihuman.codecs.text_encoder import DEFAULT_NEGATIVE_PROMPT, TextEncoder
from magihuman.codecs.turbo_vae import TurboVAE
from magihuman.codecs.video_vae import VideoVAE
from magihuman.pipeline.media import load_audio, preprocess_image, video_to_uint8, write_mp4
from magihuman.pipeline.presets import DEFAULT_HEIGHT, DEFAULT_SECONDS, DEFAULT_SEED, DEFAULT_WIDTH, FPS, Preset, get_preset
from magihuman.runtime.options import RuntimeOptions
from magihuman.runtime.placement import place_transformer
from magihuman.sampling.loop import SR_SAMPLER, SR_SAMPLER_CFG, denoise, draw_noise
from magihuman.sampling.super_resolution import SuperResolutionStage, super_resolve
from magihuman.model.transformer import MagiHumanTransformer, sr1080_local_attn_layers

#: Spatial stride of the Wan2.2 VAE times the DiT's 2x2 patch: pixel sizes round down to this (pipeline.md 4.1).
SIZE_MULTIPLE = 32
#: Temporal stride of the Wan2.2 VAE (pipeline.md 4.1).
VAE_TEMPORAL_STRIDE = 4
#: Latent channels of the Wan2.2 VAE (pipeline.md 4.1).
VIDEO_LATENT_CHANNELS = 48
#: The prompt length the model was tuned for (pipeline.md 10): shorter prompts give blurrier people.
RECOMMENDED_PROMPT_WORDS = 150
#: Sub-folders of a checkpoint root (docs/design.md), by component.
ROOT_LAYOUT = {
    "text_encoder": "t5gemma-9b-9b-ul2",
    "video_vae": "Wan2.2-TI2V-5B",
    "audio_vae": "stable-audio-open-1.0",
    "turbo_vae": "turbo_vae",
}
#: Video decoders: the distilled Turbo-VAED (default, pipeline.md 9.1 ``use_turbo_vae``) or the Wan2.2 VAE's own.
VIDEO_DECODERS = ("turbo", "wan")
#: Optional file in a transformer checkpoint folder with ``MagiHumanTransformer`` config fields
#: (written by the demo bundle; absent in the published folders, which use the 15B defaults).
TRANSFORMER_CONFIG_FILE = "magihuman_transformer.json"


# ----------------------------------------------------------------------------------------- sizes
def round_video_size(width: int, height: int) -> tuple[int, int]:
    """Effective pixel size: each side rounded down to a multiple of 32 (pipeline.md 4.1).

    ``h_latent = H // 16 // 2 * 2`` and the rendered height is ``16 * h_latent``; e.g. 480x272 renders
    480x256.
    """
    return (width // SIZE_MULTIPLE) * SIZE_MULTIPLE, (height // SIZE_MULTIPLE) * SIZE_MULTIPLE


@dataclass(frozen=True)
class LatentPlan:
    """Latent and output sizes of one request (pipeline.md 4.1).

    Attributes:
        width, height: effective pixel size (multiples of 32).
        audio_latents: L_a, audio latent frames (25 per second, +1 when generated).
        latent_frames: T = (L_a - 1) // 4 + 1.
    """

    width: int
    height: int
    audio_latents: int

    @property
    def latent_frames(self) -> int:
        """T = (L_a - 1) // 4 + 1 latent video frames."""
        return (self.audio_latents - 1) // VAE_TEMPORAL_STRIDE + 1

    @property
    def pixel_frames(self) -> int:
        """F = 4 (T - 1) + 1 decoded frames."""
        return VAE_TEMPORAL_STRIDE * (self.latent_frames - 1) + 1

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the video latent."""
        return self.height // 16, self.width // 16

    @property
    def video_latent_shape(self) -> tuple[int, int, int, int, int]:
        """``(1, 48, T, h, w)`` of the video noise."""
        return (1, VIDEO_LATENT_CHANNELS, self.latent_frames, *self.latent_size)


def generated_audio_latents(seconds: float) -> int:
    """``L_a = seconds * 25 + 1`` for generated audio (pipeline.md 4.1); fractional seconds round to 1/25 s."""
    return int(round(seconds * LATENTS_PER_SECOND)) + 1


# ----------------------------------------------------------------------------------------- request
class GenerationRequest(BaseModel):
    """What to generate. Checked by :meth:`validate_inputs` before any model runs.

    Attributes:
        prompt: the text prompt (150-200 words in the official three-paragraph format work best).
        image: optional first-frame image (image-to-video).
        audio: optional driving audio file (audio-to-video): its speech is kept in the output.
        seconds: clip length in seconds (> 0). Video has ``4*floor(25*s/4)+1`` frames at 25 fps.
        width, height: requested pixel size, rounded down to multiples of 32.
        seed: seed of every noise draw.
        preset: ``"distill"``, ``"base"``, ``"sr_540p"`` or ``"sr_1080p"`` (see :mod:`magihuman.pipeline.presets`).
        negative_prompt: the unconditional text for CFG (``None``: our default).
        sr_width, sr_height: output size of the super-resolution stage (SR presets only; default: the
            preset's 896x512 or 1920x1088), rounded down to multiples of 32.
        sr_cfg_number: SR guidance: 1 (the shipped SR examples, default) or 2 (negative pass, video 3.5
            with the first 13 latent frames capped at 2.0; pipeline.md 5).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str
    image: Optional[Path] = None
    audio: Optional[Path] = None
    seconds: float = DEFAULT_SECONDS
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    seed: int = DEFAULT_SEED
    preset: str = "distill"
    negative_prompt: Optional[str] = None
    sr_width: Optional[int] = None
    sr_height: Optional[int] = None
    sr_cfg_number: Optional[int] = None

    @field_validator("image", "audio", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    def validate_inputs(self, *, device: Any = None, runtime: Any = None) -> list[str]:
        """Check every value and file before any model loads (:func:`magihuman.pipeline.validation.validate_request`).

        Returns notices (rounding, short or long prompt, audio length). Raises ``InputError`` (a
        ``ValueError``; ``MissingInputError`` is also a ``FileNotFoundError``) naming the field and the fix.
        """
        from magihuman.pipeline.validation import validate_request

        return validate_request(self, device=device, runtime=runtime)

    def sr_stage(self) -> Optional[SuperResolutionStage]:
        """The preset's SR stage with this request's SR size, or None."""
        stage = get_preset(self.preset).sr
        if stage is None:
            return None
        if self.sr_cfg_number is not None:
            stage = dataclasses.replace(stage, sampler=SR_SAMPLER_CFG if self.sr_cfg_number == 2 else SR_SAMPLER)
        if self.sr_width is not None:
            width, height = round_video_size(self.sr_width, self.sr_height)
            stage = dataclasses.replace(stage, width=width, height=height)
        return stage

    def plan(self) -> LatentPlan:
        """Latent sizes for generated audio (the driving-audio length replaces ``audio_latents`` later)."""
        width, height = round_video_size(self.width, self.height)
        return LatentPlan(width, height, generated_audio_latents(self.seconds))


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
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: int
    sample_rate: int
    timings: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    video_latent: Optional[torch.Tensor] = None
    audio_latent: Optional[torch.Tensor] = None

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
                 audio_vae: AudioVAE, *, preset: str = "distill", negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                 sr_transformer: Optional[MagiHumanTransformer] = None, video_decoder=None):
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
        self.decode_tile: Optional[int] = None
        #: CFG presets: the conditional and the negative pass as one batched DiT call (``--no-batch-cfg``: two)
        self.batch_cfg: bool = True

    @property
    def device(self) -> torch.device:
        """Where the stages compute and the latents live."""
        if self.offload is not None:
            return self.offload.execution_device
        return next(self.transformer.parameters()).device

    def enable_component_offload(self, device: str | torch.device) -> None:
        """Keep every model on the CPU and lend each to ``device`` for its own stage (``--offload components``)."""
        from magihuman.runtime.placement import offload_idle_components

        self.offload = offload_idle_components(self, device)

    def _lend(self, *names: str):
        """Context in which the named components are on the compute device (no-op without offload)."""
        return self.offload.stage(*names) if self.offload is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------------------- loading
    @classmethod
    def from_official(
        cls, root: str | Path | None = None, *, transformer: str | Path | None = None,
        text_encoder: str | Path | None = None, video_vae: str | Path | None = None,
        audio_vae: str | Path | None = None, sr_transformer: str | Path | None = None,
        turbo_vae: str | Path | None = None, preset: str = "distill", video_decoder: str = "turbo",
        device: str | torch.device = "cpu", progress: bool = False, runtime: RuntimeOptions | None = None,
    ) -> "MagiHumanPipeline":
        """Load every component from the official files, unchanged.

        Args:
            root: a checkpoint root laid out as ``magihuman download`` makes it (docs/design.md):
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
            ValueError: when a component has neither an explicit path nor a root.
            CheckpointError, FileNotFoundError: from the component loaders, naming the bad path or key.
        """
        from magihuman.pipeline.validation import check_device

        device = check_device(device)  # one clear error for cuda on a CPU-only torch, before any loading
        chosen = get_preset(preset)
        if video_decoder not in VIDEO_DECODERS:
            raise ValueError(f"video_decoder must be one of {VIDEO_DECODERS}, got {video_decoder!r}")
        explicit = dict(transformer=transformer, text_encoder=text_encoder, video_vae=video_vae, audio_vae=audio_vae)
        if chosen.sr is not None:
            explicit["sr_transformer"] = sr_transformer
        if video_decoder == "turbo":
            explicit["turbo_vae"] = turbo_vae
        paths = _component_paths(root, chosen, explicit)
        runtime = runtime or RuntimeOptions()
        device = torch.device(device)
        vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # from the execution device
        dit_load = torch.device("cpu") if runtime.loads_on_host else device
        codec_load = torch.device("cpu") if "components" in runtime.offload else device
        dit = MagiHumanTransformer.from_official(
            paths["transformer"], device=dit_load, progress=progress, **_transformer_config(paths["transformer"])
        )
        sr_dit = None
        if chosen.sr is not None:
            config = _transformer_config(paths["sr_transformer"])
            if chosen.sr.local_attention:
                config["local_attn_layers"] = sr1080_local_attn_layers(config.get("num_layers", 40))
            sr_dit = MagiHumanTransformer.from_official(paths["sr_transformer"], device=dit_load, progress=progress,
                                                        **config)
        dit = place_transformer(dit, runtime, device)
        if sr_dit is not None:
            sr_dit = place_transformer(sr_dit, runtime, device)
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
                 **fields: Any) -> GenerationOutput:
        """Generate one clip.

        Args:
            prompt: the text prompt, or a whole :class:`GenerationRequest` (then pass nothing else).
            image: optional first-frame image (image-to-video).
            audio: optional driving audio file (its speech is kept in the output).
            progress: show a progress bar per stage.
            decode: decode the latents to frames and audio (False on the non-output ranks of a
                sequence-parallel run, pipeline.md 1.5: ``frames``/``audio`` are then empty).
            **fields: the other :class:`GenerationRequest` fields: ``seconds``, ``width``, ``height``,
                ``seed``, ``negative_prompt`` (``preset`` defaults to the loaded one).

        Returns:
            :class:`GenerationOutput` with ``uint8 [F, H, W, 3]`` frames and a ``float32 [2, samples]``
            waveform at 44.1 kHz.

        Raises:
            ValueError, FileNotFoundError: for a bad request, before any model runs.
        """
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
        timer = _StageTimer(progress, self.device)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        plan = request.plan()
        with torch.inference_mode():
            # 1. text
            with timer.stage("text encode"), self._lend("text_encoder"):
                text, negative = self._encode_prompts(request)
            # 2. latents: driving audio or audio noise first, then video noise (pipeline.md 12)
            with timer.stage("prepare latents"), self._lend(*(["audio_vae"] if request.audio else [])):
                audio_latent, driving_audio, plan = self._audio_latent(request, plan, generator)
                video_noise = draw_noise(plan.video_latent_shape, generator, self.device)
            # 3. first frame (image-to-video)
            image_latent = self._encode_image(request.image, plan.width, plan.height, timer, "image encode")
            # 4. denoise
            with timer.stage("denoise", total=self.preset.sampler.num_steps) as bar, self._lend("transformer"):
                video_latent, audio_latent = denoise(
                    self.transformer, video_noise, audio_latent, text, negative, config=self.preset.sampler,
                    image_latent=image_latent, audio_fixed=driving_audio is not None, generator=generator,
                    callback=lambda *_: bar.update(1), batch_cfg=self.batch_cfg,
                )
            # 5. super-resolution (SR presets): upsample, re-noise, 5 steps of the SR DiT (pipeline.md 8)
            stage = request.sr_stage()
            if stage is not None:
                video_latent = self._super_resolve(request, stage, video_latent, audio_latent, text, negative,
                                                   generator, timer)
            # 6. decode
            if decode:
                with timer.stage("video decode"), self._lend("video_decoder"):
                    frames = self._decode_video(video_latent)
                with timer.stage("audio decode"), self._lend("audio_vae"):
                    waveform = driving_audio if driving_audio is not None else self._decode_audio(audio_latent)
            else:
                frames = np.zeros((0, 16 * video_latent.shape[3], 16 * video_latent.shape[4], 3), dtype=np.uint8)
                waveform = np.zeros((2, 0), dtype=np.float32)
        return GenerationOutput(frames, waveform, FPS, OUTPUT_SAMPLE_RATE, timer.timings, notices,
                                video_latent.cpu(), audio_latent.cpu())

    # ------------------------------------------------------------------------------- stages
    def _super_resolve(self, request, stage, video_latent, audio_latent, text, negative, generator, timer):
        """The SR stage: image re-encoded at the SR size (TI2V), then :func:`super_resolve` (pipeline.md 8)."""
        image_latent = self._encode_image(request.image, stage.width, stage.height, timer, "image encode (SR)")
        with timer.stage("super-resolution", total=stage.sampler.num_steps) as bar, self._lend("sr_transformer"):
            return super_resolve(self.sr_transformer, video_latent, audio_latent, text, negative, stage=stage,
                                 generator=generator, image_latent=image_latent, callback=lambda *_: bar.update(1),
                                 batch_cfg=self.batch_cfg)

    def _encode_prompts(self, request: GenerationRequest) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Prompt embeddings ``[1, Nt, C]`` float32, and the negative ones when the sampler uses CFG."""
        text, _ = self.text_encoder.encode(request.prompt)
        negative = None
        stage = request.sr_stage()
        if self.preset.sampler.cfg_number == 2 or (stage is not None and stage.sampler.cfg_number == 2):
            negative, _ = self.text_encoder.encode(request.negative_prompt or self.negative_prompt)
            negative = negative.to(self.device)
        return text.to(self.device), negative

    def _encode_image(self, image, width: int, height: int, timer, stage_name: str) -> Optional[torch.Tensor]:
        """The first-frame latent ``[1, 48, 1, h, w]`` float32 at ``width`` x ``height`` (pipeline.md 7.1, 8.2),
        or None without an image: centre crop, Lanczos resize, Wan2.2 encode (posterior mean, normalised)."""
        if image is None:
            return None
        with timer.stage(stage_name), self._lend("video_vae"):
            pixels = preprocess_image(image, width, height)
            return self.video_vae.encode(pixels[:, :, None].to(self.device)).float()

    def _audio_latent(self, request: GenerationRequest, plan: LatentPlan, generator: torch.Generator):
        """Audio noise ``[1, L_a, 64]``; or, with a driving track, its latents and its 44.1 kHz waveform.

        Driving audio (pipeline.md 7.2): decoded to mono 51.2 kHz, cut to ``seconds``, duplicated to
        stereo and encoded with a posterior sample; ``L_a`` is the encoded length (e.g. 100 for 4 s),
        which sets the video length. The output keeps the given track itself (resampled 441/512).
        """
        if request.audio is None:
            return draw_noise((1, plan.audio_latents, 64), generator, self.device), None, plan
        mono = load_audio(request.audio, sample_rate=MODEL_SAMPLE_RATE, max_seconds=request.seconds)
        hop = MODEL_SAMPLE_RATE // LATENTS_PER_SECOND
        if mono.shape[0] < hop:
            raise ValueError(f"the audio file {request.audio} holds less than 1/25 s of sound")
        stereo = torch.from_numpy(np.stack([mono, mono]))[None].to(self.device)
        latent = self.audio_vae.encode(stereo, generator=generator).float()
        track = resample_to_output_rate(np.stack([mono, mono]))
        return latent, track, LatentPlan(plan.width, plan.height, latent.shape[1])

    def _decode_video(self, video_latent: torch.Tensor) -> np.ndarray:
        """``[1, 48, T, h, w]`` -> ``uint8 [4T-3, 16h, 16w, 3]`` (pipeline.md 9.1).

        The Turbo decoder's sliding windows are converted to uint8 one by one on the CPU into one
        preallocated array, so the float video (12 bytes per pixel, ~3 GB for 5 s at 1080p) is never held
        whole and the frames are held once. ``decode_tile`` (latent pixels) adds spatial tiling.
        """
        if not hasattr(self.video_decoder, "decode_chunks"):
            return video_to_uint8(self.video_decoder.decode(video_latent))
        _, _, t, h, w = video_latent.shape
        frames = np.empty((4 * (t - 1) + 1, 16 * h, 16 * w, 3), dtype=np.uint8)  # filled window by window
        start = 0
        for chunk in self.video_decoder.decode_chunks(video_latent, output_device="cpu", tile_size=self.decode_tile):
            pixels = video_to_uint8(chunk)
            frames[start:start + len(pixels)] = pixels
            start += len(pixels)
        if start != len(frames):
            raise RuntimeError(f"the video decoder produced {start} frames, expected {len(frames)}")
        return frames

    def _decode_audio(self, audio_latent: torch.Tensor) -> np.ndarray:
        """``[1, A, 64]`` latent -> ``float32 [2, 1764*A]`` at 44.1 kHz (pipeline.md 9.2)."""
        waveform = self.audio_vae.decode(audio_latent.float())[0]
        return resample_to_output_rate(waveform.float().cpu().numpy())


# ----------------------------------------------------------------------------------------- helpers
def component_layout(preset: Preset, *, video_decoder: str = "turbo") -> dict[str, Optional[str]]:
    """Sub-folder of the checkpoint root for each component of ``preset`` (docs/design.md); None where the
    preset does not use it (``sr_transformer`` without SR, ``turbo_vae`` with the Wan decoder)."""
    return dict(ROOT_LAYOUT, transformer=preset.checkpoint, sr_transformer=preset.sr.checkpoint if preset.sr else None,
                turbo_vae=ROOT_LAYOUT["turbo_vae"] if video_decoder == "turbo" else None)


def _component_paths(root, preset: Preset, explicit: dict[str, Any]) -> dict[str, Path]:
    layout = component_layout(preset)
    paths = {}
    for name, path in explicit.items():
        if path is None and root is None:
            raise ValueError(
                f"no location for the {name.replace('_', ' ')}: pass a checkpoint root (see `magihuman download`) "
                f"or the component's own path"
            )
        paths[name] = Path(path) if path is not None else Path(root) / layout[name]
    return paths


def _transformer_config(folder: Path) -> dict[str, Any]:
    """Config fields from :data:`TRANSFORMER_CONFIG_FILE` if the folder has one, else {} (the 15B model)."""
    config_file = Path(folder) / TRANSFORMER_CONFIG_FILE
    return json.loads(config_file.read_text()) if config_file.is_file() else {}


class _StageTimer:
    """Wall time per stage (CUDA-synchronised), with an optional progress bar per stage."""

    def __init__(self, progress: bool, device: torch.device):
        self.progress, self.device = progress, device
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[tqdm]:
        bar = tqdm(total=total, desc=name, disable=not self.progress, leave=True, dynamic_ncols=True)
        start = time.perf_counter()
        try:
            yield bar
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[name] = time.perf_counter() - start
            if total == 1 and bar.n == 0:
                bar.update(1)
            bar.close()
