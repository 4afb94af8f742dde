"""Turbo-VAED student decoder: config rules, module tree, strict loading, sliding window, tiling.

Architecture: architecture.md §11.4. Golden case ``codec_turbo_vaed`` (tiny widths 4/8/12/16, shipped
structure flags, 17 latent frames at 2x2 -> 65 frames at 32x32). Gates (figures: docs/parity.md):

* bf16 load + decode vs ``decode.video_bf16``: rel_l2 <= 0.1. It is bit for bit on the golden machine's
  CPU kernels (AVX-512); within tolerance elsewhere, since bf16 kernels round differently.
* ``decode.frames_uint8`` from our bf16 decode through ``video_to_uint8``: >= 99 % equal, max |diff|
  <= 2 (gated to the golden machine's CPU kernels).
* float32 load + decode vs ``f32.decode.video``: ``rtol=1e-5, atol=5e-5`` plus mean |diff| <= 5e-6;
  the remaining differences are float32 summation order, not architecture.
* A single pass over all 17 frames differs from the windowed decode by more than 1.0, so the window is
  part of the model (architecture.md §11.4).

Tiling (random ``save_random_turbo_vae`` model, float32, one latent frame): the decoder's receptive field
is about 13 latent pixels, so on random weights only wide overlaps are near-exact. Gates on max |diff| vs
untiled, tiles along the width (latent 2x64) and the height (64x2): tile 48 / overlap 32: 5e-3; tile 32 /
overlap 8: 0.15. The blend arithmetic itself, corners included, is exact to 1e-6 with a context-free
stand-in decoder (2-D tiles over 3 windows).
"""

from __future__ import annotations

import argparse
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from magihuman.codecs.turbo_vae import (
    TURBO_VAED_CHECKPOINT_NAME,
    TURBO_VAED_CONFIG_NAME,
    TurboVAE,
    TurboVAEDConfig,
    TurboVAEDecoder,
    load_turbo_vaed,
    sliding_window_plan,
)
from magihuman.demo.random_codecs import save_random_turbo_vae
from magihuman.model.checkpoint import CheckpointError
from magihuman.pipeline.media import video_to_uint8

from conftest import golden_case, max_abs, rel_l2, require_golden_cpu

CONFIG_NAME = "TurboV3-Wan22-tiny.json"
CKPT_NAME = "checkpoint-tiny.ckpt"


