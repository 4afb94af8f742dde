"""Prompt schedules: later prompts taking over a windowed clip at the nearest window."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from magihuman.pipeline.errors import InputError
from magihuman.pipeline.prompt_schedule import (
    PromptCue,
    parse_prompt_at,
    window_prompt_indices,
    window_start_seconds,
)
from magihuman.pipeline.request import GenerationRequest
from magihuman.pipeline.windows import plan_windows

from .conftest import Spy, run_generate
from .test_long_generation import LONG

LATER = "A woman in a red coat laughs and waves at the camera from a windy beach at dusk."


def _run(pipe, **fields):
    spy = Spy(pipe.transformer)
    pipe.transformer, original = spy, pipe.transformer
    try:
        out = pipe(**{**LONG, **fields})
    finally:
        pipe.transformer = original
    return out, spy


def test_window_start_seconds_are_each_windows_first_new_frame():
    # 0.96 s in windows of 3 latent frames, overlap 1: windows at latent frames 0, 2 and 4 generate from 0, 3 and 5,
    # i.e. pixel frames 0, 9 and 17.
    plan = plan_windows(7, 25, window_frames=3, overlap=1)
    assert window_start_seconds(plan) == [0.0, 9 / 25, 17 / 25]
    # a given prefix of 2 frames: the first window generates from latent frame 2 (pixel 5)
    assert window_start_seconds(plan_windows(7, 25, window_frames=4, overlap=1, prefix_frames=2))[0] == 5 / 25


def test_each_cue_takes_the_window_nearest_its_time():
    plan = plan_windows(7, 25, window_frames=3, overlap=1)  # windows generate from 0.36 and 0.68 s
    cue = lambda t: PromptCue(start=t, prompt="x")  # noqa: E731
    assert window_prompt_indices(plan, [cue(0.6)]) == ([0, 0, 1], [])
    assert window_prompt_indices(plan, [cue(0.3)]) == ([0, 1, 1], [])
    assert window_prompt_indices(plan, [cue(0.52)]) == ([0, 0, 1], [])  # a tie goes to the later window
    assert window_prompt_indices(plan, [cue(0.3), cue(0.9)]) == ([0, 1, 2], [])
    # two cues on one window (possible only when the loaded decoder re-plans): the later wins, with a notice
    indices, notices = window_prompt_indices(plan, [cue(0.6), cue(0.9)])
    assert indices == [0, 0, 2] and notices == ["the prompt cue at 0.6 s is not used: with the loaded video decoder's "
                                                "windows it lands on the window of the cue after it"]
    indices, notices = window_prompt_indices(plan, [cue(0.1)])
    assert indices == [0, 0, 0] and notices[0].endswith("0.1 s is not used: with the loaded video decoder's windows "
                                                        "it lands on the first window")


def _request(**fields):
    return GenerationRequest(**{**dict(prompt="a b c", seconds=20, window_seconds=2.0, prompt_schedule=[(8, "d")]),
                                **fields})


def test_the_schedule_is_checked_before_anything_loads():
    notices = _request(prompt_schedule=[(8, "d"), {"start": 14, "prompt": "e"}]).validate_inputs()
    # 20 s in 2 s windows: windows generate from 0, 1.96, 3.88, ..., 8.52 (window 6), ..., 13.64 (window 9) s
    assert "the prompt cue at 8 s takes over at 8.52 s (window 6 of 12)" in notices
    assert "the prompt cue at 14 s takes over at 13.64 s (window 9 of 12)" in notices
    wrong = [
        (dict(seconds=4, window_seconds=None), "needs a clip generated in windows"),
        (dict(prompt_schedule=[(0.5, "d")]), "nearer the clip's start than the second window's new frames (1.96 s)"),
        (dict(prompt_schedule=[(8, "d"), (8.5, "e")]), "land on the same window"),
        (dict(prompt_schedule=[(8, "d"), (7, "e")]), "the cue at 7 s does not"),
        (dict(prompt_schedule=[(20, "d")]), "in (0, 20) seconds"),
        (dict(prompt_schedule=[(8, "  ")]), "empty prompt"),
        (dict(prompt_schedule=[(8, "d" * 20_001)]), "20,001 characters"),
    ]
    for fields, message in wrong:
        with pytest.raises(InputError, match="prompt") as err:
            _request(**fields).validate_inputs()
        assert message in str(err.value) and err.value.field == "prompt_schedule", fields
    with pytest.raises(ValueError, match="start"):
        _request(prompt_schedule=[(float("nan"), "d")])


def test_parse_prompt_at():
    assert parse_prompt_at("8.5=She says: \"a=b\"") == PromptCue(start=8.5, prompt="She says: \"a=b\"")
    for bad in ("She says hello", "x=hello", "inf=hello"):
        with pytest.raises(InputError, match="SECONDS=TEXT"):
            parse_prompt_at(bad)


def test_windows_from_the_cue_on_see_the_cues_prompt(distill):
    plain, plain_spy = _run(distill)
    out, spy = _run(distill, prompt_schedule=[(0.6, LATER)])  # lands on the third window (from 0.68 s)
    with torch.inference_mode():
        first = distill.text_encoder.encode(LONG["prompt"])[0]
        later = distill.text_encoder.encode(LATER)[0]
    assert len(spy.texts) == 3 * 8
    assert all(torch.equal(t, first) for t in spy.texts[:16])
    assert all(torch.equal(t, later) for t in spy.texts[16:])
    # the windows before the cue are those of the plain run bit for bit; the third window holds the same clean frame
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain_spy.calls[:16], spy.calls[:16]))
    assert torch.equal(out.video_latent[:, :, :5], plain.video_latent[:, :, :5])
    assert not torch.equal(out.video_latent[:, :, 5:], plain.video_latent[:, :, 5:])
    assert out.frames.shape == plain.frames.shape


def _generate(monkeypatch, tmp_path, *args):
    """``magihuman generate --demo`` of a 20 s clip in 2 s windows with ``args``: (result, requests)."""
    return run_generate(monkeypatch, "--demo", "--device", "cpu", "--prompt", LONG["prompt"], "--seconds", "20",
                        "--window-seconds", "2", "-o", str(tmp_path / "o.mp4"), *args)


def test_generate_prompt_at(monkeypatch, tmp_path):
    result, asked = _generate(monkeypatch, tmp_path, "--prompt-at", "8=" + LATER, "--prompt-at", "14=She sits.")
    assert result.exit_code == 0, result.output
    assert asked[0].prompt_schedule == [PromptCue(start=8, prompt=LATER), PromptCue(start=14, prompt="She sits.")]
    assert "the prompt cue at 8 s takes over at 8.52 s (window 6 of 12)" in " ".join(result.output.split())
    config = tmp_path / "config.json"
    config.write_text('{"prompt_at": ["10=' + LATER + '"]}')
    result, asked = _generate(monkeypatch, tmp_path, "--config", str(config), "--overwrite")
    assert result.exit_code == 0, result.output
    assert asked[0].prompt_schedule == [PromptCue(start=10, prompt=LATER)]
    for args, message in ((["--prompt-at", "eight=x"], "SECONDS=TEXT"),
                          (["--prompt-at", "8.5=x", "--prompt-at", "9=y"], "land on the same window"),
                          (["--prompt-at", "8=x", "--enhance"], "--enhance rewrites one prompt")):
        result, asked = _generate(monkeypatch, tmp_path, *args, "--overwrite")
        assert result.exit_code == 2 and not asked, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    config.write_text('{"prompt_at": "10=x"}')
    result, _ = _generate(monkeypatch, tmp_path, "--config", str(config), "--overwrite")
    assert result.exit_code == 2 and "prompt_at must be a list" in " ".join(result.output.split())


def test_the_api_refuses_enhance_with_a_schedule(distill):
    with pytest.raises(InputError, match="enhance rewrites one prompt") as err:
        distill(**LONG, prompt_schedule=[(0.6, LATER)], enhance=True)
    assert err.value.field == "enhance"


def test_a_schedule_with_cfg_shares_the_negative_prompt(demo_root):
    """The base preset (CFG): every window gets the negative prompt's embedding, the cue's window its own prompt."""
    from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline

    base = MagiHumanPipeline.from_official(demo_root, preset="base")
    # 2 steps: the texts are what is checked
    base.preset = dataclasses.replace(base.preset, sampler=dataclasses.replace(base.preset.sampler, num_steps=2))
    spy = Spy(base.transformer)
    base.transformer = spy
    base(**{**LONG, "prompt_schedule": [(0.6, LATER)]}, negative_prompt="blurry")
    with torch.inference_mode():
        first, later, negative = (base.text_encoder.encode(t)[0] for t in (LONG["prompt"], LATER, "blurry"))
    # batched CFG: each call holds the prompt and the negative, zero-padded to one length
    lengths = [t.shape[1] for t in (first, later, negative)]
    assert len(spy.texts) == 3 * 2 and all(t.shape[0] == 2 for t in spy.texts)
    for call, prompt in zip(spy.texts, (first, first, first, first, later, later)):
        n = prompt.shape[1]
        assert torch.equal(call[0, :n], prompt[0]) and torch.equal(call[1, :lengths[2]], negative[0])
