"""FSDP2 sharding (magihuman.runtime.sharding): two gloo ranks on CPU (shard ratio, bit-exact forward,
with FP8 weights too). NCCL is untested."""

from __future__ import annotations

import json

import pytest
import torch

from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG, random_transformer
from magihuman.runtime.fp8 import enable_fp8_weights, weight_bytes
from magihuman.runtime.sharding import shard_transformer

from conftest import spawned_rank, tiny_inputs


def _shard_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks share the test machine's cores
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    with spawned_rank():
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
            video_max_diff=float((video - expected[0]).abs().max()),
            audio_max_diff=float((audio - expected[1]).abs().max()),
            repeat_equal=bool(torch.equal(video, video2)),
            all_dtensor=all(hasattr(p, "to_local") for p in model.parameters()),
        )
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)


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
