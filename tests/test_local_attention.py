"""Local attention in the reference's range form (architecture.md §6.2): range split, per-range kernel + LSE, merge.

The reference runs a local layer without its Hopper kernel as one flash-attention call per (query
interval, key range) and folds the partial results with a log-sum-exp merge. The golden case
``dit_forward_a`` has no local layer, so the reference arithmetic is re-derived here from the fact
sheet: :func:`reference_local_attention` builds the intervals from the rules of architecture.md §6.2 in the
reference's ``[N, H, D]`` layout, calls the public SDPA per range and merges in float32. Our path must
equal it bit for bit; the one-call dense-mask path (``sdpa_mask``) is the same function with other
bits (bf16 rounding only).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG, random_transformer
from magihuman.model.attention import (
    flex_attention_backend,
    get_attention_backend,
    math_attention,
    ragged_attention,
    sdpa_attention,
    sdpa_mask_attention,
)
from magihuman.model.local_attention import (
    attention_with_lse,
    merge_partials,
    range_split_attention,
    split_query_ranges,
    window_intervals,
)
from magihuman.model.packing import (
    LocalWindow,
    TokenLayout,
    local_attention_mask,
    local_attention_ranges,
)

from conftest import rel_l2


def qkv(layout: TokenLayout, seed: int = 0, heads: tuple[int, int] = (8, 2), head_dim: int = 32, batch: int = 1):
    """bf16 q [B, Hq, N, D], k/v [B, Hkv, N, D] as transposed views of [B, N, H, D], as the model builds them."""
    g = torch.Generator().manual_seed(seed)
    n = layout.total_tokens

    def draw(h):
        return torch.randn(batch, n, h, head_dim, generator=g).bfloat16().transpose(1, 2)

    return draw(heads[0]), draw(heads[1]), draw(heads[1])


def reference_local_attention(query, key, value, layout: TokenLayout, radius: int, lse_from_logits: bool = False):
    """architecture.md §6.2 transcribed: per latent frame i, the query rows of frame i attend to video frames i-R..i+R
    and then to all audio+text keys, the two results merged by LSE; audio+text query rows attend to all
    keys in one call. Tensors are handled as ``[N, H, D]`` per sample, like the reference; the merge is
    ``o1 * (w1 / s) + o2 * (w2 / s)`` in float32 with ``w = exp(lse - max)``. The LSE comes with the kernel's
    output (as from the reference's kernel), or with ``lse_from_logits`` from ``logsumexp(q k^T * scale)``
    in float32."""
    out = torch.zeros_like(query)
    p, nv, n = layout.tokens_per_frame, layout.video_tokens, layout.total_tokens
    scale = query.shape[-1] ** -0.5
    for b in range(query.shape[0]):
        q, k, v = (t[b].transpose(0, 1) for t in (query, key, value))  # [N, H, D]

        def call(q0, q1, k0, k1, q=q, k=k, v=v):
            qs, ks, vs = (t.transpose(0, 1)[None] for t in (q[q0:q1], k[k0:k1], v[k0:k1]))
            o = F.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)[0].transpose(0, 1)
            if lse_from_logits:
                groups = qs.shape[1] // ks.shape[1]
                logits = qs.float() @ ks.float().repeat_interleave(groups, 1).transpose(-1, -2) * scale
                lse = torch.logsumexp(logits, dim=-1)
            else:
                lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qs, ks, vs)[1]
            return o, lse[0].transpose(0, 1)  # [n, H, D], [n, H]

        rows = []
        for i in range(layout.frames):
            o1, l1 = call(i * p, (i + 1) * p, max(0, (i - radius) * p), min(nv, (i + radius + 1) * p))
            o2, l2 = call(i * p, (i + 1) * p, nv, n)
            m = torch.max(l1, l2)
            w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
            rows.append(o1 * (w1 / (w1 + w2))[..., None] + o2 * (w2 / (w1 + w2))[..., None])
        rows.append(call(nv, n, 0, n)[0])
        out[b] = torch.cat(rows).to(query.dtype).transpose(0, 1)
    return out


# ----------------------------------------------------------------------------------- ranges
def test_split_query_ranges_by_hand():
    """Cut at every query boundary; each piece keeps its key ranges in table order; uncovered pieces go."""
    pairs = (((0, 4), (10, 12)), ((2, 6), (0, 3)), ((0, 6), (20, 21)), ((8, 9), (1, 2)))
    assert split_query_ranges(pairs) == (
        ((0, 2), ((10, 12), (20, 21))),
        ((2, 4), ((10, 12), (0, 3), (20, 21))),
        ((4, 6), ((0, 3), (20, 21))),
        ((8, 9), ((1, 2),)),  # [6, 8) is in no query range: dropped
    )
    with pytest.raises(ValueError, match="end before its start"):
        split_query_ranges((((3, 1), (0, 2)),))


def test_window_range_pairs_are_the_reference_table():
    """LocalWindow.range_pairs is local_attention_ranges (architecture.md §6.2) and its union is the dense mask."""
    layout = TokenLayout(frames=7, patch_rows=1, patch_cols=2, audio_tokens=3, text_tokens=2)
    window = LocalWindow.of(layout, 2)
    q_ranges, k_ranges = local_attention_ranges(layout, 2)
    assert [list(map(list, pair)) for pair in window.range_pairs()] == [
        [q, k] for q, k in zip(q_ranges.tolist(), k_ranges.tolist())
    ]
    union = torch.zeros(layout.total_tokens, layout.total_tokens, dtype=torch.bool)
    for (q0, q1), keys in window_intervals(window):
        for k0, k1 in keys:
            union[q0:q1, k0:k1] = True
    assert torch.equal(union, local_attention_mask(layout, 2))
    # frame 3's rows: its own video window first, then the audio+text keys; audio+text rows: every key
    assert window_intervals(window)[3] == ((6, 8), ((2, 12), (14, 19)))
    assert window_intervals(window)[-1] == ((14, 19), ((0, 19),))
    assert window.frames == 7 and not window.covers_every_frame
    assert LocalWindow.of(layout, 6).covers_every_frame and not LocalWindow.of(layout, 5).covers_every_frame


# ----------------------------------------------------------------------------------- kernel and merge
def test_attention_with_lse_is_sdpa_plus_logsumexp():
    layout = TokenLayout(frames=3, patch_rows=2, patch_cols=2, audio_tokens=5, text_tokens=3)
    q, k, v = qkv(layout, seed=1)
    out, lse = attention_with_lse(q[:, :, 3:11], k[:, :, 4:20], v[:, :, 4:20])
    want = F.scaled_dot_product_attention(q[:, :, 3:11], k[:, :, 4:20], v[:, :, 4:20], enable_gqa=True)
    assert torch.equal(out, want)
    logits = q[:, :, 3:11].double() @ k[:, :, 4:20].double().repeat_interleave(4, 1).transpose(-1, -2) / 32 ** 0.5
    assert lse.dtype == torch.float32 and lse.shape == (1, 8, 8)
    assert torch.allclose(lse.double(), logits.logsumexp(-1), rtol=0, atol=1e-4)


def test_merge_partials_is_attention_over_the_union():
    """Merging the results over two disjoint key sets gives the softmax over their union (float64 check)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))

    def attend(keys, values):
        logits = q @ keys.transpose(-1, -2) / 8 ** 0.5
        return logits.softmax(-1) @ values, logits.logsumexp(-1)

    (o1, l1), (o2, l2) = attend(k[:, :, :2], v[:, :, :2]), attend(k[:, :, 2:], v[:, :, 2:])
    merged, lse = merge_partials(o1, l1, o2, l2)
    want, want_lse = attend(k, v)
    assert torch.allclose(merged, want, rtol=0, atol=1e-12) and torch.allclose(lse, want_lse, rtol=0, atol=1e-12)
    # bf16 partials are promoted: the merge runs in float32
    half, _ = merge_partials(o1.bfloat16(), l1.float(), o2.bfloat16(), l2.float())
    assert half.dtype == torch.float32


