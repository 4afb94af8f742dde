"""Window plans of long clips and the checks of long requests (no model)."""

from __future__ import annotations

import pytest

from magihuman.pipeline.errors import InputError
from magihuman.pipeline.request import GenerationRequest, generated_audio_latents
from magihuman.pipeline.validation import (
    MAX_LONG_SECONDS,
    MAX_SECONDS,
    estimate_memory,
    long_clip_window,
    validate_request,
)
from magihuman.pipeline.windows import near_decode_border, plan_windows, window_latent_frames

PROMPT = " ".join(["A woman in a red coat smiles and says hello to the camera in a quiet studio."] * 5)


def test_three_windows_of_three_frames():
    plan = plan_windows(7, 25, window_frames=3, overlap=1)
    rows = [(w.start, w.frames, w.clean_frames, w.audio_start, w.audio_latents, w.clean_audio_latents)
            for w in plan.windows]
    assert rows == [(0, 3, 0, 0, 9, 0), (2, 3, 1, 8, 9, 1), (4, 3, 1, 16, 9, 1)]


@pytest.mark.parametrize("seconds, window, overlap", [(60, 5, 2), (20, 5, 2), (10.4, 4, 1), (33.3, 7.5, 8)])
def test_windows_cover_the_clip_in_equal_windows(seconds, window, overlap):
    audio = generated_audio_latents(seconds)
    frames = (audio - 1) // 4 + 1
    plan = plan_windows(frames, audio, window_frames=window_latent_frames(window), overlap=overlap)
    windows = plan.windows
    assert windows[0].start == 0 and windows[-1].stop == frames
    assert windows[0].frames == windows[-1].frames == window_latent_frames(window)
    assert all(window_latent_frames(window) - 3 <= w.frames <= window_latent_frames(window) for w in windows)
    for before, after in zip(windows, windows[1:]):
        shared = before.stop - after.start
        assert shared == after.clean_frames >= overlap  # the last window may share more
        assert after.audio_start == 4 * after.start
        assert after.clean_audio_latents == 4 * (shared - 1) + 1
        assert before.audio_start + before.audio_latents == after.audio_start + after.clean_audio_latents
    assert windows[-1].audio_start + windows[-1].audio_latents == audio  # the last window holds the rest
    assert all(w.clean_frames == overlap for w in windows[1:-1])
    # every join after the first (at T_w, fixed) is off the decoder's chunk borders
    assert not any(near_decode_border(j) for j in plan.joins[1:])


def test_joins_keep_off_the_decoders_chunk_borders():
    """20 s in the toy's 2 s windows (13 latent frames), overlap 2: without the rule the joins (every 11 frames)
    fall on or beside the chunk borders at 7 + 7k at 13, 35, 57, 90 and 112; with it only the first (13, fixed)
    does: windows that would end there end 1 or 2 frames early, every window still holds 2 clean frames (the last
    one 4, as before), and the count stays 12."""
    audio = generated_audio_latents(20)
    frames = (audio - 1) // 4 + 1
    plain = plan_windows(frames, audio, window_frames=13, overlap=2, decode_chunks=None)
    kept = plan_windows(frames, audio, window_frames=13, overlap=2)
    joins = [p.joins for p in (plain, kept)]
    assert joins[0] == [13, 24, 35, 46, 57, 68, 79, 90, 101, 112, 123]
    assert [j for j in joins[0] if near_decode_border(j)] == [13, 35, 57, 90, 112]
    assert joins[1] == [13, 24, 33, 44, 54, 65, 75, 86, 96, 107, 117]
    assert [j for j in joins[1] if near_decode_border(j)] == [13]
    assert len(kept.windows) == len(plain.windows) == 12
    assert [w.frames for w in kept.windows] == [13, 13, 11, 13, 12, 13, 12, 13, 12, 13, 12, 13]
    assert [w.clean_frames for w in kept.windows] == [0] + [2] * 10 + [4]
    assert [w.audio_latents for w in kept.windows][:3] == [49, 49, 41]  # 4 (frames - 1) + 1


@pytest.mark.parametrize("join, near", [(5, False), (6, True), (7, True), (8, True), (9, False), (12, False),
                                        (13, True), (14, True), (15, True), (16, False), (20, True)])
