"""benchmarks/prompt_schedule_toy.py: the second prompt and the aggregate, on made-up runs."""

from __future__ import annotations

import json

from magihuman.toy.captions import parse_caption

from .conftest import benchmark_module


def _module():
    return benchmark_module("prompt_schedule_toy")


def test_the_second_prompt_is_the_same_person_with_another_line():
    first, later = _module().second_prompt(3)
    a, b = parse_caption(first), parse_caption(later)
    assert len(a["words"]) != len(b["words"])
    assert {k: v for k, v in a.items() if k != "words"} == {k: v for k, v in b.items() if k != "words"}
    assert later.count(" ".join(b["words"])) == 2  # in the sentence and on the Dialogue line


def _run(words, which, plain, scheduled, *, bitwise=True, hair="red"):
    piece = lambda n: {"words": n, "pitch": "high", "hair": hair}  # noqa: E731
    return {"words": list(words), "prompt_per_window": which, "plain": [piece(n) for n in plain],
            "scheduled": [piece(n) for n in scheduled], "before_cue_bitwise": bitwise,
            "seams": {"seam_difference": [1.0] * (len(which) - 1), "boundary_difference_p95": 1.5,
                      "colours_constant": True, "gaps": 1, "clicks": 0, "sync_offset_frames": 1.0,
                      "sync_correlation": 0.6}}


def test_summary_counts_pieces_against_each_prompt(tmp_path):
    runs = [_run((2, 5), [0, 0, 1, 1], [2, 2, 2, 3], [2, 2, 5, 4]),
            _run((1, 3), [0, 1, 1], [1, 1, 1], [1, 3, 3], bitwise=False)]
    runs[1]["scheduled"][2]["hair"] = "blue"
    runs[1]["seams"]["sync_offset_frames"] = runs[1]["seams"]["sync_correlation"] = float("nan")
    for k, run in enumerate(runs):
        (tmp_path / f"d{k}").mkdir()
        (tmp_path / f"d{k}" / "schedule.json").write_text(json.dumps(run))
    found = _module().summary(tmp_path)
    # window 0 is not counted; before the cue: 1 piece (first run), after: 2 + 2
    assert found["pieces"] == {"before": 1, "after": 4}
    assert (found["scheduled_before_A"], found["scheduled_after_B"], found["scheduled_after_A"]) == (1, 3, 0)
    assert (found["plain_after_A"], found["plain_after_B"]) == (3, 0)
    assert found["before_cue_bitwise"] == 1 and found["seams"] == 5 and found["gaps"] == 2
    assert found["seams_above_boundary_p95"] == 0 and found["median_sync_correlation"] == 0.6
    assert (found["plain_colours_constant"], found["scheduled_colours_constant"]) == (2, 1)
    assert found["sync_clips"] == 1 and found["median_sync_offset_frames"] == 1.0
