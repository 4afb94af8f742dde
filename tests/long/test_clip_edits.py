"""Extend and retake on the demo pipeline: what is kept is kept exactly, what is new is new."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from magihuman.pipeline import stages
from magihuman.pipeline.clip_requests import ExtendRequest
from magihuman.pipeline.media import probe_media, read_clip_frames

from .conftest import CLIP_FRAMES, CLIP_SIZE, Spy

PROMPT = "The woman keeps talking about her garden, smiling, with the same calm voice and the same light."


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_extend_appends_new_frames_after_the_clip(distill, clip, tmp_path):
    """0.48 s more (3 latent frames) in windows of 3 latent frames with one frame of overlap: two windows; the
    output holds the clip's frames, then 12 new ones; the clip file is untouched. With one held latent frame
    (frame 24 alone) the fade has one frame: the clip's last, half its own and half its re-creation."""
    before = _digest(clip)
    steps = []
    request = ExtendRequest(clip=clip, prompt=PROMPT, seconds=0.48, window_seconds=0.32, overlap_frames=1, seed=3)
    out = distill(request, callback_on_step_end=lambda p, i, t, kw: steps.append(kw["total_steps"]))
    source = read_clip_frames(clip, width=CLIP_SIZE, height=CLIP_SIZE, num_frames=CLIP_FRAMES)
    assert out.frames.shape == (CLIP_FRAMES + 12, CLIP_SIZE, CLIP_SIZE, 3)
    assert np.array_equal(out.frames[:CLIP_FRAMES - 1], source[:-1])  # the clip itself, as decoded
    recreated = stages.decode_video(distill, out.video_latent)[0]
    half = np.rint((source[-1].astype(np.float32) + recreated.astype(np.float32)) / 2)
    assert not np.array_equal(recreated, source[-1]) and np.array_equal(out.frames[CLIP_FRAMES - 1], half)
    hard = distill(request.model_copy(update={"fade_frames": 0}))
    assert np.array_equal(hard.frames[:CLIP_FRAMES], source)  # fade_frames=0: a hard cut, the clip untouched
    assert np.array_equal(hard.frames[CLIP_FRAMES:], out.frames[CLIP_FRAMES:])  # the fade is on the clip's side only
    assert not np.array_equal(out.frames[CLIP_FRAMES:], np.repeat(source[-1:], 12, axis=0))
    assert out.audio.shape == (2, 1764 * (CLIP_FRAMES + 12))
    assert steps == [16] * 16  # two windows of 8 steps
    # latents: the clip's last latent frame (frame 24 alone, encoded) and audio latent held bit for bit
    assert out.video_latent.shape == (1, 48, 4, 2, 2) and out.video_held.tolist() == [True, False, False, False]
    assert torch.equal(out.video_latent[:, :, :1], out.source_video_latent[:, :, :1])
    assert torch.equal(out.audio_latent[:, :1], out.source_audio_latent[:, :1])
    path = out.save(tmp_path / "extended.mp4")
    info = probe_media(path)
    assert info["num_frames"] == CLIP_FRAMES + 12 and (info["width"], info["height"]) == (CLIP_SIZE, CLIP_SIZE)
    written = read_clip_frames(path, width=CLIP_SIZE, height=CLIP_SIZE, num_frames=CLIP_FRAMES)
    assert np.abs(written.astype(int) - source.astype(int)).mean() < 4  # H.264 at CRF 10 on 32x32 colour ramps
    assert _digest(clip) == before


