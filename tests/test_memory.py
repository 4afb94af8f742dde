"""Memory and speed switches (magihuman.runtime.memory) on tiny CPU models.

What runs here and what needs a GPU:
- FP8 storage: bytes, fp32 islands, numerics (bit-exact against a bf16 model holding the dequantised
  weights; rel_l2 against the bf16 model), the scaled-GEMM math through CPU ``torch._scaled_mm``, and
  that the scaled path is never taken on CPU. The GPU FP8 GEMM itself is untested.
- Block streaming: onload = offload = CPU (bit-exact outputs, group order, adapter kept on the onload
  device). Real host-to-GPU copies and CUDA-stream prefetch are untested.
- FSDP2: two gloo ranks on CPU (shard ratio, bit-exact forward). NCCL is untested.
- Component offload: a fake ``.to()`` tracker (order; one component on the device at a time).
- Regional compile: the ``eager`` dynamo backend (graph capture without Inductor).
- Attention selection: monkeypatched availability and a fake ``flash_attn_interface`` module.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from magihuman.model import attention
from magihuman.runtime import memory
from magihuman.runtime.memory import (
    ComponentOffload,
    FP8ExpertLinear,
    compile_repeated_blocks,
    enable_block_streaming,
    enable_fp8_weights,
    fa3_attention,
    offload_idle_components,
    on_device,
    pick_attention_backend,
    quantize_fp8_rows,
    resolve_attention_backend,
    shard_transformer,
    weight_bytes,
)
from magihuman.model.packing import LocalWindow
from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG, random_transformer
from magihuman.model.transformer import ExpertLinear, MagiHumanTransformer


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def tiny_inputs(seed: int = 1, frames: int = 3, audio: int = 9, text: int = 7):
    g = torch.Generator().manual_seed(seed)
    channels = TINY_TRANSFORMER_CONFIG["text_in_channels"]
    return (torch.randn(1, 48, frames, 4, 6, generator=g), torch.randn(1, audio, 64, generator=g),
            torch.randn(1, text, channels, generator=g))


@pytest.fixture(scope="module")
def reference():
    """The plain tiny model's velocities (bf16 block linears)."""
    with torch.no_grad():
        return random_transformer()(*tiny_inputs())


# ============================================================================================ FP8
def test_fp8_halves_block_linear_bytes_and_leaves_fp32_tensors_alone():
    model = random_transformer()
    before = weight_bytes(model)
    fp32_before = {n: t for n, t in model.state_dict().items() if not MagiHumanTransformer.is_block_linear(n)}
    rows = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, ExpertLinear))
    enable_fp8_weights(model)
    after = weight_bytes(model)

    elements = sum(m.weight.numel() for m in random_transformer().modules() if isinstance(m, ExpertLinear))
    assert after["block_linear"] * 2 == before["block_linear"] == 2 * elements
    assert after["scales"] == 4 * rows
    assert after["other"] == before["other"]
    state = model.state_dict()
    for name, tensor in fp32_before.items():  # every non-block tensor: same storage, still float32
        assert state[name].dtype == torch.float32 and state[name].data_ptr() == tensor.data_ptr(), name
    block = [n for n in state if MagiHumanTransformer.is_block_linear(n)]
    assert block and all(state[n].dtype == torch.uint8 for n in block)  # e4m3 bit patterns, as bytes
    qkv = model.block.layers[0].attention.linear_qkv
    assert qkv.weight_e4m3.dtype == torch.float8_e4m3fn and qkv.weight_e4m3.data_ptr() == qkv.weight.data_ptr()
    assert qkv.compute_dtype == torch.bfloat16
    model.to(torch.float16)  # Module.to(dtype) casts floating-point tensors only: the FP8 bytes stay as they are
    assert qkv.weight.dtype == torch.uint8
    assert set(state) == set(fp32_before) | set(block) | {n[: -len("weight")] + "weight_scale" for n in block}
    assert all(isinstance(m, FP8ExpertLinear) for m in model.modules() if isinstance(m, ExpertLinear))


