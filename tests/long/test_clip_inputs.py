"""Bad extend and retake requests are refused with one clear error before any model loads (API and CLI)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import magihuman.cli.app as cli
import magihuman.pipeline.magihuman_pipeline as pipeline
from magihuman.pipeline.clip_requests import ExtendRequest, RetakeRequest
from magihuman.pipeline.errors import InputError, MissingInputError

from .conftest import CLIP_FRAMES, write_clip

PROMPT = "She turns to the window and says the rain has finally stopped, smiling a little."
runner = CliRunner()


@pytest.mark.parametrize("kind, fields, field, message", [
    ("retake", dict(start=0.2, end=1.5), "end", r"after the end of the clip \(1.00 s\)"),
    ("retake", dict(start=0.6, end=0.6), "end", "must be after start"),
    ("retake", dict(start=0.8, end=0.4), "end", "must be after start"),
    ("retake", dict(start=-0.1, end=0.4), "start", "must be >= 0"),
    ("retake", dict(start=0.1, end=0.9, window_seconds=0.32), "end", "at most 1 "),
    ("retake", dict(start=0.1, end=0.2, preset="sr_540p"), "preset", "not supported"),
    ("extend", dict(seconds=61), "seconds", r"\(0, 60\]"),
    ("extend", dict(seconds=2, overlap_frames=9), "overlap_frames", "1..8"),
    ("extend", dict(seconds=2, fade_frames=26), "fade_frames", r"0\.\.25 \(0: a hard cut\)"),
    ("retake", dict(start=0.1, end=0.2, fade_frames=-1), "fade_frames", r"0\.\.25"),
    ("extend", dict(seconds=2, window_seconds=0.16, overlap_frames=2), "window_seconds", "longer than"),
    ("extend", dict(seconds=2, width=1024, height=512), "width", "32..896"),
    ("extend", dict(seconds=2, width=448), "height", "give both"),
])
def test_bad_values_name_their_field(clip, kind, fields, field, message):
    request_type = RetakeRequest if kind == "retake" else ExtendRequest
    with pytest.raises(InputError, match=message) as caught:
        request_type(clip=clip, prompt=PROMPT, **fields).validate_inputs()
    assert caught.value.field == field


def test_audio_retake_of_a_clip_without_sound_is_refused(silent_clip):
    for target in ("audio", "both"):
        with pytest.raises(InputError, match="no audio track") as caught:
            RetakeRequest(clip=silent_clip, prompt=PROMPT, start=0.1, end=0.3, target=target).validate_inputs()
        assert caught.value.field == "target"
    assert RetakeRequest(clip=silent_clip, prompt=PROMPT, start=0.1, end=0.3, target="video").validate_inputs()


def test_missing_or_unreadable_clips(tmp_path):
    with pytest.raises(MissingInputError, match="clip not found") as caught:
        ExtendRequest(clip=tmp_path / "none.mp4", prompt=PROMPT).validate_inputs()
    assert caught.value.field == "clip"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(InputError, match="cannot use the clip") as caught:
        ExtendRequest(clip=text, prompt=PROMPT).validate_inputs()
    assert caught.value.field == "clip"
    short = write_clip(tmp_path / "short.mp4", count=3)
    with pytest.raises(InputError, match="at least 5"):
        RetakeRequest(clip=short, prompt=PROMPT, start=0, end=0.04).validate_inputs()


def test_plans(clip):
    extend = ExtendRequest(clip=clip, prompt=PROMPT, seconds=1.0).plan()
    assert (extend.width, extend.height, extend.clip_frames, extend.has_audio) == (32, 32, CLIP_FRAMES, True)
    assert (extend.prefix_frames, extend.prefix_pixel_frames, extend.new_pixel_frames) == (4, 13, 28)
    assert any("rounded up to 1.12 s" in n for n in extend.notices)  # 25 frames -> 7 latent frames of 4
    assert extend.fade_frames == 8


def test_an_extension_holds_four_latent_frames_of_the_clip_by_default(clip, tmp_path):
    """The clip's last 4 latent frames (13 frames) unless overlap_frames says otherwise or the clip is shorter;
    windows after the first share 2 with each other (or overlap_frames)."""
    def plan(path, **fields):
        return ExtendRequest(clip=path, prompt=PROMPT, seconds=2.0, window_seconds=0.64, **fields).plan()

    long = plan(clip)  # 4 held + 13 new latent frames in windows of 5; the last, moved back, holds 3
    assert [w.clean_frames for w in long.windows.windows] == [4, 2, 2, 2, 2, 3]
    assert (long.prefix_pixel_frames, long.fade_frames) == (13, 8)
    given = plan(clip, overlap_frames=3)
    assert [w.clean_frames for w in given.windows.windows][:2] == [3, 3] and given.prefix_pixel_frames == 9
    nine = plan(write_clip(tmp_path / "nine.mp4", count=9))  # 9 frames hold 3 latent frames
    assert (nine.prefix_frames, nine.prefix_pixel_frames, nine.fade_frames) == (3, 9, 8)
    five = plan(write_clip(tmp_path / "five.mp4", count=5))
    assert (five.prefix_frames, five.prefix_pixel_frames, five.fade_frames) == (2, 5, 5)
    narrow = ExtendRequest(clip=clip, prompt=PROMPT, seconds=1.0, window_seconds=0.32).plan()  # windows of 3
    assert narrow.prefix_frames == 2
    retake = RetakeRequest(clip=clip, prompt=PROMPT, start=0.44, end=0.52).plan()  # frames 11, 12
    assert (retake.first_frame, retake.end_frame, retake.first_latent, retake.last_latent) == (11, 13, 3, 3)
    assert retake.pixel_span == (9, 13) and (retake.window_start, retake.window_frames) == (0, 7)
    windowed = RetakeRequest(clip=clip, prompt=PROMPT, start=0.44, end=0.52, window_seconds=0.32).plan()
    assert (windowed.window_start, windowed.window_frames, windowed.window_audio) == (2, 3, (8, 17))
    at_end = RetakeRequest(clip=clip, prompt=PROMPT, start=0.9, end=1.0, window_seconds=0.32).plan()
    assert (at_end.first_latent, at_end.last_latent, at_end.window_start, at_end.window_audio) == (6, 6, 4, (16, 25))


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if a command tries to load models."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the input is bad")

    monkeypatch.setattr(pipeline.MagiHumanPipeline, "from_official", classmethod(refuse))


@pytest.mark.parametrize("args, message", [
    (["retake", "{clip}", "--start", "0.5", "--end", "0.2"], r"end \(0.2 s\) must be after start"),
    (["retake", "{clip}", "--start", "0.2", "--end", "3"], "after the end of the clip"),
    (["retake", "{silent}", "--start", "0.2", "--end", "0.4", "--audio"], "no audio track"),
    (["retake", "{clip}", "--start", "0.2", "--end", "0.4", "--audio", "--video"], "not both"),
    (["extend", "{clip}", "--seconds", "90"], r"\(0, 60\]"),
    (["extend", "{clip}", "--seconds", "1", "--output", "{clip}", "--overwrite"], "is the input clip"),
    (["extend", "{missing}", "--seconds", "1"], "clip not found"),
])
def test_cli_refuses_before_loading(no_loading, clip, silent_clip, tmp_path, args, message):
    args = [a.format(clip=clip, silent=silent_clip, missing=tmp_path / "missing.mp4") for a in args]
    result = runner.invoke(cli.app, [*args, "--prompt", PROMPT, "--demo", "--device", "cpu"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "error:" in text and re.search(message, text), text


@pytest.mark.parametrize("fps", [30, 12])
def test_clips_are_read_at_25_fps(tmp_path, fps):
    """Frame k is the latest source frame shown at k/25 s; a 1 s clip has 25 frames at any rate."""
    import numpy as np

    from magihuman.pipeline.media import probe_clip, read_clip_frames, write_mp4

    levels = [int(250 * k / fps) for k in range(fps)]
    frames = np.stack([np.full((48, 64, 3), level, np.uint8) for level in levels])
    path = write_mp4(tmp_path / "rate.mp4", frames, fps=fps, crf=0, preset="ultrafast")
    info = probe_clip(path)
    assert (info.num_frames, info.width, info.height, info.has_audio) == (25, 64, 48, False)
    read = read_clip_frames(path, width=32, height=32, num_frames=25)  # cropped to 1:1, resized
    expected = [levels[int(k * fps / 25 + 1e-9)] for k in range(25)]
    assert np.abs(read[:, 16, 16, 0].astype(int) - np.array(expected)).max() <= 2  # YUV round trip


@pytest.mark.parametrize("trained", [True, False])
def test_cli_edits_with_demo_run_what_generate_demo_runs(clip, tmp_path, monkeypatch, trained):
    """``extend --demo`` and ``retake --demo`` load the shipped toy models, as ``generate --demo`` does (random
    ones only where no toy bundle ships), and say which; a caption without the toy's Dialogue and Background
    Sound parts gets the caption-form note, and none gets the real model's short-prompt notice. The load is
    stopped at once (no model is built)."""
    import magihuman.demo.bundle

    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / ("toy" if trained else "random")
    monkeypatch.setattr(magihuman.demo.bundle, "demo_checkpoint_root", lambda: (bundle, trained))
    monkeypatch.setattr(magihuman.demo.bundle, "demo_is_trained", lambda: trained)
    roots = []

    def record(cls, root=None, **kwargs):
        roots.append(root)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(pipeline.MagiHumanPipeline, "from_official", classmethod(record))
    short = "A cartoon man with red hair and tan skin, wearing a black shirt, in front of a plain pink wall says " \
            "\"hi two\" in a high voice."
    full = short + "\n\nDialogue:\n<Man in black shirt, English>: \"hi two\"\n\nBackground Sound:\n" \
                   "<No prominent background sound>"
    for command in (["extend", str(clip), "--seconds", "1"], ["retake", str(clip), "--start", "0.2", "--end", "0.4"]):
        for caption in (short, full):
            result = runner.invoke(cli.app, [*command, "--prompt", caption, "--demo", "--device", "cpu"])
            text = " ".join(result.output.split())
            assert result.exit_code == 1 and "stopped by the test" in text, text
            assert roots.pop() == bundle
            assert ("toy world's small models" in text) is trained and ("RANDOM weights" in text) is not trained
            assert ("lacks the toy captions' `Dialogue:`" in text) is (trained and caption is short), text
            assert ("tuned for 150-200 words" in text) is not trained, text  # the toy's captions are short
