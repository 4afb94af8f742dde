"""place_transformer (magihuman.runtime.placement): the switches go on in the stated order, on tiny CPU models."""

from __future__ import annotations

import pytest
import torch

from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG, random_transformer
from magihuman.model.layers import ExpertLinear
from magihuman.model.transformer import MagiHumanTransformer
from magihuman.runtime.fp8 import FP8ExpertLinear, enable_fp8_weights
from magihuman.runtime.options import RuntimeOptions
from magihuman.runtime.placement import place_transformer
from magihuman.runtime.state import is_block_streamed

from conftest import reference_velocities, tiny_inputs

CPU = torch.device("cpu")


def test_plain_placement_is_the_model_unchanged():
    model = place_transformer(random_transformer(), RuntimeOptions(), CPU)
    with torch.no_grad():
        video, audio = model(*tiny_inputs())
    want = reference_velocities()
    assert torch.equal(video, want[0]) and torch.equal(audio, want[1])
    assert not is_block_streamed(model)


def test_fp8_then_streaming_equals_the_resident_fp8_model():
    """FP8 goes on before streaming (which refuses to be followed by it): the streamed layers hold e4m3 bytes."""
    model = place_transformer(random_transformer(), RuntimeOptions(fp8=True, offload=("blocks",)), CPU)
    assert is_block_streamed(model)
    linears = [m for m in model.modules() if isinstance(m, ExpertLinear)]
    assert linears and all(type(m) is FP8ExpertLinear for m in linears)
    resident = enable_fp8_weights(random_transformer())
    with torch.no_grad():
        got, want = model(*tiny_inputs()), resident(*tiny_inputs())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_fp32_runs_the_block_linears_in_float32():
    """--fp32: the block linears hold the same (bf16-representable) values in float32; everything else is unchanged,
    and the velocities equal a model whose linears were cast by hand, and stay near the bf16 reference."""
    model = place_transformer(random_transformer(), RuntimeOptions(fp32=True), CPU)
    reference = random_transformer()
    for (name, got), (_, want) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert got.dtype == torch.float32 or name.endswith("rope.bands")
        assert torch.equal(got.float(), want.float()), name
    by_hand = random_transformer()
    for m in by_hand.modules():
        if isinstance(m, ExpertLinear):
            m.weight.data = m.weight.data.float()
    with torch.no_grad():
        got, want, bf16 = model(*tiny_inputs()), by_hand(*tiny_inputs()), reference_velocities()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(got[0], bf16[0])
    for g, b in zip(got, bf16):
        assert (g - b).abs().max() / b.abs().max() < 0.05


def test_fp32_and_fp8_are_exclusive():
    with pytest.raises(ValueError, match="--fp32 and --fp8"):
        RuntimeOptions(fp32=True, fp8=True)
    assert RuntimeOptions(fp32=True).loads_on_host


def test_attention_choice_reaches_the_model(monkeypatch):
    chosen = []
    monkeypatch.setattr(MagiHumanTransformer, "set_attention_backend", lambda self, name: chosen.append(name))
    place_transformer(random_transformer(), RuntimeOptions(attention="flex"), CPU)
    local = random_transformer(dict(TINY_TRANSFORMER_CONFIG, local_attn_layers=(1,)))
    place_transformer(local, RuntimeOptions(attention="sdpa"), CPU)  # CPU: the dense mask stays
    assert chosen == ["flex", "sdpa"]
    with pytest.raises(ValueError, match="Hopper GPUs|needs FlashAttention-3"):
        place_transformer(random_transformer(), RuntimeOptions(attention="fa3"), CPU)
