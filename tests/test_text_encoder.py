"""Tests for the T5Gemma text-encoder wrapper (architecture.md §11.2)."""

from __future__ import annotations

import json
import math
import shutil
import socket
from pathlib import Path

import pytest
import torch

from magihuman.codecs.text_encoder import (
    DEFAULT_NEGATIVE_PROMPT,
    NOCAP_ATTENTION,
    TEXT_MAX_TOKENS,
    TextEncoder,
    _nocap_sdpa_attention,
    count_prompt_tokens,
    load_tokenizer,
)
from magihuman.demo.random_codecs import save_random_text_encoder
from magihuman.model.checkpoint import CheckpointError

# The official example prompt style: German umlauts, typographic and doubled quotes, plus CJK.
MIXED_PROMPT = 'Ein Mann sagt: „Grüß Gott!" und lächelt. ""Hallo"" — 你好，世界。 The speaker smiles.'


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_random_text_encoder(tmp_path_factory.mktemp("t5gemma") / "t5gemma-9b-9b-ul2", seed=0)


@pytest.fixture(scope="module")
def encoder(ckpt) -> TextEncoder:
    return TextEncoder.from_official(ckpt)


def _long_prompt(n_words: int = 700) -> str:
    return " ".join(f"w{i % 97}" for i in range(n_words))


# ---------------------------------------------------------------------------------------------
# round trip, tokenizer, trimming
# ---------------------------------------------------------------------------------------------