def test_near_decode_border(join, near):
    """Chunk borders of the (7, 7) decoder at latent frames 7, 14, 21, ...: near means within one frame."""
    assert near_decode_border(join) is near


def test_sixty_seconds_in_five_second_windows():
    plain = plan_windows(376, 1501, window_frames=window_latent_frames(5.0), overlap=2, decode_chunks=None)
    assert window_latent_frames(5.0) == 32 and len(plain.windows) == 13  # 32 + 11 * 30 = 362 < 376 <= 392
    assert plain.windows[-1].start == 376 - 32 and plain.windows[-1].clean_frames == 362 - 344  # 0..11 end at 362
    # off the chunk borders (7 + 7k): the second window ends at 61, not 62 (beside the border at 63); from there
    # each window ends 5 frames after a border, 30 frames long (32 would end on a border, 31 beside one): one
    # window more
    plan = plan_windows(376, 1501, window_frames=window_latent_frames(5.0), overlap=2)
    assert [(w.start, w.frames) for w in plan.windows] == [(0, 32), (30, 31)] + [(59 + 28 * k, 30) for k in range(11)] \
        + [(344, 32)]


def test_a_clip_within_one_window_is_one_window():
    plan = plan_windows(5, 17, window_frames=32, overlap=2, prefix_frames=2)
    assert [(w.start, w.frames, w.clean_frames) for w in plan.windows] == [(0, 5, 2)]
    assert plan.new_frames == 3


@pytest.mark.parametrize("args, message", [
    (dict(latent_frames=7, audio_latents=25, window_frames=3, overlap=3), "overlap must be 1..2"),
    (dict(latent_frames=7, audio_latents=20, window_frames=3, overlap=1), "too few"),
    (dict(latent_frames=7, audio_latents=25, window_frames=3, overlap=1, prefix_frames=3), "nothing to generate"),
])
def test_impossible_plans_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(**args)


def test_which_requests_run_in_windows():
    def window(**fields):
        return long_clip_window(GenerationRequest(prompt=PROMPT, **fields))

    assert window(seconds=MAX_SECONDS) is None  # up to 10 s: one pass, as before
    assert window(seconds=10.04) == 5.0  # beyond: the preset's window
    assert window(seconds=8, window_seconds=4) == 4.0
    assert window(seconds=4, window_seconds=4) is None


@pytest.mark.parametrize("fields, field, message", [
    (dict(seconds=MAX_LONG_SECONDS + 1), "seconds", "over the limit of 60"),
    (dict(seconds=20, window_seconds=12), "window_seconds", r"\(0, 10\]"),
    (dict(seconds=20, overlap_frames=9), "overlap_frames", "1..8"),
    (dict(seconds=20, window_seconds=0.2, overlap_frames=2), "window_seconds", "not more than the overlap"),
    (dict(seconds=20, preset="sr_540p"), "seconds", "super-resolution"),
])
def test_bad_long_requests_are_refused(fields, field, message):
    with pytest.raises(InputError, match=message) as caught:
        validate_request(GenerationRequest(prompt=PROMPT, **fields))
    assert caught.value.field == field


def test_sixty_seconds_are_accepted_and_the_memory_is_one_window():
    assert validate_request(GenerationRequest(prompt=PROMPT, seconds=60)) == [
        "the clip is generated in 14 windows of up to 5 s, each holding the last 2 latent frame(s) of the one "
        "before (docs/long_clips.md)"]
    long = estimate_memory(GenerationRequest(prompt=PROMPT, seconds=60), device="cuda")
    window = estimate_memory(GenerationRequest(prompt=PROMPT, seconds=5), device="cuda")
    assert long["activations"] == window["activations"] and long["latents"] == window["latents"]
    frames_long = estimate_memory(GenerationRequest(prompt=PROMPT, seconds=60), device="cpu")["frames"]
    assert frames_long == 1501 * 448 * 256 * 3  # the decoded clip is held whole (uint8)
    notices = validate_request(GenerationRequest(prompt=PROMPT, seconds=4, overlap_frames=2))
    assert any("one pass" in n for n in notices)