def test_fp8_output_equals_bf16_model_with_rounded_weights_and_is_close_to_bf16(reference):
    model = enable_fp8_weights(random_transformer())
    rounded = random_transformer()  # bf16 model holding exactly the dequantised e4m3 weights
    for fp8_module, bf16_module in zip(model.modules(), rounded.modules()):
        if isinstance(fp8_module, FP8ExpertLinear):
            bf16_module.weight.data = fp8_module.dequantized_weight()
    with torch.no_grad():
        video, audio = model(*tiny_inputs())
        video_r, audio_r = rounded(*tiny_inputs())
    assert torch.equal(video, video_r) and torch.equal(audio, audio_r)
    assert torch.isfinite(video).all() and torch.isfinite(audio).all()
    # Measured 0.116 (video) and 0.113 (audio): what 2.6 % random weight noise also gives this 6-layer
    # random model (a 1-layer model: 0.035), i.e. e4m3's rounding amplified by the random layers.
    assert rel_l2(video, reference[0]) < 0.2 and rel_l2(audio, reference[1]) < 0.2


def test_fp8_row_scales_keep_15b_width_weights_out_of_subnormals():
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(512, 5120, generator=g) / 5120**0.5).bfloat16()  # the 15B's init scale
    q, scale = quantize_fp8_rows(weight)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert torch.equal(scale, torch.exp2(torch.log2(scale).round()))  # powers of two
    dequant = q.bfloat16() * scale.bfloat16()[:, None]
    assert torch.equal(dequant, (q.float() * scale[:, None]).bfloat16())  # bf16 dequantisation is exact
    scaled_error = rel_l2(dequant, weight)
    unscaled_error = rel_l2(weight.to(torch.float8_e4m3fn).bfloat16(), weight)
    assert 0.02 < scaled_error < 0.03  # measured 0.0265: e4m3's 3 mantissa bits
    assert unscaled_error > 1.5 * scaled_error  # measured 0.0419: many weights fall below 2^-6


def _cpu_scaled_mm_or_skip():
    q, scale = quantize_fp8_rows(torch.ones(16, 16))
    try:
        memory._fp8_rowwise_linear(torch.ones(1, 16), q, scale, torch.bfloat16)
    except (RuntimeError, NotImplementedError) as error:  # pragma: no cover - torch builds without CPU _scaled_mm
        pytest.skip(f"torch._scaled_mm has no CPU kernel here: {error}")


def test_fp8_scaled_gemm_math_with_unaligned_output_rows():
    _cpu_scaled_mm_or_skip()
    g = torch.Generator().manual_seed(3)
    q, scale = quantize_fp8_rows(torch.randn(104, 128, generator=g) / 128**0.5)  # 104 = 6 x 16 + 8 rows
    x = torch.randn(2, 10, 128, generator=g)
    upcast = F.linear(x.bfloat16(), q.bfloat16() * scale.bfloat16()[:, None])
    scaled = memory._fp8_rowwise_linear(x, q, scale, torch.bfloat16)
    assert scaled.shape == (2, 10, 104) and scaled.dtype == torch.bfloat16
    assert rel_l2(scaled[..., :96], upcast[..., :96]) < 0.05  # measured 0.026: e4m3 rounding of the activations
    assert torch.equal(scaled[..., 96:], upcast[..., 96:])  # the 8 unaligned rows run as the bf16 GEMM
    small = memory._fp8_rowwise_linear(x, q[:8], scale[:8], torch.bfloat16)  # no aligned rows at all
    assert torch.equal(small, upcast[..., :8])


def test_fp8_gemm_coverage():
    assert abs(memory.fp8_gemm_coverage() - 0.769) < 1e-3  # all but the swiglu7 down_proj (K = 13652)
    assert memory.fp8_gemm_coverage(dict(TINY_TRANSFORMER_CONFIG, gelu7_layers=(), mm_layers=())) < 1.0


