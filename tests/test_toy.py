"""The toy talking world: determinism, attributes, voice timing, drawing, captions, the dataset on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from magihuman.toy import palette
from magihuman.toy.attributes import MAX_WORDS, ToyAttributes, sample_attributes
from magihuman.toy.captions import parse_caption
from magihuman.toy.clip import NUM_FRAMES, make_clip
from magihuman.toy.dataset import held_out_clips, write_dataset
from magihuman.toy.drawing import (
    FACE_REGION,
    HEIGHT,
    MOUTH_REGION,
    MOUTH_WIDTH,
    REGIONS,
    SHIRT_REGION,
    WIDTH,
    draw_frame,
    mouth_height,
)
from magihuman.toy.voice import SAMPLE_RATE, VOICE_F0, synthesise_speech


def test_same_seed_same_clip_and_seeds_differ():
    a, b, c = make_clip((7, 0, 3)), make_clip((7, 0, 3)), make_clip((7, 0, 4))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio) and a.caption == b.caption
    assert not np.array_equal(a.audio, c.audio)


def test_clip_shapes_and_ranges():
    clip = make_clip(1)
    assert clip.frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (2, 2 * SAMPLE_RATE) and clip.audio.dtype == np.float32
    assert np.array_equal(clip.audio[0], clip.audio[1]) and np.abs(clip.audio).max() <= 1.0
    assert clip.mouth_opening.shape == clip.loudness.shape == clip.eyes_open.shape == (NUM_FRAMES,)
    assert 0.0 <= clip.mouth_opening.min() and clip.mouth_opening.max() <= 1.0


def test_frame_count_is_what_the_pipeline_renders_for_two_seconds():
    from magihuman.pipeline.request import GenerationRequest

    plan = GenerationRequest(prompt="x", seconds=2.0, width=WIDTH, height=HEIGHT).plan()
    assert (plan.pixel_frames, plan.width, plan.height) == (NUM_FRAMES, WIDTH, HEIGHT)


def test_attribute_space_is_covered():
    assert all(len(names) >= 6 for names in (palette.HAIR_COLOURS, palette.SHIRT_COLOURS, palette.WALL_COLOURS))
    drawn = [sample_attributes(np.random.default_rng(s), max_offset=(4, 3)) for s in range(400)]
    assert {a.voice for a in drawn} == {"low", "high"} and {a.gender for a in drawn} == {"woman", "man"}
    assert {len(a.words) for a in drawn} == set(range(1, MAX_WORDS + 1))
    assert {a.hair for a in drawn} == set(palette.HAIR_COLOURS)
    assert {a.shirt for a in drawn} == set(palette.SHIRT_COLOURS)  # the held-out colour is never drawn
    assert {a.wall for a in drawn} == set(palette.WALL_COLOURS)
    held = sample_attributes(np.random.default_rng(0), shirt_colours=palette.HELD_OUT_SHIRT_COLOURS)
    assert held.shirt in palette.HELD_OUT_SHIRT_COLOURS


def test_mouth_colour_is_unlike_every_part_colour():
    others = list(palette.COLOURS.values()) + list(palette.SKIN_TONES.values())
    others += [palette.EYE_WHITE_RGB, palette.PUPIL_RGB, palette.EYELID_RGB]
    assert min(palette.colour_distance(palette.MOUTH_RGB, rgb) for rgb in others) > 60


def test_bad_attributes_are_refused():
    with pytest.raises(ValueError, match="voice"):
        ToyAttributes("woman", "red", "blue", "yellow", "light", "medium", ("one",))
    with pytest.raises(ValueError, match="words"):
        ToyAttributes("woman", "red", "blue", "yellow", "light", "low", ("seven",))


def test_one_voiced_segment_per_word_and_silence_between():
    clip = make_clip(11, variant="t2v")
    mono = clip.audio[0]
    assert len(clip.segments) == len(clip.attributes.words)
    for (start, end), (next_start, _) in zip(clip.segments, clip.segments[1:]):
        assert np.sqrt(np.mean(mono[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)] ** 2)) > 0.05
        assert next_start - end > 0.05
        gap = mono[int(end * SAMPLE_RATE) + 1:int(next_start * SAMPLE_RATE) - 1]
        assert np.abs(gap).max() == 0.0
    assert clip.segments[-1][1] < NUM_FRAMES / clip.fps  # speech ends inside the video


def test_a_voice_says_a_word_with_one_waveform_whatever_the_clip():
    """Fixed pitch and harmonic phases: the same word in the same voice is the same periodic waveform in every
    utterance (up to its gain and its noise burst), and the two voices differ by their fundamental."""
    skip = int(0.03 * SAMPLE_RATE)  # past the 15 ms burst and the 25 ms attack
    bodies = {}
    for voice in ("low", "high"):
        for seed in (1, 2):
            speech = synthesise_speech(("go",), voice, np.random.default_rng(seed))
            assert speech.f0 == VOICE_F0[voice]
            start = int(speech.segments[0][0] * SAMPLE_RATE) + skip
            bodies[voice, seed] = speech.waveform[start:start + 2048].astype(np.float64)
    for voice in ("low", "high"):
        assert np.corrcoef(bodies[voice, 1], bodies[voice, 2])[0, 1] > 0.999
    assert abs(np.corrcoef(bodies["low", 1], bodies["high", 1])[0, 1]) < 0.5
    assert VOICE_F0["high"] / VOICE_F0["low"] > 2.0  # not an octave: a doubled low voice is not the high one


def test_mouth_follows_loudness_and_is_closed_in_silence():
    clip = make_clip(12)
    silent = clip.loudness == 0
    assert silent.any() and (clip.mouth_opening[silent] == 0).all()
    assert np.corrcoef(clip.mouth_opening, clip.loudness)[0, 1] > 0.95
    x0, y0, x1, y1 = MOUTH_REGION
    mouth = (clip.frames[:, y0:y1, x0:x1] == palette.MOUTH_RGB).all(-1).sum(axis=(1, 2))
    assert np.corrcoef(mouth, clip.mouth_opening)[0, 1] > 0.98


def test_drawn_mouth_size_and_blink():
    attrs = ToyAttributes("man", "black", "green", "pink", "dark", "low", ("one",), (4, 3))
    closed, wide = draw_frame(attrs, 0.0, True), draw_frame(attrs, 1.0, False)
    count = [int((f == palette.MOUTH_RGB).all(-1).sum()) for f in (closed, wide)]
    assert count[0] == 2 * MOUTH_WIDTH and count[1] > 10 * MOUTH_WIDTH * 0.6
    assert mouth_height(0.5) == 8
    assert (closed == palette.EYE_WHITE_RGB).all(-1).sum() > 0 and (wide == palette.EYE_WHITE_RGB).all(-1).sum() == 0


@pytest.mark.parametrize("offset", [(0, 0), (4, 3), (-4, -3), (4, -3)])
def test_regions_hold_one_colour_for_every_offset(offset):
    attrs = ToyAttributes("woman", "red", "blue", "yellow", "light", "high", ("one",), offset)
    frame = draw_frame(attrs, 1.0, True)
    for part, (x0, y0, x1, y1) in REGIONS.items():
        assert (frame[y0:y1, x0:x1] == palette.COLOURS[getattr(attrs, part)]).all(), part
    x0, y0, x1, y1 = MOUTH_REGION
    assert (frame == palette.MOUTH_RGB).all(-1).sum() == (frame[y0:y1, x0:x1] == palette.MOUTH_RGB).all(-1).sum()
    sx0, sy0, sx1, sy1 = SHIRT_REGION  # every shirt pixel (blue appears nowhere else in this frame)
    shirt = (frame == palette.COLOURS["blue"]).all(-1)
    assert shirt.sum() > 1000 and shirt.sum() == shirt[sy0:sy1, sx0:sx1].sum()
    fx0, fy0, fx1, fy1 = FACE_REGION  # every eye and mouth pixel, open or blinking
    assert fx0 <= x0 and fy0 <= y0 and fx1 >= x1 and fy1 >= y1
    for eyes_open in (True, False):
        frame = draw_frame(attrs, 1.0, eyes_open)
        for rgb in (palette.MOUTH_RGB, palette.EYE_WHITE_RGB, palette.PUPIL_RGB, palette.EYELID_RGB):
            whole, inside = ((f == rgb).all(-1).sum() for f in (frame, frame[fy0:fy1, fx0:fx1]))
            assert whole == inside, (rgb, eyes_open)


def test_caption_structure_and_round_trip():
    for seed in range(30):
        clip = make_clip(seed)
        a = clip.attributes
        body, dialogue, background = clip.caption.split("\n\n")
        assert dialogue.startswith("Dialogue:\n<") and background.startswith("Background Sound:\n<")
        assert f'"{a.dialogue}"' in body and f'"{a.dialogue}"' in dialogue
        expected = dict(hair=a.hair, shirt=a.shirt, wall=a.wall, skin=a.skin, voice=a.voice, gender=a.gender,
                        words=list(a.words))
        assert parse_caption(clip.caption) == expected


def test_dataset_on_disk(tmp_path):
    from magihuman.pipeline.media import probe_media

    out = tmp_path / "ds"
    summary = write_dataset(out, clips=3, seed=5, held_out=2)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (out / "held_out.jsonl").read_text().splitlines()]
    assert (summary.clips, summary.held_out, len(rows), len(held)) == (3, 2, 3, 2)
    assert all({"video", "caption"} <= set(r) and (out / r["video"]).is_file() for r in rows)
    assert sum("image" in r for r in rows) == summary.first_frame_clips
    info = probe_media(out / rows[0]["video"])
    assert (info["num_frames"], info["width"], info["sample_rate"], info["channels"]) == (NUM_FRAMES, WIDTH,
                                                                                      SAMPLE_RATE, 2)
    assert [h["prompt"] for h in held] == [c.caption for c in held_out_clips(5, 2)]
    def content(attributes: dict) -> dict:
        return {k: v for k, v in attributes.items() if k != "offset"}

    assert all(content(r["attributes"]) != content(h["toy"]) for r in rows for h in held)
    with pytest.raises(FileExistsError, match="not empty"):
        write_dataset(out, clips=1, held_out=0)


def test_make_dataset_command(tmp_path):
    from magihuman.cli.app import app

    result = CliRunner().invoke(app, ["toy", "make-dataset", "--out", str(tmp_path / "d"), "--clips", "2",
                                      "--held-out", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "d" / "manifest.jsonl").read_text().splitlines()) == 2
    again = CliRunner().invoke(app, ["toy", "make-dataset", "--out", str(tmp_path / "d"), "--clips", "1"])
    assert again.exit_code == 2 and "not empty" in again.output