# ----------------------------------------------------------------------------------- bitwise
@pytest.mark.parametrize("frames, radius, audio, text", [(6, 1, 9, 4), (5, 2, 0, 3), (3, 11, 4, 2)])
def test_range_split_bitwise_with_the_reference_arithmetic(frames, radius, audio, text):
    """Our range split equals the transcribed reference loop bit for bit (window in the middle, no audio,
    and a window covering every frame, which the reference still splits); the dense mask is the same
    function with other bf16 roundings."""
    layout = TokenLayout(frames=frames, patch_rows=2, patch_cols=3, audio_tokens=audio, text_tokens=text)
    window = LocalWindow.of(layout, radius)
    q, k, v = qkv(layout, seed=frames, batch=2)
    got = range_split_attention(q, k, v, window)
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    assert torch.equal(got, reference_local_attention(q, k, v, layout, radius))
    assert torch.equal(sdpa_attention(q, k, v, window), got)  # the "sdpa" backend takes this path on CPU
    masked = sdpa_mask_attention(q, k, v, window)
    assert rel_l2(got, masked) < 1e-2
    # the brief's variant with the LSE recomputed from float32 logits: the same up to rare bf16 roundings
    assert rel_l2(got, reference_local_attention(q, k, v, layout, radius, lse_from_logits=True)) < 2e-3


