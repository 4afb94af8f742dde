"""The shipped toy bundle (``magihuman toy train`` + ``magihuman toy ship``): what ``--demo`` runs.

The tests run it on held-out toy captions (attribute combinations that never occur in training) and score the
result with the evaluation kit's own toy analysis, so a bundle that stops following its captions fails here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from magihuman.demo import bundle as demo_bundle
from magihuman.eval.toy_vision import part_colours
from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline
from magihuman.runtime.options import RuntimeOptions
from magihuman.toy.dataset import held_out_clips

#: Held-out captions generated here (each ~10 s on 2 cores with the 8-step student).
PROBES = 4


def test_the_trained_bundle_ships_with_its_record():
    root = demo_bundle.toy_bundle()
    assert root is not None, "src/magihuman/demo/toy_bundle/ is missing: `magihuman toy ship WORK` makes it"
    record = json.loads((root / demo_bundle.TOY_MARKER).read_text())
    assert record["recipe"]["transformer"]["num_layers"] == 8
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    assert {"distill", "base"} <= set(record["reports"]), sorted(record["reports"])


@pytest.fixture(scope="module")
def student():
    return MagiHumanPipeline.from_official(demo_bundle.TOY_BUNDLE, preset="distill",
                                           runtime=RuntimeOptions(fp32=True))


def test_the_student_draws_the_colours_its_held_out_captions_ask_for(student):
    clips = [c for c in held_out_clips(0, 12) if c.image is None][:PROBES]
    right = total = 0
    for index, clip in enumerate(clips):
        out = student(clip.caption, seconds=2.0, width=128, height=128, seed=index)
        assert out.frames.shape == (49, 128, 128, 3)
        found = part_colours(np.asarray(out.frames))
        for part in ("hair", "shirt", "wall"):
            right += found[part].name == getattr(clip.attributes, part)
            total += 1
    assert right >= 0.75 * total, f"{right}/{total} part colours right"
