"""RuntimeOptions and the CLI's choice names (magihuman.runtime.options): torch-free, validated."""

from __future__ import annotations

import subprocess
import sys

import pytest

from magihuman.runtime.options import ATTENTION_CHOICES, OFFLOAD_MODES, RuntimeOptions


def test_options_module_does_not_import_torch():
    code = "import sys, magihuman.runtime.options; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_attention_choices_name_registered_kernels():
    from magihuman.model import attention

    # auto is a rule, fa3 registers itself when flash_attn_interface is installed; the rest are always there
    assert set(ATTENTION_CHOICES) - {"auto", "fa3"} <= set(attention.available_attention_backends())


def test_runtime_options_validation():
    options = RuntimeOptions(fp8=True, fp8_gemm=True, offload=OFFLOAD_MODES, blocks_per_group=2)
    assert options.loads_on_host and not RuntimeOptions().loads_on_host
    assert RuntimeOptions(offload=("components",)).loads_on_host and RuntimeOptions(shard=True).loads_on_host
    with pytest.raises(ValueError, match=r"unknown offload mode\(s\) \['disk'\]"):
        RuntimeOptions(offload=("disk",))
    with pytest.raises(ValueError, match="blocks_per_group must be >= 1, got 0"):
        RuntimeOptions(blocks_per_group=0)
    with pytest.raises(ValueError, match="pick one"):
        RuntimeOptions(shard=True, offload=("blocks",))
    with pytest.raises(ValueError, match="set fp8=True too"):
        RuntimeOptions(fp8_gemm=True)


def test_fp32_follows_the_flag_and_a_trained_demo(monkeypatch):
    """--fp32 sets RuntimeOptions.fp32; --demo turns it on when it runs the trained toy bundle (trained in float32),
    not for the random bundle and not together with --fp8."""
    import magihuman.demo.bundle as bundle
    from magihuman.cli.generate import _runtime_options
    from magihuman.cli.options import GenerateOptions

    def options(**fields):
        return GenerateOptions(prompt="A man says hello.", **fields)

    monkeypatch.setattr(bundle, "demo_is_trained", lambda: False)
    assert not _runtime_options(options(demo=True)).fp32
    assert _runtime_options(options(fp32=True)).fp32
    monkeypatch.setattr(bundle, "demo_is_trained", lambda: True)
    assert _runtime_options(options(demo=True)).fp32
    assert not _runtime_options(options()).fp32
    chosen = _runtime_options(options(demo=True, fp8=True))
    assert chosen.fp8 and not chosen.fp32


def test_a_trained_demo_renders_the_toy_frame_size_unless_a_size_is_given(monkeypatch):
    """The toy models were trained on 128x128 frames; the real model's default (448x256) stays for real roots."""
    import magihuman.demo.bundle as bundle
    from magihuman.cli.generate import _build_request
    from magihuman.cli.options import GenerateOptions

    def size(**fields):
        request = _build_request(GenerateOptions(prompt="A man says hello.", **fields))
        return request.width, request.height

    monkeypatch.setattr(bundle, "demo_is_trained", lambda: True)
    assert size(demo=True) == (128, 128)
    assert size(demo=True, width=256) == (256, 128)
    assert size(demo=True, width=256, height=192) == (256, 192)
    default = size()
    assert default != (128, 128)
    monkeypatch.setattr(bundle, "demo_is_trained", lambda: False)
    assert size(demo=True) == default