def test_local_layers_of_the_model_follow_the_reference_loop():
    """Whole model, local layers (mm and shared): the default backend equals the transcribed reference loop
    plugged in as the kernel, bit for bit; the dense-mask backend stays within bf16 rounding."""
    config = dict(TINY_TRANSFORMER_CONFIG, local_attn_layers=(0, 2, 3))
    model = random_transformer(config, seed=3)
    g = torch.Generator().manual_seed(4)
    video = torch.randn(1, 48, 6, 2, 4, generator=g)
    audio, text = torch.randn(1, 9, 64, generator=g), torch.randn(1, 4, 32, generator=g)
    layout = TokenLayout(frames=6, patch_rows=1, patch_cols=2, audio_tokens=9, text_tokens=4)

    def reference_kernel(q, k, v, window):
        if window is None:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        assert window == LocalWindow.of(layout, 1)
        return reference_local_attention(q, k, v, layout, 1)

    with torch.no_grad():
        ours = model(video, audio, text, frame_receptive_field=1)
        model.set_attention_backend(reference_kernel)
        reference = model(video, audio, text, frame_receptive_field=1)
        model.set_attention_backend("sdpa_mask")
        masked = model(video, audio, text, frame_receptive_field=1)
        model.set_attention_backend("sdpa")
        unwindowed = model(video, audio, text, frame_receptive_field=-1)
    assert torch.equal(ours[0], reference[0]) and torch.equal(ours[1], reference[1])
    assert 0 < rel_l2(ours[0], masked[0]) < 2e-2
    assert rel_l2(ours[0], unwindowed[0]) > 5e-2  # the window matters here


def test_ragged_batch_keeps_each_sample_bitwise():
    """Batched CFG: each sample's real rows go through the range split with its own (shorter) window."""
    layout = TokenLayout(frames=5, patch_rows=1, patch_cols=2, audio_tokens=3, text_tokens=6)
    window = LocalWindow.of(layout, 1)
    q, k, v = qkv(layout, seed=7, batch=2)
    lengths = (layout.total_tokens, layout.total_tokens - 4)
    out = ragged_attention(sdpa_attention, lengths)(q, k, v, window)
    short = LocalWindow.of(TokenLayout(5, 1, 2, 3, 2), 1)
    assert torch.equal(out[:1], range_split_attention(q[:1], k[:1], v[:1], window))
    n = lengths[1]
    want = range_split_attention(q[1:, :, :n], k[1:, :, :n], v[1:, :, :n], short)
    assert torch.equal(out[1:, :, :n], want) and not out[1:, :, n:].any()


def test_covering_window_in_every_backend():
    """R >= T - 1 allows every pair: the mask backends drop the window (bitwise global attention); the
    range split still runs, as in the reference's local layers."""
    layout = TokenLayout(frames=4, patch_rows=1, patch_cols=2, audio_tokens=3, text_tokens=2)
    window = LocalWindow.of(layout, 3)
    q, k, v = qkv(layout, seed=9)
    full = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert torch.equal(sdpa_mask_attention(q, k, v, window), full)
    assert torch.equal(flex_attention_backend(q, k, v, window), full)
    assert torch.equal(math_attention(q, k, v, window), math_attention(q, k, v))
    split = sdpa_attention(q, k, v, window)
    assert torch.equal(split, reference_local_attention(q, k, v, layout, 3)) and rel_l2(split, full) < 1e-2
    assert get_attention_backend("sdpa_mask") is sdpa_mask_attention


def test_video_only_sequence_skips_empty_key_ranges():
    """No audio or text: the (video, audio+text) pair is empty and adds nothing; each frame is one call."""
    layout = TokenLayout(frames=4, patch_rows=1, patch_cols=2, audio_tokens=0, text_tokens=0)
    window = LocalWindow.of(layout, 1)
    q, k, v = qkv(layout, seed=5)
    got = range_split_attention(q, k, v, window)
    for i in range(4):
        k0, k1 = max(0, 2 * (i - 1)), min(8, 2 * (i + 2))
        rows = slice(2 * i, 2 * i + 2)
        want = F.scaled_dot_product_attention(q[:, :, rows], k[:, :, k0:k1], v[:, :, k0:k1], enable_gqa=True)
        assert torch.equal(got[:, :, rows], want)


def test_range_split_input_errors():
    layout = TokenLayout(frames=3, patch_rows=1, patch_cols=2, audio_tokens=2, text_tokens=2)
    window = LocalWindow.of(layout, 1)
    q, k, v = qkv(layout)
    with pytest.raises(ValueError, match="window is for 10 tokens, got 9 queries"):
        range_split_attention(q[:, :, :9], k[:, :, :9], v[:, :, :9], window)
    meta = [t.to("meta") for t in (q, k, v)]
    with pytest.raises(ValueError, match="runs on CPU.*'sdpa_mask' or 'flex'"):
        range_split_attention(*meta, window)
