"""LoRA through PEFT on the expert linears: learning a fifth clip, scale 0, fusing, files, bad adapters."""

from __future__ import annotations

import copy

import pytest
import torch

from magihuman.demo.random_weights import random_transformer
from magihuman.pipeline.lora import load_lora, lora_layers
from magihuman.pipeline.lora_files import LoraError, parse_lora_spec
from magihuman.train.config import TrainConfig
from magihuman.train.trainer import Trainer
from magihuman.train.validation import sample_like

from .helpers import TRAIN_TINY_CONFIG, latent_dataset

LORA_STEPS = 150


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


@pytest.fixture(scope="module")
def lora_run(trained_base, tmp_path_factory):
    """A rank-8 LoRA (attention + MLP, every expert) trained for 150 steps at lr 3e-3 on a fifth clip."""
    base = copy.deepcopy(trained_base.model).restore_official_dtypes()
    fifth = latent_dataset(5)[4]
    run = tmp_path_factory.mktemp("lora")
    config = TrainConfig(mode="lora", cache=run, base=run, output=run, steps=LORA_STEPS, batch_size=2,
                         learning_rate=3e-3, mixed_precision="fp32", max_grad_norm=None, checkpoint_every=LORA_STEPS,
                         text_dropout=0.0, first_frame_rate=0.2, lora={"rank": 8, "alpha": 8})
    model = copy.deepcopy(base)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(config, model=model, samples=[fifth], negative=trained_base.negative).train()
    finally:
        torch.set_num_threads(threads)
    return base, model.eval(), fifth, result


def _inputs(sample):
    generator = torch.Generator().manual_seed(5)
    video = torch.randn(1, *sample.video_latent.shape, generator=generator)
    audio = torch.randn(1, *sample.audio_latent.shape, generator=generator)
    return video, audio, sample.text_embeds[None]


def test_lora_learns_a_fifth_clip(lora_run):
    """Figures (this machine): LoRA loss (first/last 10-step means) 4.04 -> 1.03; the base's 8-step sample
    of the fifth caption is at relative L2 error 1.39 from the fifth clip's video latent, with the LoRA at
    scale 1 at 0.60."""
    base, trained, fifth, result = lora_run
    assert result.output.name == "lora.safetensors"
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < first / 3, f"LoRA loss {first:.3f} -> {last:.3f}"
    plain = load_lora_copy(base, result.output, 1.0)
    before = rel(sample_like(base, fifth, None, preset="distill")[0][0], fifth.video_latent)
    after = rel(sample_like(plain, fifth, None, preset="distill")[0][0], fifth.video_latent)
    assert after < 0.75 and after < before / 1.8, f"video rel. error: base {before:.3f}, with LoRA {after:.3f}"


def load_lora_copy(base, path, scale, **kwargs):
    model = copy.deepcopy(base)
    load_lora(model, path, scale, **kwargs)
    return model.eval()


def test_scale_zero_fuse_and_round_trip(lora_run):
    """Scale 0 = base bit for bit; the file round trip = the trained adapter bit for bit; fused vs unfused
    velocity rel. difference 6.5e-3 (bf16 rounding of the fused weights; the adapter itself moves the
    velocity by 1.21); on an FP8 base fused vs unfused 3.9e-2 (re-quantised weights), FP8 vs bf16 base 3.8e-2."""
    base, trained, fifth, result = lora_run
    inputs = _inputs(fifth)
    with torch.no_grad():
        reference = base(*inputs)[0]
        assert torch.equal(load_lora_copy(base, result.output, 0.0)(*inputs)[0], reference)
        unfused = load_lora_copy(base, result.output, 1.0)(*inputs)[0]
        # the run was fp32, so it trained over a float32 copy of the base: the file on that copy is the trained model
        assert torch.equal(load_lora_copy(copy.deepcopy(base).float(), result.output, 1.0)(*inputs)[0],
                           trained(*inputs)[0])
        fused = load_lora_copy(base, result.output, 1.0, fuse=True)(*inputs)[0]
        assert 0 < rel(fused, unfused) < 1e-2, rel(fused, unfused)
        assert rel(unfused, reference) > 0.1
        half = load_lora_copy(base, result.output, 0.5)(*inputs)[0]
        assert rel(half, reference) < rel(unfused, reference)
        from magihuman.runtime.fp8 import enable_fp8_weights

        fp8 = enable_fp8_weights(copy.deepcopy(base))
        fp8_unfused = load_lora_copy(fp8, result.output, 1.0)(*inputs)[0]
        fp8_fused = load_lora_copy(fp8, result.output, 1.0, fuse=True)(*inputs)[0]
        assert rel(fp8_fused, fp8_unfused) < 0.1 and rel(fp8_unfused, unfused) < 0.2


