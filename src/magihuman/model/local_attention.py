"""Local attention in the reference's range form: one kernel call per (query range, key range), merged by LSE.

The reference gives a local-attention layer its window as half-open ``(q_range, k_range)`` pairs
(architecture.md §6.2). Without the Hopper flex-flash kernel it evaluates them in this order:

1. cut the query axis at every range boundary into non-overlapping intervals, and attach to each
   interval the key range of every pair whose query range contains it, in table order
   (:func:`split_query_ranges`);
2. per interval, run the attention kernel once per attached key range, keeping each call's
   log-sum-exp (LSE) of the scaled logits;
3. fold the partial results left to right with the max-shifted LSE merge (:func:`merge_partials`),
   in float32, and write the result into a bf16 buffer whose rows no range covers stay zero.

:func:`range_split_attention` follows that order on CPU, with the CPU flash kernel that
``torch.nn.functional.scaled_dot_product_attention`` itself picks there
(``aten._scaled_dot_product_flash_attention_for_cpu``): the same kernel as our global layers, and
it returns the LSE with the output as the reference's kernel does. A query's softmax thereby
runs over the union of its key ranges, normalised once, mathematically equal to one call with the
dense mask of :meth:`~magihuman.model.packing.LocalWindow.dense`; the bits follow the reference.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import torch

from magihuman.model.packing import LocalWindow, RangePair

#: One query interval and the key ranges attached to it, in table order: ``((q0, q1), ((k0, k1), ...))``.
QueryInterval = tuple[tuple[int, int], tuple[tuple[int, int], ...]]


def split_query_ranges(pairs: Sequence[RangePair]) -> tuple[QueryInterval, ...]:
    """Cut overlapping query ranges into disjoint intervals, each with its key ranges (architecture.md §6.2 fallback).

    The boundaries are every distinct query-range start and end, sorted; each interval between two
    consecutive boundaries collects, in the order of ``pairs``, the key range of every pair whose query
    range contains the whole interval. Intervals that collect nothing are dropped (their rows stay zero).

    Args:
        pairs: ``((q_start, q_end), (k_start, k_end))`` half-open token ranges, e.g.
            :meth:`LocalWindow.range_pairs <magihuman.model.packing.LocalWindow.range_pairs>`.

    Returns:
        ``((q_start, q_end), ((k_start, k_end), ...))`` per interval, in increasing query order.

    Raises:
        ValueError: for a range whose end is before its start.
    """
    for q, k in pairs:
        if q[1] < q[0] or k[1] < k[0]:
            raise ValueError(f"range pair {q} -> {k} has an end before its start; ranges are half-open [start, end)")
    bounds = sorted({b for q, _ in pairs for b in q})
    intervals = []
    for lo, hi in itertools.pairwise(bounds):
        keys = tuple(tuple(k) for q, k in pairs if q[0] <= lo and hi <= q[1])
        if keys:
            intervals.append(((lo, hi), keys))
    return tuple(intervals)


@functools.lru_cache(maxsize=8)
def window_intervals(window: LocalWindow) -> tuple[QueryInterval, ...]:
    """:func:`split_query_ranges` of a window's range pairs, computed once per window (cached)."""
    return split_query_ranges(window.range_pairs())


def merge_partials(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two attention results over disjoint key sets into the result over their union (architecture.md §6.2).

    With ``m = max(lse_a, lse_b)``, ``s_i = exp(lse_i - m)`` and ``s = s_a + s_b``, the merged output is
    ``out_a * (s_a / s) + out_b * (s_b / s)`` and the merged LSE is ``log(s) + m``: the reference's op
    order, in float32 (a bf16 ``out`` is promoted by the first product).

    Args:
        out_a, out_b: ``[B, H, n, D]`` partial outputs (bf16 straight from the kernel, or float32 from
            an earlier merge).
        lse_a, lse_b: ``[B, H, n]`` float32 log-sum-exp of each part's scaled logits; finite (every
            part has at least one key).

    Returns:
        ``(out [B, H, n, D] float32, lse [B, H, n] float32)``.
    """
    peak = torch.maximum(lse_a, lse_b)
    weight_a, weight_b = torch.exp(lse_a - peak), torch.exp(lse_b - peak)
    total = weight_a + weight_b
    out = out_a * (weight_a / total).unsqueeze(-1) + out_b * (weight_b / total).unsqueeze(-1)
    return out, torch.log(total) + peak


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full (non-causal) attention and its log-sum-exp from one CPU flash-attention kernel call.

    The output is bit-identical to ``scaled_dot_product_attention(query, key, value, enable_gqa=True)``
    on CPU (the kernel SDPA dispatches to); scale ``1/sqrt(D)`` (architecture.md §6.1).

    Args:
        query: ``[B, Hq, n, D]`` on CPU.
        key, value: ``[B, Hkv, m, D]``, ``Hq % Hkv == 0``, ``m >= 1``.

    Returns:
        ``(out [B, Hq, n, D] in the query dtype, lse [B, Hq, n] float32)``.
    """
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value)
    return out, lse


def range_split_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: LocalWindow
) -> torch.Tensor:
    """Local attention as the reference computes it without its Hopper kernel (architecture.md §6.2): per query
    interval of :func:`window_intervals`, one :func:`attention_with_lse` call per key range, folded in
    table order by :func:`merge_partials`. Empty key ranges are skipped (their merge weight is zero).

    Args:
        query: ``[B, Hq, N, D]`` on CPU, ``N == window.total_tokens``.
        key, value: ``[B, Hkv, N, D]``, ``Hq % Hkv == 0``.
        window: the layer's local window.

    Returns:
        ``[B, Hq, N, D]`` in the query dtype.

    Raises:
        ValueError: for tensors off the CPU (use the ``sdpa_mask`` or ``flex`` backend there) or a
            sequence length that is not the window's.
    """
    if query.device.type != "cpu":
        raise ValueError(
            f"range_split_attention runs on CPU (its LSE comes from the CPU flash kernel), got {query.device}; "
            "use the 'sdpa_mask' or 'flex' attention backend on other devices"
        )
    if query.shape[2] != window.total_tokens or key.shape[2] != window.total_tokens:
        raise ValueError(
            f"the local window is for {window.total_tokens} tokens, got {query.shape[2]} queries and "
            f"{key.shape[2]} keys"
        )
    out = torch.zeros_like(query)
    for (q0, q1), key_ranges in window_intervals(window):
        merged = lse = None
        for k0, k1 in key_ranges:
            if k1 == k0:
                continue
            part, part_lse = attention_with_lse(query[:, :, q0:q1], key[:, :, k0:k1], value[:, :, k0:k1])
            merged, lse = (part, part_lse) if merged is None else merge_partials(merged, lse, part, part_lse)
        if merged is not None:
            out[:, :, q0:q1] = merged
    return out
