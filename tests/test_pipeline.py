"""MagiHumanPipeline on the tiny demo bundle: sizes, request checks, draw order, the three modes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from magihuman.codecs.audio_vae import resample_to_output_rate
from magihuman.pipeline.loading import TRANSFORMER_CONFIG_FILE, check_checkpoint_root, transformer_config
from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline
from magihuman.pipeline.media import load_audio, preprocess_image
from magihuman.pipeline.presets import PRESETS, get_preset
from magihuman.pipeline.progress import GenerationInterrupted
from magihuman.pipeline.request import GenerationRequest, LatentPlan, generated_audio_latents, round_video_size

from conftest import write_tone

PROMPT = "A woman in a red coat smiles and says hello to the camera in a quiet studio."


@pytest.mark.parametrize(
    "seconds, audio_latents, latent_frames, pixel_frames",
    [(1, 26, 7, 25), (2, 51, 13, 49), (3, 76, 19, 73), (4, 101, 26, 101), (5, 126, 32, 125),
     (8, 201, 51, 201), (10, 251, 63, 249)],
)
def test_frame_count_table(seconds, audio_latents, latent_frames, pixel_frames):
    """architecture.md §13.2: L_a = 25 s + 1, T = (L_a - 1)//4 + 1, F = 4 (T - 1) + 1."""
    plan = LatentPlan(448, 256, generated_audio_latents(seconds))
    assert (plan.audio_latents, plan.latent_frames, plan.pixel_frames) == (audio_latents, latent_frames, pixel_frames)


def test_size_rounding():
    """architecture.md §13.2: 448x256 -> latent 16x28; the reference default 480x272 renders 480x256."""
    assert round_video_size(448, 256) == (448, 256)
    assert round_video_size(480, 272) == (480, 256)
    assert LatentPlan(448, 256, 101).video_latent_shape == (1, 48, 26, 16, 28)
    assert LatentPlan(448, 256, 101).audio_latent_shape == (1, 101, 64)
    notices = GenerationRequest(prompt=PROMPT, width=480, height=272).validate_inputs()
    assert any("480x272 rounded down to 480x256" in n for n in notices)


def test_request_validation(tmp_path):
    with pytest.raises(ValueError, match="prompt is empty"):
        GenerationRequest(prompt="  ").validate_inputs()
    with pytest.raises(ValueError, match="seconds"):
        GenerationRequest(prompt=PROMPT, seconds=0).validate_inputs()
    with pytest.raises(ValueError, match="at least 32"):
        GenerationRequest(prompt=PROMPT, width=20).validate_inputs()
    with pytest.raises(FileNotFoundError, match="image file not found"):
        GenerationRequest(prompt=PROMPT, image=tmp_path / "missing.png").validate_inputs()
    with pytest.raises(ValueError, match="unknown preset"):
        GenerationRequest(prompt=PROMPT, preset="turbo").validate_inputs()
    with pytest.raises(ValueError):
        GenerationRequest(prompt=PROMPT, sedonds=3)  # unknown field
    assert any("150-200 words" in n for n in GenerationRequest(prompt="hi there").validate_inputs())
    assert GenerationRequest(prompt=" ".join(["word"] * 160)).validate_inputs() == []


def test_presets_are_data():
    assert get_preset("distill").sampler.num_steps == 8 and get_preset("distill").sampler.cfg_number == 1
    assert get_preset("base").sampler.num_steps == 32 and get_preset("base").sampler.cfg_number == 2
    assert {p.checkpoint for p in PRESETS.values()} == {"distill", "base"}


def test_missing_checkpoint_location_is_explained():
    with pytest.raises(ValueError, match="magihuman download"):
        MagiHumanPipeline.from_official()


@pytest.fixture(scope="module")
def pipes(demo_root):
    return {name: MagiHumanPipeline.from_official(demo_root, preset=name) for name in ("distill", "base")}


