"""Dataset manifests, buckets and the latent cache written by ``prepare`` (demo-bundle encoders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from magihuman.train.cache import (
    CacheError,
    load_negative,
    load_samples,
    merge_caches,
    read_index,
)
from magihuman.train.dataset import Bucket, DatasetError, choose_bucket, parse_buckets, read_dataset
from magihuman.train.prepare import prepare_dataset

from .helpers import latent_dataset, write_clip, write_latent_cache


def test_bucket_sizes_follow_the_pipeline():
    bucket = Bucket(448, 256, 4.0)
    # 4 s: 101 audio latents, 26 latent frames, 101 frames (pipeline.md 4.1)
    assert (bucket.audio_latents, bucket.latent_frames, bucket.pixel_frames) == (101, 26, 101)
    with pytest.raises(DatasetError, match="multiple of 32"):
        Bucket(450, 256, 4.0)


def test_choose_bucket_by_aspect_and_length():
    buckets = parse_buckets(["448x256", "256x448", "320x320"], [2, 4])
    assert choose_bucket(buckets, 1920, 1080, 5.0) == Bucket(448, 256, 4.0)
    assert choose_bucket(buckets, 720, 1280, 3.0) == Bucket(256, 448, 2.0)
    assert choose_bucket(buckets, 500, 480, 2.5) == Bucket(320, 320, 2.0)
    assert choose_bucket(buckets, 500, 480, 1.5) is None  # shorter than every length
    with pytest.raises(DatasetError, match="WIDTHxHEIGHT"):
        parse_buckets(["448by256"], [4])


def test_manifest_formats(tmp_path, monkeypatch):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.txt").write_text("a woman speaks\n")
    assert [(r.clip_id, r.caption) for r in read_dataset(tmp_path)] == [("a", "a woman speaks")]
    monkeypatch.chdir(tmp_path.parent)  # a relative folder path works too
    assert read_dataset(Path(tmp_path.name))[0].video.is_file()
    (tmp_path / "b.mp4").write_bytes(b"x")
    with pytest.raises(DatasetError, match="b.txt"):
        read_dataset(tmp_path)
    csv_file = tmp_path / "m.csv"
    csv_file.write_text("video,caption\na.mp4,one\nb.mp4,two\n")
    assert [r.caption for r in read_dataset(csv_file)] == ["one", "two"]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"video": "a.mp4", "caption": ""}) + "\n")
    with pytest.raises(DatasetError, match="caption is empty"):
        read_dataset(jsonl)
    jsonl.write_text(json.dumps({"video": "missing.mp4", "caption": "x"}) + "\n")
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(jsonl)


def test_prepare_writes_a_resumable_cache(tmp_path, demo_root):
    root = demo_root
    data = tmp_path / "clips"
    data.mkdir()
    for i in range(2):
        write_clip(data / f"c{i}.mp4", seed=i)
        (data / f"c{i}.txt").write_text(f"a person says hello number {i}")
    silent = tmp_path / "silent"
    silent.mkdir()
    write_clip(silent / "s.mp4", sound=False)
    (silent / "s.txt").write_text("a quiet person")
    buckets = parse_buckets(["64x64"], [0.32])
    with pytest.raises(DatasetError, match="no sound.*--video-only"):
        prepare_dataset(silent, tmp_path / "bad", root=root, buckets=buckets, progress=False)
    cache = prepare_dataset(data, tmp_path / "cache", root=root, buckets=buckets, progress=False)
    samples = load_samples(cache)
    # 0.32 s at 64x64: 9 audio latents, 3 latent frames of 4x4 (pipeline.md 4.1)
    assert [tuple(s.video_latent.shape) for s in samples] == [(48, 3, 4, 4)] * 2
    assert [tuple(s.audio_latent.shape) for s in samples] == [(9, 64)] * 2
    assert samples[0].text_embeds.shape[1] == 32 and load_negative(cache).shape[1] == 32
    assert not torch.equal(samples[0].video_latent, samples[1].video_latent)
    # resume: a removed entry is encoded again, the others are kept (same bytes as before)
    before = {e["id"]: (cache / e["file"]).read_bytes() for e in read_index(cache)}
    (cache / "samples" / "c1.safetensors").unlink()
    prepare_dataset(data, cache, root=root, buckets=buckets, progress=False)
    after = {e["id"]: (cache / e["file"]).read_bytes() for e in read_index(cache)}
    assert after == before  # deterministic: the re-encoded clip is bit-identical
    with pytest.raises(CacheError, match="other settings"):
        prepare_dataset(data, cache, root=root, buckets=buckets, video_only=True, progress=False)
    video_only = prepare_dataset(silent, tmp_path / "vo", root=root, buckets=buckets, video_only=True, progress=False)
    assert load_samples(video_only)[0].audio_latent is None


def test_merge_caches_takes_the_asked_samples_under_new_ids_and_refuses_mismatches(tmp_path):
    new = write_latent_cache(tmp_path / "new", latent_dataset(2, seed=1), negative=1.0)
    prior = write_latent_cache(tmp_path / "prior", latent_dataset(5, seed=2))
    assert merge_caches([(new, "new-", None), (prior, "prior-", 3)], tmp_path / "mix") == 5
    merged = load_samples(tmp_path / "mix")
    assert [s.clip_id for s in merged] == ["new-clip0", "new-clip1", "prior-clip0", "prior-clip1", "prior-clip2"]
    originals = load_samples(new) + load_samples(prior)[:3]
    for got, want in zip(merged, originals, strict=True):
        assert got.caption == want.caption and torch.equal(got.video_latent, want.video_latent)
        assert torch.equal(got.audio_latent, want.audio_latent) and torch.equal(got.text_embeds, want.text_embeds)
    assert torch.equal(load_negative(tmp_path / "mix"), torch.full((3, 32), 1.0))  # the first part's
    with pytest.raises(CacheError, match="exists"):
        merge_caches([(new, "new-", None)], tmp_path / "mix")
    with pytest.raises(CacheError, match="holds 5 samples, fewer than the 6"):
        merge_caches([(new, "new-", None), (prior, "prior-", 6)], tmp_path / "mix2")
    other = write_latent_cache(tmp_path / "other", latent_dataset(1), root="/elsewhere")
    with pytest.raises(CacheError, match="root='/elsewhere'"):
        merge_caches([(new, "new-", None), (other, "o-", None)], tmp_path / "mix3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix", "new", "other", "prior"]  # no staging left
