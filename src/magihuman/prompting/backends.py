"""Where enhanced prompts come from: any OpenAI-compatible chat endpoint, or a local transformers model.

A backend has one job: messages in, answer text out (:meth:`PromptEnhancerBackend.complete`). Every way that
can fail at run time (no connection, timeout, HTTP error, an answer that is not the chat JSON, a model that
does not load or generate) is a :class:`BackendError`, which :func:`magihuman.prompting.enhancer.enhance_prompt`
turns into a warning. A setting that cannot work (a URL without ``http://``, a missing model name, a
non-positive timeout, a local path that does not exist) is an :class:`EnhancerConfigError`, raised when the
backend is built, before any call.

Settings come from arguments first, then the environment (:data:`URL_ENV`, :data:`MODEL_ENV`,
:data:`API_KEY_ENV` or ``OPENAI_API_KEY``, :data:`TIMEOUT_ENV`); see :func:`backend_from_settings`.
This module imports neither torch nor transformers nor httpx until a backend is used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = [
    "PromptEnhancerBackend", "OpenAIChatBackend", "LocalModelBackend", "BackendError", "EnhancerConfigError",
    "backend_from_settings", "chat_completions_url", "chat_text", "URL_ENV", "MODEL_ENV", "API_KEY_ENV",
    "OPENAI_API_KEY_ENV", "TIMEOUT_ENV", "DEFAULT_TIMEOUT",
]

URL_ENV = "MAGIHUMAN_ENHANCE_URL"
MODEL_ENV = "MAGIHUMAN_ENHANCE_MODEL"
API_KEY_ENV = "MAGIHUMAN_ENHANCE_API_KEY"
#: Read when :data:`API_KEY_ENV` is unset.
OPENAI_API_KEY_ENV = "OPENAI_API_KEY"
TIMEOUT_ENV = "MAGIHUMAN_ENHANCE_TIMEOUT"
#: Seconds to wait for the endpoint (connect, and between bytes of the answer).
DEFAULT_TIMEOUT = 60.0


class EnhancerConfigError(ValueError):
    """An enhancer setting that cannot work; the message names the setting and the fix.

    Attributes:
        field: the setting at fault (``"enhance_url"``, ``"enhance_model"``, ``"enhance_timeout"``,
            ``"enhance_local_model"``).
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class BackendError(Exception):
    """The backend gave no usable answer (network, timeout, HTTP status, malformed JSON, model failure)."""


class PromptEnhancerBackend(Protocol):
    """What :func:`~magihuman.prompting.enhancer.enhance_prompt` needs of a backend."""

    #: For messages: where the answers come from (no secrets).
    description: str

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The assistant's answer to chat ``messages``; raises :class:`BackendError` on any failure."""
        ...

    def close(self) -> None:
        """Free connections or model memory; the backend may be used again after (it reopens)."""
        ...


# ---------------------------------------------------------------------------------------- endpoint
def chat_completions_url(url: str) -> str:
    """The ``/v1/chat/completions`` URL of an endpoint given as a base (``http://host:8000``, ``.../v1``) or in full.

    Raises:
        EnhancerConfigError: no ``http``/``https`` scheme or no host.
    """
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EnhancerConfigError(
            f"enhancer URL {text!r} is not an http(s) URL; write it in full, e.g. http://localhost:8000/v1 or "
            f"https://api.openai.com/v1 (--url / --enhance-url or ${URL_ENV})", field="enhance_url")
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        return text
    suffix = "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
    return parts._replace(path=path + suffix).geturl()


class OpenAIChatBackend:
    """An OpenAI-compatible ``POST /v1/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

    Args:
        url: the endpoint: a base URL or the full ``.../v1/chat/completions`` URL.
        model: the ``model`` field of the request.
        api_key: sent as ``Authorization: Bearer KEY`` when given.
        timeout: seconds to wait to connect and between bytes of the answer (> 0).
        temperature: sampling temperature sent with the request.
        max_tokens: longest answer, in tokens (a 200-word prompt with dialogue needs about 400).

    Raises:
        EnhancerConfigError: a URL that is not http(s), an empty model name, a timeout that is not positive.
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 temperature: float = 0.7, max_tokens: int = 1024):
        self.url = chat_completions_url(url)
        if not (model or "").strip():
            raise EnhancerConfigError(f"no enhancer model name for {self.url}; pass --model / --enhance-model or set "
                                      f"${MODEL_ENV} (the name the endpoint serves)", field="enhance_model")
        self.model = model.strip()
        self.timeout = _check_timeout(timeout)
        self.api_key, self.temperature, self.max_tokens = api_key or None, temperature, max_tokens
        self.description = f"{self.model} at {self.url}"
        self._client: Any = None

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The first choice's message text.

        Raises:
            BackendError: connection failure, timeout, HTTP status >= 400, or an answer that is not
                chat-completion JSON with ``choices[0].message.content`` text.
        """
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        try:
            response = self._client.post(self.url, json=body, headers=headers)
        except httpx.TimeoutException:
            raise BackendError(f"no answer from {self.url} within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise BackendError(f"{self.url} answered HTTP {response.status_code}: {_error_text(response.text)}")
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError):
            raise BackendError(f"{self.url} answered something that is not JSON: {response.text[:120]!r}") from None
        return _message_text(data, self.url)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None