def shipped_config_dict(channels=(64, 128, 256, 512)) -> dict:
    """The shipped structure (architecture.md §11.4, values [3rd-party, unverified]) with the given widths."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 48,
        "decoder_block_out_channels": list(channels),
        "decoder_layers_per_block": [2, 2, 2, 3, 3],
        "decoder_spatio_temporal_scaling": [False, True, True, True],
        "decoder_spatio_only": [False, True, False, False],
        "decoder_is_dw_conv": [False] * 5,
        "decoder_dw_kernel_size": 3,
        "decoder_causal": False,
        "patch_size": 2,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-6,
        "scaling_factor": 1.0,
        "use_unpatchify": True,
        "first_chunk_size": 7,
        "step_size": 7,
        "spatial_compression_ratio": 16,
        "temporal_compression_ratio": 4,
    }


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case():
    folder = golden_case("codec_turbo_vaed")
    return folder, load_file(str(folder / "turbo_vaed.safetensors"))


@pytest.fixture(scope="module")
def vae_f32(case):
    return TurboVAE.from_files(case[0] / CONFIG_NAME, case[0] / CKPT_NAME, dtype=torch.float32)


@pytest.fixture(scope="module")
def vae_bf16(case):
    return TurboVAE.from_files(case[0] / CONFIG_NAME, case[0] / CKPT_NAME)  # default bf16, as the pipeline


@pytest.fixture(scope="module")
def f32_video(case, vae_f32):
    return vae_f32.decode(case[1]["decode.latent"])


@pytest.fixture(scope="module")
def bf16_video(case, vae_bf16):
    return vae_bf16.decode(case[1]["decode.latent"])


@pytest.fixture(scope="module")
def golden_ckpt(case):
    return torch.load(case[0] / CKPT_NAME, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def random_vae(tmp_path_factory):
    folder = save_random_turbo_vae(tmp_path_factory.mktemp("turbo") / "turbo_vae", seed=0)
    return TurboVAE.from_official(folder, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Config (architecture.md §11.4)
# --------------------------------------------------------------------------------------------------


def test_config_reads_golden_json_and_reverses_lists(case):
    config = TurboVAEDConfig.from_json(case[0] / CONFIG_NAME)
    assert config.decoder_block_out_channels == (4, 8, 12, 16)
    assert config.decoder_channels == (16, 12, 8, 4)
    assert config.decoder_layers == (3, 3, 2, 2, 2)  # [0] = mid block
    assert config.up_block_upsamples == (True, True, True, False)
    assert config.up_block_spatio_only == (False, False, True, False)
    assert (config.first_chunk_size, config.step_size) == (7, 7)
    assert config.temporal_upsample_factor == 4 and config.spatial_upsample_factor == 16
    assert config.resnet_norm_eps == 1e-6 and config.scaling_factor == 1.0
    assert TurboVAEDConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("key", ["patch_size", "latent_channels", "first_chunk_size", "decoder_layers_per_block"])
def test_config_missing_key_is_named(key):
    values = shipped_config_dict()
    del values[key]
    with pytest.raises(ValueError, match=key):
        TurboVAEDConfig.from_dict(values)


def test_config_lists_every_missing_key():
    values = shipped_config_dict()
    del values["step_size"], values["use_unpatchify"]
    with pytest.raises(ValueError, match=r"\['use_unpatchify', 'step_size'\]"):
        TurboVAEDConfig.from_dict(values)


def test_config_unused_keys_may_be_absent():
    values = shipped_config_dict()
    for key in ("in_channels", "patch_size_t", "scaling_factor", "decoder_dw_kernel_size", "spatial_compression_ratio"):
        del values[key]
    config = TurboVAEDConfig.from_dict(values)
    assert config.in_channels is None and config.scaling_factor is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("patch_size", 4),
        ("decoder_causal", True),
        ("use_unpatchify", False),
        ("decoder_is_dw_conv", [True, False, False, False, False]),
        ("temporal_compression_ratio", 8),
        ("decoder_block_out_channels", [64, 128, 256]),
        ("decoder_spatio_only", [0, 1, 0, 0]),
        ("first_chunk_size", 0),
        ("resnet_norm_eps", -1.0),
    ],
)
def test_config_unsupported_or_invalid_value_is_named(key, value):
    values = shipped_config_dict()
    values[key] = value
    with pytest.raises(ValueError, match=key):
        TurboVAEDConfig.from_dict(values)


def test_config_unknown_keys_warn_but_metadata_is_silent():
    values = shipped_config_dict()
    values.update({"_class_name": "TurboVAED", "encoder_block_out_channels": [1], "zeta": 2})
    with pytest.warns(UserWarning, match=r"\['encoder_block_out_channels', 'zeta'\]"):
        TurboVAEDConfig.from_dict(values)
    values = shipped_config_dict()
    values["_diffusers_version"] = "0.32.0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TurboVAEDConfig.from_dict(values)


def test_config_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        TurboVAEDConfig.from_json(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TurboVAEDConfig.from_json(bad)


# --------------------------------------------------------------------------------------------------
# Module tree (architecture.md §11.4)
# --------------------------------------------------------------------------------------------------


def test_meta_audit_of_shipped_config():
    config = TurboVAEDConfig.from_dict(shipped_config_dict())
    with torch.device("meta"):
        model = TurboVAEDecoder(config)
    state = model.state_dict()
    assert len(state) == 80
    assert sum(t.numel() for t in state.values()) == 107_122_892
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["decoder.conv_in.conv.weight"] == (512, 48, 3, 3, 3)
    assert shapes["decoder.mid_block.resnets.2.conv2.conv.weight"] == (512, 512, 3, 3, 3)
    assert shapes["decoder.up_blocks.0.upsamplers.0.time_conv.conv.weight"] == (1024, 512, 3, 1, 1)
    assert shapes["decoder.up_blocks.0.upsamplers.0.resample.1.weight"] == (512, 512, 3, 3)
    assert shapes["decoder.up_blocks.1.conv_in.conv1.conv.weight"] == (256, 512, 3, 3, 3)
    assert shapes["decoder.up_blocks.1.conv_in.conv_shortcut.conv.weight"] == (256, 512, 1, 1, 1)
    assert shapes["decoder.conv_out.conv.weight"] == (12, 64, 3, 3, 3)
    assert not any(k.startswith("decoder.up_blocks.0.conv_in.") for k in shapes)
    assert not any(k.startswith("decoder.up_blocks.2.upsamplers.0.time_conv") for k in shapes)
    assert not any(k.startswith("decoder.up_blocks.3.upsamplers") for k in shapes)
    assert sum(k.startswith("decoder.up_blocks.0.resnets.") for k in shapes) == 3 * 4
    assert all(k.endswith((".weight", ".bias")) for k in shapes)


def test_golden_checkpoint_keys_equal_model_keys(case, golden_ckpt):
    config = TurboVAEDConfig.from_json(case[0] / CONFIG_NAME)
    with torch.device("meta"):
        model = TurboVAEDecoder(config)
    stripped = [k.removeprefix("module.") for k in golden_ckpt["ema_state_dict"]]
    assert list(model.state_dict()) == stripped  # same names, same order
    assert len(stripped) == 80


def test_relu_only_in_resnets_of_upsampling_blocks(vae_f32):
    up = vae_f32.model.decoder.up_blocks
    assert all(r.relu_first for b in up[:3] for r in b.resnets)
    assert not any(r.relu_first for r in up[3].resnets)
    assert not any(b.conv_in.relu_first for b in up[1:])
    assert not any(r.relu_first for r in vae_f32.model.decoder.mid_block.resnets)


# --------------------------------------------------------------------------------------------------
# Golden decode (architecture.md §11.4, §12.1)
# --------------------------------------------------------------------------------------------------


def test_golden_decode_float32(case, f32_video):
    _, tensors = case
    video = f32_video
    expected = tensors["f32.decode.video"]
    assert video.dtype == torch.float32 and video.shape == (1, 3, 65, 32, 32)
    torch.testing.assert_close(video, expected, rtol=1e-5, atol=5e-5)
    assert (video - expected).abs().mean().item() <= 5e-6  # measured 1.7e-6
    assert rel_l2(video, expected) <= 2e-5  # measured 4.8e-6


def test_golden_decode_bf16(case, vae_bf16, bf16_video):
    _, tensors = case
    assert vae_bf16.dtype == torch.bfloat16
    video = bf16_video
    expected = tensors["decode.video_bf16"]
    assert video.dtype == torch.float32 and video.shape == expected.shape
    assert rel_l2(video, expected) <= 0.1  # measured 0.0 (bit-identical) on CPU
    assert max_abs(video, expected) <= 0.35


def test_golden_frames_uint8(case, bf16_video):
    require_golden_cpu()
    _, tensors = case
    frames = torch.from_numpy(video_to_uint8(bf16_video))
    expected = tensors["decode.frames_uint8"]
    assert frames.shape == expected.shape == (65, 32, 32, 3)
    diff = (frames.int() - expected.int()).abs()
    assert (diff == 0).float().mean().item() >= 0.99  # measured: all 199,680 equal
    assert diff.max().item() <= 2


def test_single_pass_is_a_different_function(case, vae_f32):
    _, tensors = case
    z = vae_f32.denormalize(tensors["decode.latent"])
    single = vae_f32.model(z, is_first_chunk=True).float()
    assert single.shape == (1, 3, 65, 32, 32)
    assert max_abs(single, tensors["f32.decode.video"]) > 1.0  # measured 2.51


def test_denormalize_is_fp32_division_form(vae_bf16):
    from magihuman.codecs.video_vae import WAN22_LATENT_MEAN, WAN22_LATENT_STD

    latent = torch.randn(1, 48, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    got = vae_bf16.denormalize(latent)
    std = torch.tensor(WAN22_LATENT_STD).view(1, -1, 1, 1, 1)
    mean = torch.tensor(WAN22_LATENT_MEAN).view(1, -1, 1, 1, 1)
    expected = (latent.bfloat16().float() / (1.0 / std) + mean).bfloat16()
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


# --------------------------------------------------------------------------------------------------
# Sliding-window plan (architecture.md §11.4)
# --------------------------------------------------------------------------------------------------


def test_plan_matches_golden_chunks(case):
    seen = json.loads((case[0] / "case.json").read_text())["decode"]["chunks_seen"]
    plan = sliding_window_plan(17, 7, 7)
    assert [(c.latent_frames, c.is_first_chunk, c.pixel_frames) for c in plan.chunks] == [
        (s["latent_frames"], s["is_first_chunk"], s["pixel_frames"]) for s in seen
    ]
    assert [(c.start, c.stop) for c in plan.chunks] == [(0, 8), (6, 15), (13, 21)]
    assert (plan.padded_frames, plan.pad_frames, plan.num_pixel_frames) == (21, 4, 65)
    assert [c.kept_frames for c in plan.chunks] == [25, 28, 12]
    assert [(c.keep_start, c.keep_stop) for c in plan.chunks] == [(0, 25), (4, 32), (4, 16)]


@pytest.mark.parametrize(("latent", "pixels"), [(1, 1), (7, 25), (8, 29), (13, 49), (14, 53), (26, 101)])
def test_plan_frame_counts(latent, pixels):
    plan = sliding_window_plan(latent, 7, 7)
    assert plan.num_pixel_frames == pixels == sum(c.kept_frames for c in plan.chunks)


def test_plan_general_rules():
    assert sliding_window_plan(26, 7, 7).padded_frames == 28  # architecture.md §11.4 example
    single = sliding_window_plan(5, 7, 7)
    assert [(c.start, c.stop, c.is_first_chunk) for c in single.chunks] == [(0, 7, True)]
    # architecture.md §11.4 with the constructor defaults 3/5: [0,4) first, then [i-1, i+6), last [i-1, i+5)
    plan = sliding_window_plan(13, 3, 5)
    assert plan.padded_frames == 13
    assert [(c.start, c.stop) for c in plan.chunks] == [(0, 4), (2, 9), (7, 13)]
    for f, s in ((7, 7), (3, 5), (1, 1), (2, 3)):
        for t in range(1, 40):
            plan = sliding_window_plan(t, f, s)
            assert sum(c.kept_frames for c in plan.chunks) == 4 * t - 3
            assert all(c.kept_frames > 0 for c in plan.chunks)
    with pytest.raises(ValueError, match="num_latent_frames"):
        sliding_window_plan(0, 7, 7)


# --------------------------------------------------------------------------------------------------
# Strict loading (architecture.md §11.4)
# --------------------------------------------------------------------------------------------------


def _save_ckpt(path, ema, **extra):
    torch.save({"ema_state_dict": ema, "global_step": 0, **extra}, path)
    return path


def test_strict_load_names_missing_unexpected_and_misshaped_keys(case, golden_ckpt, tmp_path):
    ema = dict(golden_ckpt["ema_state_dict"])
    del ema["module.decoder.up_blocks.1.resnets.0.conv1.conv.bias"]
    ema["module.decoder.extra.weight"] = torch.zeros(1)
    ema["module.decoder.conv_out.conv.weight"] = torch.zeros(12, 4, 3, 3, 1)
    path = _save_ckpt(tmp_path / "bad.ckpt", ema)
    with pytest.raises(CheckpointError) as info:
        load_turbo_vaed(case[0] / CONFIG_NAME, path)
    message = str(info.value)
    assert "decoder.up_blocks.1.resnets.0.conv1.conv.bias" in message
    assert "decoder.extra.weight" in message
    assert "decoder.conv_out.conv.weight: checkpoint (12, 4, 3, 3, 1) vs model (12, 4, 3, 3, 3)" in message


def test_missing_ema_state_dict_lists_keys(case, tmp_path):
    path = tmp_path / "no_ema.ckpt"
    torch.save({"state_dict": {}, "global_step": 3}, path)
    with pytest.raises(CheckpointError, match=r"ema_state_dict.*\['global_step', 'state_dict'\]"):
        load_turbo_vaed(case[0] / CONFIG_NAME, path)


def test_bare_keys_get_the_decoder_prefix(case, golden_ckpt, tmp_path):
    ema = {k.removeprefix("module.decoder."): v for k, v in golden_ckpt["ema_state_dict"].items()}
    model = load_turbo_vaed(case[0] / CONFIG_NAME, _save_ckpt(tmp_path / "bare.ckpt", ema), dtype=torch.float32)
    key = "decoder.conv_in.conv.weight"
    assert torch.equal(model.state_dict()[key], golden_ckpt["ema_state_dict"]["module." + key])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_non_tensor_pickle_needs_trust(case, golden_ckpt, tmp_path):
    path = _save_ckpt(tmp_path / "opt.ckpt", golden_ckpt["ema_state_dict"], args=argparse.Namespace(lr=1e-4))
    with pytest.raises(CheckpointError, match=r"non-tensor objects.*trust_checkpoint=True"):
        load_turbo_vaed(case[0] / CONFIG_NAME, path)
    model = load_turbo_vaed(case[0] / CONFIG_NAME, path, trust_checkpoint=True)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_config_checkpoint_mismatch_is_strict(case, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(shipped_config_dict(channels=(4, 8, 12, 24))))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_turbo_vaed(other, case[0] / CKPT_NAME)


def test_damaged_checkpoint_is_reported(case, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match="damaged"):
        load_turbo_vaed(case[0] / CONFIG_NAME, junk)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((case[0] / CKPT_NAME).read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="damaged"):
        load_turbo_vaed(case[0] / CONFIG_NAME, truncated)


def test_missing_files(case, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_turbo_vaed(case[0] / CONFIG_NAME, tmp_path / "absent.ckpt")
    with pytest.raises(FileNotFoundError, match=r"\*\.json"):
        TurboVAE.from_official(tmp_path)


# --------------------------------------------------------------------------------------------------
# Streaming, interface, tiling
# --------------------------------------------------------------------------------------------------


def test_decode_chunks_concatenate_to_decode(case, vae_f32, f32_video):
    chunks = list(vae_f32.decode_chunks(case[1]["decode.latent"], output_device="cpu"))
    assert [c.shape[2] for c in chunks] == [25, 28, 12]
    assert all(c.dtype == torch.float32 and c.shape[3:] == (32, 32) for c in chunks)
    assert torch.equal(torch.cat(chunks, dim=2), f32_video)


def test_crossfade_blends_the_dropped_frames_into_the_next_chunk(case, vae_f32, f32_video):
    """Chunks of 25/28/12 frames: with ``crossfade`` the first 4 kept frames of chunks 2 and 3 are ``(1 - j/5)`` of
    the frames the chunk before decoded for the same times (and the hard cut drops) plus ``j/5`` of their own;
    every other frame is the hard cut's, bit for bit."""
    latent = case[1]["decode.latent"]
    plan = vae_f32.plan(latent.shape[2])
    faded = list(vae_f32.decode_chunks(latent, output_device="cpu", crossfade=True))
    assert [c.shape[2] for c in faded] == [25, 28, 12]
    faded = torch.cat(faded, dim=2)
    z = vae_f32.denormalize(latent)
    z = torch.cat([z, z[:, :, -1:].expand(-1, -1, plan.pad_frames, -1, -1)], dim=2)  # the plan's padding
    with torch.no_grad():
        calls = [vae_f32.model(z[:, :, c.start:c.stop], is_first_chunk=c.is_first_chunk).float() for c in plan.chunks]
    assert torch.equal(faded[:, :, :25], f32_video[:, :, :25])
    for k, border in ((1, 25), (2, 53)):
        before, chunk = plan.chunks[k - 1], plan.chunks[k]
        dropped = calls[k - 1][:, :, before.keep_stop:]
        assert dropped.shape[2] == 4  # the reference's overlap trim: one latent frame
        own = calls[k][:, :, chunk.keep_start:chunk.keep_start + 4]
        assert torch.equal(own, f32_video[:, :, border:border + 4])
        for j in range(4):
            weight = (j + 1) / 5
            expected = (1 - weight) * dropped[:, :, j] + weight * own[:, :, j]
            torch.testing.assert_close(faded[:, :, border + j], expected, rtol=0, atol=1e-6)
        assert not torch.equal(faded[:, :, border], f32_video[:, :, border])
        end = border + chunk.kept_frames
        assert torch.equal(faded[:, :, border + 4:end], f32_video[:, :, border + 4:end])
    assert torch.equal(vae_f32.decode(latent, crossfade=True), faded)


