"""Per-stage seconds, DiT TFLOP/s and peak GPU memory at the official shapes, with random weights.

GPU, real sizes (the 15B DiT ``MagiHumanTransformer()``, a T5Gemma-9B encoder, the Wan2.2 VAE and the
Stable Audio Open VAE at their published configs, random weights built directly on the device; one
model on the device at a time, so ~31 GB is enough for the bf16 DiT stages, ~16 GB with ``--fp8``)::

    python benchmarks/bench_stages.py --device cuda [--fp8 | --fp8-gemm] [--compile] [--attention auto] \
        [--preset base [--no-batch-cfg]] [--json out.json]

CPU, tiny configs (``TINY_TRANSFORMER_CONFIG``, demo-sized VAEs and text encoder; the default when
CUDA is absent; 1 s at 448x256 with the 896x512 SR stage, a few minutes on two busy cores; add
``--sr-sizes 896x512,1920x1088`` for the 1080p stages, ~3 more minutes)::

    python benchmarks/bench_stages.py --cpu-tiny

Stages, in pipeline order (architecture.md §1.2): text encode (``--text-tokens`` random token ids, ~200 =
a 150-word prompt), the base denoise loop at ``--width x --height`` (5 s at 448x256 by default;
``--preset distill``: 8 steps, no CFG; ``base``: 32 steps x 2 CFG passes, one batched call per step
unless ``--no-batch-cfg``; the negative text is the prompt's, so the batch has one length), one super-resolution loop
per ``--sr-sizes`` entry (5 steps; 896x512 is the 540p recipe, anything above 720 px high the 1080p
recipe with local attention on 32 layers and FlexAttention on CUDA, as the pipeline does), the
Wan2.2 video decode at every size, and the audio decode (+ the 441/512 resample). Each stage runs
``--warmup`` untimed model calls first (compilation, cuDNN autotuning), then ``--repeats`` timed runs;
the median is reported. Peak memory is ``torch.cuda.max_memory_allocated`` after a reset at the start
of the stage's timed runs (weights included). A stage that runs out of GPU memory is reported as OOM.

FLOPs of one DiT forward (GEMMs and attention; a multiply-add counts 2)::

    F = 2 * N * P_tok                                       # block linears
      + sum over layers l of 4 * A_l * D * Hq               # QK^T and PV
      + 2 * hidden * (2 * (192 * Nv + 64 * Na) + C_text * Nt)  # embedders and output heads

with ``N = Nv + Na + Nt`` tokens; ``P_tok`` = the block-linear parameters one token meets = sum over
layers of one expert's ``linear_qkv + linear_proj + up_gate_proj + down_proj`` (each token uses
exactly the expert of its modality: 10,912,645,120 for the 15B); ``D`` = 128 head dim, ``Hq`` = 40
query heads; ``A_l = N^2`` for global layers and, for local-window layers (architecture.md §6.2: video queries
see video keys within +-R latent frames, everything else is global),
``A_l = N^2 - Nv^2 + P^2 * #{(f, g) in [0, T)^2 : |f - g| <= R}`` with ``P`` video tokens per latent
frame. TFLOP/s = F x forwards / seconds of the stage (scheduler updates included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from magihuman.codecs.audio_vae import LATENTS_PER_SECOND, AudioVAE, resample_to_output_rate
from magihuman.codecs.video_vae import VideoVAE, wan22_vae_config
from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG
from magihuman.model.attention import resolve_attention_backend
from magihuman.model.layers import ExpertLinear
from magihuman.model.transformer import MagiHumanTransformer
from magihuman.pipeline.presets import get_preset, preset_for_sr_size
from magihuman.runtime.compile import compile_repeated_blocks
from magihuman.runtime.fp8 import enable_fp8_weights, weight_bytes
from magihuman.sampling.config import SR_SAMPLER, SuperResolutionStage
from magihuman.sampling.loop import denoise
from magihuman.sampling.records import Latents, TextConditioning
from magihuman.sampling.super_resolution import (
    FRAME_RECEPTIVE_FIELD,
    sr1080_local_attn_layers,
    super_resolve,
)

#: Official sizes (architecture.md §13.1): the base stage, and the 540p / 1080p SR outputs.
REAL_BASE_SIZE = (448, 256)
REAL_SR_SIZES = ((896, 512), (1920, 1088))
#: The T5Gemma-9B-9B-UL2 encoder (architecture.md §11.2): 9.24e9 parameters.
T5GEMMA_9B = dict(hidden_size=3584, num_layers=42, num_heads=16, num_kv_heads=8, head_dim=256,
                  intermediate_size=14336, vocab_size=256000)
#: The demo bundle's tiny encoder (text_encoder.save_random_official defaults).
T5GEMMA_TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                    intermediate_size=64, vocab_size=1280)
#: Demo-sized VAE widths (demo.py): Wan2.2 base/decoder 4, Oobleck 4; real: 160/256 and 128.
TINY_VAE = dict(video=dict(base_dim=4, decoder_base_dim=4), audio=4)
REAL_VAE = dict(video=dict(base_dim=160, decoder_base_dim=256), audio=128)

STAGE_COLUMNS = ("stage", "shape", "tokens", "steps", "s/step", "total s", "TFLOP/s", "peak GB")


@dataclass
class StageResult:
    """One row of the table.

    Attributes:
        stage: stage name (``text encode``, ``denoise``, ``SR 896x512``, ``video decode 448x256``, ...).
        shape: the stage's main input shape, in words.
        tokens: DiT sequence length (text tokens for the text encoder), or None.
        steps: sampler steps (model forwards = steps x CFG passes), or None.
        seconds: median wall time of the whole stage.
        seconds_per_step: median time of one step, or None.
        tflops: achieved DiT TFLOP/s, or None for non-DiT stages.
        peak_gb: peak allocated GPU memory in GB (1e9 bytes), None on CPU.
        note: e.g. ``OOM``.
    """

    stage: str
    shape: str
    tokens: int | None = None
    steps: int | None = None
    seconds: float | None = None
    seconds_per_step: float | None = None
    tflops: float | None = None
    peak_gb: float | None = None
    note: str = ""


# ============================================================================================= FLOPs
def per_token_block_params(config: dict) -> int:
    """Block-linear parameters one token meets in one forward (one expert per layer), from the config."""
    with torch.device("meta"):
        model = MagiHumanTransformer(**config)
    return sum(m.weight.numel() // m.num_experts for m in model.modules() if isinstance(m, ExpertLinear))


def local_attention_pairs(total: int, video: int, frames: int, radius: int) -> int:
    """Allowed (query, key) pairs of a local-window layer (architecture.md §6.2): ``N^2 - Nv^2 + P^2 * pairs(T, R)``."""
    if radius < 0 or radius >= frames:  # the model then runs the layer globally
        return total * total
    per_frame = video // frames
    frame_pairs = sum(min(frames - 1, f + radius) - max(0, f - radius) + 1 for f in range(frames))
    return total * total - video * video + per_frame * per_frame * frame_pairs


def dit_forward_flops(config: dict, *, video_tokens: int, audio_tokens: int, text_tokens: int, frames: int,
                      frame_receptive_field: int = FRAME_RECEPTIVE_FIELD, _per_token: int | None = None) -> float:
    """GEMM + attention FLOPs of one forward (module docstring formula)."""
    cfg = dict(config)
    full = {**_default_config(), **cfg}
    n = video_tokens + audio_tokens + text_tokens
    hidden, head_dim = full["hidden_size"], full["head_dim"]
    heads = hidden // head_dim
    per_token = _per_token if _per_token is not None else per_token_block_params(cfg)
    local = set(full["local_attn_layers"])
    attention = 0
    for layer in range(full["num_layers"]):
        pairs = (local_attention_pairs(n, video_tokens, frames, frame_receptive_field) if layer in local else n * n)
        attention += 4 * pairs * head_dim * heads
    io = 2 * hidden * (2 * (full["video_in_channels"] * video_tokens + full["audio_in_channels"] * audio_tokens)
                       + full["text_in_channels"] * text_tokens)
    return float(2 * n * per_token + attention + io)


def _default_config() -> dict:
    with torch.device("meta"):
        return dict(MagiHumanTransformer().config)


# ========================================================================================= builders
def _seeded_normal_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    tensor.normal_(0.0, std, generator=generator)


def build_dit(config: dict, device: torch.device, seed: int = 0) -> MagiHumanTransformer:
    """A DiT with random weights created directly on ``device`` (random_weights.py's init recipe:
    norms and biases ``0.1 * N(0,1)``, other weights ``N(0, 1/in)``, ``up_gate_proj`` x2.5; block
    linears bf16, the rest float32)."""
    with torch.device(device):
        model = MagiHumanTransformer(**config)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                _seeded_normal_(param, 0.1, generator)
            else:
                scale = 2.5 if name.endswith("up_gate_proj.weight") else 1.0
                _seeded_normal_(param, scale / math.sqrt(param.shape[-1]), generator)
    return model.eval().requires_grad_(False)


def build_text_encoder(sizes: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A T5Gemma encoder with random weights (the pipeline's no-soft-cap SDPA attention, architecture.md §11.2)."""
    from transformers import T5GemmaConfig, T5GemmaEncoderModel
    from transformers.models.t5gemma import T5GemmaModuleConfig

    from magihuman.codecs.text_encoder import _register_nocap_attention

    module = T5GemmaModuleConfig(
        vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"],
        num_hidden_layers=sizes["num_layers"], num_attention_heads=sizes["num_heads"],
        num_key_value_heads=sizes["num_kv_heads"], head_dim=sizes["head_dim"], query_pre_attn_scalar=sizes["head_dim"],
        sliding_window=4096, attn_logit_softcapping=None, final_logit_softcapping=30.0, max_position_embeddings=8192,
    ).to_dict()
    config = T5GemmaConfig(encoder=module, decoder=module, vocab_size=sizes["vocab_size"], is_encoder_decoder=False)
    config.encoder._attn_implementation = _register_nocap_attention()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = T5GemmaEncoderModel(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def build_video_vae(widths: dict, device: torch.device, dtype: torch.dtype) -> VideoVAE:
    from diffusers import AutoencoderKLWan

    with torch.device(device):
        model = AutoencoderKLWan(**wan22_vae_config(**widths))
    return VideoVAE(model.to(dtype).eval().requires_grad_(False))


def build_audio_vae(channels: int, device: torch.device) -> AudioVAE:
    import warnings

    from diffusers import AutoencoderOobleck

    with warnings.catch_warnings(), torch.device(device):
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        model = AutoencoderOobleck(encoder_hidden_size=channels, decoder_channels=channels)
    return AudioVAE(model.float().eval().requires_grad_(False))


# =========================================================================================== timing
class _Clock:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else None


def _timed(clock: _Clock, run: Callable[[Callable[[], None]], Any], repeats: int) -> tuple[float, float | None, float | None]:
    """Run ``run(step_tick)`` ``repeats`` times; median (total s, s/step), and the peak memory."""
    clock.reset_peak()
    totals, steps = [], []
    for _ in range(repeats):
        marks = [clock.now()]
        run(lambda *_: marks.append(clock.now()))
        end = clock.now()
        totals.append(end - marks[0])
        steps += [b - a for a, b in zip(marks, marks[1:])]
    return statistics.median(totals), (statistics.median(steps) if steps else None), clock.peak_gb()


def _guard_oom(stage: str, shape: str, fn: Callable[[], StageResult]) -> StageResult:
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return StageResult(stage, shape, note="OOM")


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ========================================================================================== stages
@dataclass
class BenchSettings:
    """What :func:`run_benchmark` measures (see ``--help`` for each field)."""

    tiny: bool = True
    device: str = "cpu"
    seconds: float = 5.0
    width: int = REAL_BASE_SIZE[0]
    height: int = REAL_BASE_SIZE[1]
    sr_sizes: Sequence[tuple[int, int]] = REAL_SR_SIZES
    preset: str = "distill"
    steps: int | None = None
    sr_steps: int | None = None
    text_tokens: int = 200
    fp8: bool = False
    fp8_gemm: bool = False
    batch_cfg: bool = True
    compile: bool = False
    compile_mode: str | None = None
    attention: str = "auto"
    warmup: int = 1
    repeats: int = 1
    seed: int = 0


def _dit_config(settings: BenchSettings, local: bool) -> dict:
    config = dict(TINY_TRANSFORMER_CONFIG) if settings.tiny else {}
    if local:
        config["local_attn_layers"] = sr1080_local_attn_layers(config.get("num_layers", 40))
    return config


def _prepare_dit(settings: BenchSettings, device: torch.device, local: bool) -> tuple[MagiHumanTransformer, dict]:
    config = _dit_config(settings, local)
    model = build_dit(config, device, settings.seed)
    if settings.fp8 or settings.fp8_gemm:
        enable_fp8_weights(model, scaled_gemm=settings.fp8_gemm)
    backend = resolve_attention_backend(settings.attention, device, local_window_layers=local)  # as the pipeline
    model.set_attention_backend(backend)
    if settings.compile:
        torch._dynamo.reset()  # each stage compiles static graphs for its own token count (in the warm-up)
        kwargs = {"mode": settings.compile_mode} if settings.compile_mode else {}
        compile_repeated_blocks(model, **kwargs)
    return model, config


def run_benchmark(settings: BenchSettings, *, log: Callable[[str], None] = lambda _: None) -> tuple[list[StageResult], dict]:
    """Measure every stage.

    Args:
        settings: shapes, flags and repeats.
        log: progress messages (e.g. ``print``), one per stage.

    Returns:
        ``(rows, meta)``: one :class:`StageResult` per stage and a dict describing the run (device,
        versions, flags, DiT weight bytes).

    Raises:
        ValueError: for non-positive seconds/sizes/repeats, or CUDA requested but absent.
    """
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but CUDA is not available; use --cpu-tiny")
    if settings.seconds <= 0 or settings.repeats < 1 or settings.warmup < 0 or settings.text_tokens < 1:
        raise ValueError("seconds and text tokens must be positive, repeats >= 1 and warmup >= 0")
    for w, h in [(settings.width, settings.height), *settings.sr_sizes]:
        if w < 32 or h < 32 or w % 32 or h % 32:
            raise ValueError(f"sizes must be multiples of 32 pixels, got {w}x{h}")
    clock = _Clock(device)
    preset = get_preset(settings.preset)
    sampler = preset.sampler if settings.steps is None else dataclasses.replace(preset.sampler, num_steps=settings.steps)
    sr_sampler = SR_SAMPLER if settings.sr_steps is None else dataclasses.replace(SR_SAMPLER, num_steps=settings.sr_steps)
    vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    audio_latents = int(round(settings.seconds * LATENTS_PER_SECOND)) + 1
    frames = (audio_latents - 1) // 4 + 1
    base_latent = (settings.height // 16, settings.width // 16)
    text_width = (TINY_TRANSFORMER_CONFIG if settings.tiny else _default_config())["text_in_channels"]
    g = torch.Generator().manual_seed(settings.seed)
    text = torch.randn(1, settings.text_tokens, text_width, generator=g).to(device)
    audio = torch.randn(1, audio_latents, 64, generator=g).to(device)
    video = torch.randn(1, 48, frames, *base_latent, generator=g).to(device)
    rows: list[StageResult] = []
    meta: dict[str, Any] = dict(
        device=str(device), device_name=(torch.cuda.get_device_name(device) if device.type == "cuda"
                                         else platform.processor() or platform.machine()),
        torch=torch.__version__, threads=torch.get_num_threads(), settings=dataclasses.asdict(settings),
        audio_latents=audio_latents, latent_frames=frames,
    )

    # 1. text encoder
    def text_stage() -> StageResult:
        sizes = T5GEMMA_TINY if settings.tiny else T5GEMMA_9B
        encoder = build_text_encoder(sizes, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
        ids = torch.randint(0, sizes["vocab_size"], (1, settings.text_tokens), generator=g).to(device)

        def encode(_tick) -> torch.Tensor:
            hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            return hidden.half()[:, :640].float()

        with torch.inference_mode():
            for _ in range(settings.warmup):
                encode(None)
            seconds, _, peak = _timed(clock, encode, settings.repeats)
        return StageResult("text encode", f"{settings.text_tokens} tokens", settings.text_tokens, None, seconds,
                           None, None, peak)

    log("text encode")
    rows.append(_guard_oom("text encode", f"{settings.text_tokens} tokens", text_stage))
    _free(device)

    # 2. base denoise
    video_tokens = frames * (base_latent[0] // 2) * (base_latent[1] // 2)
    base_shape = f"{settings.width}x{settings.height}, {frames}x{base_latent[0]}x{base_latent[1]} latent"

    def denoise_stage() -> StageResult:
        model, config = _prepare_dit(settings, device, local=False)
        meta["dit_weight_bytes"] = weight_bytes(model)
        negative = text if sampler.cfg_number == 2 else None
        with torch.inference_mode():
            for _ in range(settings.warmup):
                model(video, audio, text)

            def run(tick) -> None:
                denoise(model, Latents(video, audio), TextConditioning(text, negative), config=sampler,
                        generator=torch.Generator().manual_seed(1), callback=tick, batch_cfg=settings.batch_cfg)

            seconds, per_step, peak = _timed(clock, run, settings.repeats)
        flops = dit_forward_flops(config, video_tokens=video_tokens, audio_tokens=audio_latents,
                                  text_tokens=settings.text_tokens, frames=frames)
        forwards = sampler.num_steps * sampler.cfg_number
        tokens = video_tokens + audio_latents + settings.text_tokens
        return StageResult(f"denoise ({settings.preset})", base_shape, tokens, sampler.num_steps, seconds, per_step,
                           flops * forwards / seconds / 1e12, peak)

    log("denoise")
    rows.append(_guard_oom(f"denoise ({settings.preset})", base_shape, denoise_stage))
    _free(device)

    # 3. super-resolution
    for width, height in settings.sr_sizes:
        recipe = get_preset(preset_for_sr_size("base", width, height)).sr  # 540p or the 1080p recipe
        stage = dataclasses.replace(recipe, width=width, height=height, sampler=sr_sampler)
        local = stage.local_attention
        h_s, w_s = stage.latent_size
        sr_video_tokens = frames * (h_s // 2) * (w_s // 2)
        name = f"SR {width}x{height}" + (" (local attn)" if local else "")
        shape = f"{frames}x{h_s}x{w_s} latent"

        def sr_stage(stage=stage, local=local, sr_video_tokens=sr_video_tokens, name=name, shape=shape) -> StageResult:
            model, config = _prepare_dit(settings, device, local=local)
            with torch.inference_mode():
                sr_input = torch.zeros(1, 48, frames, h_s, w_s, device=device)
                for _ in range(settings.warmup):
                    model(sr_input, audio, text, coords_style="v1", frame_receptive_field=FRAME_RECEPTIVE_FIELD)

                def run(tick) -> None:
                    super_resolve(model, Latents(video, audio), TextConditioning(text), stage=stage,
                                  generator=torch.Generator().manual_seed(2), callback=tick)

                seconds, per_step, peak = _timed(clock, run, settings.repeats)
            flops = dit_forward_flops(config, video_tokens=sr_video_tokens, audio_tokens=audio_latents,
                                      text_tokens=settings.text_tokens, frames=frames)
            forwards = stage.sampler.num_steps * stage.sampler.cfg_number
            tokens = sr_video_tokens + audio_latents + settings.text_tokens
            return StageResult(name, shape, tokens, stage.sampler.num_steps, seconds, per_step,
                               flops * forwards / seconds / 1e12, peak)

        log(name)
        rows.append(_guard_oom(name, shape, sr_stage))
        _free(device)

    # 4. video decode at every output size (one VAE, freed when the helper returns)
    outputs = [((settings.width, settings.height), base_latent)]
    outputs += [((w, h), SuperResolutionStage("", w, h).latent_size) for w, h in settings.sr_sizes]
    rows += _video_decode_stages(settings, device, vae_dtype, clock, outputs, frames, g, log)
    _free(device)

    # 5. audio decode (+ resample to 44.1 kHz, as the pipeline's stage)
    def audio_stage() -> StageResult:
        audio_vae = build_audio_vae((TINY_VAE if settings.tiny else REAL_VAE)["audio"], device)

        def decode(_tick) -> None:
            waveform = audio_vae.decode(audio.float())[0]
            resample_to_output_rate(waveform.float().cpu().numpy())

        with torch.inference_mode():
            for _ in range(settings.warmup):
                decode(None)
            seconds, _, peak = _timed(clock, decode, settings.repeats)
        return StageResult("audio decode", f"{audio_latents} latents -> 44.1 kHz", None, None, seconds, None, None, peak)

    log("audio decode")
    rows.append(_guard_oom("audio decode", f"{audio_latents} latents", audio_stage))
    _free(device)
    return rows, meta


def _video_decode_stages(settings: BenchSettings, device: torch.device, dtype: torch.dtype, clock: _Clock,
                         outputs: list, frames: int, generator: torch.Generator, log) -> list[StageResult]:
    vae = build_video_vae((TINY_VAE if settings.tiny else REAL_VAE)["video"], device, dtype)
    rows = []
    for (width, height), latent_size in outputs:
        latent = torch.randn(1, 48, frames, *latent_size, generator=generator).to(device)
        name = f"video decode {width}x{height}"
        shape = f"{4 * (frames - 1) + 1} frames, {dtype}".replace("torch.", "")

        def decode_stage(latent=latent, name=name, shape=shape) -> StageResult:
            with torch.inference_mode():
                for _ in range(settings.warmup):
                    vae.decode(latent)
                seconds, _, peak = _timed(clock, lambda _tick: vae.decode(latent), settings.repeats)
            return StageResult(name, shape, None, None, seconds, None, None, peak)

        log(name)
        rows.append(_guard_oom(name, shape, decode_stage))
        del latent
        _free(device)
    return rows


# ========================================================================================== output
def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def format_table(rows: Sequence[StageResult]) -> str:
    """The rows as a markdown table (``-`` where a column does not apply)."""
    lines = ["| " + " | ".join(STAGE_COLUMNS) + " |", "|" + "---|" * len(STAGE_COLUMNS)]
    for r in rows:
        total = _fmt(r.seconds) if r.note == "" else r.note
        cells = [r.stage, r.shape, _fmt(r.tokens), _fmt(r.steps), _fmt(r.seconds_per_step), total,
                 _fmt(r.tflops, 3), _fmt(r.peak_gb, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes look like 896x512, got {text!r}") from None
    return width, height


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchSettings, Path | None]:
    """Command line -> (settings, JSON path or None)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-tiny", action="store_true",
                        help="tiny configs on the CPU (the default when CUDA is absent)")
    parser.add_argument("--device", default=None, help="cuda (default with CUDA) or cpu")
    parser.add_argument("--seconds", type=float, default=None, help="clip length (5 on GPU, 1 with --cpu-tiny)")
    parser.add_argument("--width", type=int, default=REAL_BASE_SIZE[0])
    parser.add_argument("--height", type=int, default=REAL_BASE_SIZE[1])
    parser.add_argument("--sr-sizes", default=None,
                        help="comma-separated SR output sizes, empty for none (default: 896x512,1920x1088 on "
                             "GPU; 896x512 with --cpu-tiny, where 1920x1088 adds ~3 minutes)")
    parser.add_argument("--preset", default="distill", choices=("distill", "base"))
    parser.add_argument("--steps", type=int, default=None, help="override the preset's denoise steps")
    parser.add_argument("--sr-steps", type=int, default=None, help="override the 5 SR steps")
    parser.add_argument("--text-tokens", type=int, default=200)
    parser.add_argument("--fp8", action="store_true", help="FP8 block-linear storage (runtime.fp8.enable_fp8_weights)")
    parser.add_argument("--fp8-gemm", action="store_true",
                        help="FP8 weights and FP8 tensor-core GEMMs where the shapes allow (implies --fp8)")
    parser.add_argument("--no-batch-cfg", dest="batch_cfg", action="store_false",
                        help="base preset: two DiT calls per step instead of one batched call")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer layer")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--attention", default="auto", choices=("auto", "sdpa", "flex", "fa3"))
    parser.add_argument("--warmup", type=int, default=1, help="untimed model calls per stage")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per stage (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and run details here")
    args = parser.parse_args(argv)
    has_cuda = torch.cuda.is_available()
    tiny = args.cpu_tiny or not has_cuda
    device = args.device or ("cuda" if has_cuda and not args.cpu_tiny else "cpu")
    sr_text = args.sr_sizes if args.sr_sizes is not None else ("896x512" if tiny else "896x512,1920x1088")
    sr_sizes = tuple(_size(s) for s in sr_text.split(",") if s.strip())
    return BenchSettings(
        tiny=tiny, device=device, seconds=args.seconds if args.seconds is not None else (1.0 if tiny else 5.0),
        width=args.width, height=args.height, sr_sizes=sr_sizes, preset=args.preset, steps=args.steps,
        sr_steps=args.sr_steps, text_tokens=args.text_tokens, fp8=args.fp8 or args.fp8_gemm,
        fp8_gemm=args.fp8_gemm, batch_cfg=args.batch_cfg, compile=args.compile,
        compile_mode=args.compile_mode, attention=args.attention, warmup=args.warmup, repeats=args.repeats,
        seed=args.seed,
    ), args.json


def main(argv: Sequence[str] | None = None) -> int:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" on every VAE cast
    settings, json_path = parse_args(argv)
    rows, meta = run_benchmark(settings, log=lambda stage: print(f"... {stage}", file=sys.stderr, flush=True))
    weights = meta.get("dit_weight_bytes", {}).get("total")
    print(f"device={meta['device']} ({meta['device_name']}) torch={meta['torch']} threads={meta['threads']} "
          f"{'tiny configs' if settings.tiny else 'real sizes'} preset={settings.preset} {settings.seconds:g} s "
          f"({meta['audio_latents']} audio latents, {meta['latent_frames']} latent frames) fp8={settings.fp8} "
          f"fp8_gemm={settings.fp8_gemm} batch_cfg={settings.batch_cfg} "
          f"compile={settings.compile} attention={settings.attention}"
          + (f" DiT weights={weights / 1e9:.3g} GB" if weights else ""))
    print(format_table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps(dict(meta=meta, rows=[dataclasses.asdict(r) for r in rows]), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
