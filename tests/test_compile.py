"""Regional compile (magihuman.runtime.compile) with the ``eager`` dynamo backend (graph capture without Inductor)."""

from __future__ import annotations

import pytest
import torch

from magihuman.demo.random_weights import random_transformer
from magihuman.runtime.compile import compile_repeated_blocks

from conftest import reference_velocities, tiny_inputs


@pytest.fixture(scope="module")
def reference():
    return reference_velocities()


def test_compile_repeated_blocks_eager_backend_keeps_outputs(reference):
    torch._dynamo.reset()
    model = compile_repeated_blocks(random_transformer(), backend="eager")
    assert all(layer._compiled_call_impl is not None for layer in model.block.layers)
    with torch.no_grad():
        video, audio = model(*tiny_inputs())
        other = model(*tiny_inputs(text=11))  # a second token count (CFG's negative prompt) recompiles
        other_expected = random_transformer()(*tiny_inputs(text=11))
    assert torch.equal(video, reference[0]) and torch.equal(audio, reference[1])
    assert torch.equal(other[0], other_expected[0])
    assert torch._dynamo.config.recompile_limit >= 64
    with pytest.raises(ValueError, match="no TransformerLayer"):
        compile_repeated_blocks(torch.nn.Linear(2, 2))
    torch._dynamo.reset()