def test_two_adapters_act_together(lora_run):
    """Each LoRA layer adds the two halves in float32 (figures, this machine: 6.2e-8 from one adapter at
    scale 1); through the model the next bf16 block linear may round a one-ulp difference to the
    neighbouring bf16 value, so the velocities agree to bf16 precision (2.6e-3)."""
    base, _, fifth, result = lora_run
    model = copy.deepcopy(base)
    load_lora(model, result.output, 0.5)
    load_lora(model, result.output, 0.5)
    single_model = load_lora_copy(base, result.output, 1.0)
    with torch.no_grad():
        both = model(*_inputs(fifth))[0]
        single = single_model(*_inputs(fifth))[0]
        pair = [layer for layer in lora_layers(model) if layer.num_experts == 1][0]
        alone = [layer for layer in lora_layers(single_model) if layer.num_experts == 1][0]
        x = torch.randn(1, 7, pair.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        assert rel(pair(x, None), alone(x, None)) < 1e-6
    assert rel(both, single) < 1e-2
    assert {a for layer in lora_layers(model) for a in layer.active_adapters} == {"lora_0", "lora_1"}


def test_mismatched_adapter_is_refused_naming_keys(lora_run, tmp_path):
    _, _, _, result = lora_run
    wider = random_transformer(dict(TRAIN_TINY_CONFIG, hidden_size=128), seed=0)
    with pytest.raises(LoraError, match=r"wrong shape: .*block\.layers\.0\.attention\.linear_qkv\.lora_A\.weight"):
        load_lora(wider, result.output)
    deeper = random_transformer(dict(TRAIN_TINY_CONFIG, num_layers=1), seed=0)
    with pytest.raises(LoraError, match=r"name no block linear.*block\.layers\.1\."):
        load_lora(deeper, result.output)
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(LoraError, match="not a readable"):
        load_lora(deeper, bogus)


def test_parse_lora_spec():
    assert parse_lora_spec("a/style.safetensors:0.8") == (__import__("pathlib").Path("a/style.safetensors"), 0.8)
    assert parse_lora_spec("style.safetensors")[1] == 1.0
    with pytest.raises(LoraError, match="must be a number"):
        parse_lora_spec("style.safetensors:strong")


def test_lora_trains_on_an_fp8_base(tmp_path):
    """lora.fp8_base: the frozen block linears are stored in FP8 (as `generate --fp8`), the adapters train."""
    from magihuman.runtime.fp8 import FP8ExpertLinear

    small = dict(TRAIN_TINY_CONFIG, hidden_size=64, head_dim=16)
    model = random_transformer(small, seed=3)
    config = TrainConfig(mode="lora", cache=tmp_path, base=tmp_path, output=tmp_path / "run", steps=3, batch_size=2,
                         learning_rate=1e-2, mixed_precision="bf16", checkpoint_every=3,
                         lora={"rank": 4, "alpha": 4, "fp8_base": True, "targets": ["attention"]})
    result = Trainer(config, model=model, samples=latent_dataset(2), negative=torch.randn(4, 32)).train()
    bases = [layer.get_base_layer() for layer in lora_layers(model)]
    assert len(bases) == 4 and all(isinstance(b, FP8ExpertLinear) for b in bases)  # qkv and proj of 2 layers
    fresh = enable_fp8_weights_copy(small)
    load_lora(fresh, result.output)
    assert all(torch.equal(a.lora_B["lora_0"].weight, b.lora_B["default"].weight)
               for a, b in zip(lora_layers(fresh), lora_layers(model)))
    assert any(b.lora_B["default"].weight.abs().sum() > 0 for b in lora_layers(model))


def enable_fp8_weights_copy(config):
    from magihuman.runtime.fp8 import enable_fp8_weights

    return enable_fp8_weights(random_transformer(config, seed=3))


def test_an_fp32_lora_run_keeps_its_frozen_base_in_float32_and_a_bf16_one_in_the_official_dtypes(tmp_path):
    from magihuman.model.layers import ExpertLinear

    small = dict(TRAIN_TINY_CONFIG, hidden_size=64, head_dim=16)
    for precision, want in (("fp32", {torch.float32}), ("bf16", {torch.bfloat16})):
        model = random_transformer(small, seed=3).restore_official_dtypes()
        config = TrainConfig(mode="lora", cache=tmp_path, base=tmp_path, output=tmp_path / precision, steps=1,
                             batch_size=2, learning_rate=1e-2, mixed_precision=precision, checkpoint_every=1,
                             lora={"rank": 4, "alpha": 4, "targets": ["attention"]})
        Trainer(config, model=model, samples=latent_dataset(2), negative=torch.randn(4, 32)).train()
        frozen = {m.weight.dtype for m in model.modules() if isinstance(m, ExpertLinear)}
        assert frozen == want, (precision, frozen)


def test_checking_adapter_files_does_not_import_peft(tmp_path):
    """The command line checks ``--lora`` before loading anything; that check must not import PEFT (and with it
    transformers' modelling code and scipy), which a run without a LoRA would pay for at start-up."""
    import subprocess
    import sys

    code = ("import sys; from magihuman.pipeline.lora_files import LoraError, check_lora_specs\n"
            "assert check_lora_specs([]) == []\n"
            f"try:\n    check_lora_specs([{str(tmp_path / 'none.safetensors')!r}])\n"
            "except LoraError as exc:\n    print('refused:', exc)\n"
            "print(sorted(m for m in ('peft', 'transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "refused: --lora" in out and "not found" in out
    assert out.strip().endswith("[]")
