"""T5Gemma 9B-9B UL2 text encoder wrapper (encoder half only).

Fact sheets: ``pipeline.md`` section 3 (text encoding), ``codecs.md`` section 5 (T5Gemma) and
pitfalls 17-19.

What the reference does, and what this module reproduces:

1. Tokenise ONE prompt with the checkpoint's own tokenizer and its defaults: ``<bos>`` prepended,
   no ``<eos>`` (unless the checkpoint's tokenizer says otherwise), no padding, no truncation.
   The attention mask is all ones.
2. Run the T5Gemma **encoder** (bf16 weights) and take ``last_hidden_state``, i.e. the output of
   the final encoder RMSNorm.
3. Cast bf16 -> **fp16** (``.half()``), keep the first ``TEXT_MAX_TOKENS`` (640) vectors (the cut
   happens *after* the whole prompt was encoded, so the kept vectors saw the whole prompt), then
   cast to fp32.

The reference zero-pads to 640 and passes ``original_len`` separately; the padding is sliced off
before the DiT anyway, so :meth:`TextEncoder.encode` returns the trimmed tensor and its length.

Attention soft-cap (codecs.md 5.3, pitfall 17): the reference ran transformers 4.56, whose default
T5Gemma attention was SDPA, and that path silently ignored the 50.0 attention-logit soft-cap.
transformers 5.x refuses SDPA for T5Gemma and its eager path *applies* the soft-cap. The default
here (``softcap=False``) reproduces the reference: the encoder config's ``attn_logit_softcapping``
is set to ``None`` and attention runs through a registered SDPA function
(:data:`NOCAP_ATTENTION`) that never soft-caps. ``softcap=True`` keeps the checkpoint's soft-cap
(transformers 5.x eager attention).

:func:`save_random_official` writes a tiny, deterministic, random-weight checkpoint in the
official layout (config, seq2seq safetensors, tokenizer) for tests and the offline demo.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from magihuman.codecs.wrapper import ModelWrapper

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "NOCAP_ATTENTION",
    "TEXT_MAX_TOKENS",
    "TextEncoder",
    "save_random_official",
]

#: Cap on the number of text tokens handed to the DiT (``t5_gemma_target_length``, pipeline.md 3).
TEXT_MAX_TOKENS = 640

#: Name under which the soft-cap-free SDPA attention is registered with transformers.
#: It must not contain "sdpa": transformers 5.x checks that substring against the model's
#: ``_supports_sdpa`` flag, which is False for T5Gemma.
NOCAP_ATTENTION = "magihuman_nocap_attention"

#: Subfolder name of the text encoder inside a checkpoint root (docs/design.md).
OFFICIAL_SUBFOLDER = "t5gemma-9b-9b-ul2"

#: Our own default negative prompt (not the reference's string): visual defects, then audio
#: defects, then speech-delivery defects, as one comma-separated English list.
DEFAULT_NEGATIVE_PROMPT = (
    # Visual defects.
    "overexposed, blown-out highlights, underexposed, harsh lighting, washed-out colors, "
    "oversaturated colors, blurry, out of focus, motion blur, grainy, noisy image, "
    "low resolution, low quality, worst quality, compression artifacts, pixelated, "
    "subtitles, captions, on-screen text, text overlay, watermark, logo, "
    "deformed hands, extra fingers, missing fingers, fused fingers, malformed limbs, "
    "deformed face, distorted facial features, asymmetric eyes, crooked teeth, "
    "lip movement out of sync with the voice, frozen frame, static picture, still image, "
    "no motion, jerky motion, flickering, cluttered background, messy background, "
    "crowded background, distracting objects, "
    # Audio defects.
    "background noise, static, hiss, hum, crackling, clipping, distorted audio, echo, "
    "heavy reverb, muffled sound, tinny sound, thin audio, low bitrate audio, "
    "background music, unrelated sound effects, sudden loud sounds, silence gaps, "
    # Speech-delivery defects.
    "monotone delivery, flat intonation, robotic voice, text-to-speech sound, "
    "synthetic voice, stuttering, mumbling, slurred words, unclear pronunciation, "
    "unnatural pauses, rushed speech, extra speakers, overlapping voices, off-key singing, "
    "wrong emotion"
)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_EXPECTED = "a local snapshot of google/t5gemma-9b-9b-ul2 (run `magihuman download` to fetch it)"


# ----------------------------------------------------------------------------------------------
# Soft-cap-free attention (reproduces transformers 4.56 sdpa, codecs.md 5.3)
# ----------------------------------------------------------------------------------------------


def _nocap_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Scaled-dot-product attention that drops the ``softcap`` argument.

    This is what transformers 4.56's ``sdpa`` path did for T5Gemma: it accepted ``softcap`` in
    ``**kwargs`` and never used it, so attention was ``softmax(q k^T * scaling + mask) v``.

    Args:
        module: The calling attention module (provides ``num_key_value_groups``, ``is_causal``).
        query: ``[B, H_q, L, D]``.
        key: ``[B, H_kv, S, D]``.
        value: ``[B, H_kv, S, D]``.
        attention_mask: Boolean/additive mask ``[B, 1, L, S]`` or ``None`` (no masking).
        **kwargs: ``scaling``, ``dropout``, ``sliding_window``, ``softcap`` (ignored), ...

    Returns:
        ``(attn_output [B, L, H_q, D], None)``, in the dtype of ``query``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("softcap", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_nocap_attention() -> str:
    """Register :data:`NOCAP_ATTENTION` (attention function and SDPA-style masks); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NOCAP_ATTENTION, _nocap_sdpa_attention)
    AttentionMaskInterface.register(NOCAP_ATTENTION, sdpa_mask)
    return NOCAP_ATTENTION


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report / progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------
# Checkpoint folder validation
# ----------------------------------------------------------------------------------------------


