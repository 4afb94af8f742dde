"""Random-weight codecs in their official file layouts, for tests and the offline demo bundle.

One writer per codec, each writing exactly the files its loader reads (architecture.md §11.3, §11.4, §11.5, §11.2):

* :func:`save_random_text_encoder` - a tiny T5Gemma seq2seq snapshot (``config.json``,
  ``model.safetensors``, a Gemma-style BPE tokenizer built without downloads);
* :func:`save_random_wan22_vae` - ``Wan2.2_VAE.pth`` in the original key layout;
* :func:`save_random_audio_vae` - Stable Audio Open's ``model_config.json`` + ``model.safetensors``;
* :func:`save_random_turbo_vae` - the Turbo-VAED JSON + ``checkpoint-340000.ckpt``.

Every writer draws its tensors from a private ``torch.Generator().manual_seed(seed)`` in a fixed order
(the global RNG is untouched), so a seed gives the same bytes on every machine. The three VAE writers
replace each file atomically.
The random transformer is :mod:`magihuman.demo.random_weights`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from magihuman.codecs.audio_vae import HOP_LENGTH, LATENT_CHANNELS, OUTPUT_SAMPLE_RATE
from magihuman.codecs.audio_vae_format import (
    SAO_CONFIG_NAME,
    SAO_VAE_PREFIX,
    SAO_WEIGHTS_NAME,
    official_sao_vae_key_shapes,
)
from magihuman.codecs.text_encoder import DEFAULT_NEGATIVE_PROMPT, quiet_transformers
from magihuman.codecs.turbo_vae import (
    TURBO_VAED_CHECKPOINT_NAME,
    TURBO_VAED_CONFIG_NAME,
    TURBO_VAED_EMA_KEY,
    TurboVAEDConfig,
    TurboVAEDecoder,
)
from magihuman.codecs.video_vae import (
    WAN22_CHECKPOINT_NAME,
    WAN22_LATENT_MEAN,
    official_wan22_key_shapes,
)
from magihuman.model.checkpoint import write_atomic

__all__ = ["save_random_audio_vae", "save_random_text_encoder", "save_random_turbo_vae", "save_random_wan22_vae"]

_SAO_STRIDES = (2, 4, 4, 8, 8)  # SAO 1.0 (architecture.md §11.5); product = HOP_LENGTH
_SAO_C_MULTS = (1, 2, 4, 8, 16)


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through an open file, so the zip's inner folder is ``archive/`` and not the name of
    the (random) temporary file: the same seed then gives the same bytes."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)


# ----------------------------------------------------------------------------------------------
# Tiny random checkpoint in the official layout
# ----------------------------------------------------------------------------------------------

# Short built-in corpus: the tiny tokenizer gets one merge chain per word ("▁w", "▁wo", ...).
_DEMO_CORPUS = (
    "the a an and of to in on with at is are was be it this that for from by as his her their "
    "man woman person people speaker young old smiling smiles looks says said speaks talks voice "
    "calm warm soft clear loud quiet happy sad serious friendly gentle confident slowly quickly "
    "camera close-up shot front view face eyes mouth lips hands hair head light lighting "
    "background room studio office street window city night day morning evening sun "
    "video audio speech sound music noise dialogue background sound effects "
    "wearing shirt jacket dress glasses sitting standing looking directly "
    "hello hi thank you yes no what how why where when very really just now here there"
)
_N_SPECIAL = 5  # <pad> <eos> <bos> <unk> <mask>
_MIN_VOCAB = _N_SPECIAL + 256 + 1 + 94  # specials, byte fallback, "▁", printable ASCII


def _build_demo_tokenizer(vocab_size: int, extra_words: Sequence[str] = (), bare_words: Sequence[str] = ()):
    """Deterministic Gemma-style BPE tokenizer with byte fallback, built without downloads.

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, then ``<0x00>``..``<0xFF>``,
    ``▁`` and the printable ASCII characters, then one merge chain per word of a built-in word
    list and of :data:`DEFAULT_NEGATIVE_PROMPT` (as many as fit), then ``<unusedN>`` fillers up
    to ``vocab_size``. Any UTF-8 text tokenises (characters outside the vocabulary fall back to
    their bytes). ``<bos>`` is prepended, no ``<eos>``.
    """
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for token in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"):
        vocab[token] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in ["\u2581"] + [chr(c) for c in range(33, 127)]:
        vocab[char] = len(vocab)
    merges: list[tuple[str, str]] = []
    # The words of the default negative prompt come next, so the demo negative prompt stays short.
    words = list(dict.fromkeys(_DEMO_CORPUS.split() + DEFAULT_NEGATIVE_PROMPT.replace(",", " ").split()
                               + [w for w in extra_words if " " not in w]))
    chains = [("\u2581", word) for word in words] + [("", word) for word in dict.fromkeys(bare_words)]
    for piece, word in chains:
        for char in word:
            if len(vocab) >= vocab_size:
                break
            if piece + char not in vocab:
                vocab[piece + char] = len(vocab)
                merges.append((piece, char))
            piece = piece + char
    for phrase in (w for w in extra_words if " " in w):  # one token for the whole phrase, merged from its words
        piece = ""
        for part in phrase.split():
            right = "\u2581" + part
            if piece in vocab and len(vocab) < vocab_size and right in vocab and piece + right not in vocab:
                vocab[piece + right] = len(vocab)
                merges.append((piece, right))
            piece = piece + right
    unused = 0
    while len(vocab) < vocab_size:
        vocab[f"<unused{unused}>"] = len(vocab)
        unused += 1
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)


def save_random_text_encoder(
    folder: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 16,
    intermediate_size: int = 64,
    vocab_size: int = 1280,
    seed: int = 0,
    extra_words: Sequence[str] = (),
    bare_words: Sequence[str] = (),
) -> Path:
    """Write a tiny random T5Gemma seq2seq checkpoint in the official layout; return ``folder``.

    Layout (as ``google/t5gemma-9b-9b-ul2``): ``config.json`` (``T5GemmaConfig`` with encoder and
    decoder ``T5GemmaModuleConfig`` sub-configs of the same size), ``model.safetensors`` with
    ``model.encoder.*`` and ``model.decoder.*`` tensors (float32, tied ``lm_head`` omitted) and the
    tokenizer files (``tokenizer.json``, ``tokenizer_config.json``).
    :meth:`~magihuman.codecs.text_encoder.TextEncoder.from_official` loads it offline. Same arguments ->
    byte-identical tensors -> identical embeddings.

    Weights are drawn from a private ``torch.Generator(seed)`` (the global RNG is untouched):
    linear weights ``N(0, 1/fan_in)``, token embeddings ``N(0, 1/hidden_size)`` (unit RMS after
    Gemma's ``sqrt(hidden_size)`` scale), norm weights ``N(0, 0.1^2)`` (Gemma norms use
    ``1 + w``), so encoder outputs are unit-RMS, finite and safe for the float16 cast.
    Architecture details mirror the real model: sliding window 4096 on even layers,
    ``query_pre_attn_scalar = head_dim``, attention soft-cap 50.

    Args:
        folder: Output folder (created; existing files of the same names are overwritten).
        hidden_size: Model width ``C``.
        num_layers: Encoder and decoder layer count.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (must divide ``num_heads``).
        head_dim: Per-head width.
        intermediate_size: GeGLU MLP width.
        vocab_size: Tokenizer and embedding size; at least 356 (5 specials + 256 bytes + 95
            characters). Extra room holds word merges (the default 1280 fits all of them, so
            the default negative prompt is about 225 tokens), then ``<unusedN>`` fillers.
        seed: Seed of the weight generator.
        extra_words: Words that get their own merge chain after the built-in corpus (a world's
            vocabulary, e.g. the toy world's colours and numbers), room permitting. An entry with spaces is a
            phrase: after every single word, it gets merges joining its words' tokens into one token (a
            phrase whose words have no token of their own stays several tokens).
        bare_words: Words that also get a merge chain without the word-start mark ``▁``: the form a word takes
            at the start of a line or right after a quote (``"one`` or ``Dialogue:``).

    Returns:
        ``Path(folder)``.

    Raises:
        ValueError: A size is not a positive int, ``num_heads`` is not a multiple of
            ``num_kv_heads``, or ``vocab_size`` is below 356.
    """
    from safetensors.torch import save_file

    sizes = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate_size,
        "vocab_size": vocab_size,
    }
    _check_t5gemma_sizes(sizes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = _tiny_t5gemma_config(**sizes)
    state = _random_t5gemma_state(config, hidden_size, seed)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with quiet_transformers():
        config.save_pretrained(folder)
        _build_demo_tokenizer(vocab_size, extra_words, bare_words).save_pretrained(folder)
    return folder


def _check_t5gemma_sizes(sizes: dict[str, int]) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if sizes["num_heads"] % sizes["num_kv_heads"]:
        raise ValueError(
            f"num_heads ({sizes['num_heads']}) must be a multiple of num_kv_heads ({sizes['num_kv_heads']})."
        )
    if sizes["vocab_size"] < _MIN_VOCAB:
        raise ValueError(
            f"vocab_size must be at least {_MIN_VOCAB} (5 special tokens + 256 byte-fallback tokens + 95 "
            f"characters), got {sizes['vocab_size']}."
        )


def _tiny_t5gemma_config(
    *, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int, head_dim: int,
    intermediate_size: int, vocab_size: int,
):
    """``T5GemmaConfig`` with equal encoder/decoder sub-configs and the real model's structural values."""
    from transformers import T5GemmaConfig
    from transformers.models.t5gemma import T5GemmaModuleConfig

    def module_config() -> dict:
        return T5GemmaModuleConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            max_position_embeddings=8192,
        ).to_dict()

    config = T5GemmaConfig(
        encoder=module_config(), decoder=module_config(), vocab_size=vocab_size, is_encoder_decoder=True
    )
    config.architectures = ["T5GemmaForConditionalGeneration"]
    return config


