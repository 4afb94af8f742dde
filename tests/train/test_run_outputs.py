"""What a training run writes besides its weights: TensorBoard scalars, validation MP4s decoded like
``generate`` decodes them, and LoRA checkpoints that resume."""

from __future__ import annotations

import csv

import pytest
import torch

from magihuman.demo.random_weights import random_transformer
from magihuman.train.config import LoraSettings, TrainConfig
from magihuman.train.trainer import Trainer
from magihuman.train.validation import Validator

from .helpers import TRAIN_TINY_CONFIG, latent_dataset

SMALL = dict(TRAIN_TINY_CONFIG, hidden_size=64, head_dim=16)


def _config(tmp_path, **fields) -> TrainConfig:
    base = dict(mode="finetune", cache=tmp_path, base=tmp_path, output=tmp_path / "run", steps=3, batch_size=2,
                learning_rate=1e-3, mixed_precision="fp32", checkpoint_every=3)
    return TrainConfig(**dict(base, **fields))


def test_tensorboard_events_hold_the_logged_losses(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(_config(tmp_path, tensorboard=True), model=random_transformer(SMALL, seed=2), samples=latent_dataset(3),
            negative=torch.randn(4, 32)).train()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/video_loss", "train/audio_loss", "train/learning_rate"} <= scalars
    rows = list(csv.DictReader((tmp_path / "run" / "loss.csv").open()))
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [1, 2, 3]
    for event, row in zip(logged, rows, strict=True):
        assert event.value == pytest.approx(float(row["loss"]), rel=1e-6)  # float32 events, 8-digit CSV


def _spy_on_decoders(monkeypatch) -> list[str]:
    """Record the class name of every video decoder whose ``decode`` runs."""
    from magihuman.codecs.turbo_vae import TurboVAE
    from magihuman.codecs.video_vae import VideoVAE

    used = []
    for cls in (TurboVAE, VideoVAE):
        def decode(self, latent, *args, _original=cls.decode, _name=cls.__name__, **kwargs):
            used.append(_name)
            return _original(self, latent, *args, **kwargs)

        monkeypatch.setattr(cls, "decode", decode)
    return used


def test_validation_decodes_with_the_turbo_vae_when_the_root_has_one(tmp_path, demo_root, monkeypatch):
    """As ``generate`` by default: Turbo-VAED with ``ROOT/turbo_vae``, the Wan2.2 decoder without it."""
    from magihuman.pipeline.media import probe_media

    used = _spy_on_decoders(monkeypatch)
    model, samples, negative = random_transformer(SMALL, seed=2).eval(), latent_dataset(1), torch.randn(4, 32)
    written = Validator(tmp_path / "turbo", samples, negative, preset="distill", root=demo_root).run(model, 1)
    assert used == ["TurboVAE"]
    wan_root = tmp_path / "wan_root"
    wan_root.mkdir()
    for name in ("Wan2.2-TI2V-5B", "stable-audio-open-1.0"):
        (wan_root / name).symlink_to(demo_root / name)
    used.clear()
    written += Validator(tmp_path / "wan", samples, negative, preset="distill", root=wan_root).run(model, 1)
    assert used == ["VideoVAE"]
    for path in written:  # 2 latent frames of 4x4 -> 5 frames of 64x64, with sound
        info = probe_media(path)
        assert (info["num_frames"], info["width"], info["height"], info["num_audio_streams"]) == (5, 64, 64, 1)


def test_lora_resume_is_bitwise(tmp_path):
    """The optimiser state is saved by parameter name (the FSDP2-compatible format) for LoRA too."""
    def trainer(folder):
        config = _config(folder, mode="lora", checkpoint_every=1, ema_decay=0.9, lora=LoraSettings(rank=4))
        return Trainer(config, model=random_transformer(SMALL, seed=2), samples=latent_dataset(3),
                       negative=torch.randn(4, 32, generator=torch.Generator().manual_seed(1)))

    straight = trainer(tmp_path / "a")
    straight.train()
    trainer(tmp_path / "b").train(stop_after=1)
    resumed = trainer(tmp_path / "b")
    assert resumed.train().step == 3
    assert all(torch.equal(p, resumed.params[n]) for n, p in straight.params.items())
    assert all(torch.equal(e, resumed.ema[n]) for n, e in straight.ema.items())
    moments = [(straight.optimizer.state[p], resumed.optimizer.state[q])
               for p, q in zip(straight.params.values(), resumed.params.values())]
    assert all(torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"]) for a, b in moments)
