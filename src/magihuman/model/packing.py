"""Token packing: latents to tokens and back, per-token coordinates, local-attention windows.

One packed sample is the sequence ``[video tokens | audio tokens | text tokens]`` (architecture.md §3.1,
architecture.md §3). This module owns every rule about where a token sits in that sequence:

* video patchify is **channel-major** on the way in (``f = c*4 + ph*2 + pw``) and depatchify is
  **channels-last** on the way out (``f = (ph*2 + pw)*C + c``): architecture.md §3.1, §4.5;
* each token gets a 9-column coordinate row ``(t, h, w, T, H, W, refT, refH, refW)`` (architecture.md §3.2);
* local attention (1080p SR) restricts video queries to +-R latent frames (architecture.md §6.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

CoordsStyle = Literal["v1", "v2"]

#: Video patch (time, height, width) of the DiT (architecture.md §3.1: t_patch_size 1, patch_size 2).
PATCH_T, PATCH_H, PATCH_W = 1, 2, 2
#: v1 text coordinates start at this time offset (architecture.md §3.2 ``text_offset``).
TEXT_OFFSET_V1 = 0


@dataclass(frozen=True)
class TokenLayout:
    """Sizes of one packed sample.

    Attributes:
        frames: latent frames T.
        patch_rows: Hp = h / 2 (latent height over the patch height).
        patch_cols: Wp = w / 2.
        audio_tokens: Na = A, one token per audio latent frame.
        text_tokens: Nt, the true (trimmed) text length.
    """

    frames: int
    patch_rows: int
    patch_cols: int
    audio_tokens: int
    text_tokens: int

    @property
    def tokens_per_frame(self) -> int:
        """P = Hp * Wp video tokens per latent frame."""
        return self.patch_rows * self.patch_cols

    @property
    def video_tokens(self) -> int:
        """Nv = T * Hp * Wp."""
        return self.frames * self.tokens_per_frame

    @property
    def groups(self) -> tuple[int, int, int]:
        """Token counts per modality in packing order (video, audio, text); architecture.md §2.4 ids 0, 1, 2."""
        return (self.video_tokens, self.audio_tokens, self.text_tokens)

    @property
    def total_tokens(self) -> int:
        """N = Nv + Na + Nt."""
        return sum(self.groups)


def token_layout(video_latent: torch.Tensor, audio_latent: torch.Tensor, text_embeds: torch.Tensor) -> TokenLayout:
    """The layout of ``[video | audio | text]`` for unpacked inputs.

    Args:
        video_latent: ``[B, C, T, h, w]``; h and w must be even (the 2x2 patch).
        audio_latent: ``[B, A, C_audio]``.
        text_embeds: ``[B, Nt, C_text]``.

    Raises:
        ValueError: on a wrong rank or odd latent height/width.
    """
    if video_latent.ndim != 5:
        raise ValueError(f"video_latent must be [B, C, T, h, w], got shape {tuple(video_latent.shape)}")
    if audio_latent.ndim != 3 or text_embeds.ndim != 3:
        raise ValueError(
            "audio_latent must be [B, A, C] and text_embeds [B, Nt, C]; got "
            f"{tuple(audio_latent.shape)} and {tuple(text_embeds.shape)}"
        )
    _, _, frames, height, width = video_latent.shape
    if height % PATCH_H or width % PATCH_W:
        raise ValueError(
            f"latent height/width must be multiples of the {PATCH_H}x{PATCH_W} patch, got {height}x{width} "
            "(pixel sizes are rounded down to multiples of 32, architecture.md §13.2)"
        )
    return TokenLayout(frames, height // PATCH_H, width // PATCH_W, audio_latent.shape[1], text_embeds.shape[1])


def patchify_video(latent: torch.Tensor) -> torch.Tensor:
    """Video latent to tokens, channel-major features (architecture.md §3.1, §5.2).

    Token ``n = (t*Hp + y)*Wp + x`` (raster, time slowest); feature ``f = c*4 + ph*2 + pw`` takes
    ``latent[c, t, 2y+ph, 2x+pw]``. A pure reshape: exact, unlike the reference's TF32-prone conv.

    Args:
        latent: ``[B, C, T, h, w]``, any dtype, h and w even.

    Returns:
        ``[B, T*Hp*Wp, C*4]`` in the input dtype.
    """
    b, c, t, h, w = latent.shape
    x = latent.reshape(b, c, t, h // PATCH_H, PATCH_H, w // PATCH_W, PATCH_W)
    x = x.permute(0, 2, 3, 5, 1, 4, 6)  # b, t, y, x, c, ph, pw
    return x.reshape(b, t * (h // PATCH_H) * (w // PATCH_W), c * PATCH_H * PATCH_W)


def depatchify_video(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Output video tokens back to a latent, channels-last features (architecture.md §4.5).

    Feature ``f = (ph*2 + pw)*C + c`` goes to ``out[c, t, 2y+ph, 2x+pw]``. This is **not** the
    inverse of :func:`patchify_video`: the model's final projection is trained for this order.

    Args:
        tokens: ``[B, Nv, C*4]``.
        layout: the sample's :class:`TokenLayout`.

    Returns:
        ``[B, C, T, h, w]``.
    """
    b, _, features = tokens.shape
    c = features // (PATCH_H * PATCH_W)
    x = tokens.reshape(b, layout.frames, layout.patch_rows, layout.patch_cols, PATCH_H, PATCH_W, c)
    x = x.permute(0, 6, 1, 2, 4, 3, 5)  # b, c, t, y, ph, x, pw
    return x.reshape(b, c, layout.frames, layout.patch_rows * PATCH_H, layout.patch_cols * PATCH_W)