def _describe_folder(folder: Path, limit: int = 12) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "(unreadable)"
    if not names:
        return "(empty folder)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _resolve_official_folder(path: str | Path) -> tuple[Path, dict]:
    """Check that ``path`` is a T5Gemma seq2seq snapshot; return the folder and its config dict.

    Accepts the model folder itself or a checkpoint root holding ``t5gemma-9b-9b-ul2/``.

    Raises:
        FileNotFoundError: The folder, its ``config.json``, weights, shards or tokenizer are missing.
        ValueError: ``path`` is a file, ``config.json`` is unreadable, or it is not a T5Gemma config.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"Text encoder folder {str(folder)!r} does not exist; expected {_EXPECTED}.")
    if not folder.is_dir():
        raise ValueError(
            f"Text encoder path {str(folder)!r} is a file; pass the folder that holds config.json, "
            f"the *.safetensors weights and the tokenizer files ({_EXPECTED})."
        )
    if not (folder / "config.json").is_file() and (folder / OFFICIAL_SUBFOLDER / "config.json").is_file():
        folder = folder / OFFICIAL_SUBFOLDER
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No config.json in text encoder folder {str(folder)!r} (found: {_describe_folder(folder)}); "
            f"expected {_EXPECTED}, with config.json, model*.safetensors and tokenizer files, "
            f"or a checkpoint root containing {OFFICIAL_SUBFOLDER}/."
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Cannot read {str(config_file)!r} as JSON ({exc}); re-download the text encoder.") from exc
    if not isinstance(config, dict):
        config = {"model_type": None, "note": "config.json is not a JSON object"}
    model_type = config.get("model_type")
    if model_type != "t5gemma" or not isinstance(config.get("encoder"), dict):
        raise ValueError(
            f"{str(config_file)!r} is not a T5Gemma encoder-decoder config: found model_type={model_type!r}, "
            f"architectures={config.get('architectures')!r}, encoder sub-config "
            f"{'present' if isinstance(config.get('encoder'), dict) else 'missing'}; expected "
            f"model_type='t5gemma' with 'encoder'/'decoder' sub-configs ({_EXPECTED})."
        )
    weights = [name for name in _WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise FileNotFoundError(
            f"No weights in text encoder folder {str(folder)!r} (found: {_describe_folder(folder)}); expected "
            f"model.safetensors or model.safetensors.index.json with its model-XXXXX-of-YYYYY.safetensors shards."
        )
    if weights[0].endswith(".index.json"):
        index_file = folder / weights[0]
        try:
            shards = sorted(set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"Cannot read the weight map of {str(index_file)!r} ({exc}); re-download it.") from exc
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(
                f"Text encoder folder {str(folder)!r} lacks {len(missing)} of {len(shards)} weight shards listed in "
                f"{index_file.name}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                f"the download looks incomplete, re-run `magihuman download`."
            )
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"No tokenizer files in text encoder folder {str(folder)!r} (found: {_describe_folder(folder)}); "
            f"expected one of {', '.join(_TOKENIZER_FILES)}."
        )
    return folder, config


# ----------------------------------------------------------------------------------------------
# TextEncoder
# ----------------------------------------------------------------------------------------------


class TextEncoder(ModelWrapper):
    """Encoder half of T5Gemma plus its tokenizer; turns one prompt into DiT text tokens.

    Fact sheet: pipeline.md 3, codecs.md 5.1-5.3, pitfalls 17-19.

    Usually built with :meth:`from_official`. The wrapped objects stay reachable as
    :attr:`model` (a ``transformers.T5GemmaEncoderModel`` in eval mode) and :attr:`tokenizer`.

    Args:
        model: A ``T5GemmaEncoderModel`` (or any module whose forward takes ``input_ids`` and
            ``attention_mask`` and returns an object with ``last_hidden_state [1, L, C]``).
        tokenizer: The matching tokenizer (callable on a list of strings, ``return_tensors="pt"``).
        max_tokens: Cap on the returned sequence length (default :data:`TEXT_MAX_TOKENS`).

    Raises:
        ValueError: ``max_tokens`` is not a positive integer.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, max_tokens: int = TEXT_MAX_TOKENS) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_official(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        softcap: bool = False,
    ) -> TextEncoder:
        """Load the encoder half of a local ``google/t5gemma-9b-9b-ul2`` snapshot, fully offline.

        Loads ``AutoTokenizer.from_pretrained(path)`` and
        ``T5GemmaEncoderModel.from_pretrained(path, dtype=dtype)`` with the config override
        ``is_encoder_decoder=False`` (codecs.md 5.1-5.2). The checkpoint's ``model.encoder.*``
        tensors load into ``encoder.*``; ``model.decoder.*`` (and ``lm_head``) are skipped.
        Nothing is fetched from the network (``local_files_only=True``).

        Args:
            path: Folder holding ``config.json`` (``T5GemmaConfig`` with ``encoder``/``decoder``
                sub-configs), ``model.safetensors`` or a sharded ``model.safetensors.index.json``,
                and the tokenizer files. A checkpoint root containing ``t5gemma-9b-9b-ul2/`` is
                also accepted.
            device: Where the encoder runs (``"cpu"``, ``"cuda"``, ``torch.device``).
            dtype: Weight/activation dtype; the reference uses ``torch.bfloat16``.
            softcap: ``False`` (default) runs attention WITHOUT the 50.0 logit soft-cap, as the
                reference did (transformers 4.56 sdpa ignored it, codecs.md 5.3): the encoder
                config's ``attn_logit_softcapping`` is set to ``None`` and attention uses the
                registered SDPA function :data:`NOCAP_ATTENTION`. ``True`` keeps the checkpoint's
                soft-cap with transformers' eager attention.

        Returns:
            A :class:`TextEncoder` on ``device`` with weights in ``dtype``.

        Raises:
            FileNotFoundError: The folder, ``config.json``, the weights (or some shards) or the
                tokenizer files are missing.
            ValueError: The folder is not a T5Gemma encoder-decoder checkpoint, ``dtype`` is not a
                floating dtype, ``device`` is not a device name, encoder weights are missing from
                the files, or tensor shapes do not match the config.
        """
        from transformers import AutoTokenizer, T5GemmaConfig, T5GemmaEncoderModel

        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}.")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}.") from exc
        folder, _ = _resolve_official_folder(path)

        with _quiet_transformers():
            config = T5GemmaConfig.from_pretrained(folder, local_files_only=True)
            # Encoder-only override (codecs.md 5.1): T5GemmaEncoderModel refuses a seq2seq config.
            config.is_encoder_decoder = False
            if softcap:
                attn_implementation = "eager"
            else:
                config.encoder.attn_logit_softcapping = None
                attn_implementation = _register_nocap_attention()
            try:
                model, info = T5GemmaEncoderModel.from_pretrained(
                    folder,
                    config=config,
                    dtype=dtype,
                    attn_implementation=attn_implementation,
                    local_files_only=True,
                    output_loading_info=True,
                )
            except RuntimeError as exc:
                if "size mismatch" in str(exc) or "mismatched" in str(exc):
                    raise ValueError(
                        f"Text encoder weights in {str(folder)!r} do not match its config.json ({exc}); "
                        f"the files come from different models, re-download {OFFICIAL_SUBFOLDER}."
                    ) from exc
                raise
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ValueError(
                f"Text encoder checkpoint {str(folder)!r} lacks {len(missing)} encoder tensors, e.g. "
                f"{', '.join(missing[:4])}; expected 'model.encoder.*' keys of a T5Gemma checkpoint."
            )
        mismatched = info.get("mismatched_keys") or []
        if mismatched:
            raise ValueError(
                f"Text encoder checkpoint {str(folder)!r} has {len(mismatched)} tensors whose shapes do not "
                f"match config.json, e.g. {list(mismatched)[:2]}; re-download {OFFICIAL_SUBFOLDER}."
            )
        skipped = [k for k in info.get("unexpected_keys") or [] if not k.startswith(("model.decoder.", "lm_head."))]
        if skipped:
            logger.warning(
                "Text encoder checkpoint %s has %d unexpected non-decoder tensors (ignored), e.g. %s",
                folder,
                len(skipped),
                ", ".join(sorted(skipped)[:4]),
            )
        model = model.to(device)
        return cls(model, tokenizer)

    # -- properties -----------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        """Width ``C`` of the returned vectors (3584 for the real T5Gemma 9B encoder)."""
        config = self.model.config
        encoder_config = getattr(config, "encoder", None)
        return int(encoder_config.hidden_size if encoder_config is not None else config.hidden_size)

    @property
    def softcap(self) -> float | None:
        """Attention-logit soft-cap in effect, or ``None`` when attention runs uncapped."""
        config = self.model.config
        encoder_config = getattr(config, "encoder", config)
        if getattr(encoder_config, "_attn_implementation", None) == NOCAP_ATTENTION:
            return None
        return getattr(encoder_config, "attn_logit_softcapping", None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hidden_size={self.hidden_size}, device={self.device}, dtype={self.dtype}, "
            f"softcap={self.softcap}, max_tokens={self.max_tokens})"
        )

    # -- tokenisation and encoding -------------------------------------------------------------

    def _tokenize(self, prompt: str) -> torch.Tensor:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}.")
        ids = self.tokenizer([prompt], return_tensors="pt")["input_ids"]
        return ids

    def token_count(self, prompt: str) -> int:
        """Number of tokens the encoder sees for ``prompt`` (special tokens such as ``<bos>`` included).

        Not capped at :attr:`max_tokens`; use it to warn about very short or over-long prompts.

        Args:
            prompt: Any text (an empty string gives the number of special tokens, normally 1).

        Returns:
            The raw token count ``L_raw``.

        Raises:
            TypeError: ``prompt`` is not a ``str``.
        """
        return int(self._tokenize(prompt).shape[1])

    @torch.no_grad()
    def encode(self, prompt: str) -> tuple[torch.Tensor, int]:
        """Encode one prompt into DiT text tokens (pipeline.md 3, pitfall 18).

        Steps: tokenise with defaults (``<bos>`` prepended, no padding, no truncation), all-ones
        attention mask, run the encoder on the whole prompt, take ``last_hidden_state``, cast to
        float16, keep the first :attr:`max_tokens` (640) vectors, cast to float32.

        Args:
            prompt: The prompt text; must contain a non-whitespace character.

        Returns:
            ``(embeds, length)``: ``embeds`` is ``[1, L, hidden_size]`` float32 on :attr:`device`,
            every value exactly representable in float16; ``length == L == min(L_raw, 640)``.

        Raises:
            TypeError: ``prompt`` is not a ``str``.
            ValueError: ``prompt`` is empty or whitespace only.
        """
        if isinstance(prompt, str) and not prompt.strip():
            raise ValueError(
                "Prompt is empty or whitespace only; pass some text (for the unconditional branch use "
                "DEFAULT_NEGATIVE_PROMPT or your own negative prompt)."
            )
        input_ids = self._tokenize(prompt).to(self.device)
        attention_mask = torch.ones_like(input_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.half()
        if not torch.isfinite(hidden).all():
            logger.warning(
                "Text embedding overflowed float16 (|x| > 65504) for a %d-token prompt; the reference casts "
                "to float16 too, so the non-finite values are kept.",
                input_ids.shape[1],
            )
        embeds = hidden[:, : self.max_tokens].float()
        return embeds, int(embeds.shape[1])


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


def _build_demo_tokenizer(vocab_size: int):
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
    words = list(dict.fromkeys(_DEMO_CORPUS.split() + DEFAULT_NEGATIVE_PROMPT.replace(",", " ").split()))
    for word in words:
        piece = "\u2581"
        for char in word:
            if len(vocab) >= vocab_size:
                break
            if piece + char not in vocab:
                vocab[piece + char] = len(vocab)
                merges.append((piece, char))
            piece = piece + char
    unused = 0
    while len(vocab) < vocab_size:
        vocab[f"<unused{unused}>"] = len(vocab)
        unused += 1
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)


