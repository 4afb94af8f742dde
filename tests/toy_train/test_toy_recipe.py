"""``magihuman toy train --quick``: every stage runs, resumes, and the result is a checkpoint root that the
pipeline loads and runs unchanged (base, distill, the LoRA)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import magihuman.cli.app as cli
from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline
from magihuman.train.toy_recipe import LORA_FILE, STAGES, TOY_ROPE_BANDS
from train.helpers import latent_dataset, write_latent_cache

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_work(tmp_path_factory):
    work = tmp_path_factory.mktemp("toy") / "work"
    result = runner.invoke(cli.app, ["toy", "train", str(work), "--quick", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return work


def test_every_stage_is_recorded_with_its_time(quick_work):
    for stage in STAGES:
        record = json.loads((quick_work / "stages" / f"{stage}.done").read_text())
        assert record["seconds"] >= 0
    for run in ("video_vae", "audio_vae", "turbo_vae"):
        assert (quick_work / "runs" / run / "loss.csv").is_file()


def test_a_second_run_skips_finished_stages(quick_work):
    result = runner.invoke(cli.app, ["toy", "train", str(quick_work), "--quick"])
    assert result.exit_code == 0, result.output
    assert "start" not in result.output


def test_bundle_runs_through_the_pipeline(quick_work):
    root = quick_work / "bundle"
    # the base stage trains on the formula's RoPE bands; the voice stage swaps in TOY_ROPE_BANDS, which the
    # student keeps
    bands = load_file(str(quick_work / "runs" / "base" / "transformer" / "model.safetensors"))["adapter.rope.bands"]
    assert bands.tolist() == pytest.approx([1.0, 0.1, 0.01, 0.001])
    for model in ("base", "distill"):
        bands = load_file(str(root / model / "model.safetensors"))["adapter.rope.bands"]
        assert bands.tolist() == list(TOY_ROPE_BANDS), model
    for phase in ("voice_rebind", "voice_focus", "voice_mix", "voice_hair", "voice_wide", "voice_audio"):
        assert (quick_work / "runs" / phase / "loss.csv").is_file(), phase
    # the quick recipe's 6 clips, of which the base and the first four voice phases train on 4
    from magihuman.train.cache import read_index
    assert len(read_index(quick_work / "cache")) == 6
    assert [e["id"] for e in read_index(quick_work / "cache_early")] == [e["id"] for e in
                                                                          read_index(quick_work / "cache")][:4]
    for preset in ("distill", "base"):
        pipe = MagiHumanPipeline.from_official(root, preset=preset)
        if preset == "base":
            pipe.load_lora(root / LORA_FILE, 1.0)
        out = pipe("A woman with red hair says \"one\".", seconds=0.32, width=64, height=64, seed=1)
        assert out.frames.shape == (9, 64, 64, 3)
        assert out.audio.ndim == 2 and out.audio.shape[0] == 2


def test_bad_inputs_are_refused(tmp_path, quick_work):
    result = runner.invoke(cli.app, ["toy", "train", str(tmp_path / "w"), "--stage", "vae"])
    assert result.exit_code != 0 and "unknown --stage vae" in result.output
    file = tmp_path / "file"
    file.write_text("x")
    result = runner.invoke(cli.app, ["toy", "train", str(file)])
    assert result.exit_code != 0 and "is a file" in result.output
    result = runner.invoke(cli.app, ["toy", "train", str(quick_work)])  # full recipe over a quick folder
    assert result.exit_code != 0 and "other settings" in result.output
    result = runner.invoke(cli.app, ["toy", "train", str(tmp_path / "fresh"), "--quick", "--stage", "voice"])
    assert result.exit_code != 0 and "run the base stage first" in result.output
    from magihuman.train.toy_recipe import ToyRecipe, run_recipe
    with pytest.raises(ValueError, match="early_clips must be >= 0"):
        run_recipe(tmp_path / "neg", dataclasses.replace(ToyRecipe.quick(), early_clips=-1))
    bad_values = ((dict(lora_new_repeats=0), "lora_new_repeats must be >= 1.*got 0"),  # quick: 6 clips
                  (dict(lora_prior_clips=7), "lora_prior_clips must be between 0 and clips=6.*got 7"),
                  (dict(lora_prior_clips=-1), "lora_prior_clips must be between 0 and clips=6.*got -1"))
    for bad, message in bad_values:
        with pytest.raises(ValueError, match=message):
            run_recipe(tmp_path / "neg", dataclasses.replace(ToyRecipe.quick(), **bad))
    assert not (tmp_path / "neg").exists()


def test_ship_copies_the_bundle_with_its_record(tmp_path, quick_work, monkeypatch):
    import magihuman.demo.bundle as demo_bundle
    from magihuman.train.toy_ship import SHIPPED_FOLDERS

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"aggregate": {"toy.colour_accuracy": 0.5}}))
    dest = tmp_path / "toy_bundle"
    result = runner.invoke(cli.app, ["toy", "ship", str(quick_work), "--dest", str(dest), "--report",
                                     f"distill={report}", "--note", "first line", "--note", "second line"])
    assert result.exit_code == 0, result.output
    marker = json.loads((dest / "TOY_BUNDLE.json").read_text())
    assert marker["notes"] == ["first line", "second line"]
    assert marker["evaluation"]["distill"]["aggregate"] == {"toy.colour_accuracy": 0.5}
    assert set(marker["stage_seconds"]) == set(STAGES)
    assert marker["recipe"]["clips"] == 6
    for folder in SHIPPED_FOLDERS:
        assert (dest / folder).is_dir()
    assert not (dest / "cache").exists() and (dest / LORA_FILE).is_file()
    source = quick_work / "bundle" / "distill" / "model.safetensors"
    stored, original = load_file(dest / "distill" / "model.safetensors"), load_file(source)
    assert stored.keys() == original.keys() and marker["storage_dtype"] == "bfloat16"
    for key, value in original.items():  # matrices stored bf16, vectors (norm gains, RoPE bands) kept float32
        expected = value.to(torch.bfloat16) if value.dim() >= 2 and value.dtype == torch.float32 else value
        assert stored[key].dtype == expected.dtype and torch.equal(stored[key], expected), key
    assert any(v.dtype == torch.bfloat16 for v in stored.values())
    assert any(v.dtype == torch.float32 for v in stored.values())
    vae = torch.load(dest / "Wan2.2-TI2V-5B" / "Wan2.2_VAE.pth", weights_only=True)
    assert {v.dtype for v in vae.values() if v.dim() >= 2} == {torch.bfloat16}
    assert sum(marker["bytes"].values()) == sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()
                                                and p.name != "TOY_BUNDLE.json")
    full = runner.invoke(cli.app, ["toy", "ship", str(quick_work), "--dest", str(tmp_path / "fp32"),
                                   "--dtype", "float32"])
    assert full.exit_code == 0, full.output
    assert (tmp_path / "fp32" / "distill" / "model.safetensors").read_bytes() == source.read_bytes()
    assert sum(marker["bytes"].values()) < sum(json.loads((tmp_path / "fp32" / "TOY_BUNDLE.json").read_text())
                                               ["bytes"].values())
    bad = runner.invoke(cli.app, ["toy", "ship", str(quick_work), "--dest", str(tmp_path / "x"), "--dtype", "fp8"])
    assert bad.exit_code != 0 and "unknown storage dtype" in bad.output and not (tmp_path / "x").exists()
    shipped = (dest / "distill" / "model.safetensors").read_bytes()

    again = runner.invoke(cli.app, ["toy", "ship", str(quick_work), "--dest", str(dest)])
    assert again.exit_code != 0 and "already holds a bundle" in again.output
    (dest / "distill" / "model.safetensors").write_bytes(b"stale")
    replaced = runner.invoke(cli.app, ["toy", "ship", str(quick_work), "--dest", str(dest), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (dest / "distill" / "model.safetensors").read_bytes() == shipped
    assert not list(tmp_path.glob(".toy_bundle.*"))

    monkeypatch.delenv("MAGIHUMAN_DEMO_DIR", raising=False)
    monkeypatch.setattr(demo_bundle, "TOY_BUNDLE", dest)
    assert demo_bundle.demo_checkpoint_root() == (dest, True)
    pipe = MagiHumanPipeline.from_official(dest, preset="distill")
    assert pipe("A man says \"two\".", seconds=0.32, width=64, height=64, seed=0).frames.shape == (9, 64, 64, 3)


def test_ship_refuses_unfinished_work_and_bad_reports(tmp_path, quick_work):
    unfinished = tmp_path / "w"
    (unfinished / "stages").mkdir(parents=True)
    result = runner.invoke(cli.app, ["toy", "ship", str(unfinished), "--dest", str(tmp_path / "d")])
    assert result.exit_code != 0 and "unfinished stages" in result.output
    result = runner.invoke(cli.app, ["toy", "ship", str(quick_work), "--dest", str(tmp_path / "d"), "--report", "x"])
    assert result.exit_code != 0 and "LABEL=path" in result.output
    result = runner.invoke(cli.app, ["toy", "ship", str(quick_work), "--dest", str(tmp_path / "d"), "--report",
                                     f"a={tmp_path / 'none.json'}"])
    assert result.exit_code != 0 and "report 'a' not found" in result.output
    assert not (tmp_path / "d").exists()


def test_raising_a_step_budget_resumes_that_stage_only(quick_work):
    before = json.loads((quick_work / "stages" / "base.done").read_text())["seconds"]
    result = runner.invoke(cli.app, ["toy", "train", str(quick_work), "--quick", "--threads", "1", "--steps", "base=6"])
    assert result.exit_code == 0, result.output
    assert "base: budget raised from 4 to 6 steps" in result.output
    assert [line for line in result.output.splitlines() if line.endswith(": start")] == ["stage base: start"]
    assert json.loads((quick_work / "recipe.json").read_text())["base_steps"] == 6
    assert json.loads((quick_work / "stages" / "base.done").read_text())["seconds"] >= before
    rows = (quick_work / "runs" / "base" / "loss.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for bad in ("base=0", "vae=5", "base"):
        result = runner.invoke(cli.app, ["toy", "train", str(quick_work), "--quick", "--steps", bad])
        assert result.exit_code != 0 and "--steps takes STAGE=N" in result.output


def test_toy_transformer_init_opens_the_attention_logit_range():
    import torch

    from magihuman.demo.random_weights import random_transformer_state_dict
    from magihuman.train.toy_recipe import TOY_TRANSFORMER_CONFIG, toy_transformer_init

    state = toy_transformer_init(dict(TOY_TRANSFORMER_CONFIG), seed=3, qk_norm_gain=1.25)
    plain = random_transformer_state_dict(dict(TOY_TRANSFORMER_CONFIG), seed=3)
    assert state.keys() == plain.keys()
    qk = [k for k in state if k.endswith(("q_norm.weight", "k_norm.weight"))]
    others = [k for k in state if "norm" in k and k not in qk]
    assert len(qk) == 2 * TOY_TRANSFORMER_CONFIG["num_layers"] and others
    assert all(torch.all(state[k] == 0.25) for k in qk)  # stored as gain - 1
    assert all(torch.all(state[k] == 0.0) for k in others)
    for key in state:
        if "norm" not in key:
            assert torch.equal(state[key], plain[key]) and state[key].dtype == plain[key].dtype, key
    banded = toy_transformer_init(dict(TOY_TRANSFORMER_CONFIG), seed=3, rope_bands=(1.0, 0.5, 0.25, 0.125))
    assert plain["adapter.rope.bands"].tolist() == pytest.approx([1.0, 0.1, 0.01, 0.001])  # the formula's
    assert banded["adapter.rope.bands"].tolist() == [1.0, 0.5, 0.25, 0.125]
    assert all(torch.equal(banded[k], state[k]) for k in state if k != "adapter.rope.bands")
    for bad in ((1.0, 0.5), (1.0, 0.5, 0.0, 0.1), (1.0, float("nan"), 0.25, 0.1)):
        with pytest.raises(ValueError, match="rope_bands must be 4 positive numbers"):
            toy_transformer_init(dict(TOY_TRANSFORMER_CONFIG), seed=3, rope_bands=bad)


def test_toy_tokenizer_keeps_each_attribute_phrase_as_one_token():
    from magihuman.demo.random_codecs import _build_demo_tokenizer
    from magihuman.toy.clip import make_clip
    from magihuman.toy.vocabulary import toy_vocabulary

    tokenizer = _build_demo_tokenizer(1536, toy_vocabulary())
    for seed in range(4):
        a = make_clip(seed).attributes
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(make_clip(seed).caption)["input_ids"])
        for phrase in (f"{a.hair} hair", f"{a.shirt} shirt", f"{a.wall} wall", f"{a.voice} voice"):
            assert "\u2581" + phrase.replace(" ", "\u2581") in tokens, phrase
    swapped = tokenizer("pink hair, black shirt")["input_ids"], tokenizer("black hair, pink shirt")["input_ids"]
    assert sorted(swapped[0]) != sorted(swapped[1])  # the bag of tokens says which part has which colour
    plain = _build_demo_tokenizer(1536, ["zebra", "quux zebra"])  # "quux" has no token: the phrase stays split
    assert "\u2581quux\u2581zebra" not in plain.get_vocab() and "\u2581zebra" in plain.get_vocab()


def test_toy_captions_are_short_and_every_caption_word_is_one_token():
    """The caption's attribute tokens are few among all its tokens (docs/toy_world.md, why the captions are short):
    every word, including the quoted words and each line's first word, is one token and a caption is under 70."""
    from magihuman.demo.random_codecs import _build_demo_tokenizer
    from magihuman.toy.clip import make_clip
    from magihuman.toy.vocabulary import toy_bare_words, toy_vocabulary

    tokenizer = _build_demo_tokenizer(1536, toy_vocabulary(), toy_bare_words())
    for seed in range(6):
        clip = make_clip(seed)
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(clip.caption)["input_ids"])
        assert len(tokens) < 70, (len(tokens), clip.caption)
        for word in clip.attributes.words:  # in the sentence (after a quote or a space) and on the Dialogue line
            assert word in tokens or "\u2581" + word in tokens, (word, tokens)
        letters = {t for t in tokens if len(t.strip("\u2581")) == 1 and t.strip("\u2581").isalpha()}
        assert letters <= {"A", "\u2581a"}, letters  # no word falls apart into letters ("a" is the article)
    without = _build_demo_tokenizer(1536, toy_vocabulary())
    clip = make_clip(0)
    assert len(without(clip.caption)["input_ids"]) > len(tokenizer(clip.caption)["input_ids"]) + 10


