"""Stable Audio Open VAE: conversion, strict loading, encode sampling/windowing, golden parity.

Golden case ``codec_sa_audio`` (channels 4, encoder latent_dim 128, real strides). Measured on this CPU:
* decode vs ``decode.waveform``: max |diff| ~1.2e-6 (not bit-exact here: the same diffusers model
  already changes by ~1e-6 with the thread count, i.e. the oneDNN conv kernels differ from the
  machine that produced the golden). Gate: max |diff| <= 1e-5, rel_l2 <= 1e-5.
* 441/512 resample of ``decode.waveform`` vs ``decode.waveform_resampled``: bit-exact.
* encoder (with the widened last conv) vs ``encode.pre_bottleneck``: max |diff| ~1.5e-6.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from magihuman.codecs.audio_vae import (
    HOP_LENGTH,
    LATENTS_PER_SECOND,
    MODEL_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    WINDOW_SAMPLES,
    AudioVAE,
    convert_stable_audio_state_dict,
    load_audio_vae_model,
    official_sao_vae_key_shapes,
    oobleck_config_from_sao_config,
    resample_to_output_rate,
)
from magihuman.demo.random_codecs import save_random_audio_vae
from magihuman.model.checkpoint import CheckpointError

from conftest import golden_case, max_abs, rel_l2


@pytest.fixture(scope="module")
def case():
    folder = golden_case("codec_sa_audio")
    return folder, load_file(str(folder / "sa_audio.safetensors"))


@pytest.fixture(scope="module")
def golden_config(case):
    return json.loads((case[0] / "model_config.json").read_text())


@pytest.fixture(scope="module")
def golden_tensors(case):
    return load_file(str(case[0] / "model.safetensors"))


@pytest.fixture(scope="module")
def vae(case):
    return AudioVAE.from_official(case[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return AudioVAE.from_official(save_random_audio_vae(tmp_path_factory.mktemp("sao"), seed=0))


def sao10_config(golden_config):
    """The SAO 1.0 ``model_config.json`` structure at full width (architecture.md §11.5)."""
    config = copy.deepcopy(golden_config)
    for side in ("encoder", "decoder"):
        config["model"]["pretransform"]["config"][side]["config"]["channels"] = 128
    return config


def shapes_of(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------- basics


def test_rate_constants():
    assert MODEL_SAMPLE_RATE == LATENTS_PER_SECOND * HOP_LENGTH == 51200
    assert OUTPUT_SAMPLE_RATE == 44100 and WINDOW_SAMPLES == 29 * 51200


def test_config_conversion(golden_config):
    assert oobleck_config_from_sao_config(sao10_config(golden_config)) == {
        "encoder_hidden_size": 128,
        "downsampling_ratios": [2, 4, 4, 8, 8],
        "channel_multiples": [1, 2, 4, 8, 16],
        "decoder_channels": 128,
        "decoder_input_channels": 64,
        "audio_channels": 2,
        "sampling_rate": 44100,
    }
    assert oobleck_config_from_sao_config(golden_config)["encoder_hidden_size"] == 4


@pytest.mark.parametrize(
    ("side", "key", "value", "message"),
    [
        ("decoder", "final_tanh", True, "final_tanh"),
        ("encoder", "use_snake", False, "use_snake"),
        ("encoder", "strides", [2, 4, 4, 8, 4], "share strides"),
        ("encoder", "latent_dim", 64, "2 x decoder latent_dim"),
    ],
)
def test_unrepresentable_configs_are_rejected(golden_config, side, key, value, message):
    config = copy.deepcopy(golden_config)
    config["model"]["pretransform"]["config"][side]["config"][key] = value
    with pytest.raises(ValueError, match=message):
        oobleck_config_from_sao_config(config)


def test_configs_without_an_oobleck_vae_are_rejected(golden_config):
    with pytest.raises(ValueError, match="model.pretransform"):
        oobleck_config_from_sao_config({"sample_rate": 44100})
    config = copy.deepcopy(golden_config)
    config["model"]["pretransform"]["config"]["bottleneck"]["type"] = "rvq"
    with pytest.raises(ValueError, match="'vae'"):
        oobleck_config_from_sao_config(config)


# ----------------------------------------------------------------------------------------------- keys


def test_golden_file_has_the_official_layout(golden_config, golden_tensors):
    vae_keys = {k: tuple(v.shape) for k, v in golden_tensors.items() if k.startswith("pretransform.model.")}
    assert vae_keys == official_sao_vae_key_shapes(golden_config)
    assert len(vae_keys) == 365 and len(golden_tensors) == 367


def test_non_vae_tensors_are_ignored(golden_tensors):
    converted = convert_stable_audio_state_dict(golden_tensors)
    assert len(converted) == 365
    assert not any("stand_in" in k for k in converted)
    assert converted["encoder.block.0.res_unit1.snake1.alpha"].shape == (1, 4, 1)
    assert converted["decoder.block.0.conv_t1.weight_g"].shape == (64, 1, 1)
    assert "decoder.conv2.weight_v" in converted and "decoder.conv2.bias" not in converted
    with pytest.raises(ValueError, match="pretransform.model"):
        convert_stable_audio_state_dict({"model.model.stand_in_dit_weight": torch.zeros(4, 4)})


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_full_size_key_audit_on_meta(golden_config):
    from diffusers import AutoencoderOobleck

    official = official_sao_vae_key_shapes(sao10_config(golden_config))
    converted = convert_stable_audio_state_dict({k: torch.empty(s, device="meta") for k, s in official.items()})
    with torch.device("meta"):
        model = AutoencoderOobleck()  # diffusers defaults == SAO 1.0 (architecture.md §11.5)
    assert len(official) == len(converted) == 365
    assert shapes_of(converted) == shapes_of(model.state_dict())
    assert round(sum(torch.Size(s).numel() for s in official.values()) / 1e6, 1) == 156.1


def test_unknown_vae_key_is_named(golden_tensors):
    broken = dict(golden_tensors)
    broken["pretransform.model.encoder.layers.1.layers.9.alpha"] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"pretransform\.model\.encoder\.layers\.1\.layers\.9\.alpha"):
        convert_stable_audio_state_dict(broken)


# -------------------------------------------------------------------------------------------- loading


def _write_sao(folder, config, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_strict_load_names_every_bad_key(golden_config, golden_tensors, tmp_path):
    missing = dict(golden_tensors)
    del missing["pretransform.model.decoder.layers.3.layers.1.bias"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\): decoder\.block\.2\.conv_t1\.bias"):
        load_audio_vae_model(_write_sao(tmp_path / "m", golden_config, missing))

    extra = dict(golden_tensors)
    extra["pretransform.model.decoder.layers.7.bias"] = torch.zeros(2)  # the output conv has no bias
    with pytest.raises(ValueError, match=r"unexpected key\(s\): decoder\.conv2\.bias"):
        load_audio_vae_model(_write_sao(tmp_path / "e", golden_config, extra))

    shaped = dict(golden_tensors)
    shaped["pretransform.model.encoder.layers.7.weight_v"] = torch.zeros(128, 64, 5)
    del shaped["pretransform.model.decoder.layers.6.beta"]
    with pytest.raises(ValueError) as info:
        load_audio_vae_model(_write_sao(tmp_path / "s", golden_config, shaped))
    assert "encoder.conv2.weight_v: checkpoint (128, 64, 5) vs model (128, 64, 3)" in str(info.value)
    assert "decoder.snake1.beta" in str(info.value)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        AudioVAE.from_official(tmp_path)


def test_loader_reads_only_vae_tensors(case, vae):
    assert vae.dtype == torch.float32 and vae.device == torch.device("cpu")
    assert vae.model.encoder_output_channels == 128  # widened encoder.conv2 (module docstring)
    assert vae.model.encoder.conv2.weight_v.shape == (128, 64, 3)
    with safe_open(str(case[0] / "model.safetensors"), framework="pt") as handle:
        assert torch.equal(
            vae.model.decoder.conv1.weight_g, handle.get_tensor("pretransform.model.decoder.layers.0.weight_g")
        )


# --------------------------------------------------------------------------------------------- golden


def test_golden_decode(case, vae):
    waveform = vae.decode(case[1]["decode.latent_audio"])
    expected = case[1]["decode.waveform"]
    assert waveform.shape == (1, 2, 9 * 2048) and waveform.dtype == torch.float32
    assert max_abs(waveform, expected) <= 1e-5  # measured ~1.2e-6
    assert rel_l2(waveform, expected) <= 1e-5


def test_golden_resample(case, vae):
    expected = case[1]["decode.waveform_resampled"].numpy()  # [15876, 2]
    exact = resample_to_output_rate(case[1]["decode.waveform"][0].numpy().T, axis=0)
    assert exact.dtype == np.float32 and exact.shape == (15876, 2)
    assert np.array_equal(exact, expected)  # bit-exact, reference layout [samples, 2]
    channel_major = resample_to_output_rate(case[1]["decode.waveform"][0])  # tensor [2, N], axis -1
    assert np.array_equal(channel_major.T, expected)
    ours = resample_to_output_rate(vae.decode(case[1]["decode.latent_audio"])[0])
    assert max_abs(ours.T, expected) <= 1e-5
    assert resample_to_output_rate(np.zeros((2, 2048 * 100))).shape == (2, 1764 * 100)


def test_golden_pre_bottleneck(case, vae):
    out = vae.pre_bottleneck(case[1]["encode.waveform"].unsqueeze(0))
    expected = case[1]["encode.pre_bottleneck"]
    assert out.shape == (1, 128, 4)
    assert max_abs(out, expected) <= 1e-5  # measured ~1.5e-6


# --------------------------------------------------------------------------------------------- encode


def test_encode_is_the_reference_posterior_sample(case, vae):
    waveform = case[1]["encode.waveform"].unsqueeze(0)
    latent = vae.encode(waveform, generator=torch.Generator().manual_seed(7))
    params = vae.pre_bottleneck(waveform)
    mean, scale = params[:, :64], params[:, 64:]
    eps = torch.randn(1, 64, 4, generator=torch.Generator().manual_seed(7))
    expected = mean + (torch.nn.functional.softplus(scale) + 1e-4) * eps
    assert latent.shape == (1, 4, 64) and latent.dtype == torch.float32
    assert torch.equal(latent, expected.transpose(1, 2))
    torch.manual_seed(11)
    first = vae.encode(waveform)  # global RNG, like the reference's randn_like
    torch.manual_seed(11)
    assert torch.equal(first, vae.encode(waveform))
    assert not torch.equal(first, latent)


def test_encode_sample_statistics(tiny):
    waveform = 0.3 * torch.randn(2, 2, 40 * 2048, generator=torch.Generator().manual_seed(0))
    latent = tiny.encode(waveform, generator=torch.Generator().manual_seed(1))
    params = tiny.pre_bottleneck(waveform)
    std = torch.nn.functional.softplus(params[:, 64:]) + 1e-4
    z = (latent.transpose(1, 2) - params[:, :64]) / std  # the standardised noise, 5120 values
    assert latent.shape == (2, 40, 64)
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1.0) < 0.05
    again = tiny.encode(waveform, generator=torch.Generator().manual_seed(1))
    assert torch.equal(latent, again)


def test_encode_floors_partial_latents(tiny):
    assert tiny.encode(torch.zeros(1, 2, 5 * 2048 + 700)).shape == (1, 5, 64)


def test_long_clip_windowing(tiny):
    window, hop = 8 * 2048, 4  # L_win = 8 latents, hop ceil(8/2) = 4, overlap 4
    total = 23 * 2048 + 1000  # > window; not a multiple of the hop
    waveform = 0.3 * torch.randn(1, 2, total, generator=torch.Generator().manual_seed(3))
    latent = tiny.encode(waveform, generator=torch.Generator().manual_seed(5), window_samples=window)
    assert latent.shape == (1, math.ceil(total / 2048), 64)  # 24: ceil rule of architecture.md §9.2

    # independent reconstruction: windows start every 4 latents, zero-padded to 8 latents, noise drawn
    # window after window, linear cross-fade w = p / 3 over the 4 shared latents
    replay = torch.Generator().manual_seed(5)
    num_windows = 1 + math.ceil((total - window) / (hop * 2048))
    assert num_windows == 5
    windows = []
    for k in range(num_windows):
        piece = torch.zeros(1, 2, window)
        chunk = waveform[..., k * hop * 2048 : k * hop * 2048 + window]
        piece[..., : chunk.shape[-1]] = chunk
        params = tiny.pre_bottleneck(piece)
        eps = torch.randn(1, 64, 8, generator=replay)
        windows.append(params[:, :64] + (torch.nn.functional.softplus(params[:, 64:]) + 1e-4) * eps)
    expected = torch.zeros(1, 64, 24)
    for t in range(24):
        k = t // hop
        if k == 0:
            expected[..., t] = windows[0][..., t]
            continue
        if k > num_windows - 1:
            k = num_windows - 1
        inside = t - k * hop
        if inside < 4 and k >= 1:  # overlap of window k-1 (fading out) and window k (fading in)
            w = inside / 3
            expected[..., t] = (1 - w) * windows[k - 1][..., t - (k - 1) * hop] + w * windows[k][..., inside]
        else:
            expected[..., t] = windows[k][..., inside]
    assert max_abs(latent.transpose(1, 2), expected) < 1e-6

    short = waveform[..., : 8 * 2048]  # == window: single pass, same draw as without windowing
    single = tiny.encode(short, generator=torch.Generator().manual_seed(5), window_samples=window)
    assert torch.equal(single, tiny.encode(short, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize(
    ("waveform", "message"),
    [
        (torch.zeros(2, 4096), "3-D"),
        (torch.zeros(1, 1, 4096), "2 channels"),
        (torch.zeros(1, 2, 1000), "at least 2048"),
        (torch.zeros(1, 2, 4096, dtype=torch.int16), "float"),
    ],
)
def test_encode_rejects_bad_waveforms(tiny, waveform, message):
    with pytest.raises(ValueError, match=message):
        tiny.encode(waveform)


def test_encode_rejects_bad_window(tiny):
    with pytest.raises(ValueError, match="multiple of 2048"):
        tiny.encode(torch.zeros(1, 2, 4096), window_samples=3000)


@pytest.mark.parametrize("shape", [(1, 64, 9), (9, 64), (1, 9, 32)])
def test_decode_rejects_bad_latents(tiny, shape):
    with pytest.raises(ValueError, match="time-major"):
        tiny.decode(torch.zeros(shape))


# ------------------------------------------------------------------------------------------ random ckpt


def test_save_random_audio_vae_round_trip(tmp_path, tiny):
    folder = save_random_audio_vae(tmp_path / "a", seed=0)
    config = json.loads((folder / "model_config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
        assert len(keys) == 367
        assert sum(not k.startswith("pretransform.model.") for k in keys) == 2
        assert any(k.endswith("weight_g") for k in keys) and any(k.endswith("weight_v") for k in keys)
        first = {k: handle.get_tensor(k) for k in keys}
    assert config["model"]["pretransform"]["config"]["encoder"]["config"]["latent_dim"] == 128
    other = load_file(str(save_random_audio_vae(tmp_path / "b", seed=1) / "model.safetensors"))
    same = load_file(str(save_random_audio_vae(tmp_path / "c", seed=0) / "model.safetensors"))
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert not torch.equal(first["pretransform.model.decoder.layers.0.weight_v"], other["pretransform.model.decoder.layers.0.weight_v"])

    latent = torch.randn(1, 51, 64, generator=torch.Generator().manual_seed(0))  # 2 s of model time
    waveform = tiny.decode(latent)
    assert waveform.shape == (1, 2, 51 * 2048)
    assert waveform.std() > 0.01  # not silent
    assert waveform.abs().max() < 1.0  # not clipped
    encoded = tiny.encode(waveform, generator=torch.Generator().manual_seed(0))
    assert encoded.shape == (1, 51, 64) and torch.isfinite(encoded).all()
    reloaded = AudioVAE.from_official(tmp_path / "c")
    assert torch.equal(reloaded.decode(latent), waveform)


def test_diffusers_folder_round_trip(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path / "vae")  # widened encoder: rebuilt from the weight shapes
    reloaded = AudioVAE.from_official(tmp_path)
    waveform = 0.3 * torch.randn(1, 2, 4 * 2048, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reloaded.pre_bottleneck(waveform), tiny.pre_bottleneck(waveform))
    latent = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(reloaded.decode(latent), tiny.decode(latent))
    assert load_audio_vae_model(tmp_path / "vae").encoder_output_channels == 128


# ------------------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_random_audio_vae(tmp_path_factory.mktemp("sao_ok") / "stable-audio-open-1.0", seed=0)


def _copy_with(tiny_folder, tmp_path, name: str, content: bytes):
    folder = tmp_path / "stable-audio-open-1.0"
    folder.mkdir()
    for file in ("model_config.json", "model.safetensors"):
        (folder / file).write_bytes(content if file == name else (tiny_folder / file).read_bytes())
    return folder


def _load_error(folder, file: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_audio_vae_model(folder)
    message = str(info.value)
    assert str(folder / file) in message and f"{file} from the stabilityai/stable-audio-open-1.0" in message
    assert "download it again" in message
    return message


def test_damaged_model_config_json_is_one_clear_error(tiny_folder, tmp_path):
    text = (tiny_folder / "model_config.json").read_bytes()
    folder = _copy_with(tiny_folder, tmp_path, "model_config.json", text[: len(text) // 2])
    assert "not valid JSON" in _load_error(folder, "model_config.json")
    (folder / "model_config.json").write_text("")
    assert "empty" in _load_error(folder, "model_config.json")
    (folder / "model_config.json").write_text("[1, 2]")
    assert "holds a JSON list" in _load_error(folder, "model_config.json")


def test_damaged_model_safetensors_is_one_clear_error(tiny_folder, tmp_path):
    data = (tiny_folder / "model.safetensors").read_bytes()
    folder = _copy_with(tiny_folder, tmp_path, "model.safetensors", data[: len(data) // 2])
    assert "truncated" in _load_error(folder, "model.safetensors")
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    assert "text file" in _load_error(folder, "model.safetensors")


def test_model_safetensors_without_the_vae_is_one_clear_error(tiny_folder, tmp_path):
    folder = _copy_with(tiny_folder, tmp_path, "model_config.json", (tiny_folder / "model_config.json").read_bytes())
    save_file({"model.model.layer.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    message = _load_error(folder, "model.safetensors")
    assert "is not a usable Stable Audio Open checkpoint" in message and "pretransform.model." in message


def test_tilde_paths_are_expanded(tiny_folder, tiny, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_folder.parent))
    reloaded = AudioVAE.from_official("~/stable-audio-open-1.0")
    latent = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reloaded.decode(latent), tiny.decode(latent))
