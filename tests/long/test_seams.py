"""Seam metrics (magihuman.eval.seams) on clips with known joins."""

from __future__ import annotations

import numpy as np
import pytest

from magihuman.eval.seams import frame_differences, seam_frames, seam_report
from magihuman.toy.clip import FPS, make_clip
from magihuman.toy.voice import SAMPLE_RATE


def _joined(*clips):
    """Frames and mono audio of toy clips played one after another, the audio cut to the frames."""
    per = clips[0].frames.shape[0]
    samples = per * SAMPLE_RATE // FPS
    frames = np.concatenate([c.frames for c in clips])
    audio = np.concatenate([c.audio[0, :samples] for c in clips])
    return frames, audio, [per * i for i in range(1, len(clips))]


def test_seam_frames_follow_the_latent_time_grid():
    assert seam_frames([1, 3, 11]) == [1, 9, 41]
    with pytest.raises(ValueError, match="latent frames >= 1"):
        seam_frames([0])


def test_picture_jump_is_found_at_the_seam_and_nowhere_else():
    frames = np.zeros((20, 8, 8, 3), dtype=np.uint8)
    frames[12:] = 30
    diffs = frame_differences(frames)
    assert diffs[11] == 30.0 and np.count_nonzero(diffs) == 1
    clip = make_clip(5)
    still = np.repeat(clip.frames[:1], 20, axis=0).copy()
    still[12:] = np.clip(still[12:].astype(int) + 30, 0, 255).astype(np.uint8)
    audio = np.zeros(20 * SAMPLE_RATE // FPS, dtype=np.float32)
    report = seam_report(still, audio, SAMPLE_RATE, [12])
    assert report.seam_difference[0] > 20.0
    assert report.inside_difference_max == 0.0


def test_each_seam_is_set_against_the_steps_inside_the_two_pieces_it_joins():
    """Three pieces of 10 frames: the first still, the second moving by 2 per frame, the third by 5, with jumps
    of 3 and 4 at the seams (frames 10 and 20). The clip-wide inside max is 5 (the third piece), but the first
    seam's neighbours step at most 2, so it stands out against them and not against the whole clip."""
    steps = np.zeros(29)
    steps[10:19], steps[20:29] = 2.0, 5.0
    steps[9], steps[19] = 3.0, 4.0
    levels = np.concatenate([[0.0], np.cumsum(steps)])
    frames = np.repeat(levels.astype(np.uint8)[:, None, None, None], 4, axis=1).repeat(4, axis=2).repeat(3, axis=3)
    report = seam_report(frames, np.zeros(30 * SAMPLE_RATE // FPS, dtype=np.float32), SAMPLE_RATE, [10, 20])
    assert report.seam_difference == [3.0, 4.0]
    assert report.inside_difference_max == 5.0
    assert report.pieces_difference_max == [2.0, 5.0]
    assert report.pieces_difference_p95 == [pytest.approx(2.0), pytest.approx(5.0)]


def test_each_seam_is_set_against_the_steps_across_latent_frame_boundaries():
    """A decoder that flickers at every latent-frame boundary: steps of 6 from pixel frame 4k to 4k + 1 and of 1
    elsewhere, 41 frames (11 latent frames), joins before latent frames 4 and 7 (pixel frames 13 and 25) stepping
    6 like every boundary. They are three times the mean inside step (2.05), and level with the boundary steps, the
    only steps a join can fall on."""
    steps = np.where(np.arange(40) % 4 == 0, 6.0, 1.0)
    levels = np.concatenate([[0.0], np.cumsum(steps)])
    frames = np.repeat(levels.astype(np.uint8)[:, None, None, None], 4, axis=1).repeat(4, axis=2).repeat(3, axis=3)
    seams = seam_frames([4, 7])
    assert seams == [13, 25]
    report = seam_report(frames, np.zeros(41 * SAMPLE_RATE // FPS, dtype=np.float32), SAMPLE_RATE, seams)
    assert report.seam_difference == [6.0, 6.0]
    assert report.inside_difference_mean == pytest.approx((8 * 6.0 + 30 * 1.0) / 38)
    assert (report.boundary_difference_mean, report.boundary_difference_p95, report.boundary_difference_max) == \
        (6.0, 6.0, 6.0)
    report = seam_report(frames, np.zeros(41 * SAMPLE_RATE // FPS, dtype=np.float32), SAMPLE_RATE, [14])
    assert report.seam_difference == [1.0] and report.boundary_difference_mean == 6.0  # off the grid


def test_colours_change_between_two_people_and_not_within_one():
    a, b = make_clip(1), make_clip(2)
    assert a.attributes.shirt != b.attributes.shirt or a.attributes.hair != b.attributes.hair
    frames, audio, seams = _joined(a, a)
    same = seam_report(frames, audio, SAMPLE_RATE, seams)
    assert same.colours_constant and len(same.colours_per_piece) == 2
    assert same.colours_per_piece[0]["shirt"] == a.attributes.shirt
    frames, audio, seams = _joined(a, b)
    other = seam_report(frames, audio, SAMPLE_RATE, seams)
    assert not other.colours_constant
    assert other.colours_per_piece[1]["shirt"] == b.attributes.shirt


def test_a_step_in_the_waveform_is_a_click_and_a_smooth_join_is_not():
    clip = make_clip(3)
    frames, _, seams = _joined(clip, clip)
    t = np.arange(frames.shape[0] * SAMPLE_RATE // FPS) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    smooth = seam_report(frames, tone, SAMPLE_RATE, seams)
    assert smooth.clicks == 0 and smooth.click_ratio[0] == pytest.approx(1.0, abs=0.05)
    stepped = tone.copy()
    stepped[seams[0] * SAMPLE_RATE // FPS:] += 0.5
    clicked = seam_report(frames, stepped, SAMPLE_RATE, seams)
    assert clicked.clicks == 1 and clicked.click_ratio[0] > 3.0


def test_silence_across_the_seam_longer_than_any_pause_is_a_gap():
    clip = make_clip(4)
    frames, _, seams = _joined(clip, clip)
    t = np.arange(frames.shape[0] * SAMPLE_RATE // FPS) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    tone[int(0.5 * SAMPLE_RATE):int(0.6 * SAMPLE_RATE)] = 0.0  # a 0.1 s pause inside
    assert seam_report(frames, tone, SAMPLE_RATE, seams).gaps == 0
    centre = seams[0] * SAMPLE_RATE // FPS
    tone[centre - SAMPLE_RATE // 5:centre + SAMPLE_RATE // 5] = 0.0  # 0.4 s of silence across the seam
    report = seam_report(frames, tone, SAMPLE_RATE, seams)
    assert report.gaps == 1
    assert report.seam_pause_s[0] == pytest.approx(0.4, abs=0.05)
    assert report.longest_pause_inside_s == pytest.approx(0.1, abs=0.05)
    assert report.seam_pause_open == [False]


def test_silence_from_a_seam_to_the_clips_end_is_its_ending_not_a_gap():
    """The voice stops 0.2 s before the seam and never resumes: the seam's silent run is reported, open-ended,
    and is no gap (the pauses elsewhere leave out runs that reach the clip's ends the same way)."""
    clip = make_clip(4)
    frames, _, seams = _joined(clip, clip)
    t = np.arange(frames.shape[0] * SAMPLE_RATE // FPS) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    tone[int(0.5 * SAMPLE_RATE):int(0.6 * SAMPLE_RATE)] = 0.0  # a 0.1 s pause inside
    tone[seams[0] * SAMPLE_RATE // FPS - SAMPLE_RATE // 5:] = 0.0
    report = seam_report(frames, tone, SAMPLE_RATE, seams)
    assert report.seam_pause_open == [True] and report.gaps == 0
    assert report.seam_pause_s[0] == pytest.approx(0.2 + (frames.shape[0] - seams[0]) / FPS, abs=0.05)
    assert report.longest_pause_inside_s == pytest.approx(0.1, abs=0.05)


def test_a_drawn_toy_clip_is_in_sync_across_its_seam():
    frames, audio, seams = _joined(make_clip(6), make_clip(7))
    report = seam_report(frames, audio, SAMPLE_RATE, seams)
    assert abs(report.sync_offset_frames) <= 1
    assert report.sync_correlation > 0.5
    assert len(report.sync_per_piece) == 2


def test_bad_seams_are_refused():
    frames = np.zeros((10, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="seams must lie"):
        seam_report(frames, np.zeros(16000), SAMPLE_RATE, [10])


def test_crossfade_frames_blends_the_kept_side_only():
    """Frames 8-11 from ``new`` (255), 3-frame fades before and after: 64, 128, 191 rising and back; the rest
    ``kept`` (0); a fade at the clip's edge is cut short; bad spans and fades are refused."""
    from magihuman.pipeline.long_decode import crossfade_frames

    kept, new = np.zeros((20, 2, 2, 3), np.uint8), np.full((20, 2, 2, 3), 255, np.uint8)
    out = crossfade_frames(kept, new, 8, 12, 3)
    assert out[:, 0, 0, 0].tolist() == [0] * 5 + [64, 128, 191] + [255] * 4 + [191, 128, 64] + [0] * 5
    assert out.dtype == np.uint8 and kept.max() == 0  # the inputs are left alone
    assert crossfade_frames(kept, new, 1, 20, 3)[:, 0, 0, 0].tolist() == [128] + [255] * 19
    assert np.array_equal(crossfade_frames(kept, new, 8, 12, 0)[:, 0, 0, 0], [0] * 8 + [255] * 4 + [0] * 8)
    for args, message in [((8, 21, 3), "must lie in the 20 frames"), ((8, 12, -1), "fade >= 0")]:
        with pytest.raises(ValueError, match=message):
            crossfade_frames(kept, new, *args)
    with pytest.raises(ValueError, match="differ in shape"):
        crossfade_frames(kept, new[:19], 8, 12, 3)
