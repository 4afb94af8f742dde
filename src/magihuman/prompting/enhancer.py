"""``enhance_prompt``: a short idea in, the model's three-part prompt out, or the idea untouched with a warning.

One enhancement: send our system prompt and the user's text to a backend
(:mod:`magihuman.prompting.backends`), check the answer's structure and repair what is mechanical
(:mod:`magihuman.prompting.structure`); if the answer is still unusable, ask once more, saying what was
wrong. A backend failure (network, timeout, HTTP error, malformed JSON) or a second unusable answer never
raises: the user's prompt is returned as given, with a warning that says why (docs/prompting.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from magihuman.prompting.backends import BackendError, EnhancerConfigError, PromptEnhancerBackend
from magihuman.prompting.structure import repair
from magihuman.prompting.system_prompt import build_messages, retry_message

__all__ = ["EnhanceResult", "enhance_prompt", "MAX_ANSWER_CHARS"]

#: Longest answer accepted, in characters: a 200-word body with its dialogue is about 2,000; far longer
#: answers are rambling (and the text encoder keeps 640 tokens, architecture.md §11.2). Our choice.
MAX_ANSWER_CHARS = 8_000


@dataclass(frozen=True)
class EnhanceResult:
    """The outcome of :func:`enhance_prompt`.

    Attributes:
        prompt: the prompt to render: the enhanced one, or the user's own when ``enhanced`` is False.
        enhanced: whether ``prompt`` is the enhancer's.
        warning: why the user's prompt was kept, or notes on an enhanced prompt (e.g. its length); None when
            there is nothing to say.
        attempts: answers requested from the backend (0 when none was; at most ``retries + 1``).
    """

    prompt: str
    enhanced: bool
    warning: str | None = None
    attempts: int = 0


def enhance_prompt(prompt: str, backend: PromptEnhancerBackend, *, has_image: bool = False,
                   retries: int = 1) -> EnhanceResult:
    """Rewrite ``prompt`` into the three-part structure the model was tuned on.

    Args:
        prompt: the user's prompt (any language; its spoken lines are kept verbatim by the instructions).
        backend: where the answer comes from (:func:`~magihuman.prompting.backends.backend_from_settings`).
        has_image: a first-frame image will be used; the enhancer is told not to invent looks.
        retries: further requests after an unusable answer (each says what was wrong with the last).

    Returns:
        :class:`EnhanceResult`. On any backend failure or when every answer is unusable (empty, longer than
        :data:`MAX_ANSWER_CHARS`, or with a structural problem :func:`~magihuman.prompting.structure.repair`
        cannot fix), ``prompt`` unchanged with ``enhanced=False`` and a warning.

    Raises:
        EnhancerConfigError: ``prompt`` is empty or ``retries`` negative (nothing is sent).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise EnhancerConfigError("the prompt to enhance is empty; give the idea for the clip", field="prompt")
    if retries < 0:
        raise EnhancerConfigError(f"retries must be 0 or more, got {retries}", field="retries")
    messages = build_messages(prompt, has_image=has_image)
    problems: list[str] = []
    for attempt in range(1, retries + 2):
        try:
            answer = backend.complete(messages)
        except BackendError as exc:
            return _kept(prompt, str(exc), attempt)
        except Exception as exc:  # noqa: BLE001 - a backend's own bug is still a backend failure
            return _kept(prompt, f"{type(exc).__name__}: {exc}", attempt)
        problems = _problems(answer)
        if not problems:
            repaired = repair(answer)
            if repaired.ok:
                notes = [p.message for p in repaired.remaining]
                return EnhanceResult(repaired.text, True, "; ".join(notes) or None, attempt)
            problems = [p.message for p in repaired.remaining if p.kind == "unrepairable"]
        messages = [*messages, {"role": "assistant", "content": (answer or "")[:MAX_ANSWER_CHARS]},
                    retry_message(problems)]
    tries = f"{retries + 1} answers" if retries else "the answer"
    return _kept(prompt, f"{tries} did not have the prompt structure ({'; '.join(problems)})", retries + 1)


def _problems(answer: object) -> list[str]:
    """Reasons to refuse an answer before its structure is looked at."""
    if not isinstance(answer, str) or not answer.strip():
        return ["the answer is empty"]
    if len(answer) > MAX_ANSWER_CHARS:
        return [f"the answer has {len(answer):,} characters, over {MAX_ANSWER_CHARS:,}"]
    return []


def _kept(prompt: str, reason: str, attempts: int) -> EnhanceResult:
    return EnhanceResult(prompt, False, f"prompt enhancement failed, so your prompt is used as given: {reason}",
                         attempts)