def test_fp8_scaled_gemm_routing(monkeypatch):
    """Where the FP8 GEMM runs: only with scaled_gemm on a supported device, only for input widths % 16 == 0."""
    _cpu_scaled_mm_or_skip()
    plain = enable_fp8_weights(random_transformer())
    with torch.no_grad():
        plain_video, plain_audio = plain(*tiny_inputs())
    model = enable_fp8_weights(random_transformer(), scaled_gemm=True)
    real_scaled_mm = torch._scaled_mm
    calls = []

    def counting(a, b, **kwargs):
        calls.append((a.shape[1], b.shape[1]))
        return real_scaled_mm(a, b, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", counting)
    with torch.no_grad():  # on CPU the device check says no: the result is the upcast path's, bit for bit
        video, _ = model(*tiny_inputs())
    assert not calls and torch.equal(video, plain_video)

    monkeypatch.setattr(memory, "_fp8_gemm_supported", lambda device: True)  # pretend: FP8 tensor cores
    with torch.no_grad():
        video, audio = model(*tiny_inputs())
    linears = [m for m in model.modules() if isinstance(m, FP8ExpertLinear)]
    eligible = sum(m.num_experts for m in linears if m.in_features % 16 == 0)
    assert 0 < eligible < sum(m.num_experts for m in linears)  # the swiglu7 down_proj (in 340) stays bf16
    assert len(calls) == eligible and all(k % 16 == 0 and n % 16 == 0 for k, n in calls)
    # measured 0.102 / 0.102: e4m3 rounding of the activations, amplified by the 6 random layers
    assert rel_l2(video, plain_video) < 0.2 and rel_l2(audio, plain_audio) < 0.2
    assert not torch.equal(video, plain_video)


def test_fp8_errors():
    with pytest.raises(ValueError, match="compute_dtype"):
        enable_fp8_weights(random_transformer(), compute_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="no ExpertLinear"):
        enable_fp8_weights(torch.nn.Linear(4, 4))
    with torch.device("meta"):
        meta = MagiHumanTransformer(**TINY_TRANSFORMER_CONFIG)
    with pytest.raises(ValueError, match="meta device; load the checkpoint"):
        enable_fp8_weights(meta)
    with pytest.raises(ValueError, match="before enable_block_streaming"):
        enable_fp8_weights(enable_block_streaming(random_transformer(), onload_device="cpu"))
    model = enable_fp8_weights(random_transformer())
    model.restore_official_dtypes()  # casts the stored e4m3 weights: the forward refuses to run
    with pytest.raises(RuntimeError, match="call enable_fp8_weights last"):
        model(*tiny_inputs())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "FP8_DTYPE", None)
        with pytest.raises(RuntimeError, match="no torch.float8_e4m3fn"):
            enable_fp8_weights(random_transformer())


# ================================================================================ block streaming
@pytest.mark.parametrize("blocks_per_group", [1, 2])
def test_block_streaming_is_bit_exact(reference, blocks_per_group):
    model = enable_block_streaming(random_transformer(), onload_device="cpu", offload_device="cpu",
                                   blocks_per_group=blocks_per_group)
    with torch.no_grad():
        first, second = model(*tiny_inputs()), model(*tiny_inputs())
    for out in (first, second):
        assert torch.equal(out[0], reference[0]) and torch.equal(out[1], reference[1])


def test_fp8_with_block_streaming_is_bit_exact():
    """--fp8 --offload blocks (the 24 GB recipe): the streamed e4m3 bytes give the resident FP8 model's output."""
    resident = enable_fp8_weights(random_transformer())
    streamed = enable_block_streaming(enable_fp8_weights(random_transformer()), onload_device="cpu")
    with torch.no_grad():
        want, got = resident(*tiny_inputs()), streamed(*tiny_inputs())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all(m.weight.dtype == torch.uint8 for m in streamed.modules() if isinstance(m, FP8ExpertLinear))


def test_block_streaming_moves_groups_in_layer_order(monkeypatch):
    from diffusers.hooks.group_offloading import ModuleGroup

    model = random_transformer()
    layer_index = {id(layer): i for i, layer in enumerate(model.block.layers)}
    events = []

    def recorder(kind, original):
        def wrapped(group):
            layers = tuple(layer_index[id(m)] for m in group.modules if id(m) in layer_index)
            events.append((kind, layers or "top"))
            return original(group)
        return wrapped

    monkeypatch.setattr(ModuleGroup, "onload_", recorder("on", ModuleGroup.onload_))
    monkeypatch.setattr(ModuleGroup, "offload_", recorder("off", ModuleGroup.offload_))
    enable_block_streaming(model, onload_device="cpu", blocks_per_group=2)
    events.clear()
    with torch.no_grad():
        model(*tiny_inputs())
    layer_events = [e for e in events if e[1] != "top"]
    assert layer_events == [(kind, pair) for pair in ((0, 1), (2, 3), (4, 5)) for kind in ("on", "off")]
    top = model._diffusers_hook.get_hook("group_offloading").group
    assert top.offload_device == top.onload_device == torch.device("cpu")  # adapter and heads stay resident


