"""The training guide's commands (docs/training.md) on the demo bundle: prepare, lora, generate --lora,
distill, generate --preset distill with the student, and the errors before any model loads."""

from __future__ import annotations

from typer.testing import CliRunner

import magihuman.cli.app as cli
from magihuman.pipeline.media import probe_media

from .helpers import write_clip

runner = CliRunner()
PROMPT = "A man in a grey shirt looks at the camera and says hello."


def run(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def test_guide_commands_on_the_demo_bundle(tmp_path, demo_root):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        write_clip(clips / f"talk{i}.mp4", seed=i)
        (clips / f"talk{i}.txt").write_text(f"a person says hello, take {i}")
    cache = tmp_path / "cache"
    result = run("train", "prepare", clips, "-o", cache, "--checkpoint-root", demo_root, "--size", "64x64",
                 "--seconds", "0.32")
    assert result.exit_code == 0, result.output
    result = run("train", "lora", "--cache", cache, "--base", demo_root / "base", "--output", tmp_path / "lora",
                 "--steps", 2, "--rank", 4, "--set", "mixed_precision=fp32", "--set", "checkpoint_every=1")
    assert result.exit_code == 0, result.output
    adapter = tmp_path / "lora" / "lora.safetensors"
    assert adapter.is_file() and (tmp_path / "lora" / "loss.png").is_file()
    common = ("--prompt", PROMPT, "--seconds", 1, "--width", 128, "--height", 64, "--device", "cpu",
              "--checkpoint-root", demo_root)
    result = run("generate", *common, "--lora", f"{adapter}:0.5", "--output", tmp_path / "lora.mp4")
    assert result.exit_code == 0, result.output
    assert probe_media(tmp_path / "lora.mp4")["num_frames"] == 25
    result = run("train", "distill", "--cache", cache, "--teacher", demo_root / "base", "--output",
                 tmp_path / "dmd", "--steps", 1, "--set", "fake_steps=1", "--set", "mixed_precision=fp32")
    assert result.exit_code == 0, result.output
    result = run("generate", *common, "--preset", "distill", "--transformer", tmp_path / "dmd" / "distill",
                 "--output", tmp_path / "student.mp4")
    assert result.exit_code == 0, result.output
    info = probe_media(tmp_path / "student.mp4")
    assert (info["num_frames"], info["width"], info["height"]) == (25, 128, 64)


def test_bad_inputs_stop_before_loading(tmp_path, demo_root):
    result = run("generate", "--prompt", PROMPT, "--checkpoint-root", demo_root, "--lora",
                 tmp_path / "none.safetensors",
                 "--output", tmp_path / "x.mp4")
    assert result.exit_code == 2 and "none.safetensors" in result.output and "not found" in result.output
    silent = tmp_path / "silent"
    silent.mkdir()
    write_clip(silent / "s.mp4", sound=False)
    (silent / "s.txt").write_text("quiet")
    result = run("train", "prepare", silent, "-o", tmp_path / "c", "--checkpoint-root", demo_root, "--size", "64x64",
                 "--seconds", "0.32")
    assert result.exit_code == 2 and "--video-only" in result.output
    result = run("train", "lora", "--cache", tmp_path, "--base", tmp_path, "--output", tmp_path / "o",
                 "--set", "steps=0")
    assert result.exit_code == 2 and "steps" in result.output
    result = run("train", "lora", "--cache", tmp_path, "--base", tmp_path, "--output", tmp_path / "o",
                 "--set", "video_region=[80,0,40,16]")
    assert result.exit_code == 2 and "video_region must be (x0, y0, x1, y1)" in result.output
    result = run("train", "lora", "--cache", tmp_path, "--base", tmp_path, "--output", tmp_path / "o",
                 "--set", "extra_video_regions=[[34,17,95,47,0]]")
    assert result.exit_code == 2 and "extra_video_regions must be (x0, y0, x1, y1, weight)" in result.output
