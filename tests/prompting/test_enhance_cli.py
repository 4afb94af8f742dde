"""``magihuman enhance``, ``generate --enhance`` (the ``.prompt.txt`` beside the MP4) and the pipeline's ``enhance``."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import magihuman.cli.app as cli
from magihuman.pipeline.errors import InputError
from magihuman.pipeline.request import GenerationRequest

from .fake_llm import DEMO_ANSWER, GOOD_ANSWER

runner = CliRunner()
IDEA = "a man in a yellow shirt says hello"


def run(*args, **env):
    return runner.invoke(cli.app, [str(a) for a in args], env=env or None)


def test_enhance_prints_the_prompt(llm):
    result = run("enhance", IDEA, "--url", llm.url, "--model", "good", "--api-key", "sk-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == GOOD_ANSWER + "\n" and result.stderr == ""
    assert llm.for_model("good")[-1]["auth"] == "Bearer sk-1"


def test_enhance_from_environment_and_file(llm, tmp_path):
    idea = tmp_path / "idea.txt"
    idea.write_text(IDEA + "\n", encoding="utf-8")
    result = run("enhance", "--prompt-file", idea, "--with-image", MAGIHUMAN_ENHANCE_URL=llm.url,
                 MAGIHUMAN_ENHANCE_MODEL="good")
    assert result.exit_code == 0, result.output
    assert result.stdout == GOOD_ANSWER + "\n"
    user_turn = llm.for_model("good")[-1]["messages"][1]["content"]
    assert user_turn.endswith("Idea for the video:\n" + IDEA) and "first-frame image" in user_turn


def test_enhance_failure_prints_the_idea_and_exits_1(llm):
    result = run("enhance", IDEA, "--url", llm.url, "--model", "fail500")
    assert result.exit_code == 1
    assert result.stdout == IDEA + "\n"
    assert result.stderr.startswith("warning: prompt enhancement failed") and "HTTP 500" in result.stderr


@pytest.mark.parametrize("args, words", [
    (("--url", "localhost:8000", "--model", "m"), "not an http(s) URL"),
    (("--url", "http://h/v1", "--model", "m", "--timeout", "0"), "positive number"),
    ((), "no prompt enhancer configured"),
])
def test_enhance_bad_settings_exit_2_before_any_call(llm, args, words):
    before = len(llm.requests)
    result = run("enhance", IDEA, *args)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and words in result.stderr
    assert len(llm.requests) == before


def test_generate_demo_enhance_writes_the_prompt_beside_the_mp4(llm, demo_root, tmp_path):
    out = tmp_path / "clip.mp4"
    args = ("generate", "--demo", "--enhance", "--enhance-url", llm.url, "--enhance-model", "demo", "--prompt", IDEA,
            "--seconds", "0.4", "--width", 64, "--height", 64, "--device", "cpu", "-o", out)
    result = run(*args)
    assert result.exit_code == 0, result.output
    saved = tmp_path / "clip.prompt.txt"
    assert out.stat().st_size > 0 and saved.read_text(encoding="utf-8") == DEMO_ANSWER + "\n"
    assert f"enhanced prompt (saved as {saved} with the video):\n{DEMO_ANSWER}" in result.stderr
    assert f"wrote {saved}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.prompt.txt"]  # no temp file left
    # The prompt file is an output too: never replaced without --overwrite, checked before anything runs.
    out.unlink()
    before = len(llm.requests)
    result = run(*args)
    assert result.exit_code == 2 and f"prompt file already exists: {saved}" in result.stderr
    assert "--overwrite" in result.stderr and len(llm.requests) == before and not out.exists()


@pytest.mark.parametrize("args, words", [
    (("--enhance-url", "http://h/v1"), "--enhance-url has no effect without --enhance"),
    (("--enhance", "--enhance-url", "h:1", "--enhance-model", "m"), "not an http(s) URL"),
])
def test_generate_enhance_settings_are_checked(tmp_path, args, words):
    result = run("generate", "--demo", "--prompt", IDEA, "-o", tmp_path / "x.mp4", *args)
    assert result.exit_code == 2 and words in result.stderr


def test_pipeline_enhance_step(llm, tmp_path, monkeypatch):
    """``MagiHumanPipeline(..., enhance=...)``'s stage 0b: the request gets the enhanced prompt and fresh notices;
    a failure keeps it with the warning; unset settings are an InputError."""
    from magihuman.pipeline.magihuman_pipeline import _enhance_request
    from magihuman.prompting.backends import OpenAIChatBackend

    request = GenerationRequest(prompt=IDEA, seconds=1, width=64, height=64)
    notices = request.validate_inputs()
    assert any("the prompt has 8 words" in n for n in notices)
    enhanced, fresh, text = _enhance_request(request, OpenAIChatBackend(llm.url, "good"), notices)
    assert text == GOOD_ANSWER and enhanced.prompt == GOOD_ANSWER and request.prompt == IDEA
    assert not any("the prompt has" in n for n in fresh)
    same, kept, text = _enhance_request(request, OpenAIChatBackend(llm.url, "no-dialogue"), notices)
    assert same is request and text is None and kept[:-1] == notices and "no 'Dialogue:' part" in kept[-1]
    monkeypatch.setenv("MAGIHUMAN_ENHANCE_URL", llm.url)
    monkeypatch.setenv("MAGIHUMAN_ENHANCE_MODEL", "good")
    assert _enhance_request(request, True, notices)[2] == GOOD_ANSWER
    monkeypatch.delenv("MAGIHUMAN_ENHANCE_URL")
    with pytest.raises(InputError, match="no prompt enhancer configured") as caught:
        _enhance_request(request, True, notices)
    assert caught.value.field == "enhance_url"