def test_short_captions_keep_the_clips_of_the_long_caption_datasets():
    """make_caption still makes the draws the mood, delivery and camera sentences used to make, so a seed gives the
    same speech and blinks as in the datasets (and latent caches) made before the captions were shortened. The
    blink starts below were read from clips made by the long-caption code (commit 4697d03); without the retired
    draws they move."""
    import numpy as np

    from magihuman.toy import captions
    from magihuman.toy.clip import make_clip

    def blink_starts(seed: int) -> list[int]:
        return np.flatnonzero(np.diff(np.r_[1, make_clip(seed).eyes_open.astype(int)]) == -1).tolist()

    long_caption_blinks = [[16, 43], [6, 43], [19], [6, 32], [5, 29], [8, 34], [17], [19]]
    assert [blink_starts(s) for s in range(8)] == long_caption_blinks
    saved = captions._RETIRED_CHOICES
    try:
        captions._RETIRED_CHOICES = ()
        assert [blink_starts(s) for s in range(8)] != long_caption_blinks
    finally:
        captions._RETIRED_CHOICES = saved


def test_video_vae_crops_become_whole_length_from_video_long_from():
    """Short crops teach appearance cheaply; from ``video_long_from`` the crops span the whole clip, so the causal
    VAE also learns to carry its cache over all 13 latent frames (a VAE trained on 9-frame crops drifted)."""
    from magihuman.toy.clip import NUM_FRAMES
    from magihuman.train.toy_codec_data import video_crop
    from magihuman.train.toy_recipe import ToyRecipe

    recipe = ToyRecipe()
    assert recipe.video_long_from < recipe.video_vae_steps
    (short, short_weight), (long, long_weight) = (video_crop(recipe, recipe.video_long_from + k, 0) for k in (-1, 0))
    assert short.shape == (3, *recipe.video_crop[:1], recipe.video_crop[1], recipe.video_crop[1])
    assert long.shape == (3, NUM_FRAMES, recipe.video_long_crop[1], recipe.video_long_crop[1])
    assert short_weight.shape == (1, 1, *short.shape[-2:]) and long_weight.shape == (1, 1, *long.shape[-2:])
    assert recipe.video_long_crop[0] == NUM_FRAMES and -1.0 <= float(long.min()) <= float(long.max()) <= 1.0


