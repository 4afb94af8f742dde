"""A long clip on the demo pipeline: three windows, each continuing the last latents of the one before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magihuman.pipeline.long_decode import decode_audio_long, decode_audio_span

from .conftest import Spy, run_generate

PROMPT = "A man in a grey suit talks calmly to the camera about the weather in a bright office."
#: 0.96 s in windows of 0.32 s (3 latent frames, 9 audio latents) with one frame of overlap: windows start at
#: latent frames 0, 2 and 4 of 7.
LONG = dict(prompt=PROMPT, seconds=0.96, window_seconds=0.32, overlap_frames=1, width=32, height=32, seed=11)


@pytest.fixture(scope="module")
def long_run(distill):
    spy = Spy(distill.transformer)
    distill.transformer, original = spy, distill.transformer
    steps = []
    try:
        out = distill(**LONG, callback_on_step_end=lambda pipe, i, t, kw: steps.append(
            (kw["completed_steps"], kw["total_steps"])))
    finally:
        distill.transformer = original
    return out, spy.calls, steps


def test_three_windows_make_the_whole_clip(long_run):
    out, calls, steps = long_run
    assert out.video_latent.shape == (1, 48, 7, 2, 2) and out.audio_latent.shape == (1, 25, 64)
    assert out.frames.shape == (25, 32, 32, 3)  # 4 (7 - 1) + 1 frames: as long as a single pass of 0.96 s
    assert out.audio.shape == (2, 1764 * 25)
    assert len(calls) == 3 * 8 and all(c[0].shape == (1, 48, 3, 2, 2) for c in calls)
    assert steps[-1] == (24, 24)  # progress counts the steps of every window


def _first_frame_by_hand(pipe, video: torch.Tensor, index: int) -> torch.Tensor:
    """Pixel frame ``4 index``: the Wan2.2 VAE decodes latent frames ``index - 4 .. index`` (from 0 when fewer lie
    before it); its last frame, encoded alone."""
    pixels = pipe.video_vae.decode(video[:, :, max(0, index - 4):index + 1])
    assert pixels.shape[2] == 4 * min(index, 4) + 1
    return pipe.video_vae.encode(pixels[:, :, -1:])


def test_each_window_sees_the_previous_windows_last_latents_as_clean(distill, long_run):
    out, calls, _ = long_run
    for window, start in ((1, 2), (2, 4)):
        # the previous window's last latent frame, as a first frame (its last pixel frame encoded alone) ...
        held_video = _first_frame_by_hand(distill, out.video_latent, start)
        assert held_video.shape == (1, 48, 1, 2, 2)
        assert not torch.allclose(held_video, out.video_latent[:, :, start:start + 1], atol=1e-3)
        held_audio = out.audio_latent[:, 4 * start:4 * start + 1]  # ... and its audio latent (4 (1 - 1) + 1)
        for step in range(8):
            video, audio = calls[8 * window + step]
            assert torch.equal(video[:, :, :1], held_video), f"window {window} step {step}"
            assert torch.equal(audio[:, :1], held_audio), f"window {window} step {step}"
        first_video, first_audio = calls[8 * window]
        assert not torch.equal(first_video[:, :, 1:], out.video_latent[:, :, start + 1:start + 3])  # fresh noise
    # the first window holds nothing: its first call sees pure noise everywhere
    assert not torch.equal(calls[0][0][:, :, :1], out.video_latent[:, :, :1])


def test_held_frames_after_the_first_are_the_joined_latents(distill):
    """Two frames of overlap: a window holds its first frame rebuilt as a first frame and its second as the joined
    clip has it; the joined clip keeps the earlier window's latents there (only new frames are written)."""
    spy = Spy(distill.transformer)
    distill.transformer, original = spy, distill.transformer
    try:
        out = distill(**{**LONG, "overlap_frames": 2})  # 3-frame windows at latent frames 0, 1, 2, 3, 4
    finally:
        distill.transformer = original
    assert len(spy.calls) == 5 * 8
    for window in range(1, 5):
        video, _ = spy.calls[8 * window]
        assert torch.equal(video[:, :, :1], _first_frame_by_hand(distill, out.video_latent, window))
        assert torch.equal(video[:, :, 1:2], out.video_latent[:, :, window + 1:window + 2])


