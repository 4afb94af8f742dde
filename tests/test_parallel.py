"""Ulysses sequence parallelism (architecture.md §6.4) on CPU with gloo and 2 processes.

The cp=2 cases run in one spawned 2-process job (``_cp2_job``, set up from torchrun-style
environment variables on a free 127.0.0.1 port) that writes each rank's outputs to
disk; the tests compare them here with the single-process model on the same weights and inputs.
Tolerance: bf16 level, ``rel_l2 < 1e-2`` (the two paths run the same kernels on different row
counts, so GEMM rounding may differ; measured: float32-ulp level, ~1e-7). Both sides run with one
intra-op thread: the CPU kernels round differently with another thread count, and the denoising
loop amplifies such differences to ~1e-2.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from magihuman.demo.random_weights import TINY_TRANSFORMER_CONFIG, random_transformer
from magihuman.model.packing import TokenLayout
from magihuman.model.sequence_parallel import (
    SequenceParallel,
    TokenChunk,
    init_sequence_parallel,
    is_output_rank,
    shutdown_sequence_parallel,
    split_sizes,
)
from magihuman.sampling.config import SamplerConfig
from magihuman.sampling.loop import denoise
from magihuman.sampling.records import Latents, TextConditioning

from conftest import rel_l2

CP = 2
TOLERANCE = 1e-2
#: Tiny model with 4 query heads and 2 K/V heads, so cp=2 divides both.
SP_CONFIG = {**TINY_TRANSFORMER_CONFIG, "num_query_groups": 2}
#: Same, with local attention in mm and shared layers (window +-1 latent frame over 4 frames).
LOCAL_CONFIG = {**SP_CONFIG, "local_attn_layers": (1, 2, 3)}
DENOISE_CONFIG = SamplerConfig(num_steps=3, cfg_number=2, update="unipc")

#: name -> (config, batch, (T, h, w), audio A, text Nt, forward kwargs). N = T*(h/2)*(w/2) + A + Nt.
CASES = {
    "even": (SP_CONFIG, 1, (3, 4, 6), 9, 5, {}),  # N = 18 + 9 + 5 = 32, split 16/16 inside the video
    "uneven": (SP_CONFIG, 2, (3, 4, 6), 9, 4, {}),  # N = 31, split 16/15, batch 2
    "local": (LOCAL_CONFIG, 1, (4, 4, 4), 13, 3, {"frame_receptive_field": 1}),  # N = 16 + 13 + 3 = 32
    "v1": (SP_CONFIG, 1, (3, 4, 4), 9, 4, {"coords_style": "v1"}),  # N = 25, split 13/12
    "tiny_n": (SP_CONFIG, 1, (1, 2, 2), 0, 0, {}),  # N = 1: rank 1 holds no token
}


def make_inputs(batch, video_thw, audio, text, seed=0):
    """Unpacked model inputs ``[B, 48, T, h, w]``, ``[B, A, 64]``, ``[B, Nt, 32]``, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = video_thw
    return (
        torch.randn(batch, 48, t, h, w, generator=g),
        torch.randn(batch, audio, 64, generator=g),
        torch.randn(batch, text, SP_CONFIG["text_in_channels"], generator=g),
    )


def denoise_inputs():
    video, audio, text = make_inputs(1, (3, 4, 4), 9, 5, seed=7)
    negative = make_inputs(1, (1, 2, 2), 1, 6, seed=8)[2]
    return video, audio, text, negative


#: Batched CFG through sequence parallelism: two samples with 3 and 5 real text tokens, padded to 5.
RAGGED_LENGTHS = (3, 5)


def ragged_inputs():
    video, audio, text = make_inputs(2, (4, 4, 4), 13, 5, seed=9)
    text[0, RAGGED_LENGTHS[0]:] = 0  # sample 0's padding
    return video, audio, text


