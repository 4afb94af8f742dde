"""Memory and speed switches: fast on one GPU, and fits on small GPUs (architecture.md §14).

Each switch is one function that changes a loaded model (or pipeline) in place;
:class:`~magihuman.runtime.options.RuntimeOptions` holds them as plain data and
:func:`~magihuman.runtime.placement.place_transformer` applies them in one stated order. Numbers are
for the 15B DiT (architecture.md §2.3): 15,277,834,240 block-linear weight elements (``linear_qkv``,
``linear_proj``, ``up_gate_proj``, ``down_proj``; bf16, 2 bytes each) and 21,584,912 float32 elements
for everything else (adapter, norms, heads, the RoPE bands buffer), 30.64 GB in all.

Per switch (GPU memory of the 15B DiT's weights, computed from the parameter counts above; speed
figures and GPU status: docs/benchmarks.md):

* FP8 weights, :mod:`~magihuman.runtime.fp8`, ``--fp8``: ``1 x 15.28e9`` (e4m3 block linears)
  ``+ 4 x 2.42e6`` (row scales) ``+ 4 x 21.6e6`` (fp32 rest) = 15.37 GB, plus one expert's bf16 weight
  in flight (<= 280 MB). The GEMMs stay bf16; the upcast adds 3 bytes of memory traffic per weight
  element per GEMM. ``--fp8-gemm``: FP8 tensor-core GEMMs for 76.9 % of the block FLOPs (compute
  capability >= 8.9; experimental).
* Block streaming, :mod:`~magihuman.runtime.offload`, ``--offload blocks``: ``84 MB`` resident (adapter
  + heads, fp32) ``+ (1 + prefetch) x blocks_per_group x`` one layer (0.55 GB shared, 1.64 GB sandwich,
  bf16); host RAM holds the layers. Every forward copies all layers host-to-device (30.6 GB), so it is
  bound by that copy except at long sequences (SR), where compute hides it.
* FSDP2 sharding, :mod:`~magihuman.runtime.sharding`, ``--shard`` (under ``torchrun``): ``30.64 GB / N``
  per rank + one gathered block linear (<= 839 MB bf16); with ``--fp8``: ``15.28 GB / N`` + the
  replicated row scales (9.7 MB) + fp32 rest / N + one gathered e4m3 linear (<= 420 MB). One
  all-gather per block linear per forward; for N GPUs that do not fit the model alone.
* Component offload, :mod:`~magihuman.runtime.offload`, ``--offload components``: only the running
  stage's component, max(DiT 30.6 GB, T5Gemma encoder 18.5 GB, VAE), instead of their sum (52 GB + SR
  DiT). One host-device round trip per component per request.
* Regional compile, :mod:`~magihuman.runtime.compile`, ``--compile``: memory unchanged (+ Inductor
  workspaces); one compile per layer variant at first call. The original's README reports "about
  1.2x" for its own compiler (architecture.md §14).
* Attention kernel, :func:`magihuman.model.attention.resolve_attention_backend`,
  ``--attention auto|sdpa|flex|fa3``: memory unchanged. FlashAttention-3 reports 1.5-2.0x over FA2 on
  H100 (arXiv:2407.08608; architecture.md §14); local-window layers keep FlexAttention.

Combining them: FP8 first, then the attention kernel, then compile, then streaming or sharding (never
both: both decide where a weight lives); :func:`~magihuman.runtime.placement.place_transformer` says
why. FP8 and sharding combine: the e4m3 bytes are sharded and all-gathered like any other weight.
Component offload and block streaming combine (streamed models are left in place by
:class:`~magihuman.runtime.offload.ComponentOffload`).
"""