def test_video_vae_alternates_face_crops_with_whole_length_ones_from_video_face_from():
    """From ``video_face_from`` every other step's crops hold the whole face box (a VAE trained on random crops
    drew a blank face; one shown the face learnt the mouth), and the steps between keep the whole-length crops."""
    from magihuman.toy.clip import NUM_FRAMES
    from magihuman.toy.drawing import FACE_REGION
    from magihuman.train.toy_codec_data import video_crop
    from magihuman.train.toy_recipe import ToyRecipe

    recipe = ToyRecipe()
    assert recipe.video_long_from < recipe.video_face_from < recipe.video_vae_steps
    x0, y0, x1, y1 = FACE_REGION
    box = (x1 - x0) * (y1 - y0) * recipe.face_weight
    for step in range(recipe.video_face_from - 1, recipe.video_face_from + 7):
        for index in range(2):
            pixels, weight = video_crop(recipe, step, index)
            if step > recipe.video_face_from and (step - recipe.video_face_from) % 2 == 1:
                assert pixels.shape == (3, recipe.video_face_crop[0], *(recipe.video_face_crop[1],) * 2)
                assert float((weight * (weight > 1)).sum()) == box  # the whole box lies inside the crop
            else:
                assert pixels.shape == (3, NUM_FRAMES, *(recipe.video_long_crop[1],) * 2)


