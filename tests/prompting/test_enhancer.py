"""``enhance_prompt`` against a fake OpenAI-compatible endpoint: repair, retry, and every way of falling back."""

from __future__ import annotations

import time

import pytest

from magihuman.prompting.backends import BackendError, EnhancerConfigError, OpenAIChatBackend
from magihuman.prompting.enhancer import MAX_ANSWER_CHARS, EnhanceResult, enhance_prompt
from magihuman.prompting.system_prompt import SYSTEM_PROMPT

from .fake_llm import FIXED_ANSWER, GOOD_ANSWER, SLOW_SECONDS

IDEA = "a woman in a yellow sweater says good morning"


def run(llm, model: str, **kwargs) -> EnhanceResult:
    backend = OpenAIChatBackend(llm.url, model, timeout=kwargs.pop("timeout", 5.0))
    try:
        return enhance_prompt(IDEA, backend, **kwargs)
    finally:
        backend.close()


def test_well_formed_answer(llm):
    result = run(llm, "good")
    assert result == EnhanceResult(GOOD_ANSWER, True, None, 1)
    sent = llm.for_model("good")[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] is None
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][0]["content"] == SYSTEM_PROMPT and IDEA in sent["messages"][1]["content"]
    assert "first-frame image" not in sent["messages"][1]["content"]
    run(llm, "good", has_image=True)
    assert "first-frame image" in llm.for_model("good")[-1]["messages"][1]["content"]


def test_fixable_answer_is_repaired_without_a_retry(llm):
    result = run(llm, "fixable")
    assert (result.prompt, result.enhanced, result.attempts) == (FIXED_ANSWER, True, 1)


def test_unusable_answer_is_retried_once_with_the_reason(llm):
    result = run(llm, "bad-then-good")
    assert result == EnhanceResult(GOOD_ANSWER, True, None, 2)
    retry = llm.for_model("bad-then-good")[-1]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert "no 'Dialogue:' part" in retry[-1]["content"]


@pytest.mark.parametrize("model, attempts, reason", [
    ("no-dialogue", 2, "2 answers did not have the prompt structure (there is no 'Dialogue:' part)"),
    ("empty", 2, "(the answer is empty)"),
    ("fail500", 1, "answered HTTP 500: the model crashed"),
    ("not-json", 1, "answered something that is not JSON: 'hello, not json'"),
    ("no-choices", 1, "answered JSON without choices[0].message.content"),
])
def test_failures_keep_the_prompt_with_a_warning(llm, model, attempts, reason):
    before = len(llm.for_model(model))
    result = run(llm, model)
    assert (result.prompt, result.enhanced, result.attempts) == (IDEA, False, attempts)
    assert result.warning.startswith("prompt enhancement failed, so your prompt is used as given: ")
    assert reason in result.warning
    assert len(llm.for_model(model)) - before == attempts


def test_no_retry_when_retries_is_zero(llm):
    result = run(llm, "no-dialogue", retries=0)
    assert (result.enhanced, result.attempts) == (False, 1)
    assert "the answer did not have the prompt structure" in result.warning


def test_slow_endpoint_times_out(llm):
    start = time.monotonic()
    result = run(llm, "slow", timeout=0.3)
    assert time.monotonic() - start < SLOW_SECONDS
    assert (result.prompt, result.enhanced, result.attempts) == (IDEA, False, 1)
    assert "within 0.3 s" in result.warning


def test_unreachable_endpoint():
    from .fake_llm import FakeChatServer

    server = FakeChatServer()
    url = server.url
    server.close()  # nothing listens there any more
    result = enhance_prompt(IDEA, OpenAIChatBackend(url, "good", timeout=2.0))
    assert (result.enhanced, result.attempts) == (False, 1)
    assert f"cannot reach {url}/chat/completions: ConnectError" in result.warning


class Scripted:
    """A backend answering from a list (strings, or exceptions to raise)."""

    description = "scripted"

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), 0

    def complete(self, messages):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self):
        pass


def test_backend_bugs_and_oversized_answers_do_not_raise():
    result = enhance_prompt(IDEA, Scripted(ZeroDivisionError("oops")))
    assert (result.enhanced, result.attempts) == (False, 1) and "ZeroDivisionError: oops" in result.warning
    result = enhance_prompt(IDEA, Scripted(BackendError("down")))
    assert result.warning.endswith(": down")
    backend = Scripted("x" * (MAX_ANSWER_CHARS + 1), GOOD_ANSWER)
    assert enhance_prompt(IDEA, backend) == EnhanceResult(GOOD_ANSWER, True, None, 2)


def test_advisory_notes_are_the_warning_of_an_enhanced_prompt():
    long_body = GOOD_ANSWER.replace("Her voice is warm", "She pauses for a moment. " * 8 + "Her voice is warm", 1)
    result = enhance_prompt(IDEA, Scripted(long_body))
    assert result.enhanced and result.warning == ("the main body has 214 words (without the quoted speech); the model "
                                                  "was tuned on 150-200")


def test_bad_arguments_are_refused_before_any_call():
    backend = Scripted(GOOD_ANSWER)
    with pytest.raises(EnhancerConfigError, match="empty"):
        enhance_prompt("   ", backend)
    with pytest.raises(EnhancerConfigError, match="retries"):
        enhance_prompt(IDEA, backend, retries=-1)
    assert backend.calls == 0