def test_interface_and_input_errors(vae_f32):
    assert vae_f32.dtype == torch.float32 and vae_f32.device == torch.device("cpu")
    assert vae_f32.to("cpu") is vae_f32
    with pytest.raises(ValueError, match="48 channels"):
        vae_f32.decode(torch.zeros(1, 16, 1, 2, 2))
    with pytest.raises(ValueError, match="5-D"):
        vae_f32.decode(torch.zeros(48, 1, 2, 2))
    with pytest.raises(ValueError, match="tile_overlap"):
        vae_f32.decode(torch.zeros(1, 48, 1, 2, 2), tile_size=4, tile_overlap=4)
    with pytest.raises(ValueError, match="tile_size"):
        vae_f32.decode_chunks(torch.zeros(1, 48, 1, 2, 2), tile_size=0)


def test_tiling_off_or_single_tile_is_the_plain_path(case, vae_f32, f32_video):
    latent = case[1]["decode.latent"]
    plain = f32_video
    assert torch.equal(vae_f32.decode(latent, tile_size=None), plain)
    assert torch.equal(vae_f32.decode(latent, tile_size=2, tile_overlap=1), plain)  # one tile covers 2x2


class _LocalDecoder(nn.Module):
    """Stand-in decoder with no spatial context: tiling must reproduce it exactly (blend arithmetic)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.randn(3, 48, generator=torch.Generator().manual_seed(5)))

    def forward(self, z, *, is_first_chunk):
        x = torch.einsum("oc,bcthw->bothw", self.weight, z.float())
        x = x.repeat_interleave(4, dim=2)[:, :, 3:] if is_first_chunk else x.repeat_interleave(4, dim=2)
        return x.repeat_interleave(16, dim=3).repeat_interleave(16, dim=4)


def test_tiling_blend_weights_are_exact_for_a_local_decoder(single_frame_vae):
    vae = TurboVAE(_LocalDecoder(single_frame_vae.config))
    latent = torch.randn(1, 48, 3, 13, 22, generator=torch.Generator().manual_seed(6))  # 3 windows
    plain = vae.decode(latent)
    for size, overlap in ((5, 2), (6, 4), (8, 0), (7, 3)):
        tiled = vae.decode(latent, tile_size=size, tile_overlap=overlap)
        torch.testing.assert_close(tiled, plain, rtol=1e-6, atol=1e-6)
    default = vae.decode(latent, tile_size=6)  # tile_overlap=None means tile_size // 3
    assert torch.equal(default, vae.decode(latent, tile_size=6, tile_overlap=2))


@pytest.fixture(scope="module")
def single_frame_vae(tmp_path_factory):
    """Random model with 1/1 windows: one latent frame decodes to one frame (fast; tiling is purely spatial)."""
    folder = save_random_turbo_vae(tmp_path_factory.mktemp("turbo1") / "turbo_vae", seed=0)
    path = folder / TURBO_VAED_CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(first_chunk_size=1, step_size=1)
    path.write_text(json.dumps(config))
    return TurboVAE.from_official(folder, dtype=torch.float32)


@pytest.mark.parametrize("shape", [(2, 64), (64, 2)], ids=["width", "height"])
def test_tiling_seams_on_random_model(single_frame_vae, shape):
    vae = single_frame_vae
    latent = torch.randn(1, 48, 1, *shape, generator=torch.Generator().manual_seed(2))
    plain = vae.decode(latent)
    wide = vae.decode(latent, tile_size=48, tile_overlap=32)
    assert max_abs(wide, plain) < 5e-3  # measured 8.0e-4 (width) / 1.5e-4 (height)
    assert (wide - plain).abs().mean().item() < 1e-4  # measured 2.6e-6 / 4.5e-7
    narrow = vae.decode(latent, tile_size=32, tile_overlap=8)
    assert max_abs(narrow, plain) < 0.15  # measured 6.0e-2 / 3.5e-2 (receptive field ~13 latent px)
    assert max_abs(narrow, plain) > max_abs(wide, plain)


# --------------------------------------------------------------------------------------------------
# Random official-layout weights (demo bundle)
# --------------------------------------------------------------------------------------------------


def test_save_random_turbo_vae_round_trip(tmp_path, random_vae):
    folder = save_random_turbo_vae(tmp_path / "turbo_vae", seed=0)
    assert sorted(p.name for p in folder.iterdir()) == sorted([TURBO_VAED_CONFIG_NAME, TURBO_VAED_CHECKPOINT_NAME])
    config = json.loads((folder / TURBO_VAED_CONFIG_NAME).read_text())
    assert set(config) == set(shipped_config_dict())
    assert {k: v for k, v in config.items() if k != "decoder_block_out_channels"} == {
        k: v for k, v in shipped_config_dict().items() if k != "decoder_block_out_channels"
    }
    ckpt = torch.load(folder / TURBO_VAED_CHECKPOINT_NAME, weights_only=True)
    assert set(ckpt) == {"ema_state_dict", "global_step"} and ckpt["global_step"] == 0
    assert all(k.startswith("module.decoder.") and v.dtype == torch.float32 for k, v in ckpt["ema_state_dict"].items())
    # deterministic: the same seed gives the same tensors (random_vae was built with seed 0)
    loaded = TurboVAE.from_official(tmp_path, dtype=torch.float32)  # a root holding turbo_vae/ works too
    for (name, a), b in zip(loaded.model.state_dict().items(), random_vae.model.state_dict().values()):
        assert torch.equal(a, b), name
    other_path = save_random_turbo_vae(tmp_path / "seed1", seed=1) / TURBO_VAED_CHECKPOINT_NAME
    other = torch.load(other_path, weights_only=True)
    key = "module.decoder.conv_in.conv.weight"
    assert not torch.equal(other["ema_state_dict"][key], ckpt["ema_state_dict"][key])


def test_random_model_output_is_not_degenerate(random_vae):
    latent = torch.randn(1, 48, 2, 2, 3, generator=torch.Generator().manual_seed(4))
    video = random_vae.decode(latent)
    assert video.shape == (1, 3, 5, 32, 48)
    assert 0.2 < video.std().item() < 1.5
    frames = video_to_uint8(video)
    assert 40 < frames.std() < 110 and (frames == 0).mean() < 0.2 and (frames == 255).mean() < 0.2


def test_from_official_file_choice(tmp_path):
    folder = save_random_turbo_vae(tmp_path / "turbo_vae", seed=0)
    (folder / "notes.json").write_text("{}")  # extra JSON: the official name wins
    vae = TurboVAE.from_official(folder, dtype=torch.float32)
    assert vae.config.first_chunk_size == 7
    assert TurboVAE.from_official(folder / TURBO_VAED_CHECKPOINT_NAME).dtype == torch.bfloat16  # a file in it
    (folder / TURBO_VAED_CONFIG_NAME).rename(folder / "a.json")
    with pytest.raises(FileNotFoundError, match=r"\['a\.json', 'notes\.json'\]"):
        TurboVAE.from_official(folder)


@pytest.mark.parametrize("shape, dtype, needle", [
    ((1, 48, 2, 4), torch.float32, "5-D tensor"),
    ((1, 16, 2, 4, 4), torch.float32, "48 channels"),
    ((1, 48, 2, 4, 4), torch.int64, "float tensor"),
    ((1, 48, 0, 4, 4), torch.float32, "empty time/height/width axis"),
    ((0, 48, 2, 4, 4), torch.float32, "empty axis"),  # the Turbo decode also refuses an empty batch
])
def test_decode_input_errors(random_vae, shape, dtype, needle):
    with pytest.raises(ValueError, match=needle):
        random_vae.decode_chunks(torch.zeros(shape, dtype=dtype))


# --------------------------------------------------------------------------------------------------
# Damaged files and ~ paths
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"<html><body>Access denied</body></html>\n", "text file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1868000000\n", "Git LFS pointer"),
        (b"", "empty"),
    ],
)
def test_checkpoint_that_is_not_a_torch_file_is_one_clear_error(case, tmp_path, content, what):
    path = tmp_path / CKPT_NAME
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_turbo_vaed(case[0] / CONFIG_NAME, path)
    message = str(info.value)
    assert what in message and str(path) in message
    assert "checkpoint-340000.ckpt from the turbo_vae/ folder of GAIR/daVinci-MagiHuman" in message
    assert "download it again" in message and "weights_only" not in message and "trust_checkpoint" not in message


def test_truncated_checkpoint_says_truncated(case, tmp_path):
    path = tmp_path / CKPT_NAME
    path.write_bytes((case[0] / CKPT_NAME).read_bytes()[:4096])
    with pytest.raises(CheckpointError, match=r"zip archive .*truncated.*download it again"):
        load_turbo_vaed(case[0] / CONFIG_NAME, path)


def test_checkpoint_with_the_wrong_keys_names_the_official_file(case, tmp_path):
    path = _save_ckpt(tmp_path / CKPT_NAME, {"module.encoder.conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError) as info:
        load_turbo_vaed(case[0] / CONFIG_NAME, path)
    message = str(info.value)
    assert "is not a usable Turbo-VAED checkpoint" in message and "encoder.conv.weight" in message
    assert "Expected checkpoint-340000.ckpt" in message


def test_damaged_config_json_is_one_clear_error(case, tmp_path):
    path = tmp_path / CONFIG_NAME
    path.write_text((case[0] / CONFIG_NAME).read_text()[:40])
    with pytest.raises(CheckpointError, match=r"Turbo-VAED config .*not valid JSON.*download it again"):
        load_turbo_vaed(path, case[0] / CKPT_NAME)


def test_tilde_paths_are_expanded(tmp_path, monkeypatch):
    folder = save_random_turbo_vae(tmp_path / "turbo_vae", seed=0)
    monkeypatch.setenv("HOME", str(tmp_path))
    latent = torch.randn(1, 48, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    by_folder = TurboVAE.from_official("~/turbo_vae", dtype=torch.float32)
    by_root = TurboVAE.from_official("~", dtype=torch.float32)
    by_files = TurboVAE.from_files(
        f"~/turbo_vae/{TURBO_VAED_CONFIG_NAME}", f"~/turbo_vae/{TURBO_VAED_CHECKPOINT_NAME}", dtype=torch.float32
    )
    video = by_folder.decode(latent)
    assert torch.equal(video, by_root.decode(latent)) and torch.equal(video, by_files.decode(latent))
    assert folder == tmp_path / "turbo_vae"