def test_turbo_face_windows_hold_the_face_box_and_small_crops_are_refused():
    from magihuman.toy.drawing import FACE_REGION
    from magihuman.train.toy_codec_data import turbo_window
    from magihuman.train.toy_recipe import ToyRecipe

    pool = [(torch.zeros(48, 5, 8, 8), torch.zeros(3, 17, 128, 128))]
    recipe = ToyRecipe(turbo_face_rate=1.0)
    x0, y0, x1, y1 = FACE_REGION
    for step in range(6):
        weight = turbo_window(pool, recipe, step)[2]
        assert (weight > 1).sum(dim=(-1, -2)).eq((x1 - x0) * (y1 - y0)).all()
    with pytest.raises(ValueError, match="cannot hold the face box"):
        turbo_window(pool, ToyRecipe(turbo_crop=2, turbo_face_rate=1.0), 0)


def test_face_weight_map_weights_the_eyes_and_mouth_wherever_the_crop_lies():
    """The codecs' L1 counts the eyes and mouth ``face_weight`` times (the width-8 codecs drew a blank face)."""
    from magihuman.toy.drawing import FACE_REGION, HEIGHT, WIDTH
    from magihuman.train.toy_codec_data import face_weight_map
    from magihuman.train.toy_recipe import ToyRecipe

    recipe = ToyRecipe()
    assert recipe.face_weight > 1
    whole = face_weight_map(recipe, 0, 0, HEIGHT, WIDTH)[0, 0]
    x0, y0, x1, y1 = FACE_REGION
    assert (whole[y0:y1, x0:x1] == recipe.face_weight).all()
    assert int((whole == recipe.face_weight).sum()) == (x1 - x0) * (y1 - y0)
    crop = face_weight_map(recipe, 60, 70, 32, 32)[0, 0]  # rows 60..91, columns 70..101
    assert torch.equal(crop, whole[60:92, 70:102])
    assert (face_weight_map(recipe, 96, 96, 32, 32) == 1).all()  # the shirt corner: no face
    # the Turbo stage's mouth phase: the mouth box at its own weight, the rest of the face as before
    from magihuman.toy.drawing import MOUTH_REGION

    mouthed = face_weight_map(recipe, 0, 0, HEIGHT, WIDTH, mouth_weight=16.0)[0, 0]
    mx0, my0, mx1, my1 = MOUTH_REGION
    assert (mouthed[my0:my1, mx0:mx1] == 16).all() and int((mouthed == 16).sum()) == (mx1 - mx0) * (my1 - my0)
    assert torch.equal(mouthed == recipe.face_weight, (whole == recipe.face_weight) & (mouthed != 16))
    assert torch.equal(face_weight_map(recipe, 60, 70, 32, 32, mouth_weight=16.0)[0, 0], mouthed[60:92, 70:102])