class Spy:
    """Wraps the transformer, recording every call's inputs."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, video, audio, text, **kwargs):
        self.calls.append((video.clone(), audio.clone(), text.clone(), kwargs))
        return self.model(video, audio, text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def _small(**kw):
    return dict(dict(prompt=PROMPT, seconds=0.4, width=64, height=64, seed=7), **kw)


def test_t2v_draw_order_and_determinism(pipes):
    """architecture.md §8.5: audio noise [1, L_a, 64] first, then video noise, from the request seed."""
    pipe = pipes["distill"]
    spy = Spy(pipe.transformer)
    pipe.transformer, original = spy, pipe.transformer
    try:
        out = pipe(**_small())
    finally:
        pipe.transformer = original
    generator = torch.Generator().manual_seed(7)
    audio_noise = torch.randn(1, 11, 64, generator=generator)
    video_noise = torch.randn(1, 48, 3, 4, 4, generator=generator)
    first_video, first_audio, _, _ = spy.calls[0]
    assert torch.equal(first_audio, audio_noise) and torch.equal(first_video, video_noise)
    assert len(spy.calls) == 8  # distilled: 8 steps, one pass each
    assert out.frames.shape == (9, 64, 64, 3) and out.frames.dtype == np.uint8
    assert out.audio.shape == (2, int(11 * 2048 * 441 / 512)) and out.audio.dtype == np.float32
    assert out.fps == 25 and out.sample_rate == 44100
    assert set(out.timings) >= {"text encode", "denoise", "video decode", "audio decode"}
    again = pipe(**_small())
    assert np.array_equal(again.frames, out.frames) and np.array_equal(again.audio, out.audio)
    other = pipe(**_small(seed=8))
    assert not np.array_equal(other.frames, out.frames)


def test_base_preset_runs_cfg_with_negative_prompt(pipes):
    pipe = pipes["base"]
    expected_negative, _ = pipe.text_encoder.encode("blurry, noisy")
    expected_prompt, _ = pipe.text_encoder.encode(PROMPT)
    outputs = {}
    for batch_cfg in (False, True):
        spy = Spy(pipe.transformer)
        pipe.transformer, original = spy, pipe.transformer
        pipe.batch_cfg = batch_cfg
        try:
            outputs[batch_cfg] = pipe(**_small(negative_prompt="blurry, noisy"), decode=False)
        finally:
            pipe.transformer, pipe.batch_cfg = original, True
        if not batch_cfg:
            assert len(spy.calls) == 64  # 32 steps x (cond, uncond)
            cond_text, uncond_text = spy.calls[0][2], spy.calls[1][2]
            assert torch.equal(uncond_text, expected_negative)
            assert torch.equal(cond_text, expected_prompt)
        else:  # the default: one batch-2 call per step, texts zero-padded to one length (issue 5)
            assert len(spy.calls) == 32
            video, _, text, kwargs = spy.calls[0]
            lengths = (expected_prompt.shape[1], expected_negative.shape[1])
            assert video.shape[0] == 2 and kwargs == {"text_lengths": lengths}
            assert torch.equal(text[0, :lengths[0]], expected_prompt[0])
            assert torch.equal(text[1, :lengths[1]], expected_negative[0])
    for got, want in ((outputs[True].video_latent, outputs[False].video_latent),
                      (outputs[True].audio_latent, outputs[False].audio_latent)):
        # GEMM rounding for another row count only, compounded over 32 steps at guidance 5 (measured 0.0149)
        assert float((got - want).norm() / want.norm()) < 5e-2


def test_image_to_video_keeps_frame_zero(pipes, examples_dir):
    pipe = pipes["distill"]
    out = pipe(**_small(image=examples_dir / "image.png"))
    pixels = preprocess_image(examples_dir / "image.png", 64, 64)
    image_latent = pipe.video_vae.encode(pixels[:, :, None]).float()
    assert torch.equal(out.video_latent[:, :, :1], image_latent)  # architecture.md §9.1


def test_audio_drives_video_and_is_kept(pipes, tmp_path):
    """architecture.md §9.2: L_a comes from the encoded audio (25 for 1 s), the latents stay fixed, and
    the output keeps the given track (our choice, see sampling.denoise)."""
    pipe = pipes["distill"]
    tone = write_tone(tmp_path / "tone.wav", seconds=1.0)
    out = pipe(**_small(audio=tone, seconds=1.0))
    assert out.audio_latent.shape == (1, 25, 64)
    assert out.frames.shape[0] == 4 * ((25 - 1) // 4) + 1
    mono = load_audio(tone, sample_rate=51200, max_seconds=1.0)
    assert np.array_equal(out.audio, resample_to_output_rate(np.stack([mono, mono])))


def test_preset_mismatch_and_component_mismatch(pipes):
    with pytest.raises(ValueError, match="loaded for preset 'distill'"):
        pipes["distill"](GenerationRequest(**_small(preset="base")))
    p = pipes["distill"]
    from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG, random_transformer

    wrong = random_transformer(dict(TINY_TRANSFORMER_CONFIG, text_in_channels=16))
    with pytest.raises(ValueError, match="text_in_channels"):
        MagiHumanPipeline(wrong, p.text_encoder, p.video_vae, p.audio_vae)


def test_save_writes_mp4(pipes, tmp_path):
    from magihuman.pipeline.media import probe_media

    out = pipes["distill"](PROMPT, seconds=0.4, width=64, height=64, seed=7)  # positional prompt
    path = out.save(tmp_path / "clip.mp4")
    info = probe_media(path)
    assert info["video_codec"] == "h264" and info["num_frames"] == 9 and (info["width"], info["height"]) == (64, 64)
    assert info["audio_codec"] == "aac" and info["sample_rate"] == 44100
    with pytest.raises(FileExistsError):
        out.save(tmp_path / "clip.mp4")


def test_turbo_is_the_default_decoder_and_wan_is_selectable(pipes, demo_root):
    """issue 4 / architecture.md §12.1: Turbo-VAED decodes by default; its windows are converted to uint8 one
    by one, which equals converting the whole decode; the Wan2.2 decoder stays selectable."""
    from magihuman.codecs.turbo_vae import TurboVAE
    from magihuman.pipeline.media import video_to_uint8

    pipe = pipes["distill"]
    assert isinstance(pipe.video_decoder, TurboVAE)
    out = pipe(**_small(seconds=1.2))  # L_a 31 -> T = 8 latent frames: two sliding windows (7 + 7)
    assert np.array_equal(out.frames, video_to_uint8(pipe.video_decoder.decode(out.video_latent)))
    wan = MagiHumanPipeline.from_official(demo_root, preset="distill", video_decoder="wan")
    assert wan.video_decoder is wan.video_vae
    wan_out = wan(**_small())
    assert wan_out.frames.shape == (9, 64, 64, 3)
    with pytest.raises(ValueError, match="video_decoder"):
        MagiHumanPipeline.from_official(demo_root, video_decoder="vqgan")


def test_runtime_options_through_the_pipeline(pipes, demo_root):
    """issue 5: --offload blocks and --attention flex leave the result bit-identical; --fp8 stores the block
    linears in float8 and stays close; component offload refuses a CPU-only run with a clear message."""
    from magihuman.runtime.options import RuntimeOptions

    reference = pipes["distill"](**_small())
    streamed = MagiHumanPipeline.from_official(demo_root, runtime=RuntimeOptions(offload=("blocks",)))
    assert torch.equal(streamed(**_small()).video_latent, reference.video_latent)
    flex = MagiHumanPipeline.from_official(demo_root, runtime=RuntimeOptions(attention="flex"))
    assert torch.equal(flex(**_small()).video_latent, reference.video_latent)  # no local layers: plain SDPA
    fp8 = MagiHumanPipeline.from_official(demo_root, runtime=RuntimeOptions(fp8=True))
    qkv = fp8.transformer.block.layers[2].attention.linear_qkv
    assert qkv.weight_e4m3.dtype == torch.float8_e4m3fn and qkv.weight.dtype == torch.uint8  # e4m3 bytes
    out = fp8(**_small())
    assert torch.isfinite(out.video_latent).all() and out.frames.shape == reference.frames.shape
    with pytest.raises(ValueError, match="nothing to offload"):
        MagiHumanPipeline.from_official(demo_root, runtime=RuntimeOptions(offload=("components",)))
    with pytest.raises(ValueError, match="offload mode"):
        RuntimeOptions(offload=("disk",))


def test_each_stage_borrows_only_its_component(pipes, examples_dir, tmp_path):
    """With component offload every stage lends exactly its own model to the device (architecture.md §14)."""

    class Recorder:
        execution_device = torch.device("cpu")

        def __init__(self):
            self.stages = []

        def stage(self, *names):
            self.stages.append(names)
            import contextlib

            return contextlib.nullcontext()

    pipe = pipes["distill"]
    pipe.offload = recorder = Recorder()
    try:
        pipe(**_small(image=examples_dir / "image.png", audio=write_tone(tmp_path / "t.wav", seconds=0.5)))
    finally:
        pipe.offload = None
    assert recorder.stages == [("text_encoder",), ("audio_vae",), ("video_vae",), ("transformer",),
                               ("video_decoder",), ("audio_vae",)]


def test_presets_module_imports_no_torch():
    """Presets are plain data: the CLI's --help and a server's request parser read them without torch."""
    code = ("import sys, magihuman.pipeline.presets as p, magihuman.pipeline.loading, magihuman.sampling.config; "
            "assert p.get_preset('sr_1080p').sr.checkpoint == '1080p_sr'; print(sorted("
            "m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.stdout.strip() == "[]"


def test_home_relative_checkpoint_root(demo_root, tmp_path, monkeypatch):
    """``~`` is expanded in every path of the loading table, including the transformer config file: the
    demo bundle under ``~`` loads its tiny DiT, not the 15B defaults (which would miss most keys)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "demo").symlink_to(demo_root, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    paths = check_checkpoint_root("~/demo", {"audio_vae": "~/demo/stable-audio-open-1.0"}, preset="distill")
    assert paths["transformer"] == home / "demo" / "distill"
    assert paths["audio_vae"] == home / "demo" / "stable-audio-open-1.0"
    assert (demo_root / "distill" / TRANSFORMER_CONFIG_FILE).is_file()
    assert transformer_config("~/demo/distill")["num_layers"] == transformer_config(demo_root / "distill")["num_layers"]
    pipe = MagiHumanPipeline.from_official("~/demo", preset="distill")
    assert pipe.transformer.config.num_layers == transformer_config(demo_root / "distill")["num_layers"]
    assert pipe(**_small(), decode=False).video_latent.shape == (1, 48, 3, 4, 4)


def test_callback_on_step_end_reports_every_step(pipes):
    """diffusers' convention: callback(pipe, step_index, timestep, callback_kwargs) after every step."""
    pipe = pipes["distill"]
    seen = []

    def callback(p, step_index, timestep, kwargs):
        seen.append((p, step_index, timestep, kwargs["stage"], kwargs["num_steps"], kwargs["total_steps"],
                     kwargs["completed_steps"], kwargs["latents"].video.clone()))
        return {"ignored": True}

    out = pipe(**_small(), callback_on_step_end=callback)
    assert [s[1:7] for s in seen] == [(k, t, "denoise", 8, 8, k + 1) for k, t in
                                      enumerate([999, 972, 937, 892, 833, 749, 624, 416])]
    assert all(s[0] is pipe for s in seen)
    assert torch.equal(seen[-1][7], out.video_latent)  # the last step's state is the result (no image)
    assert np.array_equal(out.frames, pipe(**_small()).frames)  # a callback changes nothing


def test_callback_exception_stops_generation_at_once(pipes):
    pipe = pipes["distill"]
    spy = Spy(pipe.transformer)
    pipe.transformer, original = spy, pipe.transformer

    class Cancelled(Exception):
        pass

    def cancel_at_third(p, step_index, timestep, kwargs):
        if step_index == 2:
            raise Cancelled("job cancelled")

    try:
        with pytest.raises(Cancelled, match="job cancelled"):
            pipe(**_small(), callback_on_step_end=cancel_at_third)
    finally:
        pipe.transformer = original
    assert len(spy.calls) == 3  # no model call after the raising callback
    assert pipe(**_small(), decode=False).video_latent.shape == (1, 48, 3, 4, 4)  # the pipeline stays usable


def test_interrupt_between_steps_and_between_decode_windows(pipes):
    pipe = pipes["distill"]
    steps = []

    def interrupt_at_second(p, step_index, timestep, kwargs):
        steps.append(step_index)
        if step_index == 1:
            p.interrupt = True

    with pytest.raises(GenerationInterrupted, match="after denoise step 2/8"):
        pipe(**_small(), callback_on_step_end=interrupt_at_second)
    assert steps == [0, 1] and pipe.interrupt is False  # the raising check clears the flag

    decoder = pipe.video_decoder
    windows = []
    original = decoder.decode_chunks

    def decode_chunks(*args, **kwargs):
        for chunk in original(*args, **kwargs):
            windows.append(chunk.shape)
            pipe.interrupt = True  # e.g. set by another thread while the first window decodes
            yield chunk

    decoder.decode_chunks = decode_chunks
    try:
        with pytest.raises(GenerationInterrupted, match="between video decode windows"):
            pipe(**_small(seconds=1.2))  # T = 8 latent frames: two windows
    finally:
        del decoder.decode_chunks
    assert len(windows) == 1 and pipe.interrupt is False


def test_demo_dir_expands_home(tmp_path, monkeypatch):
    """``~`` in $MAGIHUMAN_DEMO_DIR means the user's home, not a folder named ``~``."""
    from magihuman.demo.bundle import default_demo_root

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MAGIHUMAN_DEMO_DIR", "~/demo-bundle")
    assert default_demo_root() == tmp_path / "demo-bundle"


def test_stage_timer_adds_up_a_stage_run_again():
    """A long clip times every window under the same stage names; each entry is the sum of its runs, in the order
    the stages first ran."""
    import time

    from magihuman.pipeline.progress import StageTimer

    timer = StageTimer(False, torch.device("cpu"))
    for name, seconds in (("denoise", 0.02), ("window first frames", 0.01), ("denoise", 0.03)):
        with timer.stage(name):
            time.sleep(seconds)
    assert list(timer.timings) == ["denoise", "window first frames"]
    assert 0.05 <= timer.timings["denoise"] < 0.5 and 0.01 <= timer.timings["window first frames"] < 0.25
