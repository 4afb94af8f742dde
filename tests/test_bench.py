"""Smoke test of benchmarks/bench_stages.py in its CPU mode (tiny configs), and its FLOP formula."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from magihuman.model.packing import LocalWindow, TokenLayout

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stages.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_stages", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_stages"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_stages", None)


def test_cpu_tiny_benchmark_reports_every_stage(bench, tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    code = bench.main(["--cpu-tiny", "--seconds", "0.2", "--width", "64", "--height", "64",
                       "--sr-sizes", "128x64,64x768", "--steps", "2", "--sr-steps", "1", "--text-tokens", "16",
                       "--warmup", "0", "--repeats", "1",
                       "--json", str(json_path)])
    assert code == 0
    table = capsys.readouterr().out
    stages = ["text encode", "denoise (distill)", "SR 128x64", "SR 64x768 (local attn)", "video decode 64x64",
              "video decode 128x64", "video decode 64x768", "audio decode"]
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["stage"] for r in rows] == stages
    for stage in stages:
        assert f"| {stage} |" in table
    for row in rows:
        assert row["note"] == "" and row["seconds"] > 0
        assert row["peak_gb"] is None  # CPU: no GPU memory to report
    dit = {r["stage"]: r for r in rows if r["tflops"] is not None}
    assert set(dit) == {"denoise (distill)", "SR 128x64", "SR 64x768 (local attn)"}
    for row in dit.values():
        assert row["tflops"] > 0 and row["seconds_per_step"] > 0
    # 0.2 s -> 6 audio latents, 2 latent frames; 64x64 -> 4x4 latent -> 2*2*2 video tokens; + 16 text.
    assert dit["denoise (distill)"]["tokens"] == 8 + 6 + 16 and dit["denoise (distill)"]["steps"] == 2
    assert dit["SR 64x768 (local attn)"]["tokens"] == 2 * 24 * 2 + 6 + 16


def test_local_attention_pairs_match_the_dense_mask(bench):
    for frames, per_frame, radius in ((5, 6, 1), (7, 4, 2), (3, 8, 5)):
        layout = TokenLayout(frames, 2, per_frame // 2, 5, 9)
        window = LocalWindow.of(layout, radius)
        expected = int(window.dense().sum())
        got = bench.local_attention_pairs(layout.total_tokens, layout.video_tokens, frames, radius)
        assert got == expected


def test_15b_flop_count_at_the_official_base_shape(bench):
    per_token = bench.per_token_block_params({})
    assert per_token == 10_912_645_120
    # 5 s at 448x256: 126 audio latents, 32 latent frames of 8x14 video tokens, 200 text tokens.
    nv, na, nt = 32 * 8 * 14, 126, 200
    n = nv + na + nt
    flops = bench.dit_forward_flops({}, video_tokens=nv, audio_tokens=na, text_tokens=nt, frames=32)
    expected = 2 * n * per_token + 40 * 4 * n * n * 128 * 40 + 2 * 5120 * (2 * (192 * nv + 64 * na) + 3584 * nt)
    assert flops == expected
    assert math.isclose(flops / 1e12, 97.88, rel_tol=1e-4)  # ~98 TFLOP per forward


def test_memory_and_cfg_flags(bench, capsys):
    settings, _ = bench.parse_args(["--cpu-tiny", "--fp8-gemm", "--no-batch-cfg", "--preset", "base"])
    assert settings.fp8 and settings.fp8_gemm and not settings.batch_cfg and settings.preset == "base"
    settings, _ = bench.parse_args(["--cpu-tiny", "--fp8"])
    assert settings.fp8 and not settings.fp8_gemm and settings.batch_cfg
    code = bench.main(["--cpu-tiny", "--preset", "base", "--fp8", "--seconds", "0.2", "--width", "64", "--height",
                       "64", "--sr-sizes", "", "--steps", "1", "--text-tokens", "8", "--warmup", "0"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| denoise (base) |" in out and "fp8=True" in out and "batch_cfg=True" in out