def test_block_streaming_errors():
    with pytest.raises(ValueError, match="streaming would move nothing"):
        enable_block_streaming(random_transformer(), onload_device="cuda", offload_device="cuda")
    with pytest.raises(ValueError, match="must name a torch device"):
        enable_block_streaming(random_transformer(), onload_device="gpu0")
    with pytest.raises(ValueError, match="blocks_per_group must be an int in 1..6"):
        enable_block_streaming(random_transformer(), onload_device="cpu", blocks_per_group=7)
    with pytest.raises(ValueError, match="prefetch streams one layer at a time"):
        enable_block_streaming(random_transformer(), onload_device="cuda", blocks_per_group=2)
    with pytest.raises(ValueError, match="no block.layers"):
        enable_block_streaming(torch.nn.Linear(2, 2), onload_device="cpu")
    model = enable_block_streaming(random_transformer(), onload_device="cpu")
    with pytest.raises(ValueError, match="already enabled"):
        enable_block_streaming(model, onload_device="cpu")


# ============================================================================================ FSDP2
def _shard_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks share the test machine's cores
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = random_transformer()
        with torch.no_grad():
            expected = model(*tiny_inputs())
        total = weight_bytes(model)
        one_layer = dict(TINY_TRANSFORMER_CONFIG, num_layers=1, mm_layers=(), gelu7_layers=())
        fp8_model = enable_fp8_weights(random_transformer(one_layer))
        with torch.no_grad():
            fp8_expected = fp8_model(*tiny_inputs())
        fp8_total = weight_bytes(fp8_model)
        shard_transformer(fp8_model)  # --fp8 --shard: the e4m3 bytes are sharded and all-gathered as uint8
        with torch.no_grad():
            fp8_out = fp8_model(*tiny_inputs())
        fp8_local = weight_bytes(fp8_model)
        shard_transformer(model)
        local = weight_bytes(model)
        with torch.no_grad():
            video, audio = model(*tiny_inputs())
            video2, _ = model(*tiny_inputs())
        result = dict(
            total=total, local=local, fp8_total=fp8_total, fp8_local=fp8_local,
            fp8_equal=bool(torch.equal(fp8_out[0], fp8_expected[0]) and torch.equal(fp8_out[1], fp8_expected[1])),
            video_max_diff=float((video - expected[0]).abs().max()), audio_max_diff=float((audio - expected[1]).abs().max()),
            repeat_equal=bool(torch.equal(video, video2)),
            all_dtensor=all(hasattr(p, "to_local") for p in model.parameters()),
        )
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
        # Without this barrier a rank that tears gloo down while the other still finishes FSDP2's last
        # all-gather dies with "terminate called without an active exception" at exit (measured: 5 of 24
        # runs; 0 of 24 with it). The CLI does the same (parallel.shutdown_sequence_parallel).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_shard_transformer_on_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_shard_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["all_dtensor"] and result["repeat_equal"]
        # FP8 + FSDP2: half the e4m3 bytes per rank, row scales replicated (4 bytes per output row), same output.
        assert result["fp8_local"]["block_linear"] * 2 == result["fp8_total"]["block_linear"]
        assert result["fp8_local"]["scales"] == result["fp8_total"]["scales"] > 0
        assert result["fp8_equal"]
        # Every tiny-model dim 0 is even, so each rank holds exactly half (the 15B's are even too).
        assert result["local"]["block_linear"] * 2 == result["total"]["block_linear"]
        ratio = result["local"]["total"] / result["total"]["total"]
        assert abs(ratio - 0.5) < 1e-3  # measured 0.500006: only the 64-byte RoPE buffer is replicated
        assert result["video_max_diff"] == 0.0 and result["audio_max_diff"] == 0.0  # gathers are copies