def _random_t5gemma_state(config, hidden_size: int, seed: int) -> dict[str, Tensor]:
    """Float32 seq2seq tensors drawn in sorted-name order from ``torch.Generator().manual_seed(seed)``."""
    from transformers import T5GemmaForConditionalGeneration

    with quiet_transformers(), torch.device("meta"):
        # Meta device: only names and shapes are needed, no memory and no global-RNG use.
        skeleton = T5GemmaForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(int(seed))
    state: dict[str, Tensor] = {}
    # named_parameters() lists a tied tensor once, so the tied lm_head is left out as in the
    # official files; sorting makes the draw order independent of module registration order.
    for name, param in sorted(skeleton.named_parameters()):
        shape = tuple(param.shape)
        if name.endswith("embed_tokens.weight"):
            std = hidden_size**-0.5
        elif "norm" in name:
            std = 0.1
        else:
            std = shape[-1] ** -0.5
        state[name] = (torch.randn(shape, generator=generator, dtype=torch.float32) * std).contiguous()
    return state


# --------------------------------------------------------------------------------------------------
# Tiny random checkpoints in the original layout
# --------------------------------------------------------------------------------------------------


def _random_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Init rule: conv/linear weights ``randn/sqrt(fan_in)`` (decoder output conv x0.5), biases
    ``0.05*randn``, RMS gammas ``1 + 0.1*randn``. Keeps activations O(1) so decoded videos are
    neither flat nor saturated."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if key.endswith(".gamma"):
        return 1.0 + 0.1 * noise
    if key.endswith(".bias"):
        return 0.05 * noise
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    scale = 0.5 if key == "decoder.head.2.weight" else 1.0
    return noise * (scale / fan_in**0.5)