# ----------------------------------------------------------------------------------- spawned job
def _cp2_job(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank of the cp=2 job, set up as torchrun would.

    Runs every case, the all-to-alls, a failed forward (architecture.md §6.4) and denoise."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sp = init_sequence_parallel()  # gloo: no CUDA here
    try:
        results = {"all_to_all": _round_trip(sp)}
        results["env"] = {
            "rank": sp.rank, "world_size": sp.world_size, "backend": dist.get_backend(),
            "output_rank": is_output_rank(), "cp1_is_none": init_sequence_parallel(cp_size=1) is None,
        }
        try:
            init_sequence_parallel(cp_size=3)
        except ValueError as exc:
            results["env"]["cp3_error"] = str(exc)
        models = {}
        for name, (config, batch, thw, audio, text, kwargs) in CASES.items():
            key = id(config)
            if key not in models:
                models[key] = random_transformer(config, seed=0)
                models[key].enable_sequence_parallel(sp)
            with torch.no_grad():
                results[name] = models[key](*make_inputs(batch, thw, audio, text), **kwargs)
        model = models[id(SP_CONFIG)]
        # architecture.md §6.4: a forward that raises (v1 with one text token) leaves nothing behind.
        try:
            with torch.no_grad():
                model(*make_inputs(1, (3, 4, 4), 9, 1), coords_style="v1")
            results["failed_forward_raised"] = False
        except ValueError as exc:
            results["failed_forward_raised"] = str(exc)
        # Ranks given different inputs all raise instead of hanging in an all-to-all.
        try:
            with torch.no_grad():
                model(*make_inputs(1, (3, 4, 6), 9, 4 + rank))
            results["mismatch_raised"] = False
        except ValueError as exc:
            results["mismatch_raised"] = str(exc)
        with torch.no_grad():
            results["after_failure"] = model(*make_inputs(1, (3, 4, 6), 9, 4))
        # denoise calls the model unchanged (cond + negative calls: two token counts per step).
        video, audio, text, negative = denoise_inputs()
        results["denoise"] = denoise_pair(model, video, audio, text, negative, config=DENOISE_CONFIG)
        # batched CFG: one batch-2 call with padded text and per-sample lengths (ragged attention inside
        # the all-to-alls; per-sample RoPE tables split by rows); v1 so the tables really differ.
        local = models[id(LOCAL_CONFIG)]
        with torch.no_grad():
            results["ragged_v1"] = local(*ragged_inputs(), coords_style="v1", frame_receptive_field=1,
                                         text_lengths=RAGGED_LENGTHS)
        results["denoise_batched"] = denoise_pair(model, video, audio, text, negative, config=DENOISE_CONFIG,
                                             batch_cfg=True)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other rank may be inside a collective
        raise
    shutdown_sequence_parallel()


def _round_trip(sp: SequenceParallel) -> dict:
    """Scatter/gather heads and the variable all-gather against slices of a full tensor, sizes 3/2."""
    g = torch.Generator().manual_seed(3)
    b, n, d, hq, hkv = 2, 5, 8, 4, 2
    q_full = torch.randn(b, n, hq, d, generator=g).bfloat16()
    k_full = torch.randn(b, n, hkv, d, generator=g).bfloat16()
    v_full = torch.randn(b, n, hkv, d, generator=g).bfloat16()
    sizes = split_sizes(n, sp.world_size)
    chunk = TokenChunk(tuple(sizes), sp.rank, (n, 0, 0))
    q, k, v = sp.scatter_heads(chunk.take(q_full, 1), chunk.take(k_full, 1), chunk.take(v_full, 1), sizes)
    qh, kh = hq // sp.world_size, hkv // sp.world_size
    scattered = (
        torch.equal(q, q_full[:, :, sp.rank * qh:(sp.rank + 1) * qh])
        and torch.equal(k, k_full[:, :, sp.rank * kh:(sp.rank + 1) * kh])
        and torch.equal(v, v_full[:, :, sp.rank * kh:(sp.rank + 1) * kh])
    )
    back = sp.gather_heads(q, sizes)
    positions = torch.arange(float(n))[None, :, None].expand(b, n, 3)
    return {
        "sizes": sizes,
        "scatter_is_head_slice": scattered,
        "round_trip_exact": torch.equal(back, chunk.take(q_full, 1)),
        "gather_tokens_exact": torch.equal(sp.gather_tokens(chunk.take(positions, 1), sizes), positions),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The spawned ranks run with one thread; so does the single-process reference."""
    yield


@pytest.fixture(scope="module")
def cp2(tmp_path_factory):
    """Run the 2-process gloo job once; returns ``[rank0_results, rank1_results]``."""
    folder = tmp_path_factory.mktemp("cp2")
    mp.spawn(_cp2_job, args=(CP, _free_port(), str(folder)), nprocs=CP, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(CP)]


def single_process(name):
    config, batch, thw, audio, text, kwargs = CASES[name]
    model = random_transformer(config, seed=0)
    with torch.no_grad():
        return model(*make_inputs(batch, thw, audio, text), **kwargs)


def denoise_pair(model, video, audio, text, negative, **kwargs):
    """denoise on the records, as a (video, audio) tuple (saved across processes, loaded weights_only)."""
    out = denoise(model, Latents(video, audio), TextConditioning(text, negative), **kwargs)
    return out.video, out.audio


def assert_matches(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_l2(g, w) < TOLERANCE


# ----------------------------------------------------------------------------------- cp=2 vs cp=1
@pytest.mark.parametrize("name", list(CASES))
def test_cp2_matches_single_process(cp2, name):
    """(a) even split, (b) odd N with batch 2, (c) local attention with a window that matters, (d) v1."""
    want = single_process(name)
    for rank in range(CP):
        assert_matches(cp2[rank][name], want)
    for a, b in zip(cp2[0][name], cp2[1][name]):  # every rank returns the same full output
        assert torch.equal(a, b)


def test_local_window_matters():
    """Case (c) is only meaningful if the window changes the output."""
    config, batch, thw, audio, text, _ = CASES["local"]
    model = random_transformer(config, seed=0)
    inputs = make_inputs(batch, thw, audio, text)
    with torch.no_grad():
        windowed = model(*inputs, frame_receptive_field=1)
        full = model(*inputs, frame_receptive_field=-1)
    assert rel_l2(windowed[0], full[0]) > 0.05


def test_all_to_all_round_trip(cp2):
    for rank in range(CP):
        result = cp2[rank]["all_to_all"]
        assert result["sizes"] == [3, 2]
        assert result["scatter_is_head_slice"]
        assert result["round_trip_exact"]
        assert result["gather_tokens_exact"]


def test_init_from_torchrun_env(cp2):
    for rank in range(CP):
        env = cp2[rank]["env"]
        assert (env["rank"], env["world_size"], env["backend"]) == (rank, CP, "gloo")
        assert env["output_rank"] == (rank == CP - 1)  # only the last rank writes (architecture.md §6.4)
        assert env["cp1_is_none"]
        assert "positive divisor of the world size 2" in env["cp3_error"]


def test_failed_forward_leaves_nothing_stale(cp2):
    """architecture.md §6.4: v1 with one text token raises ValueError on every rank, and so do inputs that
    differ between ranks; the next forward (another N) works."""
    config, batch, thw, audio, text, _ = CASES["even"]
    model = random_transformer(config, seed=0)
    with torch.no_grad():
        want = model(*make_inputs(1, (3, 4, 6), 9, 4))
    for rank in range(CP):
        assert "coords_style='v1'" in cp2[rank]["failed_forward_raised"]
        assert "different inputs" in cp2[rank]["mismatch_raised"]
        assert_matches(cp2[rank]["after_failure"], want)


def test_denoise_with_sp_model(cp2):
    model = random_transformer(SP_CONFIG, seed=0)
    video, audio, text, negative = denoise_inputs()
    want = denoise_pair(model, video, audio, text, negative, config=DENOISE_CONFIG)
    for rank in range(CP):
        assert_matches(cp2[rank]["denoise"], want)


def test_batched_cfg_with_sp_model(cp2):
    """issue 5: ragged (batched-CFG) forwards under cp=2 equal the single-process ones."""
    local = random_transformer(LOCAL_CONFIG, seed=0)
    with torch.no_grad():
        want = local(*ragged_inputs(), coords_style="v1", frame_receptive_field=1, text_lengths=RAGGED_LENGTHS)
    model = random_transformer(SP_CONFIG, seed=0)
    video, audio, text, negative = denoise_inputs()
    want_denoise = denoise_pair(model, video, audio, text, negative, config=DENOISE_CONFIG, batch_cfg=True)
    for rank in range(CP):
        assert_matches(cp2[rank]["ragged_v1"], want)
        assert_matches(cp2[rank]["denoise_batched"], want_denoise)


# ----------------------------------------------------------------------------------- single process
def test_split_sizes():
    assert split_sizes(32, 2) == [16, 16]
    assert split_sizes(31, 2) == [16, 15]
    assert split_sizes(10, 4) == [3, 3, 2, 2]
    assert split_sizes(3653, 8) == [457] * 5 + [456] * 3
    assert split_sizes(1, 2) == [1, 0]
    assert split_sizes(7, 1) == [7]
    for n in range(20):
        for cp in (1, 2, 3, 4, 8):
            sizes = split_sizes(n, cp)
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError):
        split_sizes(4, 0)
    with pytest.raises(ValueError):
        split_sizes(-1, 2)


def test_token_chunk_local_groups():
    """A chunk spanning video/audio/text gets its own group sizes (expert linears split by them)."""
    layout = TokenLayout(frames=3, patch_rows=2, patch_cols=3, audio_tokens=9, text_tokens=4)  # 18 + 9 + 4
    sizes = tuple(split_sizes(layout.total_tokens, 2))
    first, second = (TokenChunk(sizes, r, layout.groups) for r in range(2))
    assert (first.start, first.stop, first.groups) == (0, 16, (16, 0, 0))
    assert (second.start, second.stop, second.groups) == (16, 31, (2, 9, 4))
    video, audio, text = torch.arange(18)[None], torch.arange(9)[None], torch.arange(4)[None]
    local = second.take_groups((video, audio, text))
    assert local[0].tolist() == [[16, 17]] and local[1].shape[1] == 9 and local[2].shape[1] == 4
    assert second.take(torch.arange(31)).tolist() == list(range(16, 31))
    middle = TokenChunk((10, 10, 11), 1, layout.groups)  # rows 10..19: video 10..17, audio 0..1
    assert middle.groups == (8, 2, 0)


def test_cp_must_divide_heads():
    model = random_transformer(SP_CONFIG, seed=0)  # 4 query heads, 2 K/V heads
    for cp in (3, 4):
        with pytest.raises(ValueError, match=rf"cp={cp} must divide the query heads \(4\) and the K/V heads \(2\)"):
            model.enable_sequence_parallel(SequenceParallel(None, 0, cp))
    assert model.sequence_parallel is None
    one_kv_head = random_transformer(dict(TINY_TRANSFORMER_CONFIG, num_query_groups=1), seed=0)  # only cp=1
    with pytest.raises(ValueError, match=r"one of \[1\]"):
        one_kv_head.enable_sequence_parallel(SequenceParallel(None, 0, 2))
    model.enable_sequence_parallel(SequenceParallel(None, 1, 2))
    assert model.sequence_parallel.world_size == 2
    model.enable_sequence_parallel(None)
    assert model.sequence_parallel is None


def test_15b_allows_cp_1_2_4_8():
    with torch.device("meta"):
        from magihuman.model.transformer import MagiHumanTransformer

        model = MagiHumanTransformer()
    for cp in (1, 2, 4, 8):
        model.enable_sequence_parallel(SequenceParallel(None, 0, cp))
    with pytest.raises(ValueError, match=r"\[1, 2, 4, 8\]"):
        model.enable_sequence_parallel(SequenceParallel(None, 0, 5))


def test_sequence_parallel_rejects_bad_rank():
    with pytest.raises(ValueError):
        SequenceParallel(None, 2, 2)


def test_init_without_torchrun_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.is_initialized()
    assert init_sequence_parallel() is None
    assert SequenceParallel.from_env() is None
    with pytest.raises(ValueError, match="torchrun"):
        init_sequence_parallel(cp_size=2)
    assert not dist.is_initialized()
