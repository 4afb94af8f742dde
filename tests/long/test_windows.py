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
from magihuman.pipeline.windows import plan_windows, window_latent_frames

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
    assert {w.frames for w in windows} == {window_latent_frames(window)}
    for before, after in zip(windows, windows[1:]):
        shared = before.stop - after.start
        assert shared == after.clean_frames >= overlap  # the last window may share more
        assert after.audio_start == 4 * after.start
        assert after.clean_audio_latents == 4 * (shared - 1) + 1
        assert before.audio_start + before.audio_latents == after.audio_start + after.clean_audio_latents
    assert windows[-1].audio_start + windows[-1].audio_latents == audio  # the last window holds the rest
    assert all(w.clean_frames == overlap for w in windows[1:-1])


def test_sixty_seconds_in_five_second_windows():
    plan = plan_windows(376, 1501, window_frames=window_latent_frames(5.0), overlap=2)
    assert window_latent_frames(5.0) == 32 and len(plan.windows) == 13  # 32 + 11 * 30 = 362 < 376 <= 392
    assert plan.windows[-1].start == 376 - 32 and plan.windows[-1].clean_frames == 362 - 344  # windows 0..11 end at 362


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
        "the clip is generated in 13 windows of 5 s, each holding the last 2 latent frame(s) of the one before "
        "(docs/long_clips.md)"]
    long = estimate_memory(GenerationRequest(prompt=PROMPT, seconds=60), device="cuda")
    window = estimate_memory(GenerationRequest(prompt=PROMPT, seconds=5), device="cuda")
    assert long["activations"] == window["activations"] and long["latents"] == window["latents"]
    frames_long = estimate_memory(GenerationRequest(prompt=PROMPT, seconds=60), device="cpu")["frames"]
    assert frames_long == 1501 * 448 * 256 * 3  # the decoded clip is held whole (uint8)
    notices = validate_request(GenerationRequest(prompt=PROMPT, seconds=4, overlap_frames=2))
    assert any("one pass" in n for n in notices)