def test_turbo_windows_carry_face_weights_of_their_pixels():
    from magihuman.train.toy_codec_data import turbo_window
    from magihuman.train.toy_recipe import ToyRecipe

    recipe = ToyRecipe(turbo_crop=2, turbo_batch=3, turbo_face_rate=0.0)
    pool = [(torch.zeros(48, 5, 8, 8), torch.zeros(3, 17, 128, 128)) for _ in range(2)]
    window, target, weight, first = turbo_window(pool, recipe, 7)
    assert window.shape[:2] == (3, 48) and window.shape[-2:] == (2, 2)
    assert weight.shape == (3, 1, 1, 32, 32) and target.shape[-2:] == (32, 32)
    assert set(weight.unique().tolist()) <= {1.0, recipe.face_weight}
    again = turbo_window(pool, recipe, 7, mouth_weight=16.0)  # the same draw, the mouth weighted
    assert torch.equal(again[0], window) and set(again[2].unique().tolist()) <= {1.0, recipe.face_weight, 16.0}


def test_first_chunk_windows_weight_frame_zero_and_leave_the_default_draws_alone():
    """``first_chunk`` draws first-chunk windows only; ``first_frame_weight`` multiplies frame 0's weights and
    nothing else; without them a window is drawn exactly as before."""
    from magihuman.train.toy_codec_data import turbo_window
    from magihuman.train.toy_recipe import ToyRecipe

    recipe = ToyRecipe(turbo_crop=0, turbo_batch=2, turbo_face_rate=0.5)
    pool = [(torch.randn(48, 5, 8, 8), torch.rand(3, 17, 128, 128)) for _ in range(3)]
    drawn = [turbo_window(pool, recipe, step) for step in range(8)]
    assert {first for *_, first in drawn} == {True, False}  # the default draws both kinds
    for step, (window, target, weight, first) in enumerate(drawn):
        again = turbo_window(pool, recipe, step, first_frame_weight=5.0)  # no first_chunk: the same draw
        assert torch.equal(again[0], window) and torch.equal(again[1], target) and again[3] == first
        if not first:
            assert torch.equal(again[2], weight)  # frame 0 of a later chunk is not the clip's first frame
    for step in range(8):
        window, target, weight, first = turbo_window(pool, recipe, step, first_chunk=True, first_frame_weight=5.0)
        plain = turbo_window(pool, recipe, step, first_chunk=True)[2]
        n = window.shape[2]
        assert first and target.shape[2] == 4 * n - 3 and window.shape[-1] == 8  # whole frames
        assert weight.shape == (2, 1, 4 * n - 3, 128, 128) and plain.shape == (2, 1, 1, 128, 128)
        assert torch.equal(weight[:, :, 0], 5.0 * plain[:, :, 0]) and (weight[:, :, 1:] == plain).all()
        assert all(any(torch.equal(w[:, 0], latent[:, 0]) for latent, _ in pool) for w in window)  # from latent 0


def test_the_turbo_first_frame_phase_trains_first_chunks_with_frame_zero_weighted(tmp_path, monkeypatch):
    from magihuman.train import toy_codec_data, toy_codec_stages, toy_recipe

    pool = [(torch.randn(48, 5, 8, 8), torch.rand(3, 17, 128, 128) * 2 - 1) for _ in range(2)]
    calls = []
    window = toy_codec_data.turbo_window

    def spy(pool_, recipe_, step, **kwargs):
        out = window(pool_, recipe_, step, **kwargs)
        calls.append((recipe_.turbo_crop, recipe_.turbo_batch, kwargs, out[2].shape, out[3]))
        return out

    monkeypatch.setattr(toy_codec_stages, "turbo_window", spy)
    monkeypatch.setattr(toy_codec_stages, "latent_pool", lambda work, recipe: pytest.fail("the pool was given"))
    recipe = dataclasses.replace(toy_recipe.ToyRecipe.quick(), turbo_first_steps=2, turbo_first_batch=3,
                                 turbo_first_weight=6.0)
    from magihuman.codecs.turbo_vae_config import TurboVAEDConfig
    from magihuman.codecs.turbo_vae_network import TurboVAEDecoder
    from magihuman.demo.random_codecs import turbo_vaed_structure

    decoder = TurboVAEDecoder(TurboVAEDConfig.from_dict(turbo_vaed_structure(recipe.turbo_channels), source="test"))
    before = [p.detach().clone() for p in decoder.parameters()]
    assert toy_codec_stages.turbo_first_frame_phase(tmp_path, dataclasses.replace(recipe, turbo_first_steps=0),
                                                    decoder, print, pool) == 0 and calls == []
    assert toy_codec_stages.turbo_first_frame_phase(tmp_path, recipe, decoder, print, pool) == 2
    assert (tmp_path / "runs" / "turbo_first").is_dir()
    assert any(not torch.equal(a, b) for a, b in zip(before, decoder.parameters()))
    assert len(calls) == 2 and all(crop == 0 and batch == 3 and first for crop, batch, _, _, first in calls)
    assert all(kw == {"stream": 33, "mouth_weight": recipe.turbo_mouth_weight, "first_chunk": True,
                      "first_frame_weight": 6.0} and shape[:2] == (3, 1) and shape[-1] == 128
               for _, _, kw, shape, _ in calls)


