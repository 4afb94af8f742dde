"""Per-stage wall time of one generation (text encode, latents, image encode, denoise, decodes).

CPU mode (default) runs the tiny random-weight demo bundle, so it works on any machine:

    python benchmarks/pipeline_stages.py --seconds 2 --image ../shared/examples/image.png

With real weights: ``--checkpoint-root ROOT --device cuda``. The first run is a warm-up and is
not reported. Record the figures you quote in docs/benchmarks.md with the command, device and date.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from magihuman.demo.bundle import ensure_demo_bundle
from magihuman.pipeline.magihuman_pipeline import MagiHumanPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-root", default=None, help="real checkpoint root (default: the demo bundle)")
    parser.add_argument("--preset", default="distill")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--image", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    root = args.checkpoint_root or ensure_demo_bundle()
    start = time.perf_counter()
    pipe = MagiHumanPipeline.from_official(root, preset=args.preset, device=args.device)
    load_seconds = time.perf_counter() - start
    request = dict(prompt="A man in a grey jacket looks at the camera and says: \"Welcome back.\"",
                   image=args.image, seconds=args.seconds, width=args.width, height=args.height)
    pipe(**request)  # warm-up
    runs = [pipe(**request).timings for _ in range(args.repeats)]
    print(f"device={args.device} threads={torch.get_num_threads()} cpu={platform.processor() or platform.machine()} "
          f"root={'demo' if args.checkpoint_root is None else root} preset={args.preset} "
          f"{args.seconds}s {args.width}x{args.height} image={args.image is not None} load={load_seconds:.2f}s")
    print(f"{'stage':<18}{'median s':>10}{'min s':>10}")
    for stage in runs[0]:
        values = [r[stage] for r in runs]
        print(f"{stage:<18}{statistics.median(values):>10.3f}{min(values):>10.3f}")
    totals = [sum(r.values()) for r in runs]
    print(f"{'total':<18}{statistics.median(totals):>10.3f}{min(totals):>10.3f}")


if __name__ == "__main__":
    main()