def test_an_extension_plans_its_windows_for_the_loaded_video_decoder(distill, demo_root, clip):
    """2.08 s more (13 latent frames after 1 held: 14) in 0.64 s windows (5 frames), overlap 1: the Turbo decoder's
    chunks of 7 move the last join from 13 to 12 (the third window is a frame shorter); a decoder without chunk
    borders (the Wan2.2 VAE's, None) keeps the plain plan."""
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

    request = ExtendRequest(clip=clip, prompt=PROMPT, seconds=2.08, window_seconds=0.64, overlap_frames=1, seed=3)
    assert request.plan().windows.joins == request.plan(decode_chunks=(7, 7)).windows.joins == [5, 9, 12]
    assert request.plan(decode_chunks=None).windows.joins == [5, 9, 13]
    wan = MagiHumanPipeline.from_official(demo_root, preset="distill", video_decoder="wan")
    frames = {}
    for name, pipe in (("turbo", distill), ("wan", wan)):
        spy = Spy(pipe.transformer)
        pipe.transformer, original = spy, pipe.transformer
        try:
            pipe(request, decode=False)
        finally:
            pipe.transformer = original
        frames[name] = [video.shape[2] for video, _ in spy.calls[::8]]  # latent frames of each window
    assert frames == {"turbo": [5, 5, 4, 5], "wan": [5, 5, 5, 5]}


def test_retake_keeps_every_latent_outside_the_range(distill, clip):
    """0.4-0.6 s is frames 10..14: audio latents 10..14 and latent frames 3 (frames 9-12) and 4 (13-16) are
    regenerated; every other latent is the encoded clip's, bit for bit, and with fade_frames=0 so are the frames
    around them."""
    before = _digest(clip)
    out = distill.retake(clip, PROMPT, start=0.4, end=0.6, seed=5, fade_frames=0)
    assert out.video_held.tolist() == [True, True, True, False, False, True, True]
    assert torch.nonzero(~out.audio_held).flatten().tolist() == [10, 11, 12, 13, 14]
    held_v, held_a = out.video_held, out.audio_held
    assert torch.equal(out.video_latent[:, :, held_v], out.source_video_latent[:, :, held_v])
    assert torch.equal(out.audio_latent[:, held_a], out.source_audio_latent[:, held_a])
    assert not torch.equal(out.video_latent[:, :, ~held_v], out.source_video_latent[:, :, ~held_v])
    assert not torch.equal(out.audio_latent[:, ~held_a], out.source_audio_latent[:, ~held_a])
    source = read_clip_frames(clip, width=CLIP_SIZE, height=CLIP_SIZE, num_frames=CLIP_FRAMES)
    assert out.frames.shape == source.shape
    assert np.array_equal(out.frames[:9], source[:9]) and np.array_equal(out.frames[17:], source[17:])
    assert not np.array_equal(out.frames[9:17], source[9:17])
    assert any("frames 9-16 change" in n for n in out.notices)
    assert _digest(clip) == before


def test_retake_fades_into_the_decode_beside_the_range(distill, clip):
    """The default fade of 8 frames each side of frames 9-16 reaches frames 1-8 and 17-24: frame ``9 - k`` is
    ``(1 - w) clip + w decode`` with ``w = 1 - k/9``; frame 0 is the clip's; the regenerated frames and every
    latent are those of the hard cut."""
    hard = distill.retake(clip, PROMPT, start=0.4, end=0.6, seed=5, fade_frames=0)
    out = distill.retake(clip, PROMPT, start=0.4, end=0.6, seed=5)
    source = read_clip_frames(clip, width=CLIP_SIZE, height=CLIP_SIZE, num_frames=CLIP_FRAMES)
    decoded = stages.decode_video(distill, out.video_latent)
    assert torch.equal(out.video_latent, hard.video_latent) and np.array_equal(out.frames[9:17], hard.frames[9:17])
    assert np.array_equal(out.frames[0], source[0])
    for frame, weight in [(9 - k, 1 - k / 9) for k in range(1, 9)] + [(16 + k, 1 - k / 9) for k in range(1, 9)]:
        expected = np.rint((1 - weight) * source[frame].astype(np.float32) + weight * decoded[frame].astype(np.float32))
        assert np.abs(out.frames[frame].astype(int) - expected).max() <= 1, frame  # float32 weights vs float64 here
    assert np.abs(out.frames[8].astype(int) - source[8]).mean() > np.abs(out.frames[1].astype(int) - source[1]).mean()