def save_random_wan22_vae(
    folder: str | os.PathLike,
    *,
    base_dim: int = 4,
    decoder_base_dim: int = 4,
    z_dim: int = 48,
    seed: int = 0,
) -> Path:
    """Write a tiny random ``Wan2.2_VAE.pth`` in the ORIGINAL key layout (architecture.md §11.3).

    A plain ``torch.save`` of an fp32 state dict, written atomically (temp file + rename) so a model
    memory-mapped from an older file is never truncated under it. Deterministic for ``seed``: tensors
    are drawn from ``torch.Generator().manual_seed(seed)`` in state-dict order.

    Args:
        folder: Output folder (created if needed).
        base_dim: Encoder base width (default 4: about 0.3 M parameters).
        decoder_base_dim: Decoder base width (default 4).
        z_dim: Latent channels; keep 48 for :class:`~magihuman.codecs.video_vae.VideoVAE`.
        seed: RNG seed.

    Returns:
        Path of the written ``Wan2.2_VAE.pth``.

    Raises:
        ValueError: If a width is not a positive integer.
    """
    shapes = official_wan22_key_shapes(base_dim, decoder_base_dim, z_dim)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {key: _random_tensor(key, shape, generator) for key, shape in shapes.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return write_atomic(folder / WAN22_CHECKPOINT_NAME, lambda tmp: _torch_save(state_dict, tmp))


# --------------------------------------------------------------------------------------------------
# Tiny random checkpoints in the SAO layout
# --------------------------------------------------------------------------------------------------


def sao_model_config(channels: int) -> dict:
    """A SAO-layout ``model_config.json`` with real strides/c_mults/latent dims and tiny widths."""
    shared = {"channels": channels, "c_mults": list(_SAO_C_MULTS), "strides": list(_SAO_STRIDES), "use_snake": True}
    return {
        "model_type": "diffusion_cond",
        "sample_size": 2097152,
        "sample_rate": OUTPUT_SAMPLE_RATE,
        "audio_channels": 2,
        "model": {
            "pretransform": {
                "type": "autoencoder",
                "iterate_batch": True,
                "config": {
                    "encoder": {
                        "type": "oobleck",
                        "config": {"in_channels": 2, **shared, "latent_dim": 2 * LATENT_CHANNELS},
                    },
                    "decoder": {
                        "type": "oobleck",
                        "config": {"out_channels": 2, **shared, "latent_dim": LATENT_CHANNELS, "final_tanh": False},
                    },
                    "bottleneck": {"type": "vae"},
                    "latent_dim": LATENT_CHANNELS,
                    "downsampling_ratio": HOP_LENGTH,
                    "io_channels": 2,
                },
            }
        },
    }


def _random_sao_tensor(key: str, shape: tuple[int, ...], output_conv: str, generator: torch.Generator) -> Tensor:
    """Init: ``weight_v`` randn, ``weight_g`` ``0.7*(1+0.1*randn)`` (halved for the decoder's output
    conv), bias ``0.05*randn``, Snake ``alpha``/``beta`` ``0.1*randn`` (log scale). Gives an audible,
    unclipped waveform."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if key.endswith(".weight_g"):
        return (0.35 if key.startswith(output_conv) else 0.7) * (1.0 + 0.1 * noise)
    if key.endswith(".bias"):
        return 0.05 * noise
    if key.endswith((".alpha", ".beta")):
        return 0.1 * noise
    return noise


def save_random_audio_vae(folder: str | os.PathLike, *, channels: int = 4, seed: int = 0) -> Path:
    """Write a tiny random SAO checkpoint in the ORIGINAL layout (architecture.md §11.5).

    ``model_config.json`` (full SAO structure; real strides, c_mults, latent dims 128/64 and the 2048
    hop; width ``channels``) and ``model.safetensors`` with the 365 ``pretransform.model.*`` float32
    tensors (weight-norm ``weight_g``/``weight_v``, Snake ``alpha``/``beta``) plus two unrelated
    stand-in tensors that a loader must ignore. Deterministic: tensors are drawn from
    ``torch.Generator().manual_seed(seed)`` in key order. Files are written atomically.

    Args:
        folder: Output folder (created if needed).
        channels: Base width (SAO 1.0 uses 128; default 4 gives about 0.2 M parameters).
        seed: RNG seed.

    Returns:
        The folder, loadable with :meth:`~magihuman.codecs.audio_vae.AudioVAE.from_official`.

    Raises:
        ValueError: If ``channels`` is not a positive integer.
    """
    from safetensors.torch import save_file

    if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    config = sao_model_config(channels)
    generator = torch.Generator().manual_seed(seed)
    shapes = official_sao_vae_key_shapes(config)
    output_conv = f"{SAO_VAE_PREFIX}decoder.layers.{len(_SAO_STRIDES) + 2}."  # the last WN conv (architecture.md §11.5)
    tensors = {k: _random_sao_tensor(k, s, output_conv, generator) for k, s in shapes.items()}
    tensors["model.model.stand_in_dit_weight"] = torch.randn(4, 4, generator=generator)
    tensors["conditioner.conditioners.prompt.stand_in_weight"] = torch.randn(4, generator=generator)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / SAO_CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
    write_atomic(folder / SAO_WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return folder


# --------------------------------------------------------------------------------------------------
# Tiny random checkpoints in the official layout
# --------------------------------------------------------------------------------------------------


def turbo_vaed_structure(channels: Sequence[int]) -> dict[str, Any]:
    """Official JSON with the shipped structure flags (architecture.md §11.4) and the given widths."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": len(WAN22_LATENT_MEAN),
        "decoder_block_out_channels": list(channels),
        "decoder_layers_per_block": [2, 2, 2, 3, 3],
        "decoder_spatio_temporal_scaling": [False, True, True, True],
        "decoder_spatio_only": [False, True, False, False],
        "decoder_is_dw_conv": [False] * 5,
        "decoder_dw_kernel_size": 3,
        "decoder_causal": False,
        "patch_size": 2,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-6,
        "scaling_factor": 1.0,
        "use_unpatchify": True,
        "first_chunk_size": 7,
        "step_size": 7,
        "spatial_compression_ratio": 16,
        "temporal_compression_ratio": 4,
    }


