"""Codec reconstruction training: the objectives learn, runs resume bit for bit, and the writers produce files
the official loaders read back unchanged."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from magihuman.codecs.audio_vae import AudioVAE, build_audio_vae
from magihuman.codecs.turbo_vae import TurboVAE
from magihuman.codecs.turbo_vae_config import TurboVAEDConfig
from magihuman.codecs.turbo_vae_network import TurboVAEDecoder
from magihuman.codecs.video_vae import load_wan22_vae, wan22_vae_config
from magihuman.demo.random_codecs import sao_model_config, turbo_vaed_structure
from magihuman.train.autoencoders import (
    ReconstructionRun,
    audio_vae_loss,
    save_audio_vae,
    save_turbo_decoder,
    save_wan22_vae,
    stft_loss,
    video_vae_loss,
    weighted_l1,
)


def _pixels(seed: int, frames: int = 5, size: int = 32) -> torch.Tensor:
    """Flat-colour blocks, like the toy frames: ``[1, 3, F, size, size]`` in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, 2, 2, generator=g) * 2 - 1).repeat_interleave(size // 2, 1).repeat_interleave(size // 2, 2)
    return image[None, :, None].expand(1, 3, frames, size, size).contiguous()


def test_wan22_vae_writer_round_trip(tmp_path):
    torch.manual_seed(0)
    model = AutoencoderKLWan(**wan22_vae_config(4, 4, 48))
    save_wan22_vae(model, tmp_path)
    loaded = load_wan22_vae(tmp_path / "Wan2.2_VAE.pth", dtype=torch.float32)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_audio_vae_writer_round_trip(tmp_path):
    torch.manual_seed(0)
    config = sao_model_config(4)
    model = build_audio_vae(config)
    save_audio_vae(model, config, tmp_path)
    loaded = AudioVAE.from_official(tmp_path).model
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_turbo_decoder_writer_round_trip(tmp_path):
    torch.manual_seed(0)
    decoder = TurboVAEDecoder(TurboVAEDConfig.from_dict(turbo_vaed_structure((8, 8, 16, 16)), source="test"))
    save_turbo_decoder(decoder, tmp_path, global_step=7)
    loaded = TurboVAE.from_official(tmp_path, dtype=torch.float32).model
    ours, theirs = decoder.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_video_vae_loss_falls_on_a_fixed_clip(one_thread):
    torch.manual_seed(0)
    model = AutoencoderKLWan(**wan22_vae_config(4, 4, 48))
    pixels = _pixels(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(12):
        loss, parts = video_vae_loss(model, pixels, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts["l1"])
    assert losses[-1] < 0.6 * losses[0], losses


def test_audio_vae_loss_parts_and_stft_identity():
    wave = torch.sin(torch.arange(4096, dtype=torch.float32) / 9.0).expand(1, 2, -1).contiguous()
    assert float(stft_loss(wave, wave)) < 1e-5
    assert float(stft_loss(0.5 * wave, wave)) > 0.3  # log-magnitude error of a factor 2, plus convergence 0.5
    silence = torch.zeros_like(wave)  # a pause: the loss of a quiet output stays on the scale of a voiced crop's
    quiet = stft_loss(1e-3 * wave, silence)
    assert torch.isfinite(quiet) and float(quiet) < 2.0
    assert float(stft_loss(silence, silence)) < 1e-5
    model = build_audio_vae(sao_model_config(4))
    loss, parts = audio_vae_loss(model, wave, torch.Generator().manual_seed(0))
    assert set(parts) == {"l1", "stft", "kl", "latent_std"}
    assert torch.isfinite(loss)


def _toy_run(folder, steps):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))

    def loss_fn(step):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        loss = (model(x) - x.flip(1)).pow(2).mean()
        return loss, {}

    return model, ReconstructionRun(model, folder, loss_fn, steps, learning_rate=1e-2, checkpoint_every=3,
                                    warmup_steps=2)


def test_reconstruction_run_resumes_bit_for_bit(tmp_path):
    straight, run = _toy_run(tmp_path / "straight", 7)
    assert run.train() == 7
    resumed, run = _toy_run(tmp_path / "resumed", 7)
    assert run.train(stop_after=4) == 4
    resumed, run = _toy_run(tmp_path / "resumed", 7)  # a new process: fresh model, state from the checkpoint
    assert run.train() == 7
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    rows = (tmp_path / "resumed" / "loss.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", *map(str, range(1, 8))]


def test_weighted_l1_counts_each_pixel_its_weight():
    recon, target = torch.zeros(1, 3, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2)
    recon[..., 0, 0] = 1.0  # one pixel wrong by 1 in every channel
    assert float(weighted_l1(recon, target)) == pytest.approx(0.25)
    weight = torch.ones(1, 1, 1, 2, 2)
    assert float(weighted_l1(recon, target, weight)) == pytest.approx(0.25)
    weight[..., 0, 0] = 5.0  # (5 * 1) / (5 + 3)
    assert float(weighted_l1(recon, target, weight)) == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="broadcast"):
        weighted_l1(recon, target, torch.ones(1, 1, 1, 3, 3))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_l1(recon, target, torch.zeros(1, 1, 1, 2, 2))