def grid_coords(
    size: tuple[int, int, int], reference: tuple[int, int, int], offset: tuple[int, int, int] = (0, 0, 0),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Coordinate rows for one modality's grid (architecture.md §3.2).

    Row n (raster order, first axis slowest) is ``(i0+o0, i1+o1, i2+o2, S0, S1, S2, R0, R1, R2)``.

    Returns:
        ``[S0*S1*S2, 9]`` float32.
    """
    axes = [torch.arange(s, dtype=torch.float32, device=device) + o for s, o in zip(size, offset)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    positions = torch.stack([m.reshape(-1) for m in mesh], dim=-1)
    constants = torch.tensor([*size, *reference], dtype=torch.float32, device=device)
    return torch.cat([positions, constants.expand(positions.shape[0], 6)], dim=-1)


def build_coords(layout: TokenLayout, style: CoordsStyle = "v2", device: torch.device | str | None = None) -> torch.Tensor:
    """The ``[N, 9]`` coordinate table of a packed sample (architecture.md §3.2, §3).

    | modality | grid | reference | offset |
    |---|---|---|---|
    | video | (T, Hp, Wp) | (T, Hp, Wp) ("extra" mode) | 0 |
    | audio v2 | (A, 1, 1) | ((A-1)//4 + 1, 1, 1) | 0 |
    | text v2 | (Nt, 1, 1) | (1, 1, 1) | t = -Nt |
    | audio v1 | (A, 1, 1) | (T, 1, 1) | 0 |
    | text v1 | (Nt, 1, 1) | (2, 1, 1) | t = 0 |

    Args:
        layout: sizes of the sample.
        style: ``"v2"`` (base/distill) or ``"v1"`` (super-resolution).

    Returns:
        ``[N, 9]`` float32 in ``[video | audio | text]`` order.

    Raises:
        ValueError: for an unknown style.
    """
    video_grid = (layout.frames, layout.patch_rows, layout.patch_cols)
    a, nt = layout.audio_tokens, layout.text_tokens
    if style == "v2":
        audio_ref, text_offset = ((a - 1) // 4 + 1) // PATCH_T, -nt
        text_reference = (1, 1, 1)
    elif style == "v1":
        audio_ref, text_offset = layout.frames // PATCH_T, TEXT_OFFSET_V1
        text_reference = (2, 1, 1)
    else:
        raise ValueError(f"coords_style must be 'v1' or 'v2', got {style!r}")
    return torch.cat(
        [
            grid_coords(video_grid, video_grid, device=device),
            grid_coords((a, 1, 1), (audio_ref, 1, 1), device=device),
            grid_coords((nt, 1, 1), text_reference, (text_offset, 0, 0), device=device),
        ]
    )


def local_attention_ranges(layout: TokenLayout, frame_receptive_field: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's (q_range, k_range) half-open pairs for local attention (architecture.md §6.2).

    For each latent frame i, video queries of frame i see video keys of frames ``i-R .. i+R``;
    every video query also sees all audio and text keys; audio and text queries are global.
    Overlapping q ranges are unioned (one softmax over the union).

    Returns:
        ``(q_ranges, k_ranges)``, each ``[T + 2, 2]`` int32.
    """
    pairs = _range_pairs(layout.frames, layout.tokens_per_frame, layout.video_tokens, layout.total_tokens,
                         frame_receptive_field)
    return (torch.tensor([q for q, _ in pairs], dtype=torch.int32),
            torch.tensor([k for _, k in pairs], dtype=torch.int32))


RangePair = tuple[tuple[int, int], tuple[int, int]]


def _range_pairs(frames: int, tokens_per_frame: int, video_tokens: int, total_tokens: int,
                 frame_receptive_field: int) -> tuple[RangePair, ...]:
    """``((q_start, q_end), (k_start, k_end))`` pairs in the reference's table order (architecture.md §6.2): one per
    latent frame, then (all video queries, audio + text keys), then (audio + text queries, all keys)."""
    p, nv, n, r = tokens_per_frame, video_tokens, total_tokens, frame_receptive_field
    frame_pairs = tuple(
        ((i * p, (i + 1) * p), (max(0, (i - r) * p), min(nv, (i + r + 1) * p))) for i in range(frames)
    )
    return frame_pairs + (((0, nv), (nv, n)), ((nv, n), (0, n)))


@dataclass(frozen=True)
class LocalWindow:
    """The local-attention pattern of one packed sample (architecture.md §6.2), as a rule rather than a tensor.

    Query i may attend key j when ``i >= Nv or j >= Nv or |i//P - j//P| <= R``: video queries see video
    keys of latent frames within +-R plus every audio and text key; audio and text queries are global.
    Kernels turn it into what they need: a dense boolean mask (:meth:`dense`) or a block-sparse mask
    built from :meth:`allows` (FlexAttention), so 1080p (~54k tokens) never needs an N x N tensor.
    """

    total_tokens: int
    video_tokens: int
    tokens_per_frame: int
    frame_receptive_field: int

    @classmethod
    def of(cls, layout: TokenLayout, frame_receptive_field: int) -> LocalWindow:
        """The window of a packed sample with half-width ``frame_receptive_field`` latent frames."""
        return cls(layout.total_tokens, layout.video_tokens, max(layout.tokens_per_frame, 1), frame_receptive_field)

    @property
    def frames(self) -> int:
        """T = Nv / P latent frames."""
        return self.video_tokens // self.tokens_per_frame

    @property
    def covers_every_frame(self) -> bool:
        """True when ``R >= T - 1``: every video query sees every video key, so the window allows every
        (query, key) pair and is mathematically global attention (architecture.md §6.2: ``T <= 12`` at R = 11).
        The reference still runs its local layers through the range split then (:meth:`range_pairs`)."""
        return self.frame_receptive_field >= self.frames - 1

    def range_pairs(self) -> tuple[RangePair, ...]:
        """The window as the reference's half-open ``((q_start, q_end), (k_start, k_end))`` pairs, in its
        table order (the same pairs as :func:`local_attention_ranges`, as Python ints): ``T`` frame
        pairs, then (all video queries, audio + text keys), then (audio + text queries, all keys)."""
        return _range_pairs(self.frames, self.tokens_per_frame, self.video_tokens, self.total_tokens,
                            self.frame_receptive_field)

    def allows(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Elementwise rule on broadcastable index tensors; True = may attend."""
        nv, p = self.video_tokens, self.tokens_per_frame
        return (query >= nv) | (key >= nv) | ((query // p - key // p).abs() <= self.frame_receptive_field)

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean ``[N, N]`` mask (True = may attend), the "SDPA equivalent" of architecture.md §6.2."""
        idx = torch.arange(self.total_tokens, device=device)
        return self.allows(idx[:, None], idx[None, :])


def local_attention_mask(
    layout: TokenLayout, frame_receptive_field: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean ``[N, N]`` mask equal to the union of :func:`local_attention_ranges` (architecture.md §6.2)."""
    return LocalWindow.of(layout, frame_receptive_field).dense(device)


def pad_text_batch(text_embeds: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Stack text embeddings of different lengths into one batch, zero padding at the end (batched CFG).

    The result goes to ``MagiHumanTransformer(..., text_lengths=lengths)``, which keeps every sample
    exactly what it would be alone: its own coordinates and attention over its own real tokens
    (architecture.md §6.3 forbids letting padding into the attention; it is never attended here).

    Args:
        text_embeds: tensors ``[B_i, Nt_i, C]`` with one C and one dtype, e.g. ``(prompt, negative prompt)``.

    Returns:
        ``(padded [sum B_i, max Nt_i, C], lengths)`` with ``lengths`` the true Nt of each row, in order.

    Raises:
        ValueError: for an empty list, a tensor that is not 3-d, or different widths or dtypes.
    """
    if not text_embeds:
        raise ValueError("pad_text_batch needs at least one text embedding")
    if any(t.ndim != 3 for t in text_embeds):
        raise ValueError(f"text embeddings must be [B, Nt, C], got shapes {[tuple(t.shape) for t in text_embeds]}")
    if len({(t.shape[2], t.dtype) for t in text_embeds}) != 1:
        raise ValueError(
            f"text embeddings differ in width or dtype: {[(tuple(t.shape), t.dtype) for t in text_embeds]}"
        )
    longest = max(t.shape[1] for t in text_embeds)
    padded = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, longest - t.shape[1])) for t in text_embeds])
    lengths = tuple(t.shape[1] for t in text_embeds for _ in range(t.shape[0]))
    return padded, lengths