def save_random_turbo_vae(
    folder: str | os.PathLike, *, channels: Sequence[int] = (8, 8, 16, 16), seed: int = 0
) -> Path:
    """Write a tiny random Turbo-VAED in the official layout (architecture.md §11.4).

    Files: ``TurboV3-Wan22-TinyShallow_7_7.json`` (every key, shipped structure flags, widths
    ``channels``) and ``checkpoint-340000.ckpt`` = ``torch.save({"ema_state_dict":
    {"module.decoder.<name>": fp32 tensor}, "global_step": 0})``, both written atomically. Tensors are
    drawn from ``torch.Generator().manual_seed(seed)`` in state-dict order: conv weights
    ``randn / sqrt(fan_in)``, biases ``0.05 * randn`` (the golden case's rule; the decoded video has a
    standard deviation around 0.5, so uint8 frames are neither flat nor saturated).

    Args:
        folder: Output folder (created), e.g. ``ROOT/turbo_vae``.
        channels: Widths in encoder order (4 entries; the shipped model has 64, 128, 256, 512). The
            default (8, 8, 16, 16) is chosen for CPU speed, not size: float32 CPU convolutions with
            few channels fall back to PyTorch's slow native kernel, so it decodes faster than
            narrower widths such as (4, 8, 12, 16) (timings: docs/benchmarks.md).
        seed: RNG seed.

    Returns:
        ``folder`` as a :class:`~pathlib.Path` (loadable with
        :meth:`~magihuman.codecs.turbo_vae.TurboVAE.from_official`).

    Raises:
        ValueError: ``channels`` is not 4 positive integers.
    """
    config = TurboVAEDConfig.from_dict(turbo_vaed_structure(channels), source="random config")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in TurboVAEDecoder(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    ema = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        ema[f"module.{key}"] = 0.05 * noise if key.endswith(".bias") else noise / math.prod(shape[1:]) ** 0.5
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    write_atomic(folder / TURBO_VAED_CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_atomic(
        folder / TURBO_VAED_CHECKPOINT_NAME, lambda tmp: _torch_save({TURBO_VAED_EMA_KEY: ema, "global_step": 0}, tmp)
    )
    return folder
