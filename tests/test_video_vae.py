"""Wan2.2 video VAE: key conversion, strict loading, latent normalisation, golden parity (architecture.md §11.3).

Golden case ``codec_wan22_vae`` (tiny widths 4/4, real 48-channel constants). Measured on CPU:
* float32 path vs ``f32.*``: decode max |diff| ~2e-6, encode ~2e-6 (gate 1e-5).
* bf16 path vs bf16 tensors: decode rel_l2 0.029 (max 0.24), encode rel_l2 0.013 (max 0.034); the gap
  is diffusers' fp32-upcasting RMS norm vs the reference's bf16 one (gate rel_l2 <= 0.05).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from magihuman.codecs.video_vae import (
    WAN22_CHECKPOINT_NAME,
    WAN22_LATENT_MEAN,
    WAN22_LATENT_STD,
    VideoVAE,
    convert_wan22_state_dict,
    load_wan22_vae,
    official_wan22_key_shapes,
    wan22_vae_config,
)
from magihuman.demo.random_codecs import save_random_wan22_vae
from magihuman.model.checkpoint import CheckpointError

from conftest import golden_case, max_abs, rel_l2


@pytest.fixture(scope="module")
def case():
    folder = golden_case("codec_wan22_vae")
    return folder, load_file(str(folder / "wan22.safetensors"))


@pytest.fixture(scope="module")
def vae_f32(case):
    return VideoVAE.from_official(case[0], dtype=torch.float32)


@pytest.fixture(scope="module")
def vae_bf16(case):
    return VideoVAE.from_official(case[0] / WAN22_CHECKPOINT_NAME)  # default dtype bf16


@pytest.fixture(scope="module")
def golden_state_dict(case):
    return torch.load(case[0] / WAN22_CHECKPOINT_NAME, map_location="cpu", weights_only=True)


def meta_model(**config):
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        return AutoencoderKLWan(**config)


def shapes_of(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------- keys


def test_golden_pth_has_the_official_layout(golden_state_dict):
    expected = official_wan22_key_shapes(4, 4, 48)
    assert len(golden_state_dict) == 196
    assert list(golden_state_dict) == list(expected)
    assert shapes_of(golden_state_dict) == expected


def test_golden_conversion_maps_all_196_keys(golden_state_dict):
    converted = convert_wan22_state_dict(golden_state_dict)
    model = meta_model(**wan22_vae_config(4, 4, 48))
    assert len(converted) == 196
    assert shapes_of(converted) == shapes_of(model.state_dict())
    assert converted["quant_conv.weight"] is golden_state_dict["conv1.weight"]  # renamed, not copied
    assert converted["decoder.up_blocks.1.upsampler.time_conv.weight"].shape == (32, 16, 3, 1, 1)


def test_full_size_key_audit_on_meta():
    official = official_wan22_key_shapes()  # 160 / 256 / 48
    converted = convert_wan22_state_dict({k: torch.empty(s, device="meta") for k, s in official.items()})
    model_shapes = shapes_of(meta_model(**wan22_vae_config()).state_dict())
    assert len(official) == len(converted) == len(model_shapes) == 196
    assert shapes_of(converted) == model_shapes
    total = sum(torch.Size(s).numel() for s in official.values())
    encoder = sum(torch.Size(s).numel() for k, s in official.items() if k.startswith(("encoder.", "conv1.")))
    assert total == 704_688_668  # 704.7 M (architecture.md §11.3)
    assert round(encoder / 1e6, 1) == 149.6 and round((total - encoder) / 1e6, 1) == 555.1
    assert official["encoder.conv1.weight"] == (160, 12, 3, 3, 3)
    assert official["decoder.head.0.gamma"] == (256, 1, 1, 1)
    assert official["decoder.upsamples.0.upsamples.3.time_conv.weight"] == (2048, 1024, 3, 1, 1)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"encoder\.bogus\.weight"):
        convert_wan22_state_dict({"encoder.conv1.bias": torch.zeros(4), "encoder.bogus.weight": torch.zeros(1)})


def test_config_and_constants(case):
    config = wan22_vae_config()
    assert (config["base_dim"], config["decoder_base_dim"], config["z_dim"]) == (160, 256, 48)
    assert config["patch_size"] == 2 and config["in_channels"] == 12 and config["is_residual"] is True
    golden = case[1]
    assert torch.equal(torch.tensor(WAN22_LATENT_MEAN, dtype=torch.float32), golden["latents_mean"])
    assert torch.equal(torch.tensor(WAN22_LATENT_STD, dtype=torch.float32), golden["latents_std"])
    with pytest.raises(ValueError, match="base_dim"):
        wan22_vae_config(base_dim=0)


def test_bf16_constants_are_the_reference_wrappers(case, vae_bf16, vae_f32):
    mean, inv_std = vae_bf16.normalization_constants()
    assert mean.dtype == inv_std.dtype == torch.bfloat16
    assert torch.equal(mean.flatten(), case[1]["wrapper_mean_bf16"])
    assert torch.equal(inv_std.flatten(), case[1]["wrapper_inv_std_bf16"])
    mean32, inv_std32 = vae_f32.normalization_constants()
    assert torch.equal(mean32.flatten(), case[1]["latents_mean"])
    assert torch.equal(inv_std32.flatten(), 1.0 / case[1]["latents_std"])


# ------------------------------------------------------------------------------------------- loading


def test_widths_are_inferred_and_weights_are_real(vae_f32, vae_bf16):
    config = vae_f32.model.config
    assert (config.base_dim, config.decoder_base_dim, config.z_dim) == (4, 4, 48)
    assert vae_f32.dtype == torch.float32 and vae_bf16.dtype == torch.bfloat16
    assert vae_bf16.device == torch.device("cpu")
    assert not any(p.is_meta for p in vae_f32.model.parameters())


def _write(state_dict, folder):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, folder / WAN22_CHECKPOINT_NAME)
    return folder


def test_strict_load_missing_key(golden_state_dict, tmp_path):
    broken = dict(golden_state_dict)
    del broken["decoder.middle.1.proj.bias"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\): decoder\.mid_block\.attentions\.0\.proj\.bias"):
        load_wan22_vae(_write(broken, tmp_path), dtype=torch.float32)


def test_strict_load_extra_key(golden_state_dict, tmp_path):
    broken = dict(golden_state_dict)
    # a well-formed name whose module does not exist: stage 3 of the encoder has no downsampler
    broken["encoder.downsamples.3.downsamples.2.resample.1.bias"] = torch.zeros(16)
    with pytest.raises(ValueError, match=r"unexpected key\(s\): encoder\.down_blocks\.3\.downsampler\.resample\.1\.bias"):
        load_wan22_vae(_write(broken, tmp_path / "a"), dtype=torch.float32)
    broken = dict(golden_state_dict)
    broken["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"encoder\.extra\.weight"):
        load_wan22_vae(_write(broken, tmp_path / "b"), dtype=torch.float32)


def test_strict_load_wrong_shape_and_one_error_for_all(golden_state_dict, tmp_path):
    broken = dict(golden_state_dict)
    broken["decoder.middle.0.residual.2.bias"] = torch.zeros(17)
    del broken["encoder.head.0.gamma"]
    with pytest.raises(ValueError) as info:
        load_wan22_vae(_write(broken, tmp_path), dtype=torch.float32)
    message = str(info.value)
    assert "decoder.mid_block.resnets.0.conv1.bias: checkpoint (17,) vs model (16,)" in message
    assert "encoder.norm_out.gamma" in message and "missing" in message


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=WAN22_CHECKPOINT_NAME):
        load_wan22_vae(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoVAE.from_official(tmp_path / "nowhere")


# -------------------------------------------------------------------------------------------- golden


def test_f32_decode_matches_golden(case, vae_f32):
    video = vae_f32.decode(case[1]["decode.latent"])
    expected = case[1]["f32.decode.video"]
    assert video.shape == (1, 3, 5, 64, 64) and video.dtype == torch.float32
    assert max_abs(video, expected) < 1e-5  # measured ~2e-6
    assert rel_l2(video, expected) < 1e-5


def test_f32_encode_matches_golden(case, vae_f32):
    pixels = case[1]["encode.preprocessed_image"].unsqueeze(2)  # [1, 3, 1, 64, 96]
    latent = vae_f32.encode(pixels)
    expected = case[1]["f32.encode.latent"]
    assert latent.shape == (1, 48, 1, 4, 6) and latent.dtype == torch.float32
    assert max_abs(latent, expected) < 1e-5  # measured ~2e-6


def test_bf16_decode_matches_golden(case, vae_bf16):
    video = vae_bf16.decode(case[1]["decode.latent"])
    expected = case[1]["decode.video"]
    assert video.dtype == torch.float32 and video.abs().max() <= 1.0
    assert rel_l2(video, expected) <= 0.05  # measured 0.029
    assert max_abs(video, expected) <= 0.3  # measured 0.24
    frames = ((video[0] * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 3, 0)
    diff = (frames.int() - case[1]["decode.frames_uint8"].int()).abs().float()
    assert frames.shape == (5, 64, 64, 3)
    assert diff.mean() < 1.5 and (diff <= 8).float().mean() > 0.99  # measured 0.50 and 0.999


def test_bf16_encode_matches_golden(case, vae_bf16):
    latent = vae_bf16.encode(case[1]["encode.preprocessed_image"].unsqueeze(2))
    expected = case[1]["encode.latent"]
    assert latent.dtype == torch.float32
    assert rel_l2(latent, expected) <= 0.05  # measured 0.013
    assert max_abs(latent, expected) <= 0.1  # measured 0.034


def test_normalisation_round_trip_and_batch(case, vae_f32):
    latent = case[1]["decode.latent"]
    mu = vae_f32.denormalize(latent)
    expected_mu = latent * torch.tensor(WAN22_LATENT_STD).view(1, 48, 1, 1, 1) + torch.tensor(
        WAN22_LATENT_MEAN
    ).view(1, 48, 1, 1, 1)
    assert max_abs(mu, expected_mu) < 1e-6
    assert max_abs(vae_f32.normalize(mu), latent) < 1e-6
    batch = torch.cat([latent, latent.flip(2)])
    video = vae_f32.decode(batch)
    assert video.shape == (2, 3, 5, 64, 64)
    assert max_abs(video[1:], vae_f32.decode(latent.flip(2))) < 1e-5


# -------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((1, 3, 2, 32, 32), torch.float32, "1 \\+ 4k"),
        ((1, 3, 6, 32, 32), torch.float32, "trim to 5 frames"),
        ((1, 3, 1, 40, 32), torch.float32, "multiples of 16"),
        ((1, 3, 1, 32, 24), torch.float32, "multiples of 16"),
        ((3, 1, 32, 32), torch.float32, "5-D"),
        ((1, 4, 1, 32, 32), torch.float32, "3 \\(RGB\\) channels"),
        ((1, 3, 1, 32, 32), torch.uint8, "float tensor"),
    ],
)
def test_encode_rejects_bad_pixels(vae_f32, shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        vae_f32.encode(torch.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("shape", [(1, 16, 2, 4, 4), (48, 2, 4, 4)])
def test_decode_rejects_bad_latents(vae_f32, shape):
    with pytest.raises(ValueError, match="latent"):
        vae_f32.decode(torch.zeros(shape))


# ---------------------------------------------------------------------------------------- random ckpt


def test_save_random_wan22_vae_round_trip(tmp_path):
    path = save_random_wan22_vae(tmp_path / "a", seed=3)
    assert path.name == WAN22_CHECKPOINT_NAME
    first = torch.load(path, weights_only=True)
    assert list(first) == list(official_wan22_key_shapes(4, 4, 48))
    assert all(v.dtype == torch.float32 for v in first.values())
    again = torch.load(save_random_wan22_vae(tmp_path / "b", seed=3), weights_only=True)
    other = torch.load(save_random_wan22_vae(tmp_path / "c", seed=4), weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["decoder.conv1.weight"], other["decoder.conv1.weight"])

    vae = VideoVAE.from_official(tmp_path / "a", dtype=torch.float32)
    latent = torch.randn(1, 48, 2, 2, 3, generator=torch.Generator().manual_seed(0))
    video = vae.decode(latent)
    assert video.shape == (1, 3, 5, 32, 48)
    assert video.std() > 0.05  # not flat
    assert (video.abs() >= 1.0).float().mean() < 0.05  # not saturated
    assert torch.equal(video, VideoVAE.from_official(tmp_path / "b", dtype=torch.float32).decode(latent))
    encoded = vae.encode(video)
    assert encoded.shape == (1, 48, 2, 2, 3) and torch.isfinite(encoded).all()


def test_diffusers_folder_loads_like_the_pth(case, vae_f32, tmp_path):
    vae_f32.model.save_pretrained(tmp_path / "vae")  # a "...-Diffusers" style root with vae/
    reloaded = VideoVAE.from_official(tmp_path, dtype=torch.float32)
    latent = case[1]["decode.latent"]
    assert torch.equal(reloaded.decode(latent), vae_f32.decode(latent))
    direct = load_wan22_vae(tmp_path / "vae", dtype=torch.bfloat16)
    assert direct.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    return save_random_wan22_vae(tmp_path_factory.mktemp("wan") / "ok", seed=0)


def _load_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_wan22_vae(path, dtype=torch.float32)
    message = str(info.value)
    assert str(path) in message  # which file
    assert "Wan2.2_VAE.pth" in message and "Wan-AI/Wan2.2-TI2V-5B" in message  # what was expected
    assert "download it again" in message  # the fix
    assert "weights_only" not in message  # no torch advice to unpickle untrusted code
    return message


def _bad_pth(tmp_path, content: bytes):
    path = tmp_path / WAN22_CHECKPOINT_NAME
    path.write_bytes(content)
    return path


def test_truncated_pth_is_one_clear_error(tiny_pth, tmp_path):
    data = tiny_pth.read_bytes()
    message = _load_error(_bad_pth(tmp_path, data[: len(data) // 2]))
    assert "zip archive" in message and "truncated" in message


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"<!DOCTYPE html><title>404 Not Found</title>\n", "text file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 2823000000\n", "Git LFS pointer"),
        (b"", "empty"),
        (bytes(range(200, 256)) * 4, "neither a zip archive nor a pickle"),
    ],
)
def test_pth_that_is_not_a_torch_file_is_one_clear_error(tmp_path, content, what):
    assert what in _load_error(_bad_pth(tmp_path, content))


def test_pth_with_the_wrong_contents_is_one_clear_error(tiny_pth, tmp_path):
    path = tmp_path / WAN22_CHECKPOINT_NAME
    torch.save({"model.layer.weight": torch.zeros(2, 2), "encoder.conv1.bias": torch.zeros(4)}, path)
    message = _load_error(path)
    assert "is not a usable Wan2.2 VAE checkpoint" in message and "model.layer.weight" in message
    state = torch.load(tiny_pth, weights_only=True)
    del state["decoder.head.2.bias"]
    torch.save(state, path)
    assert "missing" in _load_error(path) and "decoder.conv_out.bias" in _load_error(path)
    torch.save([torch.zeros(1)], path)
    assert "holds a list, not a state dict" in _load_error(path)


def test_tilde_paths_are_expanded(tiny_pth, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_pth.parent.parent))
    latent = torch.randn(1, 48, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    by_folder = VideoVAE.from_official(f"~/{tiny_pth.parent.name}", dtype=torch.float32)
    by_file = VideoVAE.from_official(f"~/{tiny_pth.parent.name}/{tiny_pth.name}", dtype=torch.float32)
    assert torch.equal(by_folder.decode(latent), by_file.decode(latent))
