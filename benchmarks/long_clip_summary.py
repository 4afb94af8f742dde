"""Add up the ``seams.json`` of several ``long_clip_seams.py`` runs (issue: longer clips).

    python benchmarks/long_clip_summary.py DIR [DIR ...]

Each ``DIR`` is an ``--out`` folder of ``benchmarks/long_clip_seams.py`` (or a folder holding such folders). For
the windowed clips, over every caption: seams above their clip's inside p95 / max, and above the p95 / max of the
inside steps across latent-frame boundaries (``boundary_difference_*``, the steps a join can fall on); clips whose
part colours stay constant across the pieces, and whose hair is the caption's in every piece; gaps (seams and
clips); clicks; the sync of the whole clip (median lag, lags within 1 frame, median correlation) and, beside it,
the median correlation of the first pieces (the first window, which is the single pass of that length). For the
extensions and retakes, where present: joins above their clip's boundary p95 / max, and held latents bit for bit.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def _load(folders: list[Path]) -> list[dict]:
    files = []
    for folder in folders:
        found = [folder / "seams.json"] if (folder / "seams.json").is_file() else sorted(folder.glob("*/seams.json"))
        if not found:
            raise SystemExit(f"no seams.json in {folder} or its subfolders: pass long_clip_seams.py --out folders")
        files += found
    return [json.loads(f.read_text()) for f in files]


def _above(r: dict, kind: str) -> tuple[int, int]:
    seams = np.asarray(r["seam_difference"])
    return int((seams > r[f"{kind}_difference_p95"]).sum()), int((seams > r[f"{kind}_difference_max"]).sum())


def summarise(runs: list[dict]) -> dict:
    """The aggregate figures (module docstring) of ``runs``, each a loaded ``seams.json``."""
    longs = [(run, run["long"]) for run in runs if "long" in run]
    out: dict = {"captions": len(runs), "windowed_clips": len(longs)}
    if longs:
        seams = sum(len(r["seam_difference"]) for _, r in longs)
        inside = np.sum([_above(r, "inside") for _, r in longs], axis=0)
        boundary = np.sum([_above(r, "boundary") for _, r in longs], axis=0)
        hair_right = [all(p["hair"] == run["attributes"]["hair"] for p in r["colours_per_piece"])
                      for run, r in longs if "attributes" in run]
        synced = [r for _, r in longs if math.isfinite(r["sync_offset_frames"])]
        firsts = [r["sync_per_piece"][0]["correlation"] for r in synced if r["sync_per_piece"]]
        firsts = [c for c in firsts if math.isfinite(c)]
        out.update(
            seams=seams, above_inside_p95=int(inside[0]), above_inside_max=int(inside[1]),
            above_boundary_p95=int(boundary[0]), above_boundary_max=int(boundary[1]),
            colours_constant=sum(r["colours_constant"] for _, r in longs),
            hair_right_throughout=sum(hair_right) if hair_right else None,
            gap_seams=sum(r["gaps"] for _, r in longs), clips_with_gaps=sum(r["gaps"] > 0 for _, r in longs),
            clicks=sum(r["clicks"] for _, r in longs), clips_with_a_mouth=len(synced),
            median_lag_frames=float(np.median([r["sync_offset_frames"] for r in synced])) if synced else None,
            lags_within_1_frame=sum(abs(r["sync_offset_frames"]) <= 1 for r in synced),
            median_correlation=float(np.median([r["sync_correlation"] for r in synced])) if synced else None,
            first_piece_median_correlation=float(np.median(firsts)) if firsts else None)
    for name in ("extend", "retake"):
        edits = [run[name] for run in runs if name in run]
        if edits:
            above = np.sum([_above(r, "boundary") for r in edits], axis=0)
            out[name] = {"clips": len(edits), "joins": sum(len(r["seam_difference"]) for r in edits),
                         "above_boundary_p95": int(above[0]), "above_boundary_max": int(above[1])}
            if name == "retake":
                out[name]["held_bitwise"] = sum(r["held_video_bitwise"] and r["held_audio_bitwise"] for r in edits)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="long_clip_seams.py --out folders, or their parents")
    print(json.dumps(summarise(_load(parser.parse_args().folders)), indent=2))


if __name__ == "__main__":
    main()
