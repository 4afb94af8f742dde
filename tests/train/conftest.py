"""A tiny base model trained once per test session on 4 clips, shared by the overfit, LoRA and DMD-2 tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from magihuman.demo.random_weights import random_transformer
from magihuman.train.config import TrainConfig
from magihuman.train.trainer import Trainer, TrainResult

from .helpers import TRAIN_TINY_CONFIG, latent_dataset

#: Steps and learning rate of the shared overfit run (tests/train/test_trainer.py states its figures).
OVERFIT_STEPS = 300
OVERFIT_LR = 1e-3


@dataclass
class TrainedBase:
    """The trained tiny model, its data and the run's result."""

    model: torch.nn.Module
    samples: list
    negative: torch.Tensor
    result: TrainResult


@pytest.fixture(autouse=True)
def _train_on_one_thread(one_thread):
    """The training tests run on one intra-op thread: these models are tiny, and two threads on a shared
    2-core machine spin against each other."""
    yield


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory) -> TrainedBase:
    """A 2-layer width-256 model trained with the full objective (text dropout 0.1, first-frame rate 0.2)
    for 300 AdamW steps at lr 1e-3 on 4 clips (batch 4, fp32)."""
    samples = latent_dataset(4)
    negative = torch.randn(5, 32, generator=torch.Generator().manual_seed(99))
    model = random_transformer(TRAIN_TINY_CONFIG, seed=1)
    run = tmp_path_factory.mktemp("overfit")
    config = TrainConfig(mode="finetune", cache=run, base=run, output=run, steps=OVERFIT_STEPS, batch_size=4,
                         learning_rate=OVERFIT_LR, mixed_precision="fp32", max_grad_norm=None,
                         checkpoint_every=OVERFIT_STEPS, text_dropout=0.1, first_frame_rate=0.2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(config, model=model, samples=samples, negative=negative).train()
    finally:
        torch.set_num_threads(threads)
    return TrainedBase(model.eval(), samples, negative, result)
