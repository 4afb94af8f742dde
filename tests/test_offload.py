"""Host offload (magihuman.runtime.offload) on tiny CPU models.

Runs here: block streaming with onload = offload = CPU (bit-exact outputs, group order, adapter kept
on the onload device; with FP8 weights too) and component offload through a fake ``.to()`` tracker
(order; one component on the device at a time). Real host-to-GPU copies and CUDA-stream prefetch are
untested.
"""

from __future__ import annotations

import types

import pytest
import torch

from magihuman.demo.random_weights import random_transformer
from magihuman.runtime.fp8 import FP8ExpertLinear, enable_fp8_weights
from magihuman.runtime.offload import ComponentOffload, enable_block_streaming, offload_idle_components, on_device

from conftest import reference_velocities, tiny_inputs


@pytest.fixture(scope="module")
def reference():
    return reference_velocities()


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