def test_the_vae_rebuilds_first_frames_while_the_transformer_is_not_lent(distill, monkeypatch):
    """With component offload each stage lends its own component: the Wan2.2 VAE that rebuilds a window's first
    frame is never lent while the transformer is (both would sit on the GPU). Windows 2 and 3 rebuild one each."""
    import contextlib

    lent, together, vae_lends = [], [], []

    @contextlib.contextmanager
    def lend(*names):
        lent.append(set(names))
        now = set().union(*lent)
        if {"transformer", "video_vae"} <= now:
            together.append(now)
        if "video_vae" in names:
            vae_lends.append(names)
        try:
            yield
        finally:
            lent.pop()

    monkeypatch.setattr(distill, "_lend", lend)
    out = distill(**LONG, decode=False)
    assert together == [] and len(vae_lends) == 2
    assert out.timings["window first frames"] > 0 and out.timings["denoise"] > 0


def test_the_first_window_is_the_single_pass_of_its_length(distill, long_run):
    """Same seed, same draw order (audio then video noise): 0.32 s alone gives the first window exactly."""
    out, _, _ = long_run
    single = distill(**{**LONG, "seconds": 0.32, "window_seconds": None, "overlap_frames": None}, decode=False)
    assert torch.equal(single.video_latent, out.video_latent[:, :, :3])
    assert torch.equal(single.audio_latent, out.audio_latent[:, :9])


def test_audio_decoded_in_pieces_equals_one_pass(distill, long_run):
    """Pieces of 7 latents with 24 of context each side give the one-pass decode (``out.audio``: 25 latents
    are one piece) up to float rounding."""
    out, _, _ = long_run
    pieces = decode_audio_long(distill, out.audio_latent, chunk=7)
    assert pieces.shape == out.audio.shape
    np.testing.assert_allclose(pieces, out.audio, rtol=0, atol=1e-5 * float(np.abs(out.audio).max()))
    exact = decode_audio_span(distill, out.audio_latent, 10, 12)
    bare = decode_audio_span(distill, out.audio_latent, 10, 12, margin=0)  # without context the edges change
    assert exact.shape == bare.shape == (2, 2 * 2048) and not np.allclose(exact, bare, rtol=0, atol=1e-4)


def test_a_driving_track_and_a_first_frame_across_windows(distill, examples_dir, tmp_path):
    """0.64 s of tone (16 audio latents, 4 latent frames) in windows of 3 frames: the first window holds the
    image as frame 0, the second holds the first window's last two frames (the first of them as a first frame);
    the track's latents drive both windows (each its slice) and come back unchanged; the output keeps the track."""
    from magihuman.pipeline import stages
    from magihuman.pipeline.media import preprocess_image

    from conftest import write_tone

    tone = write_tone(tmp_path / "tone.wav", seconds=0.64)
    spy = Spy(distill.transformer)
    distill.transformer, original = spy, distill.transformer
    try:
        out = distill(**{**LONG, "seconds": 0.64}, image=examples_dir / "image.png", audio=tone)
    finally:
        distill.transformer = original
    driving = stages.load_driving_audio(distill, tone, 0.64, torch.Generator().manual_seed(LONG["seed"]))
    assert torch.equal(out.audio_latent, driving.latent) and out.audio_latent.shape == (1, 16, 64)
    assert np.array_equal(out.audio, driving.waveform_44k)
    assert out.frames.shape == (13, 32, 32, 3) and len(spy.calls) == 16  # windows [0, 3) and [1, 4)
    image = distill.video_vae.encode(preprocess_image(examples_dir / "image.png", 32, 32)[:, :, None]).float()
    assert torch.equal(out.video_latent[:, :, :1], image)
    for step in range(8):
        assert torch.equal(spy.calls[step][0][:, :, :1], image)
        video, audio = spy.calls[8 + step]
        assert torch.equal(video[:, :, :1], _first_frame_by_hand(distill, out.video_latent, 1))
        assert torch.equal(video[:, :, 1:2], out.video_latent[:, :, 2:3])
        assert torch.equal(audio, driving.latent[:, 4:16])  # the second window's slice, fixed


