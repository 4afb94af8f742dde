"""Backends: endpoint settings and their errors, environment variables, a tiny random local causal LM, no torch
at import."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from magihuman.prompting.backends import (
    BackendError,
    EnhancerConfigError,
    LocalModelBackend,
    OpenAIChatBackend,
    backend_from_settings,
    chat_completions_url,
    chat_text,
)
from magihuman.prompting.enhancer import enhance_prompt

from .fake_llm import GOOD_ANSWER


@pytest.mark.parametrize("given, full", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1/chat/completions"),
    ("https://api.example.com/v1", "https://api.example.com/v1/chat/completions"),
    ("https://api.example.com/openai/v1/", "https://api.example.com/openai/v1/chat/completions"),
    ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
])
def test_endpoint_url(given, full):
    assert chat_completions_url(given) == full


@pytest.mark.parametrize("settings, field, words", [
    (dict(url="localhost:8000", model="m"), "enhance_url", "not an http(s) URL"),
    (dict(url="ftp://host/v1", model="m"), "enhance_url", "not an http(s) URL"),
    (dict(url="http://", model="m"), "enhance_url", "not an http(s) URL"),
    (dict(url="http://h/v1"), "enhance_model", "no enhancer model name"),
    (dict(url="http://h/v1", model="m", timeout=0), "enhance_timeout", "positive number"),
    (dict(url="http://h/v1", model="m", timeout="soon"), "enhance_timeout", "positive number"),
    (dict(url="http://h/v1", local_model="/x"), "enhance_local_model", "not both"),
    (dict(local_model="/no/such/folder"), "enhance_local_model", "folder not found"),
    ({}, "enhance_url", "no prompt enhancer configured"),
])
def test_bad_settings_are_config_errors(settings, field, words):
    with pytest.raises(EnhancerConfigError, match=re.escape(words)) as caught:
        backend_from_settings(**settings, environ={})
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


def test_environment_and_precedence(llm):
    env = {"MAGIHUMAN_ENHANCE_URL": llm.url, "MAGIHUMAN_ENHANCE_MODEL": "good", "OPENAI_API_KEY": "sk-openai",
           "MAGIHUMAN_ENHANCE_TIMEOUT": "7.5"}
    backend = backend_from_settings(environ=env)
    assert (backend.url, backend.model, backend.api_key, backend.timeout) == (
        llm.url + "/chat/completions", "good", "sk-openai", 7.5)
    assert enhance_prompt("idea", backend).enhanced
    assert llm.for_model("good")[-1]["auth"] == "Bearer sk-openai"
    env["MAGIHUMAN_ENHANCE_API_KEY"] = "sk-ours"
    assert backend_from_settings(environ=env).api_key == "sk-ours"
    flagged = backend_from_settings(url="http://other:1/v1", model="m2", api_key="sk-flag", timeout=3, environ=env)
    assert (flagged.url, flagged.model, flagged.api_key, flagged.timeout) == (
        "http://other:1/v1/chat/completions", "m2", "sk-flag", 3.0)
    assert isinstance(backend_from_settings(local_model="some-org/some-model", environ=env), LocalModelBackend)


def test_the_key_never_appears_in_messages(llm):
    backend = OpenAIChatBackend(llm.url, "fail500", api_key="sk-secret-123", timeout=5)
    result = enhance_prompt("idea", backend)
    assert not result.enhanced and "sk-secret" not in result.warning and "sk-secret" not in backend.description
    with pytest.raises(BackendError) as caught:
        backend.complete([{"role": "user", "content": "x"}])
    assert "sk-secret" not in str(caught.value)


# ---------------------------------------------------------------------------------------------- local model
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def save_tiny_lm(folder, *, template: bool):
    """A random 1-layer Llama and a word-level tokenizer over a few words, saved as a transformers folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[EOS]", "<system>", "<user>", "<assistant>", "Dialogue", ":", "a", "man", "says",
             "hello", "the", "in", "yellow", "shirt", "Background", "Sound"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    if template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         pad_token_id=0, eos_token_id=2, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("template", [True, False], ids=["chat-template", "plain"])
def test_local_model_plumbing(tmp_path, template):
    """A random LM answers noise: the text reaches it through the template (or plain turns) and the noise is
    refused twice, so the prompt is kept with a warning."""
    from transformers import AutoTokenizer

    folder = save_tiny_lm(tmp_path / "lm", template=template)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a man says hello"}]
    text = chat_text(AutoTokenizer.from_pretrained(folder), messages)
    assert text == ("<system> be brief <user> a man says hello <assistant>" if template else
                    "System: be brief\n\nUser: a man says hello\n\nAssistant:")
    backend = LocalModelBackend(str(folder), device="cpu", max_new_tokens=12)
    answer = backend.complete(messages)
    assert isinstance(answer, str) and 0 < len(answer.split()) <= 12
    result = enhance_prompt("a man says hello", backend)
    assert (result.prompt, result.enhanced, result.attempts) == ("a man says hello", False, 2)
    assert "did not have the prompt structure" in result.warning
    backend.close()
    assert backend._loaded is None


def test_local_model_that_does_not_load_is_a_backend_failure(tmp_path):
    (tmp_path / "empty").mkdir()
    result = enhance_prompt("idea", LocalModelBackend(str(tmp_path / "empty")))
    assert (result.enhanced, result.attempts) == (False, 1)
    assert f"cannot load local model {tmp_path / 'empty'}" in result.warning


def test_scripted_good_answer_passes_through_the_local_backend_code(tmp_path, monkeypatch):
    """The decode keeps only the new tokens: the answer is what the model generated after the chat text."""
    backend = LocalModelBackend(str(save_tiny_lm(tmp_path / "lm", template=False)), device="cpu", max_new_tokens=4)
    tokenizer, model = backend._load()
    original = model.generate

    def generate(ids, **kwargs):
        import torch

        extra = torch.tensor([tokenizer.convert_tokens_to_ids(["Dialogue", ":", "hello", "[EOS]"])])
        assert original(ids, **kwargs).shape[1] == ids.shape[1] + kwargs["max_new_tokens"]
        return torch.cat([ids, extra], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    assert backend.complete([{"role": "user", "content": GOOD_ANSWER[:20]}]) == "Dialogue : hello"


def test_import_is_torch_free():
    code = ("import sys, magihuman.prompting.enhancer, magihuman.prompting.backends, magihuman.prompting.structure; "
            "print(sorted(m for m in ('torch', 'transformers', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