def test_shard_transformer_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        shard_transformer(random_transformer())


# ================================================================================ component offload
class FakeComponent:
    """Records ``.to(device)`` calls in a shared log; ``device`` is where it currently lives."""

    def __init__(self, name: str, log: list):
        self.name, self.log, self.device = name, log, torch.device("cpu")

    def to(self, device):
        self.device = torch.device(device)
        self.log.append((self.name, str(self.device)))
        return self


def fake_pipe(log: list, *, turbo_decoder: bool = False, sr: bool = True):
    pipe = types.SimpleNamespace(
        text_encoder=FakeComponent("text_encoder", log), transformer=FakeComponent("transformer", log),
        sr_transformer=FakeComponent("sr_transformer", log) if sr else None,
        video_vae=FakeComponent("video_vae", log), audio_vae=FakeComponent("audio_vae", log),
    )
    pipe.video_decoder = FakeComponent("turbo", log) if turbo_decoder else pipe.video_vae
    return pipe


def on_gpu(pipe) -> set[str]:
    return {c.name for c in vars(pipe).values() if c is not None and c.device.type == "cuda"}


def test_component_offload_lends_one_component_per_stage():
    log: list = []
    pipe = fake_pipe(log)
    offload = offload_idle_components(pipe, "cuda")
    assert offload.execution_device == torch.device("cuda") and on_gpu(pipe) == set()
    log.clear()
    seen = {}
    for stage, components in (("text", ("text_encoder",)), ("image", ("video_vae",)), ("denoise", ("transformer",)),
                              ("sr", ("sr_transformer",)), ("decode", ("video_decoder",)), ("audio", ("audio_vae",))):
        with offload.stage(*components):
            seen[stage] = on_gpu(pipe)
    assert seen == {"text": {"text_encoder"}, "image": {"video_vae"}, "denoise": {"transformer"},
                    "sr": {"sr_transformer"}, "decode": {"video_vae"}, "audio": {"audio_vae"}}
    expected = []
    for name in ("text_encoder", "video_vae", "transformer", "sr_transformer", "video_vae", "audio_vae"):
        expected += [(name, "cuda"), (name, "cpu")]
    assert log == expected  # video_decoder is video_vae here: it moves once per stage, not twice
    assert on_gpu(pipe) == set()


def test_component_offload_resident_errors_and_exceptions():
    log: list = []
    pipe = fake_pipe(log, turbo_decoder=True, sr=False)
    offload = offload_idle_components(pipe, "cuda:0", resident=("audio_vae",))
    assert on_gpu(pipe) == {"audio_vae"}
    with pytest.raises(KeyError):
        with offload.stage("transformer", "audio_vae", "sr_transformer"):
            assert on_gpu(pipe) == {"transformer", "audio_vae"}
            raise KeyError("stage failed")
    assert on_gpu(pipe) == {"audio_vae"}  # moved back out despite the error; the resident one stayed
    with offload.stage("video_decoder"):
        assert on_gpu(pipe) == {"audio_vae", "turbo"}
    with pytest.raises(ValueError, match="nothing to offload"):
        offload_idle_components(fake_pipe([]), "cpu")
    with pytest.raises(ValueError, match="unknown resident components"):
        offload_idle_components(fake_pipe([]), "cuda", resident=("vae",))
    with pytest.raises(ValueError, match="unknown pipeline component"):
        with offload.stage("decoder"):
            pass


def test_component_offload_leaves_streamed_models_in_place(monkeypatch):
    log: list = []
    pipe = fake_pipe(log)
    streamed = enable_block_streaming(random_transformer(), onload_device="cpu")
    monkeypatch.setattr(streamed, "to", lambda *a, **k: pytest.fail("a streamed model was moved"))
    pipe.transformer = streamed
    offload = ComponentOffload(pipe, torch.device("cuda"))
    offload.offload_all()
    with offload.stage("transformer", "text_encoder"):
        assert on_gpu(types.SimpleNamespace(t=pipe.text_encoder)) == {"text_encoder"}