def test_round_trip_shapes_dtypes_and_fp16_values(ckpt, encoder, capfd, monkeypatch):
    embeds, length = encoder.encode(MIXED_PROMPT)
    ids = encoder.tokenizer([MIXED_PROMPT])["input_ids"][0]
    assert length == len(ids) == encoder.token_count(MIXED_PROMPT)
    assert ids[0] == 2  # <bos> prepended, no <eos>
    assert 1 not in ids
    assert embeds.shape == (1, length, 32)
    assert embeds.dtype == torch.float32
    assert torch.equal(embeds, embeds.half().float())  # passed through float16
    assert torch.isfinite(embeds).all()
    assert embeds.abs().max().item() < 100.0  # far from the float16 limit 65504
    # Final RMSNorm with (1 + w), w ~ N(0, 0.1^2): unit-scale, non-degenerate vectors.
    rms = embeds.pow(2).mean(-1).sqrt()
    assert 0.7 < rms.min().item() and rms.max().item() < 1.4
    assert (embeds[0, 1:] - embeds[0, :-1]).abs().amax(-1).min().item() > 1e-2

    assert encoder.hidden_size == 32
    assert encoder.dtype == torch.bfloat16
    assert encoder.device == torch.device("cpu")
    assert encoder.to("cpu") is encoder
    assert encoder.softcap is None

    # A second, fully offline load (any network use would raise) gives bit-identical embeddings,
    # and loading prints no load report.
    def no_network(*args, **kwargs):
        raise AssertionError("from_official tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    capfd.readouterr()
    again = TextEncoder.from_official(ckpt)
    out = capfd.readouterr()
    assert "LOAD REPORT" not in out.err + out.out and "UNEXPECTED" not in out.err + out.out
    embeds2, length2 = again.encode(MIXED_PROMPT)
    assert length2 == length
    assert torch.equal(embeds2, embeds)


def test_save_random_text_encoder_is_deterministic(ckpt, tmp_path):
    same = save_random_text_encoder(tmp_path / "same", seed=0)
    other = save_random_text_encoder(tmp_path / "other", seed=1)
    assert (same / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert (same / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (ckpt / "model.safetensors").read_bytes()

    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "t5gemma" and config["is_encoder_decoder"] is True
    assert config["encoder"]["hidden_size"] == config["decoder"]["hidden_size"] == 32
    assert config["encoder"]["attn_logit_softcapping"] == 50.0

    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("model.encoder.layers.1.") for k in keys)
    assert any(k.startswith("model.decoder.layers.1.cross_attn.") for k in keys)
    assert all(k.startswith(("model.encoder.", "model.decoder.")) for k in keys)

    a, la = TextEncoder.from_official(same).encode("A young woman smiles and says hello.")
    b, lb = TextEncoder.from_official(other).encode("A young woman smiles and says hello.")
    assert la == lb == 9  # <bos> A ▁young ▁woman ▁smiles ▁and ▁says ▁hello .
    assert (a - b).abs().max().item() > 0.1


def test_tokenizer_handles_any_text(encoder):
    tok = encoder.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 1280
    for text in (MIXED_PROMPT, "日本語のテキスト", "emoji 🙂 tab\tnewline\n", "x"):
        ids = tok(text)["input_ids"]
        assert ids[0] == 2 and 3 not in ids  # no <unk>: unknown characters fall back to bytes
        assert tok.decode(ids, skip_special_tokens=True) == text
    # "ü" is two UTF-8 bytes -> two byte-fallback tokens <0xC3> <0xBC>.
    assert tok.convert_ids_to_tokens(tok("ü")["input_ids"]) == ["<bos>", "<0xC3>", "<0xBC>"]


def _repeated_prompt(tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens with the tiny tokenizer: <bos> h e l l o, then one "▁hello" each."""
    return "hello" + " hello" * (tokens - 6)


def _encoder_input_lengths(encoder) -> list[int]:
    seen: list[int] = []
    encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    return seen


def _full_encoding(encoder, prompt: str) -> torch.Tensor:
    """The reference's path: encode every token, cast to float16, keep the first 640 states."""
    ids = encoder.tokenizer([prompt], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = encoder.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    return full.half()[:, :TEXT_MAX_TOKENS].float()


def test_long_prompt_is_cut_to_640_tokens_before_encoding(ckpt):
    encoder = TextEncoder.from_official(ckpt)  # own instance: the hook below stays on it
    prompt = _repeated_prompt(700)
    assert encoder.token_count(prompt) == 700
    seen = _encoder_input_lengths(encoder)
    embeds, length = encoder.encode(prompt)
    assert seen == [TEXT_MAX_TOKENS]  # the encoder ran on 640 tokens, not 700
    assert length == TEXT_MAX_TOKENS and embeds.shape == (1, TEXT_MAX_TOKENS, 32)
    ids = encoder.tokenizer([prompt], return_tensors="pt")["input_ids"][:, :TEXT_MAX_TOKENS]
    with torch.no_grad():
        cut = encoder.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert torch.equal(embeds, cut.half().float())
    # Documented difference from the reference: its kept states also saw the 60 dropped tokens.
    assert (embeds - _full_encoding(encoder, prompt)).abs().max().item() > 1e-3

    huge = _repeated_prompt(100_005)  # a 600,000-character prompt still runs a 640-token sequence
    assert len(huge) > 500_000 and encoder.token_count(huge) == 100_005
    assert encoder.encode(huge)[1] == TEXT_MAX_TOKENS and seen[-1] == TEXT_MAX_TOKENS


@pytest.mark.parametrize("tokens", [9, 639, 640])
def test_prompt_of_at_most_640_tokens_is_bit_identical_to_full_encoding(encoder, tokens):
    prompt = _repeated_prompt(tokens)
    assert encoder.token_count(prompt) == tokens
    embeds, length = encoder.encode(prompt)
    assert length == tokens
    assert torch.equal(embeds, _full_encoding(encoder, prompt))


def test_count_prompt_tokens_needs_only_the_tokenizer(ckpt, encoder, tmp_path, monkeypatch):
    light = tmp_path / "tokenizer_only"
    light.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ckpt / name, light / name)
    tokenizer = load_tokenizer(light)  # no weights in the folder
    for prompt in (MIXED_PROMPT, _repeated_prompt(700), ""):
        assert count_prompt_tokens(tokenizer, prompt) == encoder.token_count(prompt)
    assert count_prompt_tokens(tokenizer, "") == 1  # <bos>
    assert count_prompt_tokens(light, MIXED_PROMPT) == encoder.token_count(MIXED_PROMPT)
    # a checkpoint root holding t5gemma-9b-9b-ul2/, written with "~"
    monkeypatch.setenv("HOME", str(ckpt.parent.parent))
    root = Path("~") / ckpt.parent.name
    assert count_prompt_tokens(root, "hello hello") == 7  # <bos> h e l l o ▁hello
    with pytest.raises(TypeError, match="str"):
        count_prompt_tokens(tokenizer, None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# encoder-only load and soft-cap switch
# ---------------------------------------------------------------------------------------------


def test_encoder_only_load_equals_seq2seq_encoder(ckpt):
    from transformers import T5GemmaForConditionalGeneration

    full = T5GemmaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, local_files_only=True).eval()
    assert full.config.encoder._attn_implementation == "eager"  # transformers 5.x default for T5Gemma
    enc = TextEncoder.from_official(ckpt, dtype=torch.float32, softcap=True)
    assert enc.softcap == 50.0
    ref_state = full.model.encoder.state_dict()
    for name, tensor in enc.model.encoder.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name

    ids = enc.tokenizer([MIXED_PROMPT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = full.model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    embeds, _ = enc.encode(MIXED_PROMPT)
    assert torch.equal(embeds, ref.half().float())


def _inflate_qk(model: torch.nn.Module, factor: float) -> None:
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)


def _plain_eager_nocap(folder: Path) -> torch.nn.Module:
    """transformers' own eager attention with the soft-cap removed: softmax(q k^T * scale + mask) v."""
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    config = T5GemmaConfig.from_pretrained(folder, local_files_only=True)
    config.is_encoder_decoder = False
    config.encoder.attn_logit_softcapping = None
    model = T5GemmaEncoderModel.from_pretrained(
        folder, config=config, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    assert model.config.encoder._attn_implementation == "eager"
    return model.eval()


def _hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def test_softcap_switch(ckpt):
    nocap = TextEncoder.from_official(ckpt, dtype=torch.float32)
    capped = TextEncoder.from_official(ckpt, dtype=torch.float32, softcap=True)
    plain = _plain_eager_nocap(ckpt)
    assert nocap.model.config.encoder._attn_implementation == NOCAP_ATTENTION
    assert nocap.model.config.encoder.attn_logit_softcapping is None
    assert capped.model.config.encoder._attn_implementation == "eager"
    assert capped.model.config.encoder.attn_logit_softcapping == 50.0

    ids = nocap.tokenizer([MIXED_PROMPT], return_tensors="pt")["input_ids"]
    for model in (nocap.model, capped.model, plain):
        _inflate_qk(model, 8.0)  # attention logits ~64x larger: the 50 cap now bites hard
    a, _ = nocap.encode(MIXED_PROMPT)
    b, _ = capped.encode(MIXED_PROMPT)
    assert (a - b).abs().max().item() > 0.5  # the switch matters
    # softcap=False is the no-cap math: fp32 SDPA vs fp32 eager agree to ~1e-5 even with these
    # near-one-hot attention weights, four orders of magnitude below the soft-cap effect.
    assert (_hidden(nocap.model, ids) - _hidden(plain, ids)).abs().max().item() < 1e-4


def test_nocap_attention_keeps_sliding_window(ckpt, tmp_path):
    # Sliding-window layers must still be masked when the prompt is longer than the window.
    folder = shutil.copytree(ckpt, tmp_path / "window8")
    config = json.loads((folder / "config.json").read_text())
    config["encoder"]["sliding_window"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    nocap = TextEncoder.from_official(folder, dtype=torch.float32)
    full_window = TextEncoder.from_official(ckpt, dtype=torch.float32)
    ids = nocap.tokenizer([MIXED_PROMPT], return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 8
    windowed = _hidden(nocap.model, ids)
    assert (windowed - _hidden(_plain_eager_nocap(folder), ids)).abs().max().item() < 2e-5
    assert (windowed - _hidden(full_window.model, ids)).abs().max().item() > 0.1


def test_nocap_attention_function_is_plain_sdpa_math(encoder):
    module = encoder.model.encoder.layers[0].self_attn  # 2 query heads, 1 KV head (GQA)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 7, 16, generator=gen) * 6.0
    k = torch.randn(1, 1, 7, 16, generator=gen) * 6.0
    v = torch.randn(1, 1, 7, 16, generator=gen)
    out, weights = _nocap_sdpa_attention(module, q, k, v, None, scaling=0.25, dropout=0.0, softcap=50.0)
    assert weights is None and out.shape == (1, 7, 2, 16)

    kk, vv = k.expand(1, 2, 7, 16), v.expand(1, 2, 7, 16)
    logits = q @ kk.transpose(-1, -2) * 0.25
    assert logits.abs().max().item() > 50.0  # large enough for a cap to matter
    manual = (logits.softmax(-1) @ vv).transpose(1, 2)
    capped = ((torch.tanh(logits / 50.0) * 50.0).softmax(-1) @ vv).transpose(1, 2)
    torch.testing.assert_close(out, manual, atol=1e-5, rtol=1e-5)
    assert (out - capped).abs().max().item() > 0.05


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_prompt_raises(encoder, prompt):
    with pytest.raises(ValueError, match="empty"):
        encoder.encode(prompt)


def test_non_string_prompt_raises(encoder):
    with pytest.raises(TypeError, match="str"):
        encoder.encode(["a list"])


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder.from_official(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"No config\.json.*model\.safetensors"):
        TextEncoder.from_official(tmp_path)


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="is a file"):
        TextEncoder.from_official(path)


def test_not_a_t5gemma_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"found model_type='llama'.*expected.*t5gemma"):
        TextEncoder.from_official(tmp_path)


def test_missing_weights_and_tokenizer(ckpt, tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    shutil.copy(ckpt / "config.json", folder / "config.json")
    with pytest.raises(FileNotFoundError, match="No weights"):
        TextEncoder.from_official(folder)
    shutil.copy(ckpt / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="No tokenizer files"):
        TextEncoder.from_official(folder)


def test_missing_encoder_tensors(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "decoder_only"
    shutil.copytree(ckpt, folder)
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("model.encoder.")}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks \d+ encoder tensors"):
        TextEncoder.from_official(folder)


def test_sharded_checkpoint(ckpt, encoder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sharded"
    shutil.copytree(ckpt, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    embeds, _ = TextEncoder.from_official(folder).encode(MIXED_PROMPT)
    assert torch.equal(embeds, encoder.encode(MIXED_PROMPT)[0])

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks 1 of 2 weight shards"):
        TextEncoder.from_official(folder)


def test_checkpoint_root_is_accepted(ckpt):
    enc = TextEncoder.from_official(ckpt.parent)  # ROOT/t5gemma-9b-9b-ul2 layout
    assert enc.hidden_size == 32


def test_bad_dtype_and_device(ckpt):
    with pytest.raises(ValueError, match="floating"):
        TextEncoder.from_official(ckpt, dtype=torch.int8)
    with pytest.raises(ValueError, match="torch device"):
        TextEncoder.from_official(ckpt, device="gpux")


def test_save_random_text_encoder_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        save_random_text_encoder(tmp_path / "a", vocab_size=100)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        save_random_text_encoder(tmp_path / "b", num_heads=3, num_kv_heads=2)


# ---------------------------------------------------------------------------------------------
# default negative prompt
# ---------------------------------------------------------------------------------------------


def test_default_negative_prompt(encoder):
    text = DEFAULT_NEGATIVE_PROMPT
    assert 600 <= len(text) <= 1700
    assert text.isascii() and text == text.strip()
    items = [item.strip() for item in text.split(",")]
    assert len(items) >= 60 and all(items)
    for word in (
        "overexposed",
        "blurry",
        "subtitles",
        "deformed hands",
        "static picture",
        "cluttered background",
        "hiss",
        "clipping",
        "echo",
        "muffled",
        "tinny",
        "background music",
        "monotone",
        "robotic",
        "text-to-speech",
        "stuttering",
        "mumbling",
        "extra speakers",
        "off-key",
    ):
        assert word in text, word
    embeds, length = encoder.encode(text)
    assert length == encoder.token_count(text) < TEXT_MAX_TOKENS
    assert math.isfinite(embeds.sum().item())


# ---------------------------------------------------------------------------------------------
# damaged files
# ---------------------------------------------------------------------------------------------


def _damaged_copy(ckpt: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    folder = tmp_path / "t5gemma-9b-9b-ul2"
    shutil.copytree(ckpt, folder)
    (folder / name).write_bytes(content)
    return folder


def _load_error(folder: Path, name: str) -> str:
    with pytest.raises(CheckpointError) as info:
        TextEncoder.from_official(folder)
    message = str(info.value)
    assert str(folder / name) in message and f"{name} from the google/t5gemma-9b-9b-ul2" in message
    assert "download it again" in message
    return message


@pytest.mark.parametrize(
    ("name", "cut", "what"),
    [
        ("model.safetensors", 0.5, "truncated"),
        ("config.json", 0.5, "not valid JSON"),
        ("tokenizer.json", 0.5, "not valid JSON"),
        ("tokenizer_config.json", 0.0, "empty"),
    ],
)
def test_damaged_file_is_one_clear_error(ckpt, tmp_path, name, cut, what):
    data = (ckpt / name).read_bytes()
    folder = _damaged_copy(ckpt, tmp_path, name, data[: int(len(data) * cut)])
    assert what in _load_error(folder, name)


def test_weights_that_are_a_text_file_are_one_clear_error(ckpt, tmp_path):
    folder = _damaged_copy(ckpt, tmp_path, "model.safetensors", b"version https://git-lfs.github.com/spec/v1\n")
    assert "text file" in _load_error(folder, "model.safetensors")
