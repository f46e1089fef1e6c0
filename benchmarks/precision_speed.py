"""bf16 autocast + channels-last vs float32 on this CPU, side by side in one run.

Prints img/s of a ResNet-18 SAN-GAL training step and of exact Grad-CAM (27 binary heads)
at the demo's input size, both ways, and the ratios. `sangal demo` turns bf16 on only where
the CPU has native bf16 (sangal.runtime.precision.native_bf16_cpu).

    .venv/bin/python benchmarks/precision_speed.py [--threads 2] [--size 128x64]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from sangal.aah.gradcam import attribute_heatmaps
from sangal.models.attribute_net import AttributeNet
from sangal.models.reid_net import ReIDNet
from sangal.runtime.precision import autocast, channels_last, native_bf16_cpu
from sangal.train.timing import timed_steps


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default="128x64")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    b, k = args.batch, 27
    print(f"CPU native bf16: {native_bf16_cpu()}; {args.threads} threads; {h}x{w}; batch {b}")
    results = {}
    for fast in (False, True):
        torch.manual_seed(0)
        reid = channels_last(ReIDNet(100, [2] * k, mode="san-gal", backbone="resnet18", pretrained=False), fast)
        attr = channels_last(AttributeNet([2] * k, backbone="resnet18", pretrained=False).eval(), fast)
        opt = torch.optim.SGD(reid.parameters(), lr=0.01)
        x = channels_last(torch.randn(b, 3, h, w), fast)
        aah = [torch.rand(b, k, h // 8, w // 8), torch.rand(b, k, h // 16, w // 16), torch.rand(b, k, h // 16, w // 16)]

        def loss(_, reid=reid) -> dict[str, torch.Tensor]:
            value = reid(x, aah).global_features.float().pow(2).mean()
            return {"total": value}

        def step(loss=loss, opt=opt, fast=fast) -> None:  # one step of the project's loop, its autocast included
            timed_steps(loss, opt, lambda: itertools.repeat(None), torch.device("cpu"), steps=1, amp=fast)

        def cam() -> None:
            with autocast(torch.device("cpu"), fast):
                attribute_heatmaps(attr, x)

        results[fast] = (b / _best(step, args.repeats), b / _best(cam, args.repeats))
        name = "bf16 + channels-last" if fast else "float32"
        print(f"{name:>22}: train step {results[fast][0]:7.1f} img/s   exact Grad-CAM {results[fast][1]:6.1f} img/s")
    print(f"train step ratio: {results[True][0] / results[False][0]:.2f}")
    print(f"Grad-CAM ratio: {results[True][1] / results[False][1]:.2f}")


if __name__ == "__main__":
    main()
