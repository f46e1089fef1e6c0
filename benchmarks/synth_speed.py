"""Synthetic dataset generation speed: images per second at 128x64 and 256x128, each style side by side.

Single process, both sizes and both styles in the same run. "generate" is the full
``generate_synthetic`` (drawing, JPEG, mask .npz, .mat, atomic rename) into a
temporary folder; "render" is the drawing alone, to show where the time goes. The
last column is each style's generate time over the first style's (``easy``).

    .venv/bin/python benchmarks/synth_speed.py [--ids 40] [--cams 6] [--styles easy,real]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sangal.synthetic.generate import generate_synthetic, plan_synthetic, render_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=40)
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--styles", default="easy,real", help="comma list; the first is the reference")
    args = parser.parse_args()
    for height, width in ((128, 64), (256, 128)):
        reference = None
        for style in args.styles.split(","):
            params = dict(num_ids=args.ids, num_cams=args.cams, seed=0, height=height, width=width, style=style)
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
            per_image = best_gen / n
            reference = reference or per_image
            print(f"{height}x{width} {style:5}: {n} images | generate {n / best_gen:7.1f} images/s "
                  f"({1000 * per_image:.2f} ms/image, {per_image / reference:.2f}x) | "
                  f"render only {n / best_render:7.1f} images/s")


if __name__ == "__main__":
    main()