def _check_timeout(timeout: Any) -> float:
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise EnhancerConfigError(f"enhancer timeout must be a positive number of seconds, got {timeout!r} "
                                  f"(--timeout or ${TIMEOUT_ENV})", field="enhance_timeout")
    return value


def _error_text(text: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's first 200 characters."""
    try:
        message = json.loads(text)["error"]["message"]
        if isinstance(message, str):
            return message[:200]
    except (ValueError, KeyError, TypeError):
        pass
    return " ".join(text.split())[:200] or "(empty body)"


def _message_text(data: Any, url: str) -> str:
    """``choices[0].message.content`` as text (a list of text parts is joined)."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"{url} answered JSON without choices[0].message.content") from None
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise BackendError(f"{url} answered a message whose content is not text")
    return content


# ---------------------------------------------------------------------------------------- local model
def chat_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text a causal LM continues: the tokenizer's chat template if it has one, else plain turns.

    Without a template the turns are ``System: ...``, ``User: ...`` separated by blank lines, ending with
    ``Assistant:``.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


class LocalModelBackend:
    """A transformers causal LM (``AutoModelForCausalLM`` + ``AutoTokenizer``), loaded on first use.

    Args:
        model: a Hugging Face model id or a local folder (``~`` expanded).
        device: ``"cpu"``, ``"cuda"``, ...; None: cuda when available, else cpu.
        max_new_tokens: longest answer, in tokens.

    Raises:
        EnhancerConfigError: an empty name, or a path (``/``, ``./``, ``../`` or ``~`` first) that does not exist.
    """

    def __init__(self, model: str, *, device: str | None = None, max_new_tokens: int = 768):
        name = (model or "").strip()
        if not name:
            raise EnhancerConfigError("no local enhancer model: pass --local-model NAME_OR_FOLDER",
                                      field="enhance_local_model")
        if name.startswith(("/", "./", "../", "~")):
            name = os.path.expanduser(name)
            if not os.path.isdir(name):
                raise EnhancerConfigError(f"local enhancer model folder not found: {name}; pass a folder holding "
                                          "config.json and the tokenizer, or a Hugging Face model id",
                                          field="enhance_local_model")
        self.model_name, self.device, self.max_new_tokens = name, device, max_new_tokens
        self.description = f"local model {name}"
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
            tokenizer = AutoTokenizer.from_pretrained(self.model_name)
            model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dtype).to(device).eval()
            self._loaded = tokenizer, model
        return self._loaded

    def complete(self, messages: list[dict[str, str]]) -> str:
        """Greedy continuation of the chat text, new tokens only, special tokens removed.

        Raises:
            BackendError: the model or tokenizer does not load, or generation fails.
        """
        try:
            tokenizer, model = self._load()
        except Exception as exc:  # noqa: BLE001 - any loading failure is the backend's failure
            raise BackendError(f"cannot load {self.description}: {type(exc).__name__}: {exc}") from None
        try:
            import torch

            encoded = tokenizer(chat_text(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
            ids = encoded["input_ids"].to(model.device)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                     do_sample=False, pad_token_id=pad)
            return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"{self.description} failed to generate: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """Drop the model and tokenizer (and the CUDA cache) so the video models get the memory."""
        if self._loaded is not None:
            self._loaded = None
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- settings
def backend_from_settings(*, url: str | None = None, model: str | None = None, api_key: str | None = None,
                          local_model: str | None = None, timeout: float | str | None = None,
                          environ: Mapping[str, str] | None = None) -> PromptEnhancerBackend:
    """The backend the settings name; arguments win over the environment.

    ``local_model`` gives a :class:`LocalModelBackend`; otherwise the endpoint URL (``url`` or
    ``$MAGIHUMAN_ENHANCE_URL``) and model (``model`` or ``$MAGIHUMAN_ENHANCE_MODEL``) give an
    :class:`OpenAIChatBackend`, with the key from ``api_key``, ``$MAGIHUMAN_ENHANCE_API_KEY`` or
    ``$OPENAI_API_KEY`` and the timeout from ``timeout``, ``$MAGIHUMAN_ENHANCE_TIMEOUT`` or 60 s.

    Raises:
        EnhancerConfigError: both ``url`` and ``local_model`` given, neither configured anywhere, or a
            setting the backend refuses.
    """
    env = os.environ if environ is None else environ
    if local_model and url:
        raise EnhancerConfigError("give either an enhancer URL or a local enhancer model, not both",
                                  field="enhance_local_model")
    if local_model:
        return LocalModelBackend(local_model)
    url = url or env.get(URL_ENV)
    if not url:
        raise EnhancerConfigError(
            f"no prompt enhancer configured: pass --url and --model (generate: --enhance-url, --enhance-model) or "
            f"set ${URL_ENV} and ${MODEL_ENV} for an OpenAI-compatible endpoint, or pass --local-model "
            "(generate: --enhance-local-model) for a transformers model", field="enhance_url")
    key = api_key or env.get(API_KEY_ENV) or env.get(OPENAI_API_KEY_ENV)
    return OpenAIChatBackend(url, model or env.get(MODEL_ENV) or "", api_key=key,
                             timeout=timeout if timeout is not None else env.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
