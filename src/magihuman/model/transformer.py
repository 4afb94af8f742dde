"""The daVinci-MagiHuman single-stream diffusion transformer (architecture.md §2-§5).

Read next to architecture.md §2-§5:

1. ``adapter``: three float32 linear embedders (video 192, audio 64, text 3584 -> hidden) and the
   Fourier position table (architecture.md §4.2, §3.3).
2. ``block.layers``: 40 pre-norm layers over the joint ``[video | audio | text]`` sequence
   (architecture.md §4). Layers in ``mm_layers`` ("sandwich") hold three experts (video, audio, text) for
   every norm and linear; the others share one. Attention has q/k RMS norms, RoPE, GQA and a
   per-head sigmoid gate; the MLP is gelu7 (``gelu7_layers``) or interleaved swiglu7.
3. ``final_norm_*`` / ``final_linear_*``: float32 output heads for video and audio (architecture.md §4.5).

Numerics (architecture.md §5.1): the residual stream is float32; every block GEMM takes bf16 inputs
and bf16 weights and produces a bf16 result that is widened to float32; norms, RoPE, the gate and
the activation run in float32. The model has no timestep input: it maps noisy latents (and the
text) to the flow-matching velocity ``eps - x0``.

Parameter names equal the official checkpoint keys, so loading needs no rename table (architecture.md §2.3).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from magihuman.model.attention import AttentionBackend, get_attention_backend, ragged_attention
from magihuman.model.layers import Adapter, Block, ExpertRMSNorm, TransformerLayer, split_groups
from magihuman.model.packing import (
    CoordsStyle,
    LocalWindow,
    TokenLayout,
    build_coords,
    depatchify_video,
    patchify_video,
    token_layout,
)
from magihuman.model.rope import FourierTable
from magihuman.model.sequence_parallel import SequenceParallel

#: The 15B layout (architecture.md §2.1).
OFFICIAL_MM_LAYERS = (0, 1, 2, 3, 36, 37, 38, 39)
OFFICIAL_GELU7_LAYERS = (0, 1, 2, 3)


def sr1080_local_attn_layers(num_layers: int) -> tuple[int, ...]:
    """The 1080p SR recipe's local layers for a model of ``num_layers``: every layer except 3, 7, ..., 31.

    For the 40-layer model this is architecture.md §2.2's set of 32 layers; smaller test models get the same rule.
    """
    return tuple(i for i in range(num_layers) if not (i % 4 == 3 and i < 32))


#: The 1080p SR recipe's local-attention layers of the 40-layer model (architecture.md §2.2).
SR1080_LOCAL_ATTN_LAYERS = sr1080_local_attn_layers(40)
#: Keys of the block linears, which are stored and computed in bf16 (architecture.md §2.3).
BLOCK_LINEAR_SUFFIXES = ("linear_qkv.weight", "linear_proj.weight", "up_gate_proj.weight", "down_proj.weight")


class MagiHumanTransformer(ModelMixin, ConfigMixin):
    """The daVinci-MagiHuman DiT. ``MagiHumanTransformer()`` is the published 15B configuration.

    Config fields keep the official names (architecture.md §2.1). The state dict has exactly the official
    keys, shapes and dtypes: 331 entries for the 15B config, block linears bf16, everything else
    float32 (architecture.md §2.3).

    Args:
        num_layers: transformer layers (40).
        hidden_size: residual width (5120).
        head_dim: per-head width (128); query heads = hidden_size // head_dim.
        num_query_groups: K/V heads for GQA (8).
        video_in_channels: patchified video token width (192 = 48 x 1 x 2 x 2).
        audio_in_channels: audio latent channels (64).
        text_in_channels: text encoder width (3584).
        mm_layers: layers with per-modality experts (sandwich).
        gelu7_layers: layers with the gelu7 MLP; the others use swiglu7.
        local_attn_layers: layers with the +-frame_receptive_field local window (1080p SR only).
        enable_attn_gating: per-head sigmoid gates (True).
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False
    _no_split_modules = ["TransformerLayer"]
    _repeated_blocks = ["TransformerLayer"]
    _keep_in_fp32_modules = ["adapter", "final_norm_video", "final_norm_audio", "final_linear_video",
                             "final_linear_audio", "pre_norm", "q_norm", "k_norm"]
    _skip_layerwise_casting_patterns = ["adapter", "norm", "final_linear"]

    @register_to_config
    def __init__(
        self,
        num_layers: int = 40,
        hidden_size: int = 5120,
        head_dim: int = 128,
        num_query_groups: int = 8,
        video_in_channels: int = 192,
        audio_in_channels: int = 64,
        text_in_channels: int = 3584,
        mm_layers: Sequence[int] = OFFICIAL_MM_LAYERS,
        gelu7_layers: Sequence[int] = OFFICIAL_GELU7_LAYERS,
        local_attn_layers: Sequence[int] = (),
        enable_attn_gating: bool = True,
    ):
        super().__init__()
        _check_config(num_layers, hidden_size, head_dim, num_query_groups, video_in_channels,
                      mm_layers, gelu7_layers, local_attn_layers)
        # 1. embedders and position table
        self.adapter = Adapter(hidden_size, head_dim, video_in_channels, audio_in_channels, text_in_channels)
        # 2. layers
        self.block = Block(
            TransformerLayer(
                hidden_size, head_dim, num_query_groups,
                experts=3 if i in mm_layers else 1, gelu7_layer=i in gelu7_layers,
                local=i in local_attn_layers, gating=enable_attn_gating,
            )
            for i in range(num_layers)
        )
        # 3. output heads
        self.final_norm_video = ExpertRMSNorm(hidden_size, 1)
        self.final_norm_audio = ExpertRMSNorm(hidden_size, 1)
        self.final_linear_video = nn.Linear(hidden_size, video_in_channels, bias=False)
        self.final_linear_audio = nn.Linear(hidden_size, audio_in_channels, bias=False)
        self._attention: AttentionBackend = get_attention_backend("sdpa")
        self._sequence_parallel: SequenceParallel | None = None

    # ----------------------------------------------------------------------------------- runtime
    def set_attention_backend(self, backend: str | AttentionBackend) -> None:
        """Choose the attention kernel: a registered name (``"sdpa"``, ``"flex"``, ``"math"``) or a callable
        ``(q [B,Hq,N,D], k, v [B,Hkv,N,D], window: LocalWindow | None) -> [B,Hq,N,D]`` (see ``attention.py``)."""
        self._attention = get_attention_backend(backend) if isinstance(backend, str) else backend

    def enable_sequence_parallel(self, sp: SequenceParallel | None) -> None:
        """Split each forward's token sequence across the ranks of ``sp`` (Ulysses, architecture.md §6.4); None disables.

        Every rank then calls ``forward`` with the same full inputs and gets the same full outputs; each
        runs the layers on its contiguous chunk of tokens, with two all-to-alls around every attention
        call (see :mod:`magihuman.model.sequence_parallel`).

        Raises:
            ValueError: if ``sp.world_size`` does not divide the query heads and the K/V heads.
        """
        if sp is not None:
            sp.check_heads(self.num_heads, self.config.num_query_groups)
        self._sequence_parallel = sp

    @property
    def sequence_parallel(self) -> SequenceParallel | None:
        """The sequence-parallel group set by :meth:`enable_sequence_parallel`, or None."""
        return self._sequence_parallel

    @property
    def num_heads(self) -> int:
        """Query heads = hidden_size // head_dim (40 for 15B; architecture.md §2.1 ``num_heads_q``)."""
        return self.config.hidden_size // self.config.head_dim

    @property
    def latent_channels(self) -> int:
        """Video latent channels C with ``video_in_channels = C * 4`` (48)."""
        return self.config.video_in_channels // 4

    # ----------------------------------------------------------------------------------- forward
    def forward(
        self,
        video_latent: torch.Tensor,
        audio_latent: torch.Tensor,
        text_embeds: torch.Tensor,
        *,
        coords_style: CoordsStyle = "v2",
        frame_receptive_field: int = 11,
        text_lengths: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict flow-matching velocities ``eps - x0`` for the video and audio latents.

        Args:
            video_latent: ``[B, 48, T, h, w]`` float32 noisy video latent (normalised Wan2.2 space);
                h and w even.
            audio_latent: ``[B, A, 64]`` float32 noisy audio latent, time-major.
            text_embeds: ``[B, Nt, C_text]`` float32 text encoder states, already trimmed to the true
                length (padding tokens are dropped, never masked: architecture.md §3.1, §6.3), or, with
                ``text_lengths``, each sample's true states followed by padding rows.
            coords_style: ``"v2"`` for base/distill, ``"v1"`` for the super-resolution model (architecture.md §3.2).
            frame_receptive_field: half-width in latent frames of the local-attention window, used only
                by ``local_attn_layers`` (architecture.md §6.2); ``-1`` makes those layers global.
            text_lengths: the true text length of each sample (``1 <= L <= Nt``), for a batch of
                samples whose prompts differ in length (batched CFG: the prompt and the negative
                prompt in one call, see :func:`~magihuman.model.packing.pad_text_batch`). Each sample then gets
                its own coordinates (its true Nt, architecture.md §3.2) and attends over its own real tokens
                only (:class:`~magihuman.model.attention.RaggedAttention`), so every sample's velocities equal
                those of a forward with its trimmed text alone; padding rows affect nothing. None: every
                sample uses all ``Nt`` rows.

        Returns:
            ``(video_velocity [B, 48, T, h, w], audio_velocity [B, A, 64])``, float32.

        Raises:
            ValueError: for shapes that do not match the config, unequal batch sizes, an unknown
                coords style, v1 coordinates with a single text token (architecture.md §3.3), or ``text_lengths``
                that are not B integers in ``1..Nt``. With sequence
                parallelism these are raised on every rank before any communication.
        """
        self._check_inputs(video_latent, audio_latent, text_embeds)
        layout = token_layout(video_latent, audio_latent, text_embeds)
        lengths = self._text_lengths(text_lengths, layout, video_latent.shape[0])
        device = video_latent.device
        # 1. positions: coordinates -> Fourier table (shared by every layer and head; one per sample
        #    when the samples' text lengths differ).
        rope = self._rope_table(layout, coords_style, lengths, device)
        local_mask = self._local_window(layout, frame_receptive_field)
        tokens = (patchify_video(video_latent), audio_latent, text_embeds)
        groups, attend = layout.groups, self._attention
        if lengths is not None:  # each sample attends over its own real tokens only
            attend = ragged_attention(attend, tuple(layout.total_tokens - layout.text_tokens + n for n in lengths))
        sp = self._sequence_parallel
        if sp is not None:
            # architecture.md §6.4 dispatch: keep this rank's contiguous rows (tokens, RoPE rows, the chunk's own
            # modality group sizes); attention gets the full sequence through two all-to-alls.
            chunk = sp.chunk(layout, video_latent.shape[0], device)
            tokens, rope, groups = chunk.take_groups(tokens), chunk.take(rope, dim=rope.ndim - 2), chunk.groups
            attend = sp.wrap_attention(attend, chunk)
        # 2. tokens -> float32 residual stream [B, N, hidden] (this rank's [B, n_k, hidden] with sp).
        x = self.adapter(*tokens)
        # 3. layers.
        for layer in self.block.layers:
            x = layer(x, rope, groups, attend, local_mask)
        # 4. output heads (text rows produce nothing, architecture.md §4.5).
        x_video, x_audio, _ = split_groups(x, groups)
        video_tokens = self.final_linear_video(self.final_norm_video(x_video, groups))
        audio_velocity = self.final_linear_audio(self.final_norm_audio(x_audio, groups))
        if sp is not None:  # architecture.md §6.4 undispatch: every rank gets every row
            video_tokens, audio_velocity = sp.undispatch(chunk, video_tokens, audio_velocity)
        return depatchify_video(video_tokens, layout), audio_velocity

    def _text_lengths(self, text_lengths, layout: TokenLayout, batch: int) -> tuple[int, ...] | None:
        """Validated ``text_lengths``; None when absent or when every sample uses all ``Nt`` rows."""
        if text_lengths is None:
            return None
        lengths = tuple(text_lengths)
        if len(lengths) != batch or not all(
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= layout.text_tokens for n in lengths
        ):
            raise ValueError(
                f"text_lengths must be {batch} integers in 1..{layout.text_tokens} (one per sample, at most the "
                f"padded text length), got {text_lengths!r}"
            )
        return None if all(n == layout.text_tokens for n in lengths) else lengths

    def _rope_table(self, layout: TokenLayout, style: CoordsStyle, lengths, device) -> torch.Tensor:
        """``[N, 6B]``, or ``[B, N, 6B]`` with each sample's table from its true text length (rows past
        it zero: padding rows are never attended)."""
        if lengths is None:
            return self.adapter.rope(build_coords(layout, style, device=device))
        tables = []
        for n in lengths:
            table = self.adapter.rope(build_coords(dataclasses.replace(layout, text_tokens=n), style, device=device))
            tables.append(F.pad(table, (0, 0, 0, layout.text_tokens - n)))
        return torch.stack(tables)

    def _local_window(self, layout: TokenLayout, frame_receptive_field: int) -> LocalWindow | None:
        if not self.config.local_attn_layers or frame_receptive_field < 0:
            return None
        # a window covering every frame is still passed on: the reference's local layers run the range
        # split then too (architecture.md §6.2); the mask backends drop it themselves.
        return LocalWindow.of(layout, frame_receptive_field)

    def _check_inputs(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor) -> None:
        cfg = self.config
        expected = {
            "video_latent": (5, 1, self.latent_channels),
            "audio_latent": (3, 2, cfg.audio_in_channels),
            "text_embeds": (3, 2, cfg.text_in_channels),
        }
        for name, tensor in (("video_latent", video), ("audio_latent", audio), ("text_embeds", text)):
            ndim, channel_dim, channels = expected[name]
            if tensor.ndim != ndim or tensor.shape[channel_dim] != channels:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)}; expected {ndim} dims with {channels} channels "
                    f"in dim {channel_dim} for this model config"
                )
        if not video.shape[0] == audio.shape[0] == text.shape[0]:
            raise ValueError(
                f"batch sizes differ: video {video.shape[0]}, audio {audio.shape[0]}, text {text.shape[0]}"
            )

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_official(
        cls, folder: str | Path, *, device: str | torch.device = "cpu", progress: bool = True, **config_fields
    ) -> MagiHumanTransformer:
        """Load a published checkpoint folder (``base``, ``distill``, ``540p_sr``, ``1080p_sr``) unchanged.

        Reads ``model.safetensors`` or the shards of ``model.safetensors.index.json`` (``<shard>.zst``
        preferred when present), strictly: any missing, unexpected or mis-shaped key raises one
        :class:`~magihuman.model.checkpoint.CheckpointError` listing them all (architecture.md §7.2). Tensors are
        cast as the reference does: block linears to bf16, everything else float32 (architecture.md §2.3).
        ``adapter.rope.bands`` keeps the checkpoint's value, or the formula if absent (architecture.md §7.2).
        The model is built on the meta device and the loaded tensors are assigned, so peak host
        memory is about one copy of the weights plus one shard.

        Args:
            folder: the checkpoint folder.
            device: where the weights end up.
            progress: show a progress bar over shards.
            **config_fields: config overrides (none: the 15B configuration; e.g.
                ``local_attn_layers=SR1080_LOCAL_ATTN_LAYERS`` for the 1080p SR recipe).

        Raises:
            CheckpointError: for a folder that is not a checkpoint or keys that do not match.
        """
        from magihuman.model.checkpoint import expected_from_module, load_official_state_dict

        with torch.device("meta"):
            model = cls(**config_fields)
        state = load_official_state_dict(
            folder, expected_from_module(model), device=device, progress=progress, optional={"adapter.rope.bands"}
        )
        if "adapter.rope.bands" not in state:
            state["adapter.rope.bands"] = FourierTable(model.config.head_dim).bands
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device).eval()

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> MagiHumanTransformer:
        """diffusers ``from_pretrained`` (a folder written by ``save_pretrained``), keeping block
        linears in their stored dtype unless ``torch_dtype`` is given explicitly."""
        model = super().from_pretrained(*args, **kwargs)
        if kwargs.get("torch_dtype") is None:
            model.restore_official_dtypes()
        return model

    def restore_official_dtypes(self) -> MagiHumanTransformer:
        """Cast block linears to bf16 and everything else to float32 (architecture.md §2.3)."""
        for name, tensor in list(self.named_parameters()) + list(self.named_buffers()):
            want = torch.bfloat16 if name.endswith(BLOCK_LINEAR_SUFFIXES) else torch.float32
            if tensor.dtype != want:
                tensor.data = tensor.data.to(want)
        return self

    @staticmethod
    def is_block_linear(key: str) -> bool:
        """Whether a state-dict key is a bf16 block linear (architecture.md §2.3)."""
        return key.endswith(BLOCK_LINEAR_SUFFIXES)


def _check_config(num_layers, hidden_size, head_dim, num_query_groups, video_in_channels,
                  mm_layers, gelu7_layers, local_attn_layers) -> None:
    if head_dim <= 0 or hidden_size % head_dim:
        raise ValueError(f"hidden_size ({hidden_size}) must be a positive multiple of head_dim ({head_dim})")
    heads = hidden_size // head_dim
    if num_query_groups <= 0 or heads % num_query_groups:
        raise ValueError(f"query heads ({heads}) must be a multiple of num_query_groups ({num_query_groups})")
    if video_in_channels % 4:
        raise ValueError(f"video_in_channels ({video_in_channels}) must be latent channels x 4 (the 1x2x2 patch)")
    for name, layers in (("mm_layers", mm_layers), ("gelu7_layers", gelu7_layers),
                         ("local_attn_layers", local_attn_layers)):
        outside = [i for i in layers if not 0 <= i < num_layers]
        if outside:
            raise ValueError(f"{name} lists layers {outside} outside 0..{num_layers - 1}")


def parameter_count(config: dict | None = None) -> int:
    """Number of state-dict elements of a config, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = MagiHumanTransformer(**(config or {}))
    return sum(math.prod(t.shape) for t in model.state_dict().values())