def save_random_official(
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
) -> Path:
    """Write a tiny random T5Gemma seq2seq checkpoint in the official layout; return ``folder``.

    Layout (as ``google/t5gemma-9b-9b-ul2``): ``config.json`` (``T5GemmaConfig`` with encoder and
    decoder ``T5GemmaModuleConfig`` sub-configs of the same size), ``model.safetensors`` with
    ``model.encoder.*`` and ``model.decoder.*`` tensors (float32, tied ``lm_head`` omitted) and the
    tokenizer files (``tokenizer.json``, ``tokenizer_config.json``). :meth:`TextEncoder.from_official`
    loads it offline. Same arguments -> byte-identical tensors -> identical embeddings.

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

    Returns:
        ``Path(folder)``.

    Raises:
        ValueError: A size is not a positive int, ``num_heads`` is not a multiple of
            ``num_kv_heads``, or ``vocab_size`` is below 356.
    """
    from safetensors.torch import save_file
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration
    from transformers.models.t5gemma import T5GemmaModuleConfig

    sizes = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate_size,
        "vocab_size": vocab_size,
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads}).")
    if vocab_size < _MIN_VOCAB:
        raise ValueError(
            f"vocab_size must be at least {_MIN_VOCAB} (5 special tokens + 256 byte-fallback tokens + 95 "
            f"characters), got {vocab_size}."
        )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

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
    with _quiet_transformers(), torch.device("meta"):
        # Meta device: only names and shapes are needed, no memory and no global-RNG use.
        skeleton = T5GemmaForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(int(seed))
    state: dict[str, torch.Tensor] = {}
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
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with _quiet_transformers():
        config.save_pretrained(folder)
        _build_demo_tokenizer(vocab_size).save_pretrained(folder)
    return folder