def test_the_turbo_mouth_phase_trains_the_decoder_in_place_on_the_stages_pool(tmp_path, monkeypatch):
    from magihuman.train import toy_codec_stages, toy_recipe

    pool = [(torch.randn(48, 5, 8, 8), torch.rand(3, 17, 128, 128) * 2 - 1) for _ in range(2)]
    encoded = []
    monkeypatch.setattr(toy_codec_stages, "latent_pool", lambda work, recipe: encoded.append(work) or pool)
    recipe = toy_recipe.ToyRecipe.quick()
    from magihuman.codecs.turbo_vae_config import TurboVAEDConfig
    from magihuman.codecs.turbo_vae_network import TurboVAEDecoder
    from magihuman.demo.random_codecs import turbo_vaed_structure

    decoder = TurboVAEDecoder(TurboVAEDConfig.from_dict(turbo_vaed_structure(recipe.turbo_channels), source="test"))
    before = [p.detach().clone() for p in decoder.parameters()]
    assert toy_codec_stages.turbo_mouth_phase(tmp_path, dataclasses.replace(recipe, turbo_mouth_steps=0), decoder,
                                        print) == 0 and encoded == []
    assert toy_codec_stages.turbo_mouth_phase(tmp_path, dataclasses.replace(recipe, turbo_mouth_steps=2), decoder,
                                        print, pool) == 2
    assert encoded == [] and (tmp_path / "runs" / "turbo_mouth").is_dir()  # the stage's pool, not encoded again
    assert any(not torch.equal(a, b) for a, b in zip(before, decoder.parameters()))
    assert toy_codec_stages.turbo_mouth_phase(tmp_path / "other", dataclasses.replace(recipe, turbo_mouth_steps=1),
                                        decoder, print) == 1 and encoded == [tmp_path / "other"]


def test_the_lora_trains_with_the_base_models_clean_frame_and_sigma_one_shares_and_prior_clips(tmp_path, monkeypatch):
    import magihuman.toy.dataset as toy_dataset
    import magihuman.train.config as train_config
    import magihuman.train.prepare as prepare
    from magihuman.train import toy_recipe

    seen = {}

    class Stop(Exception):
        pass

    def capture(**kwargs):
        seen[kwargs["mode"]] = kwargs
        raise Stop

    monkeypatch.setattr(train_config, "TrainConfig", capture)
    monkeypatch.setattr(toy_dataset, "write_dataset", lambda *a, **k: None)
    monkeypatch.setattr(prepare, "prepare_dataset", lambda *a, **k: None)
    merged = []
    monkeypatch.setattr(toy_recipe, "merge_caches", lambda parts, out: merged.append((parts, out)))
    recipe = toy_recipe.ToyRecipe(first_frame_rate=0.25, prefix_rate=0.15, range_rate=0.05, terminal_rate=0.35,
                                   early_clips=0)  # every clip: no early cache to build here
    (tmp_path / "runs" / "base_init").mkdir(parents=True)
    (tmp_path / "runs" / "base_init" / "model.safetensors").write_bytes(b"")
    for stage in (toy_recipe._stage_base, toy_recipe._stage_lora):
        with pytest.raises(Stop):
            stage(tmp_path, recipe, print)
    for mode in ("finetune", "lora"):
        assert {k: seen[mode][k] for k in ("first_frame_rate", "prefix_rate", "range_rate", "terminal_rate")} == {
            "first_frame_rate": 0.25, "prefix_rate": 0.15, "range_rate": 0.05, "terminal_rate": 0.35}, mode
    assert (seen["lora"]["learning_rate"], seen["lora"]["lora"].rank) == (1e-3, 16)  # lora_learning_rate, lora_rank
    # by default no loss region; base_mouth_weight weights the base's mouth cells, never the LoRA's
    assert seen["finetune"]["video_region"] is None and "video_region" not in seen["lora"]
    from magihuman.toy.drawing import MOUTH_REGION, SHIRT_REGION

    with pytest.raises(Stop):
        toy_recipe._stage_base(tmp_path, toy_recipe.ToyRecipe(base_mouth_weight=8.0, early_clips=0), print)
    assert (seen["finetune"]["video_region"], seen["finetune"]["video_region_weight"]) == (MOUTH_REGION, 8.0)
    # prior preservation: the LoRA's cyan clips, lora_new_repeats times, plus lora_prior_clips ordinary clips of the
    # base's cache
    assert merged == [([(tmp_path / "lora_cache", f"new{k}-", None) for k in range(5)]
                       + [(tmp_path / "cache", "prior-", 600)], tmp_path / "lora_mix_cache")]
    assert seen["lora"]["cache"] == tmp_path / "lora_mix_cache"
    with pytest.raises(Stop):
        toy_recipe._stage_lora(tmp_path, toy_recipe.ToyRecipe(lora_prior_clips=0), print)
    assert seen["lora"]["cache"] == tmp_path / "lora_cache" and len(merged) == 1
    assert seen["lora"]["extra_video_regions"] == [(*SHIRT_REGION, 4.0)]  # lora_shirt_weight: the new colour's part
    with pytest.raises(Stop):
        toy_recipe._stage_lora(tmp_path, toy_recipe.ToyRecipe(lora_prior_clips=0, lora_shirt_weight=1.0), print)
    assert seen["lora"]["extra_video_regions"] == []


