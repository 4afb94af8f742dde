"""FP8 block-linear storage (magihuman.runtime.fp8) on tiny CPU models.

Runs here: bytes, fp32 islands, numerics (bit-exact against a bf16 model holding the dequantised
weights; rel_l2 against the bf16 model), the FP8 layers being built by their constructor and put in
place of the bf16 ones, the scaled-GEMM math through CPU ``torch._scaled_mm``, and that the scaled
path is never taken on CPU. The GPU FP8 GEMM itself is untested.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG, random_transformer
from magihuman.model.layers import ExpertLinear
from magihuman.model.transformer import MagiHumanTransformer
from magihuman.runtime import fp8
from magihuman.runtime.fp8 import FP8ExpertLinear, enable_fp8_weights, quantize_fp8_rows, weight_bytes
from magihuman.runtime.offload import enable_block_streaming

from conftest import reference_velocities, rel_l2, tiny_inputs


@pytest.fixture(scope="module")
def reference():
    return reference_velocities()


def test_fp8_halves_block_linear_bytes_and_leaves_fp32_tensors_alone(tiny_model):
    model = tiny_model
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


def test_fp8_layers_are_built_by_the_constructor_and_replace_the_bf16_ones():
    """enable_fp8_weights puts new FP8ExpertLinear objects on the parents (no class reassignment): the
    old bf16 layers are left as they were, and the state dict keeps the bf16 model's keys and order."""
    model = random_transformer()
    keys = list(model.state_dict())
    originals = {name: m for name, m in model.named_modules() if isinstance(m, ExpertLinear)}
    weights = {name: m.weight.detach().clone() for name, m in originals.items()}
    enable_fp8_weights(model)

    converted = {name: m for name, m in model.named_modules() if isinstance(m, ExpertLinear)}
    assert converted.keys() == originals.keys()
    for name, module in converted.items():
        assert type(module) is FP8ExpertLinear and module is not originals[name], name
        assert (module.in_features, module.out_features, module.num_experts) == (
            originals[name].in_features, originals[name].out_features, originals[name].num_experts)
        assert not module.weight.requires_grad and module.training == originals[name].training
    for name, module in originals.items():  # untouched: still a bf16 ExpertLinear holding its weight
        assert type(module) is ExpertLinear and torch.equal(module.weight, weights[name]), name
    expected = []
    for key in keys:
        expected.append(key)
        if MagiHumanTransformer.is_block_linear(key):
            expected.append(key[: -len("weight")] + "weight_scale")
    assert list(model.state_dict()) == expected
    qkv = originals["block.layers.0.attention.linear_qkv"]
    q, scale = quantize_fp8_rows(qkv.weight)
    assert torch.equal(converted["block.layers.0.attention.linear_qkv"].weight, q.view(torch.uint8))
    assert torch.equal(converted["block.layers.0.attention.linear_qkv"].weight_scale, scale)


def test_fp8_constructor_from_stored_bytes_matches_the_converted_layer():
    linear = random_transformer().block.layers[0].attention.linear_qkv  # 3 experts in the sandwich layer 0
    converted = FP8ExpertLinear.from_expert_linear(linear)
    rebuilt = FP8ExpertLinear(converted.weight_e4m3.clone(), converted.weight_scale.clone(), linear.num_experts)
    assert rebuilt.weight.dtype == torch.uint8 and torch.equal(rebuilt.weight, converted.weight)
    x = torch.randn(1, 9, linear.in_features, generator=torch.Generator().manual_seed(2))
    groups = (4, 3, 2)
    assert torch.equal(rebuilt(x, groups), converted(x, groups))
    assert torch.equal(converted(x, groups), _bf16_twin(converted)(x, groups))
    with pytest.raises(ValueError, match="2-D uint8"):
        FP8ExpertLinear(converted.weight.float(), converted.weight_scale, 3)
    rows = converted.weight.shape[0]
    with pytest.raises(ValueError, match=f"do not split into num_experts={rows + 1}"):
        FP8ExpertLinear(converted.weight, converted.weight_scale, rows + 1)
    with pytest.raises(ValueError, match="weight_scale must be float32"):
        FP8ExpertLinear(converted.weight, converted.weight_scale[1:], 3)
    with pytest.raises(ValueError, match="compute_dtype"):
        FP8ExpertLinear(converted.weight, converted.weight_scale, 3, compute_dtype=torch.int8)


def _bf16_twin(layer: FP8ExpertLinear) -> ExpertLinear:
    twin = ExpertLinear(layer.in_features, layer.out_features, layer.num_experts)
    twin.weight.data = layer.dequantized_weight()
    return twin


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
        fp8._fp8_rowwise_linear(torch.ones(1, 16), q, scale, torch.bfloat16)
    except (RuntimeError, NotImplementedError) as error:  # pragma: no cover - torch builds without CPU _scaled_mm
        pytest.skip(f"torch._scaled_mm has no CPU kernel here: {error}")


def test_fp8_scaled_gemm_math_with_unaligned_output_rows():
    _cpu_scaled_mm_or_skip()
    g = torch.Generator().manual_seed(3)
    q, scale = quantize_fp8_rows(torch.randn(104, 128, generator=g) / 128**0.5)  # 104 = 6 x 16 + 8 rows
    x = torch.randn(2, 10, 128, generator=g)
    upcast = F.linear(x.bfloat16(), q.bfloat16() * scale.bfloat16()[:, None])
    scaled = fp8._fp8_rowwise_linear(x, q, scale, torch.bfloat16)
    assert scaled.shape == (2, 10, 104) and scaled.dtype == torch.bfloat16
    assert rel_l2(scaled[..., :96], upcast[..., :96]) < 0.05  # measured 0.026: e4m3 rounding of the activations
    assert torch.equal(scaled[..., 96:], upcast[..., 96:])  # the 8 unaligned rows run as the bf16 GEMM
    small = fp8._fp8_rowwise_linear(x, q[:8], scale[:8], torch.bfloat16)  # no aligned rows at all
    assert torch.equal(small, upcast[..., :8])


def test_fp8_gemm_coverage():
    assert abs(fp8.fp8_gemm_coverage() - 0.769) < 1e-3  # all but the swiglu7 down_proj (K = 13652)
    assert fp8.fp8_gemm_coverage(dict(TINY_TRANSFORMER_CONFIG, gelu7_layers=(), mm_layers=())) < 1.0


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

    monkeypatch.setattr(fp8, "_fp8_gemm_supported", lambda device: True)  # pretend: FP8 tensor cores
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
        patch.setattr(fp8, "FP8_DTYPE", None)
        with pytest.raises(RuntimeError, match="no torch.float8_e4m3fn"):
            enable_fp8_weights(random_transformer())
