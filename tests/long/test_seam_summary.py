"""benchmarks/long_clip_summary.py: the aggregate of several long_clip_seams.py runs, on made-up runs."""

from __future__ import annotations

import json
import math

import pytest

from .conftest import benchmark_module


def _module():
    return benchmark_module("long_clip_summary")


def _long(seams, *, inside=(1.0, 2.0, 3.0), boundary=(1.5, 2.5, 2.8), hair=("red", "red"), gaps=0, lag=0.0,
          r=0.6, first=0.7):
    return {"seam_difference": list(seams), "inside_difference_p95": inside[1], "inside_difference_max": inside[2],
            "boundary_difference_p95": boundary[1], "boundary_difference_max": boundary[2],
            "colours_per_piece": [{"hair": h, "shirt": "blue", "wall": "grey"} for h in hair],
            "colours_constant": len(set(hair)) == 1, "gaps": gaps, "clicks": 0, "sync_offset_frames": lag,
            "sync_correlation": r, "sync_per_piece": [{"offset_frames": lag, "correlation": first}]}


def test_the_summary_counts_seams_colours_gaps_and_sync(tmp_path):
    runs = [
        # 2.2 is above the inside p95 (2.0), not the boundary p95 (2.5); 2.9 also above the boundary max (2.8)
        {"attributes": {"hair": "red"}, "long": _long([2.2, 2.9], gaps=1, lag=1.0, r=0.4, first=0.8)},
        {"attributes": {"hair": "red"}, "long": _long([1.0], hair=("red", "pink"), lag=-3.0, r=0.7, first=0.6)},
        {"attributes": {"hair": "black"}, "long": _long([1.0], hair=("grey", "grey"), lag=math.nan, r=math.nan,
                                                         first=math.nan),
         "extend": _long([2.6]), "retake": {**_long([1.0, 3.0]), "held_video_bitwise": True,
                                             "held_audio_bitwise": True}},
    ]
    for i, run in enumerate(runs):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "seams.json").write_text(json.dumps(run))
    module = _module()
    out = module.summarise(module._load([tmp_path]))
    assert (out["captions"], out["seams"]) == (3, 4)
    assert (out["above_inside_p95"], out["above_inside_max"]) == (2, 0)
    assert (out["above_boundary_p95"], out["above_boundary_max"]) == (1, 1)
    assert (out["colours_constant"], out["hair_right_throughout"]) == (2, 1)
    assert (out["gap_seams"], out["clips_with_gaps"]) == (1, 1)
    assert (out["clips_with_a_mouth"], out["median_lag_frames"], out["lags_within_1_frame"]) == (2, -1.0, 1)
    assert out["median_correlation"] == pytest.approx(0.55)
    assert out["first_piece_median_correlation"] == pytest.approx(0.7)
    assert out["extend"] == {"clips": 1, "joins": 1, "above_boundary_p95": 1, "above_boundary_max": 0}
    assert out["retake"] == {"clips": 1, "joins": 2, "above_boundary_p95": 1, "above_boundary_max": 1,
                             "held_bitwise": 1}


def test_a_folder_without_runs_is_refused(tmp_path):
    module = _module()
    with pytest.raises(SystemExit, match="no seams.json"):
        module._load([tmp_path])
