"""Strict official checkpoint loading and writing (architecture.md §7.2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import zstandard
from safetensors import safe_open
from safetensors.torch import save_file

from magihuman.model import checkpoint
from magihuman.model.checkpoint import (
    INDEX_FILE,
    CheckpointError,
    describe_checkpoint,
    expected_from_module,
    load_official_state_dict,
    save_official_checkpoint,
)
from magihuman.model.checkpoint_files import safetensors_damage

from conftest import golden_case

_ST_TO_TORCH = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def tiny_state_dict() -> dict[str, torch.Tensor]:
    """A miniature of the official layout: f32 adapter/norms/heads, bf16 block linears, 1 mm + 1 shared layer."""
    sd = {
        "adapter.video_embedder.weight": torch.randn(16, 12),
        "adapter.video_embedder.bias": torch.randn(16),
        "adapter.rope.bands": torch.rand(4),
    }
    for i, nm in enumerate((3, 1)):
        p = f"block.layers.{i}."
        sd[p + "attention.pre_norm.weight"] = torch.randn(16 * nm)
        sd[p + "attention.linear_qkv.weight"] = torch.randn(24 * nm, 16).bfloat16()
        sd[p + "mlp.down_proj.weight"] = torch.randn(16 * nm, 32).bfloat16()
    sd["final_linear_video.weight"] = torch.randn(12, 16)
    return sd


def spec(sd: dict[str, torch.Tensor]) -> dict:
    return {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}


def load(folder, expected, **kw):
    return load_official_state_dict(folder, expected, progress=False, **kw)


def assert_bitwise_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
        assert torch.equal(got[k].view(torch.uint8), w.contiguous().view(torch.uint8)), k


def shard_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*-of-*.safetensors*"))


def read_index(folder: Path) -> dict:
    return json.loads((folder / INDEX_FILE).read_text())


def error_text(folder, expected, **kw) -> str:
    with pytest.raises(CheckpointError) as info:
        load(folder, expected, **kw)
    return str(info.value)


@pytest.fixture
def sd() -> dict[str, torch.Tensor]:
    return tiny_state_dict()


@pytest.fixture
def sharded(tmp_path, sd) -> Path:
    """Three plain shards plus an index."""
    folder = save_official_checkpoint(sd, tmp_path / "ckpt", max_shard_bytes=4000)
    assert len(shard_paths(folder)) == 3
    return folder


# ---------------------------------------------------------------------------------------------
# Golden checkpoint (the official sharded layout: index + 2 shards, bf16 block linears, f32 rest)
# ---------------------------------------------------------------------------------------------


def test_golden_checkpoint_loads_with_dtypes_preserved():
    folder = golden_case("dit_forward_a") / "checkpoint"
    expected, want = {}, {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            for k in fh.keys():
                sl = fh.get_slice(k)
                expected[k] = (tuple(sl.get_shape()), _ST_TO_TORCH[sl.get_dtype()])
                want[k] = fh.get_tensor(k)

    got = load(folder, expected)

    assert len(got) == 59
    assert got["block.layers.0.attention.linear_qkv.weight"].dtype == torch.bfloat16
    assert got["block.layers.5.mlp.up_gate_proj.weight"].dtype == torch.bfloat16
    assert got["adapter.rope.bands"].dtype == torch.float32
    assert got["final_norm_video.weight"].dtype == torch.float32
    assert_bitwise_equal(got, {k: want[k] for k in expected})


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_single_file_round_trip(tmp_path, sd):
    folder = save_official_checkpoint(sd, tmp_path / "single")

    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    assert describe_checkpoint(folder).index is None
    assert_bitwise_equal(load(folder, spec(sd)), sd)


def test_sharded_round_trip_writes_hf_index(sharded, sd):
    index = read_index(sharded)

    assert list(index["weight_map"]) == sorted(sd)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shard_paths(sharded)]
    assert [p.name for p in shard_paths(sharded)][0] == "model-00001-of-00003.safetensors"
    assert_bitwise_equal(load(sharded, spec(sd)), sd)


def test_result_follows_expected_order(sharded, sd):
    expected = dict(reversed(spec(sd).items()))
    assert list(load(sharded, expected)) == list(expected)


def test_sharded_zst_round_trip(tmp_path, sd):
    folder = save_official_checkpoint(sd, tmp_path / "zst", max_shard_bytes=4000, compress=True)

    assert [p.suffix for p in shard_paths(folder)] == [".zst"] * 3
    assert all(s.compressed for s in describe_checkpoint(folder).shards)
    assert_bitwise_equal(load(folder, spec(sd)), sd)


def test_compress_single_shard_still_uses_an_index(tmp_path, sd):
    folder = save_official_checkpoint(sd, tmp_path / "zst1", compress=True)

    assert sorted(p.name for p in folder.iterdir()) == [
        "model-00001-of-00001.safetensors.zst",
        INDEX_FILE,
    ]
    assert_bitwise_equal(load(folder, spec(sd)), sd)


def test_zst_is_preferred_over_plain_shard(tmp_path, sd):
    folder = save_official_checkpoint(sd, tmp_path / "both", max_shard_bytes=4000, compress=True)
    for zst in shard_paths(folder):
        Path(str(zst)[: -len(".zst")]).write_bytes(b"garbage, not a safetensors file")

    assert all(s.compressed for s in describe_checkpoint(folder).shards)
    assert_bitwise_equal(load(folder, spec(sd)), sd)


def test_multi_frame_zst_shard_is_read(tmp_path, sd):
    plain = save_official_checkpoint(sd, tmp_path / "plain", max_shard_bytes=10**9, compress=False)
    data = (plain / "model.safetensors").read_bytes()
    folder = save_official_checkpoint(sd, tmp_path / "frames", compress=True)
    cctx = zstandard.ZstdCompressor()
    half = len(data) // 2
    (folder / "model-00001-of-00001.safetensors.zst").write_bytes(
        cctx.compress(data[:half]) + cctx.compress(data[half:])
    )

    assert_bitwise_equal(load(folder, spec(sd)), sd)


def test_fp32_checkpoint_is_cast_to_expected_bf16_bitwise(tmp_path, sd):
    fp32 = {k: v.float() + 1e-3 * torch.randn(v.shape) for k, v in sd.items()}  # not bf16-representable
    folder = save_official_checkpoint(fp32, tmp_path / "fp32", max_shard_bytes=4000, compress=True)

    got = load(folder, spec(sd))

    qkv = "block.layers.0.attention.linear_qkv.weight"
    assert got[qkv].dtype == torch.bfloat16
    assert torch.equal(got[qkv].view(torch.int16), fp32[qkv].to(torch.bfloat16).view(torch.int16))
    assert_bitwise_equal(got, {k: fp32[k].to(sd[k].dtype) for k in sd})


def test_resave_removes_stale_layout_files(sharded, sd):
    save_official_checkpoint(sd, sharded)

    assert sorted(p.name for p in sharded.iterdir()) == ["model.safetensors"]
    assert_bitwise_equal(load(sharded, spec(sd)), sd)


def test_save_accepts_shared_and_non_contiguous_tensors(tmp_path):
    base = torch.randn(4, 6)
    sd = {"tied.a": base, "tied.b": base, "view.t": base.t(), "view.row": base[1]}

    folder = save_official_checkpoint(sd, tmp_path / "shared")

    assert_bitwise_equal(load(folder, spec(sd)), {k: v.contiguous() for k, v in sd.items()})


def test_expected_from_module_on_meta_device():
    with torch.device("meta"):
        module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    module[0].to(torch.bfloat16)

    assert expected_from_module(module) == {
        "0.weight": ((3, 4), torch.bfloat16),
        "0.bias": ((3,), torch.bfloat16),
        "1.weight": ((3,), torch.float32),
        "1.bias": ((3,), torch.float32),
    }


def test_save_rejects_bad_arguments(tmp_path, sd):
    with pytest.raises(ValueError, match="max_shard_bytes"):
        save_official_checkpoint(sd, tmp_path / "x", max_shard_bytes=0)
    with pytest.raises(ValueError, match="non-empty"):
        save_official_checkpoint({}, tmp_path / "x")


def test_malformed_expected_is_a_type_error(sharded):
    with pytest.raises(TypeError, match="adapter.rope.bands"):
        load(sharded, {"adapter.rope.bands": (4,)})


# ---------------------------------------------------------------------------------------------
# Key / shape mismatches
# ---------------------------------------------------------------------------------------------


def test_missing_key_is_named(sharded, sd):
    expected = spec(sd) | {"block.layers.9.mlp.down_proj.weight": ((16, 32), torch.bfloat16)}

    text = error_text(sharded, expected)

    assert "missing keys" in text and "block.layers.9.mlp.down_proj.weight" in text


def test_unexpected_key_in_index_and_shard_is_named(tmp_path, sd):
    folder = save_official_checkpoint(sd | {"extra.weight": torch.zeros(2)}, tmp_path / "c", max_shard_bytes=4000)

    text = error_text(folder, spec(sd))

    assert "unexpected keys" in text and "extra.weight" in text


def test_index_entry_absent_from_shard_is_missing_with_shard_name(sharded, sd):
    index = read_index(sharded)
    index["weight_map"]["adapter.rope.bands"] = "model-00003-of-00003.safetensors"  # it lives in shard 1
    (sharded / INDEX_FILE).write_text(json.dumps(index))

    text = error_text(sharded, spec(sd))

    assert "adapter.rope.bands  (the index lists it in model-00003-of-00003.safetensors" in text
    assert "stored in model-00001-of-00003.safetensors, but the index maps it to model-00003" in text


def test_extra_tensor_in_shard_not_in_index_is_unexpected(sharded, sd):
    shard = shard_paths(sharded)[1]
    with safe_open(str(shard), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors | {"stray.weight": torch.ones(3)}, str(shard))

    text = error_text(sharded, spec(sd))

    assert "stray.weight" in text and shard.name in text and "unexpected" in text


def test_expected_tensor_in_shard_but_not_in_index_is_missing(sharded, sd):
    index = read_index(sharded)
    del index["weight_map"]["final_linear_video.weight"]
    (sharded / INDEX_FILE).write_text(json.dumps(index))

    text = error_text(sharded, spec(sd))

    assert "final_linear_video.weight  (stored in model-00003-of-00003.safetensors, but the index does not" in text


def test_wrong_shape_shows_both_shapes(sharded, sd):
    expected = spec(sd) | {"block.layers.1.mlp.down_proj.weight": ((32, 16), torch.bfloat16)}

    text = error_text(sharded, expected)

    assert "block.layers.1.mlp.down_proj.weight: expected [32, 16], found [16, 32]" in text


def test_incompatible_dtype_is_reported(sharded, sd):
    text = error_text(sharded, spec(sd) | {"adapter.rope.bands": ((4,), torch.int64)})
    assert "adapter.rope.bands: the model has torch.int64" in text and "F32" in text


def test_all_problems_are_listed_in_one_error(sharded, sd):
    expected = spec(sd)
    del expected["adapter.video_embedder.bias"]  # -> unexpected
    expected["block.layers.7.attention.q_norm.weight"] = ((128,), torch.float32)  # -> missing
    expected["adapter.video_embedder.weight"] = ((16, 13), torch.float32)  # -> mis-shaped

    text = error_text(sharded, expected)

    assert "(missing: 1, unexpected: 1, mis-shaped: 1)" in text
    assert "block.layers.7.attention.q_norm.weight" in text
    assert "adapter.video_embedder.bias" in text
    assert "expected [16, 13], found [16, 12]" in text


def test_thousands_of_problems_are_truncated(sharded, sd):
    expected = spec(sd) | {f"ghost.{i}.weight": ((1,), torch.float32) for i in range(1000)}

    text = error_text(sharded, expected)

    assert "missing keys (the model needs them, the checkpoint lacks them): 1000" in text
    assert "... and 950 more" in text
    assert text.count("ghost.") == 50


def test_optional_key_may_be_absent_but_is_checked_when_present(tmp_path, sd):
    without = {k: v for k, v in sd.items() if k != "adapter.rope.bands"}
    folder = save_official_checkpoint(without, tmp_path / "no_bands", max_shard_bytes=4000)

    got = load(folder, spec(sd), optional={"adapter.rope.bands"})
    assert "adapter.rope.bands" not in got
    assert "adapter.rope.bands" in error_text(folder, spec(sd))  # not optional -> missing

    with_bad = save_official_checkpoint(sd | {"adapter.rope.bands": torch.rand(5)}, tmp_path / "bad_bands")
    text = error_text(with_bad, spec(sd), optional={"adapter.rope.bands"})
    assert "adapter.rope.bands: expected [4], found [5]" in text


# ---------------------------------------------------------------------------------------------
# Damaged and incomplete folders
# ---------------------------------------------------------------------------------------------


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_plain_shard_names_file(sharded, sd):
    shard = shard_paths(sharded)[2]
    truncate(shard)

    text = error_text(sharded, spec(sd))

    assert shard.name in text and "truncated" in text and "incomplete" in text
    assert "missing keys" not in text  # the damaged shard's keys are not reported as missing too


def test_truncated_single_file_names_file(tmp_path, sd):
    folder = save_official_checkpoint(sd, tmp_path / "single")
    truncate(folder / "model.safetensors", keep=0.001)

    text = error_text(folder, spec(sd))

    assert "model.safetensors" in text and "incomplete" in text and "missing keys" not in text


@pytest.mark.parametrize("keep", [0.9, 0.2, 0.0])
def test_truncated_zst_shard_names_file(tmp_path, sd, keep):
    folder = save_official_checkpoint(sd, tmp_path / "zst", max_shard_bytes=4000, compress=True)
    shard = shard_paths(folder)[1]
    truncate(shard, keep)

    text = error_text(folder, spec(sd))

    assert shard.name in text and "incomplete" in text


def test_corrupt_zst_and_truncated_plain_are_listed_together(tmp_path, sd):
    folder = save_official_checkpoint(sd, tmp_path / "zst", max_shard_bytes=4000, compress=True)
    first, _, third = shard_paths(folder)
    first.write_bytes(b"this is not zstd at all")
    third.rename(Path(str(third)[: -len(".zst")]))
    plain = save_official_checkpoint(sd, tmp_path / "p", max_shard_bytes=4000)
    Path(str(third)[: -len(".zst")]).write_bytes(shard_paths(plain)[2].read_bytes()[:-7])

    text = error_text(folder, spec(sd))

    assert first.name in text and "model-00003-of-00003.safetensors:" in text


def test_zst_truncated_after_header_is_found_while_loading(tmp_path):
    # Shards larger than one zstd block, so the header decodes and only the full read sees the cut.
    big = {f"w{i}": torch.randn(100_000) for i in range(3)}
    folder = save_official_checkpoint(big, tmp_path / "zst", max_shard_bytes=400_000, compress=True)
    first, second, third = shard_paths(folder)
    truncate(second, 0.95)
    truncate(third, 0.95)
    problems = checkpoint._Problems()
    checkpoint._read_headers(describe_checkpoint(folder).shards, problems)
    assert not problems  # the header pre-check cannot see these cuts

    text = error_text(folder, spec(big))

    assert second.name in text and third.name in text  # loading goes on verifying after the first
    assert first.name not in text


def test_missing_shard_file_is_named(sharded, sd):
    shard_paths(sharded)[1].unlink()

    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors") as info:
        describe_checkpoint(sharded)
    assert "incomplete" in str(info.value)


def test_missing_folder_is_file_not_found(tmp_path, sd):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(tmp_path / "nowhere", spec(sd))
    with pytest.raises(CheckpointError, match="nowhere"):
        describe_checkpoint(tmp_path / "nowhere")


def test_empty_folder_says_what_is_expected(tmp_path):
    with pytest.raises(CheckpointError, match="the folder is empty") as info:
        describe_checkpoint(tmp_path)
    assert "model.safetensors" in str(info.value) and INDEX_FILE in str(info.value)


def test_unrelated_folder_lists_what_was_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "weights").mkdir()

    with pytest.raises(CheckpointError, match=r"found: notes\.txt, weights/"):
        describe_checkpoint(tmp_path)


def test_repository_root_suggests_a_sub_checkpoint(tmp_path, sd):
    for name in ("base", "distill"):
        save_official_checkpoint(sd, tmp_path / name)
    (tmp_path / "turbo_vae").mkdir()

    with pytest.raises(CheckpointError) as info:
        load(tmp_path, spec(sd))

    text = str(info.value)
    assert "repository root containing checkpoints base, distill" in text
    assert f"e.g. {tmp_path / 'distill'}" in text


def test_corrupt_index_is_named(sharded, sd):
    (sharded / INDEX_FILE).write_text('{"weight_map": {"a": ')

    with pytest.raises(CheckpointError, match=INDEX_FILE.replace(".", r"\.")):
        load(sharded, spec(sd))


def test_tilde_paths_are_expanded(tmp_path, sd, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = save_official_checkpoint(sd, "~/ckpt", max_shard_bytes=1000)
    assert folder == tmp_path / "ckpt" and (tmp_path / "ckpt" / INDEX_FILE).is_file()
    assert describe_checkpoint("~/ckpt").folder == tmp_path / "ckpt"
    assert_bitwise_equal(load("~/ckpt", spec(sd)), sd)


def test_safetensors_damage_says_what_is_wrong(tmp_path, sd):
    path = save_official_checkpoint(sd, tmp_path / "one") / "model.safetensors"
    assert safetensors_damage(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert "truncated" in safetensors_damage(path)
    path.write_bytes(data[:4])
    assert "shorter than the 8-byte" in safetensors_damage(path)
    path.write_text("version https://git-lfs.github.com/spec/v1\n")
    assert "not a safetensors file" in safetensors_damage(path)


def test_split_modules_keep_the_old_import_names():
    from magihuman.model import checkpoint_files, checkpoint_writer

    assert checkpoint.CheckpointError is checkpoint_files.CheckpointError
    assert checkpoint.describe_checkpoint is checkpoint_files.describe_checkpoint
    assert checkpoint.save_official_checkpoint is checkpoint_writer.save_official_checkpoint
    assert checkpoint.write_atomic is checkpoint_writer.write_atomic
    assert issubclass(checkpoint.CheckpointNotFoundError, (checkpoint.CheckpointError, FileNotFoundError))