def test_on_device_passes_none_and_moves_back():
    log: list = []
    component = FakeComponent("c", log)
    with on_device(None, "cuda") as nothing:
        assert nothing is None
    with on_device(component, "cuda") as inside:
        assert inside.device.type == "cuda"
    assert log == [("c", "cuda"), ("c", "cpu")]


# ================================================================================= regional compile
def test_compile_repeated_blocks_eager_backend_keeps_outputs(reference):
    torch._dynamo.reset()
    model = compile_repeated_blocks(random_transformer(), backend="eager")
    assert all(layer._compiled_call_impl is not None for layer in model.block.layers)
    with torch.no_grad():
        video, audio = model(*tiny_inputs())
        other = model(*tiny_inputs(text=11))  # a second token count (CFG's negative prompt) recompiles
        other_expected = random_transformer()(*tiny_inputs(text=11))
    assert torch.equal(video, reference[0]) and torch.equal(audio, reference[1])
    assert torch.equal(other[0], other_expected[0])
    assert torch._dynamo.config.recompile_limit >= 64
    with pytest.raises(ValueError, match="no TransformerLayer"):
        compile_repeated_blocks(torch.nn.Linear(2, 2))
    torch._dynamo.reset()


# ======================================================================================== attention
@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(attention, "_BACKENDS", dict(attention._BACKENDS))


@pytest.mark.parametrize(
    "device, fa3_installed, capability, expected",
    [("cpu", True, (9, 0), "sdpa"), ("cuda", True, (9, 0), "fa3"), ("cuda:1", True, (9, 0), "fa3"),
     ("cuda", True, (8, 0), "sdpa"), ("cuda", True, (10, 0), "sdpa"), ("cuda", False, (9, 0), "sdpa")],
)
def test_pick_attention_backend(monkeypatch, fresh_registry, device, fa3_installed, capability, expected):
    monkeypatch.setattr(memory, "_fa3_importable", lambda: fa3_installed)
    monkeypatch.setattr(memory, "_cuda_capability", lambda _: capability)
    assert pick_attention_backend(device) == expected
    assert ("fa3" in attention.available_attention_backends()) == (expected == "fa3")


def test_resolve_attention_backend(monkeypatch, fresh_registry):
    monkeypatch.setattr(memory, "_fa3_importable", lambda: False)
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    assert resolve_attention_backend("flex", "cpu") == "flex"
    with pytest.raises(ValueError, match="needs FlashAttention-3"):
        resolve_attention_backend("fa3", "cuda")
    monkeypatch.setattr(memory, "_fa3_importable", lambda: True)
    monkeypatch.setattr(memory, "_cuda_capability", lambda _: (8, 9))
    with pytest.raises(ValueError, match="Hopper GPUs"):
        resolve_attention_backend("fa3", "cuda")
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_attention_backend("xformers", "cuda")


def test_fa3_backend_layout_and_local_window_fallback(monkeypatch, fresh_registry, reference):
    calls = []

    def flash_attn_func(q, k, v, causal=False):  # FA3's layout: [B, N, H, D]; returns (out, lse) like old builds
        calls.append((tuple(q.shape), tuple(k.shape)))
        assert not causal
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True)
        return out.transpose(1, 2), None

    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 20, 32, generator=g).bfloat16() for h in (4, 1, 1))
    assert torch.equal(fa3_attention(q, k, v), attention.sdpa_attention(q, k, v))
    assert calls == [((1, 20, 4, 32), (1, 20, 1, 32))]
    window = LocalWindow(total_tokens=20, video_tokens=12, tokens_per_frame=4, frame_receptive_field=0)
    masked = fa3_attention(q, k, v, window)  # FlexAttention, not FA3
    assert len(calls) == 1
    assert rel_l2(masked, attention.math_attention(q, k, v, window)) < 1e-2

    model = random_transformer()
    model.set_attention_backend(memory.register_fa3_backend())
    with torch.no_grad():
        video, audio = model(*tiny_inputs())
    assert len(calls) == 1 + len(model.block.layers)
    assert torch.equal(video, reference[0]) and torch.equal(audio, reference[1])
