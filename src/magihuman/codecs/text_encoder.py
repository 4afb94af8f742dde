"""T5Gemma 9B-9B UL2 text encoder wrapper (encoder half only).

Reference: architecture.md §11.2 (the T5Gemma text encoder) and §3.1 (text tokens).

What the reference does, and what this module reproduces:

1. Tokenise ONE prompt with the checkpoint's own tokenizer and its defaults: ``<bos>`` prepended,
   no ``<eos>`` (unless the checkpoint's tokenizer says otherwise), no padding, no truncation.
   The attention mask is all ones.
2. Run the T5Gemma **encoder** (bf16 weights) and take ``last_hidden_state``, i.e. the output of
   the final encoder RMSNorm.
3. Cast bf16 -> **fp16** (``.half()``), keep the first ``TEXT_MAX_TOKENS`` (640) vectors, then cast
   to fp32.

One deliberate difference (architecture.md §11.2): the reference encodes *all* tokens and keeps
the first 640 states, so those states saw the whole prompt. Here the token ids are cut to the first
640 **before** encoding, so the encoder's memory and time stay bounded for any prompt length (a
100,000-character prompt would otherwise run a ~25k-token sequence through a 9 B encoder). Prompts
of at most 640 tokens (every normal prompt) are encoded bit-identically to the reference; for longer
ones the kept states differ because they no longer attend to the dropped tail.

The reference zero-pads to 640 and passes ``original_len`` separately; the padding is sliced off
before the DiT anyway, so :meth:`TextEncoder.encode` returns the trimmed tensor and its length.

Attention soft-cap (architecture.md §11.2): the reference ran transformers 4.56, whose default
T5Gemma attention was SDPA, and that path silently ignored the 50.0 attention-logit soft-cap.
transformers 5.x refuses SDPA for T5Gemma and its eager path *applies* the soft-cap. The default
here (``softcap=False``) reproduces the reference: the encoder config's ``attn_logit_softcapping``
is set to ``None`` and attention runs through a registered SDPA function
(:data:`NOCAP_ATTENTION`) that never soft-caps. ``softcap=True`` keeps the checkpoint's soft-cap
(transformers 5.x eager attention).

The snapshot folder checks, :func:`load_tokenizer` and :func:`count_prompt_tokens` (the tokenizer
alone, for the input boundary) live in :mod:`magihuman.codecs.t5gemma_snapshot` and are re-exported
here. A tiny random checkpoint in the official layout is written by
:func:`magihuman.demo.random_codecs.save_random_text_encoder` (tests, demo bundle).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from magihuman.codecs.t5gemma_snapshot import (
    OFFICIAL_SUBFOLDER,
    count_prompt_tokens,
    load_tokenizer,
    quiet_transformers,
    raise_if_weights_damaged,
    resolve_t5gemma_folder,
)
from magihuman.codecs.wrapper import ModelWrapper

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "NOCAP_ATTENTION",
    "OFFICIAL_SUBFOLDER",
    "TEXT_MAX_TOKENS",
    "TextEncoder",
    "count_prompt_tokens",
    "load_tokenizer",
    "quiet_transformers",
]

#: Cap on the number of text tokens handed to the DiT (``t5_gemma_target_length``, architecture.md §11.2).
TEXT_MAX_TOKENS = 640

#: Name under which the soft-cap-free SDPA attention is registered with transformers.
#: It must not contain "sdpa": transformers 5.x checks that substring against the model's
#: ``_supports_sdpa`` flag, which is False for T5Gemma.
NOCAP_ATTENTION = "magihuman_nocap_attention"

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

# ----------------------------------------------------------------------------------------------
# Soft-cap-free attention (reproduces transformers 4.56 sdpa, architecture.md §11.2)
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


# ----------------------------------------------------------------------------------------------
# TextEncoder
# ----------------------------------------------------------------------------------------------


class TextEncoder(ModelWrapper):
    """Encoder half of T5Gemma plus its tokenizer; turns one prompt into DiT text tokens.

    Reference: architecture.md §11.2.

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
        ``is_encoder_decoder=False`` (architecture.md §11.2). The checkpoint's ``model.encoder.*``
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
                reference did (transformers 4.56 sdpa ignored it, architecture.md §11.2): the encoder
                config's ``attn_logit_softcapping`` is set to ``None`` and attention uses the
                registered SDPA function :data:`NOCAP_ATTENTION`. ``True`` keeps the checkpoint's
                soft-cap with transformers' eager attention.

        Returns:
            A :class:`TextEncoder` on ``device`` with weights in ``dtype``.

        Raises:
            FileNotFoundError: The folder, ``config.json``, the weights (or some shards) or the
                tokenizer files are missing.
            CheckpointError: (a ``ValueError``) ``config.json``, the weight index, a safetensors file
                or a tokenizer file is damaged (empty, truncated, a text file); the message names the
                file, says what it is and to re-download it.
            ValueError: The folder is not a T5Gemma encoder-decoder checkpoint, ``dtype`` is not a
                floating dtype, ``device`` is not a device name, encoder weights are missing from
                the files, or tensor shapes do not match the config.
        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}.")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}.") from exc
        folder, _ = resolve_t5gemma_folder(path)
        model, info = _load_encoder(folder, dtype, softcap)
        tokenizer = load_tokenizer(folder)
        _check_loading_info(folder, info)
        return cls(model.to(device), tokenizer)

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

        Not capped at :attr:`max_tokens`; use it to warn about very short or over-long prompts. Same as
        :func:`count_prompt_tokens` with this encoder's tokenizer.

        Args:
            prompt: Any text (an empty string gives the number of special tokens, normally 1).

        Returns:
            The raw token count ``L_raw``.

        Raises:
            TypeError: ``prompt`` is not a ``str``.
        """
        return count_prompt_tokens(self.tokenizer, prompt)

    @torch.no_grad()
    def encode(self, prompt: str) -> tuple[torch.Tensor, int]:
        """Encode one prompt into DiT text tokens (architecture.md §11.2).

        Steps: tokenise with defaults (``<bos>`` prepended, no padding), keep the first
        :attr:`max_tokens` (640) token ids, all-ones attention mask, run the encoder, take
        ``last_hidden_state``, cast to float16, cast to float32.

        The reference instead encodes every token and keeps the first 640 *states* (architecture.md §11.2).
        Cutting the ids first bounds the encoder's memory and time for any prompt length; a prompt of
        at most 640 tokens gives bit-identical output either way, while for a longer one the kept
        states no longer attend to the dropped tail (see the module docstring).

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
        raw_ids = self._tokenize(prompt)
        input_ids = raw_ids[:, : self.max_tokens].to(self.device)
        if raw_ids.shape[1] > self.max_tokens:
            logger.warning(
                "Prompt has %d tokens; only the first %d are encoded (the rest is dropped).",
                raw_ids.shape[1],
                self.max_tokens,
            )
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
# Loading helpers
# ----------------------------------------------------------------------------------------------


def _load_encoder(folder: Path, dtype: torch.dtype, softcap: bool):
    """``T5GemmaEncoderModel.from_pretrained`` with the encoder-only override; returns ``(model, info)``."""
    from safetensors import SafetensorError
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    with quiet_transformers():
        config = T5GemmaConfig.from_pretrained(folder, local_files_only=True)
        # Encoder-only override (architecture.md §11.2): T5GemmaEncoderModel refuses a seq2seq config.
        config.is_encoder_decoder = False
        if softcap:
            attn_implementation = "eager"
        else:
            config.encoder.attn_logit_softcapping = None
            attn_implementation = _register_nocap_attention()
        try:
            return T5GemmaEncoderModel.from_pretrained(
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
            raise_if_weights_damaged(folder, exc)
            raise
        except (SafetensorError, OSError) as exc:
            raise_if_weights_damaged(folder, exc)
            raise


def _check_loading_info(folder: Path, info: dict) -> None:
    """Refuse missing or mis-shaped encoder tensors; warn about unexpected non-decoder ones."""
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
