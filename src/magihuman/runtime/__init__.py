"""Memory and speed switches: fast on one GPU, and fits on small GPUs (architecture.md §14).

Each switch is one function that changes a loaded model (or pipeline) in place;
:class:`~magihuman.runtime.options.RuntimeOptions` holds them as plain data and
:func:`~magihuman.runtime.placement.place_transformer` applies them in one stated order. Numbers are
for the 15B DiT (architecture.md §2.3): 15,277,834,240 block-linear weight elements (``linear_qkv``,
``linear_proj``, ``up_gate_proj``, ``down_proj``; bf16, 2 bytes each) and 21,584,912 float32 elements
for everything else (adapter, norms, heads, the RoPE bands buffer), 30.64 GB in all.

| switch | module | CLI flag | GPU memory of the 15B DiT's weights (bytes) | speed |
|---|---|---|---|---|
| FP8 weights | :mod:`~magihuman.runtime.fp8` | ``--fp8`` | ``1 x 15.28e9`` (e4m3 block linears) ``+ 4 x 2.42e6`` (row scales) ``+ 4 x 21.6e6`` (fp32 rest) = 15.37 GB, plus one expert's bf16 weight in flight (<= 280 MB) | upcast path: the GEMMs stay bf16; the upcast adds 3 bytes of memory traffic per weight element per GEMM (estimate: ~5-10 % slower at 448x256, ~1-2 % at SR sizes). ``--fp8-gemm``: FP8 tensor-core GEMMs for 76.9 % of the block FLOPs (compute capability >= 8.9; experimental) |
| block streaming | :mod:`~magihuman.runtime.offload` | ``--offload blocks`` | ``84 MB`` resident (adapter + heads, fp32) ``+ (1 + prefetch) x blocks_per_group x`` one layer (0.55 GB shared, 1.64 GB sandwich, bf16); host RAM holds the layers | bound by host-to-device copies: ~30.6 GB per forward (~1.2 s at 25 GB/s pinned); hidden behind compute only at long sequences (SR) |
| FSDP2 sharding | :mod:`~magihuman.runtime.sharding` | ``--shard`` (under ``torchrun``) | ``30.64 GB / N`` per rank + one gathered block linear (<= 839 MB bf16); with ``--fp8``: ``15.28 GB / N`` + the replicated row scales (9.7 MB) + fp32 rest / N + one gathered e4m3 linear (<= 420 MB) | one all-gather per block linear per forward; for N GPUs that do not fit the model alone |
| component offload | :mod:`~magihuman.runtime.offload` | ``--offload components`` | only the running stage's component: max(DiT 30.6 GB, T5Gemma encoder 18.5 GB, VAE) instead of their sum (~52 GB + SR DiT) | one host-device round trip per component per request (~1-3 s for a 15B DiT) |
| regional compile | :mod:`~magihuman.runtime.compile` | ``--compile`` | unchanged (+ Inductor workspaces) | ~1.2x on the DiT reported for the reference's compiler (architecture.md §14); one compile per layer variant at first call |
| attention kernel | :func:`magihuman.model.attention.resolve_attention_backend` | ``--attention auto\\|sdpa\\|flex\\|fa3`` | unchanged | FA3 ~1.3x over FA2 on Hopper (architecture.md §14); local-window layers keep FlexAttention |

Combining them: FP8 first, then the attention kernel, then compile, then streaming or sharding (never
both: both decide where a weight lives); :func:`~magihuman.runtime.placement.place_transformer` says
why. FP8 and sharding combine: the e4m3 bytes are sharded and all-gathered like any other weight.
Component offload and block streaming combine (streamed models are left in place by
:class:`~magihuman.runtime.offload.ComponentOffload`).
"""