def test_retake_in_a_window_leaves_the_rest_of_the_clip_alone(distill, clip):
    """Windows of 3 latent frames: the DiT sees latent frames 2..4 and audio latents 8..16 only; frame 3 and
    audio latents 11, 12 are regenerated, everything else is the encoded clip's."""
    spy = Spy(distill.transformer)
    distill.transformer, original = spy, distill.transformer
    try:
        out = distill.retake(clip, PROMPT, start=0.44, end=0.52, window_seconds=0.32, seed=5)
    finally:
        distill.transformer = original
    assert out.video_held.tolist() == [True, True, True, False, True, True, True]
    assert torch.equal(out.video_latent[:, :, out.video_held], out.source_video_latent[:, :, out.video_held])
    assert torch.equal(out.audio_latent[:, out.audio_held], out.source_audio_latent[:, out.audio_held])
    assert not torch.equal(out.video_latent[:, :, 3], out.source_video_latent[:, :, 3])
    # the window starts at latent frame 2: its first position holds the clip's pixel frame 8 encoded alone (a first
    # frame, not the clip's latent frame 2, which holds frames 5-8); latent frame 3 is regenerated, 4 held as encoded
    frames = read_clip_frames(clip, width=CLIP_SIZE, height=CLIP_SIZE, num_frames=CLIP_FRAMES)
    first = distill.video_vae.encode(torch.from_numpy(frames[8:9]).permute(3, 0, 1, 2)[None].float() / 255 * 2 - 1)
    video, _ = spy.calls[0]
    assert video.shape[2] == 3 and torch.equal(video[:, :, :1], first)
    assert not torch.allclose(first, out.source_video_latent[:, :, 2:3], atol=1e-3)
    assert torch.equal(video[:, :, 2:], out.source_video_latent[:, :, 4:5])


def test_retake_audio_only_holds_every_frame(distill, clip):
    out = distill.retake(clip, PROMPT, start=0.2, end=0.5, target="audio", seed=5)
    assert bool(out.video_held.all()) and torch.equal(out.video_latent, out.source_video_latent)
    source = read_clip_frames(clip, width=CLIP_SIZE, height=CLIP_SIZE, num_frames=CLIP_FRAMES)
    assert np.array_equal(out.frames, source)
    assert torch.nonzero(~out.audio_held).flatten().tolist() == list(range(5, 12))  # frames 5..11 (12.5 -> 12)
    assert not torch.equal(out.audio_latent[:, 5:12], out.source_audio_latent[:, 5:12])


def test_retake_video_of_a_silent_clip_stays_silent(distill, silent_clip, tmp_path):
    out = distill.retake(silent_clip, PROMPT, start=0.0, end=0.2, target="video", seed=5)
    assert out.audio is None and out.frames.shape[0] == CLIP_FRAMES
    assert bool(out.audio_held.all()) and torch.equal(out.audio_latent, out.source_audio_latent)  # silence, fixed
    assert out.video_held.tolist() == [False, False, True, True, True, True, True]  # frames 0..4: latents 0, 1
    info = probe_media(out.save(tmp_path / "retake.mp4"))
    assert info["num_audio_streams"] == 0 and info["num_frames"] == CLIP_FRAMES


def test_extend_and_retake_decode_with_the_chunks_faded(distill, clip, monkeypatch):
    """Both decode their joined latents with the Turbo decoder's chunk borders faded, as the windowed clip does."""
    calls = []
    decode = stages.decode_video
    monkeypatch.setattr(stages, "decode_video",
                        lambda pipe, latent, **kw: calls.append(kw) or decode(pipe, latent, **kw))
    distill(ExtendRequest(clip=clip, prompt=PROMPT, seconds=0.16, seed=3))
    distill.retake(clip, PROMPT, start=0.4, end=0.6, seed=5)
    assert calls == [{"crossfade": True}, {"crossfade": True}]