def test_the_codec_stages_draw_every_shirt_colour_the_held_out_one_included():
    from magihuman.toy.palette import HELD_OUT_SHIRT_COLOURS, SHIRT_COLOURS
    from magihuman.train import toy_recipe
    from magihuman.train.toy_codec_data import codec_clip

    recipe = toy_recipe.ToyRecipe()
    assert set(recipe.codec_shirt_colours) == set(SHIRT_COLOURS) | set(HELD_OUT_SHIRT_COLOURS)
    drawn = {codec_clip(recipe, 3, 0, i).attributes.shirt for i in range(40)}
    assert "cyan" in drawn and len(drawn) >= 5
    only = toy_recipe.ToyRecipe(codec_shirt_colours=("cyan",))
    assert {codec_clip(only, 3, 0, i).attributes.shirt for i in range(3)} == {"cyan"}


def test_the_base_stage_starts_from_the_recipes_rope_bands(tmp_path, monkeypatch):
    """``rope_bands`` reaches the base's initial checkpoint (``adapter.rope.bands``), which training then keeps."""
    import magihuman.train.config as train_config
    from magihuman.train import toy_recipe

    class Stop(Exception):
        pass

    def stop(**kwargs):
        raise Stop

    monkeypatch.setattr(train_config, "TrainConfig", stop)
    with pytest.raises(Stop):
        toy_recipe._stage_base(tmp_path, toy_recipe.ToyRecipe(rope_bands=toy_recipe.TOY_ROPE_BANDS, early_clips=0),
                                print)
    bands = load_file(str(tmp_path / "runs" / "base_init" / "model.safetensors"))["adapter.rope.bands"]
    assert bands.tolist() == [1.0, 0.5, 0.25, 0.125]


