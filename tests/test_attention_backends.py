"""Attention backend choice (the backend-choice section of magihuman.model.attention): monkeypatched
FA3 availability and GPU capability, and a fake ``flash_attn_interface`` module."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from magihuman.demo.random_weights import random_transformer
from magihuman.model import attention
from magihuman.model.attention import fa3_attention, pick_attention_backend, resolve_attention_backend
from magihuman.model.packing import LocalWindow

from conftest import reference_velocities, rel_l2, tiny_inputs


@pytest.fixture(scope="module")
def reference():
    return reference_velocities()


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(attention, "_BACKENDS", dict(attention._BACKENDS))


@pytest.mark.parametrize(
    "device, fa3_installed, capability, expected",
    [("cpu", True, (9, 0), "sdpa"), ("cuda", True, (9, 0), "fa3"), ("cuda:1", True, (9, 0), "fa3"),
     ("cuda", True, (8, 0), "sdpa"), ("cuda", True, (10, 0), "sdpa"), ("cuda", False, (9, 0), "sdpa")],
)
def test_pick_attention_backend(monkeypatch, fresh_registry, device, fa3_installed, capability, expected):
    monkeypatch.setattr(attention, "_fa3_importable", lambda: fa3_installed)
    monkeypatch.setattr(attention, "_cuda_capability", lambda _: capability)
    assert pick_attention_backend(device) == expected
    assert ("fa3" in attention.available_attention_backends()) == (expected == "fa3")


def test_resolve_attention_backend(monkeypatch, fresh_registry):
    monkeypatch.setattr(attention, "_fa3_importable", lambda: False)
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    assert resolve_attention_backend("flex", "cpu") == "flex"
    with pytest.raises(ValueError, match="needs FlashAttention-3"):
        resolve_attention_backend("fa3", "cuda")
    monkeypatch.setattr(attention, "_fa3_importable", lambda: True)
    monkeypatch.setattr(attention, "_cuda_capability", lambda _: (8, 9))
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
    model.set_attention_backend(attention.register_fa3_backend())
    with torch.no_grad():
        video, audio = model(*tiny_inputs())
    assert len(calls) == 1 + len(model.block.layers)
    assert torch.equal(video, reference[0]) and torch.equal(audio, reference[1])


@pytest.mark.parametrize(
    "choice, device, local, expected",
    [("auto", "cuda", True, "flex"), ("sdpa", "cuda:0", True, "flex"), ("auto", "cuda", False, "sdpa"),
     ("auto", "cpu", True, "sdpa"), ("math", "cuda", True, "math"), ("flex", "cpu", False, "flex")],
)
def test_local_window_layers_on_cuda_run_flex(monkeypatch, fresh_registry, choice, device, local, expected):
    """The 1080p SR DiT (local-window layers) gets block-sparse FlexAttention instead of a dense N x N
    mask on CUDA (architecture.md §6.2); CPU keeps SDPA, and other kernels are left as chosen."""
    monkeypatch.setattr(attention, "_fa3_importable", lambda: False)
    assert resolve_attention_backend(choice, device, local_window_layers=local) == expected


def test_fa3_with_local_window_layers_stays_fa3(monkeypatch, fresh_registry):
    """FA3 already hands masked layers to FlexAttention itself (fa3_attention), so the rule leaves it."""
    monkeypatch.setattr(attention, "_fa3_importable", lambda: True)
    monkeypatch.setattr(attention, "_cuda_capability", lambda _: (9, 0))
    assert resolve_attention_backend("auto", "cuda", local_window_layers=True) == "fa3"
    with pytest.raises(ValueError, match="must name a torch device"):
        resolve_attention_backend("auto", "gpu0")