def test_generate_passes_the_window_options(monkeypatch, tmp_path):
    """``magihuman generate --seconds 30 --window-seconds 4 --overlap-frames 3`` asks the pipeline for them."""
    result, asked = run_generate(monkeypatch, "--demo", "--device", "cpu", "--prompt", PROMPT, "--seconds", "30",
                                 "--window-seconds", "4", "--overlap-frames", "3", "-o", str(tmp_path / "long.mp4"))
    assert result.exit_code == 0, result.output
    assert (asked[0].seconds, asked[0].window_seconds, asked[0].overlap_frames) == (30, 4, 3)
    assert "generated in 9 windows of up to 4 s" in " ".join(result.output.split())


def test_the_joined_clip_is_decoded_with_the_chunks_faded(distill):
    """1.28 s is 9 latent frames, two Turbo decoder chunks: the frames are the faded decode of the joined latents
    (:meth:`TurboVAE.decode_chunks` ``crossfade``), which differs from the reference's hard cut at the border."""
    from magihuman.pipeline import stages

    out = distill(**{**LONG, "seconds": 1.28})
    assert out.video_latent.shape[2] == 9 and len(distill.video_decoder.plan(9).chunks) == 2
    faded = stages.decode_video(distill, out.video_latent, crossfade=True)
    hard = stages.decode_video(distill, out.video_latent)
    assert np.array_equal(out.frames, faded)
    changed = np.flatnonzero((faded != hard).any(axis=(1, 2, 3)))
    assert changed.size and set(changed) <= {25, 26, 27, 28}  # only the 4 frames after the chunk border


def test_the_windows_follow_the_loaded_video_decoders_chunks(distill, demo_root):
    """2.24 s (15 latent frames) in 0.64 s windows (5 frames), overlap 1: with the demo's Turbo decoder (chunks
    of 7) the third window ends a frame early so the last join is at 12, not beside the border at 14; the Wan2.2
    decoder has no chunk borders, so the plain plan (joins 5, 9, 13) runs."""
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline
    from magihuman.pipeline.windows import decoder_chunks

    wan = MagiHumanPipeline.from_official(demo_root, preset="distill", video_decoder="wan")
    assert decoder_chunks(distill.video_decoder) == (7, 7) and decoder_chunks(wan.video_decoder) is None
    request = dict(prompt=PROMPT, seconds=2.24, window_seconds=0.64, overlap_frames=1, width=32, height=32, seed=3,
                   decode=False)
    frames = {}
    for name, pipe in (("turbo", distill), ("wan", wan)):
        spy = Spy(pipe.transformer)
        pipe.transformer, original = spy, pipe.transformer
        try:
            out = pipe(**request)
        finally:
            pipe.transformer = original
        assert out.video_latent.shape[2] == 15
        frames[name] = [video.shape[2] for video, _ in spy.calls[::8]]  # latent frames of each window
    assert frames == {"turbo": [5, 5, 4, 5], "wan": [5, 5, 5, 5]}
    # 1.92 s in 0.48 s windows: 5 windows for the Turbo decoder, which the checks announce, and 4 for the Wan one
    shorter = dict(request, seconds=1.92, window_seconds=0.48)
    assert not any("video decoder's chunks" in n for n in distill(**shorter).notices)
    assert "the loaded video decoder's chunks (none) differ from the default Turbo-VAED's: the clip runs in 4 " \
        "windows" in wan(**shorter).notices


def test_decoder_chunks_reads_a_decoders_config():
    from types import SimpleNamespace

    from magihuman.pipeline.windows import decoder_chunks

    assert decoder_chunks(SimpleNamespace(config=SimpleNamespace(first_chunk_size=5, step_size=4))) == (5, 4)
    assert decoder_chunks(SimpleNamespace(config=SimpleNamespace(num_latent_channels=48))) is None
    assert decoder_chunks(object()) is None