def test_the_voice_stage_swaps_the_bands_then_chains_its_phases(tmp_path, monkeypatch):
    """Rebind (the base's objective on the new bands), focus (first frame and voice clean, mouth weighted), mix (the
    base's objective with a share of voice-clean samples), hair (the mix with the hair weighted), wide (the hair
    phase on every clip; the phases before it see the first ``early_clips``), audio (wide with the audio loss
    weighted): each starts from the one before's output, the last one becomes the bundle's base; phases of 0 steps
    are skipped and a wrong band count is refused before training."""
    from types import SimpleNamespace

    import magihuman.train.trainer as trainer_module
    from magihuman.model.checkpoint import save_official_checkpoint
    from magihuman.toy.drawing import HAIR_CAP_REGION, MOUTH_REGION
    from magihuman.train import toy_recipe
    from magihuman.train.cache import read_index

    base = tmp_path / "runs" / "base" / "transformer"
    state = toy_recipe.toy_transformer_init(dict(toy_recipe.TOY_TRANSFORMER_CONFIG), seed=3)
    save_official_checkpoint(state, base)
    (base / "magihuman_transformer.json").write_text(json.dumps(toy_recipe.TOY_TRANSFORMER_CONFIG))
    configs = []

    class FakeTrainer:  # copies its start checkpoint to its output, as a run of 0 updates would
        def __init__(self, config):
            configs.append(config)

        def train(self):
            output = configs[-1].output / "transformer"
            shutil.copytree(configs[-1].base, output)
            return SimpleNamespace(output=output)

    monkeypatch.setattr(trainer_module, "Trainer", FakeTrainer)
    write_latent_cache(tmp_path / "cache", latent_dataset(5))
    recipe = toy_recipe.ToyRecipe(clips=5, early_clips=3)
    toy_recipe._stage_voice(tmp_path, recipe, print)
    rebind, focus, mix, hair, wide, audio = configs
    banded = load_file(str(rebind.base / "model.safetensors"))
    assert banded["adapter.rope.bands"].tolist() == list(toy_recipe.TOY_ROPE_BANDS)
    assert all(torch.equal(banded[k], v) for k, v in state.items() if k != "adapter.rope.bands")
    assert focus.base == rebind.output / "transformer" and mix.base == focus.output / "transformer"
    assert (rebind.steps, focus.steps, mix.steps) == (1000, 1000, 800)
    assert rebind.video_region is None and rebind.audio_condition_rate == 0 and rebind.first_frame_rate == 0.3
    assert (focus.first_frame_rate, focus.audio_condition_rate, focus.text_dropout) == (1.0, 1.0, 0.0)
    assert tuple(focus.video_region) == tuple(MOUTH_REGION) and focus.video_region_weight == 8.0
    assert (mix.first_frame_rate, mix.audio_condition_rate, mix.video_region_weight) == (0.3, 0.3, 4.0)
    assert mix.text_dropout == rebind.text_dropout > 0
    assert hair.base == mix.output / "transformer" and hair.steps == 1000 and hair.seed == mix.seed + 1
    assert (hair.audio_condition_rate, tuple(hair.video_region), hair.video_region_weight) == (0.3, MOUTH_REGION, 4.0)
    assert [tuple(r) for r in hair.extra_video_regions] == [(*HAIR_CAP_REGION, 4.0)] and not mix.extra_video_regions
    assert wide.base == hair.output / "transformer" and wide.steps == 1500 and wide.seed == mix.seed + 2
    assert (wide.audio_condition_rate, wide.video_region_weight, wide.extra_video_regions) == (
        hair.audio_condition_rate, hair.video_region_weight, hair.extra_video_regions)
    assert audio.base == wide.output / "transformer" and audio.steps == 4000 and audio.seed == mix.seed + 3
    assert (audio.audio_loss_weight, wide.audio_loss_weight) == (4.0, 1.0) and audio.cache == tmp_path / "cache"
    assert audio.extra_video_regions == wide.extra_video_regions and audio.video_region_weight == 4.0
    early = tmp_path / "cache_early"
    assert {c.cache for c in (rebind, focus, mix, hair)} == {early} and wide.cache == tmp_path / "cache"
    assert [e["id"] for e in read_index(early)] == ["clip0", "clip1", "clip2"]
    shipped = load_file(str(tmp_path / "bundle" / "base" / "model.safetensors"))
    assert shipped["adapter.rope.bands"].tolist() == list(toy_recipe.TOY_ROPE_BANDS)

    configs.clear()  # no phases, no swap: the base passes through
    toy_recipe._stage_voice(tmp_path, toy_recipe.ToyRecipe(voice_rope_bands=None, voice_rebind_steps=0,
                                                           voice_focus_steps=0, voice_mix_steps=0,
                                                           voice_hair_steps=0, voice_wide_steps=0,
                                                           voice_audio_steps=0), print)
    assert configs == []
    kept = load_file(str(tmp_path / "bundle" / "base" / "model.safetensors"))["adapter.rope.bands"]
    assert kept.tolist() == pytest.approx([1.0, 0.1, 0.01, 0.001])

    with pytest.raises(FileNotFoundError, match="run the base stage first"):
        toy_recipe._stage_voice(tmp_path / "w2", recipe, print)
    shutil.copytree(base, tmp_path / "w2" / "runs" / "base" / "transformer")
    with pytest.raises(ValueError, match="rope_bands must be 4 positive numbers"):
        toy_recipe._stage_voice(tmp_path / "w2", toy_recipe.ToyRecipe(voice_rope_bands=(1.0, 0.5)), print)
    assert configs == []
    # early_clips 0, or not below the clip count: every clip throughout
    write_latent_cache(tmp_path / "w3" / "cache", latent_dataset(2))
    shutil.copytree(base, tmp_path / "w3" / "runs" / "base" / "transformer")
    toy_recipe._stage_voice(tmp_path / "w3", toy_recipe.ToyRecipe(clips=2, early_clips=2), print)
    assert {c.cache for c in configs} == {tmp_path / "w3" / "cache"} and len(configs) == 6
    assert not (tmp_path / "w3" / "cache_early").exists()


def test_the_distill_stage_passes_the_recipes_clean_condition_shares(monkeypatch, tmp_path):
    """The student is distilled with the recipe's first-frame, clean-prefix and clean-range shares (the shipped
    student's long clips depend on them: docs/toy_world.md)."""
    import magihuman.train.distill as distill
    from magihuman.train import toy_recipe

    seen = []

    class Recorder:
        def __init__(self, config):
            seen.append(config)

        def train(self):
            raise RuntimeError("recorded")

    monkeypatch.setattr(distill, "Distiller", Recorder)
    recipe = toy_recipe.ToyRecipe(distill_first_frame_rate=0.25, distill_prefix_rate=0.4, distill_range_rate=0.15)
    with pytest.raises(RuntimeError, match="recorded"):
        toy_recipe._stage_distill(tmp_path, recipe, print)
    assert (seen[0].first_frame_rate, seen[0].prefix_rate, seen[0].range_rate) == (0.25, 0.4, 0.15)
    assert (seen[0].steps, seen[0].seed) == (recipe.distill_steps, recipe.seed)
