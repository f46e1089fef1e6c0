"""Synthetic dataset generation speed: images per second at 128x64 and 256x128.

Single process, both sizes in the same run. "generate" is the full
``generate_synthetic`` (drawing, JPEG, mask .npz, .mat, atomic rename) into a
temporary folder; "render" is the drawing alone, to show where the time goes.

    .venv/bin/python benchmarks/synth_speed.py [--ids 40] [--cams 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sangal.data.synthetic import generate_synthetic, plan_synthetic, render_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=40)
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parser.parse_args()
    for height, width in ((128, 64), (256, 128)):
        params = dict(num_ids=args.ids, num_cams=args.cams, seed=0, height=height, width=width)
        plan = plan_synthetic(**params)
        n = len(plan.images)
        best_render = best_gen = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for image in plan.images:
                render_image(plan, image)
            best_render = min(best_render, time.perf_counter() - start)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                generate_synthetic(Path(tmp) / "synthetic", **params)
                best_gen = min(best_gen, time.perf_counter() - start)
        print(f"{height}x{width}: {n} images | generate {n / best_gen:7.1f} images/s "
              f"({1000 * best_gen / n:.2f} ms/image) | render only {n / best_render:7.1f} images/s")


if __name__ == "__main__":
    main()
