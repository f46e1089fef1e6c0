"""ASAM forms side by side: parameter count and Re-ID training-step time of each `model.asam_form`.

One training step = forward with cached-style heat maps (27 Market attributes) + ID, triplet and
attribute losses + backward + SGD step. Every form (and `id+attr`, the same net without ASAM) is timed
interleaved in each round, best of N rounds, in wall and in process CPU time; the ratios (CPU
time) are to `paper`. "ASAM alone" times the three ASAM calls (forward + backward) on tensors of
the stage activations' shapes, best of 5N. Random weights.

    .venv/bin/python benchmarks/asam_forms.py [--threads 2] [--repeats 5] [--skip-resnet50]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import torch

from sangal.models.asam import FORMS
from sangal.models.reid_net import ReIDNet
from sangal.train.losses import reid_losses
from sangal.train.timing import timed_steps

MARKET = [2] * 9 + [4] + [2] * 17  # K = 27
SETTINGS = {  # name: backbone, (H, W), P, K (batch = P * K), training identities
    "MobileNetV2 128x64, PxK 8x4": ("mobilenet_v2", (128, 64), 8, 4, 150),
    "ResNet-50 256x128, batch 8": ("resnet50", (256, 128), 2, 4, 751),
}


def _setup(backbone: str, size: tuple[int, int], p: int, k: int, num_ids: int, form: str | None):
    torch.manual_seed(0)
    mode = "id+attr" if form is None else "san-gal"
    net = ReIDNet(num_ids, MARKET, mode=mode, backbone=backbone, pretrained=False, asam_form=form or "paper").train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    b, (h, w) = p * k, size
    x = torch.randn(b, 3, h, w, generator=g)
    pids = torch.arange(p).repeat_interleave(k)
    attrs = torch.randint(0, 2, (b, len(MARKET)), generator=g)
    maps = None if form is None else [torch.rand(b, len(MARKET), h // s, w // s, generator=g) for s in (8, 16, 16)]

    def loss(_) -> dict[str, torch.Tensor]:
        return reid_losses(net(x, maps), pids, attrs, {"id": 1.0, "triplet": 1.0, "attr": 1.0})

    def step() -> None:  # one step of the project's loop
        timed_steps(loss, opt, lambda: itertools.repeat(None), torch.device("cpu"), steps=1)

    asam = sum(q.numel() for q in net.asam.parameters()) if net.asam is not None else 0
    return step, sum(q.numel() for q in net.parameters()), asam


def _asam_alone(spec: tuple, form: str, repeats: int) -> float:
    """Best CPU seconds of the three ASAM calls alone (forward + backward) on the stage activations' shapes."""
    from sangal.models.asam import ASAM

    backbone, (h, w), p, k, _ = spec
    torch.manual_seed(0)
    net = ReIDNet(2, None, mode="id", backbone=backbone, pretrained=False)
    shapes, a = [], torch.randn(p * k, 3, h, w)
    with torch.no_grad():
        a = net.backbone.layer1(net.backbone.forward_stem(a))
        for stage in (2, 3, 4):
            a = getattr(net.backbone, f"layer{stage}")(a)
            shapes.append(a.shape)
    module = ASAM(len(MARKET), form=form, stage_channels={f"layer{i + 2}": s[1] for i, s in enumerate(shapes)})
    xs = [torch.randn(s, requires_grad=True) for s in shapes]
    maps = [torch.rand(s[0], len(MARKET), s[2], s[3]) for s in shapes]

    def run() -> None:
        sum(module(x, m, f"layer{i + 2}").sum() for i, (x, m) in enumerate(zip(xs, maps))).backward()

    run()
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        run()
        best = min(best, time.process_time() - t)
    return best


def measure(name: str, spec: tuple, repeats: int) -> None:
    rows = [None, *FORMS]  # None: the id+attr net (no ASAM)
    runs = {form: _setup(*spec, form) for form in rows}
    for step, _, _ in runs.values():
        step()  # warm-up
    wall = {form: float("inf") for form in rows}
    cpu = dict(wall)
    for _ in range(repeats):
        for form in rows:  # interleaved: load changes hit every form alike
            t, c = time.perf_counter(), time.process_time()
            runs[form][0]()
            wall[form] = min(wall[form], time.perf_counter() - t)
            cpu[form] = min(cpu[form], time.process_time() - c)
    alone = {form: _asam_alone(spec, form, 5 * repeats) for form in FORMS}
    print(f"\n{name} (best of {repeats}, interleaved; CPU = this process's CPU time, less hurt by other load)")
    print("| form | parameters | ASAM parameters | step wall | step CPU | CPU vs paper | CPU vs no ASAM | ASAM alone (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for form in rows:
        _, total, asam = runs[form]
        label = "id+attr (no ASAM)" if form is None else form
        own = "–" if form is None else f"{alone[form] * 1000:.1f} ms"
        print(f"| {label} | {total:,} | {asam:,} | {wall[form] * 1000:.0f} ms | {cpu[form] * 1000:.0f} ms | "
              f"{cpu[form] / cpu['paper']:.3f} | {cpu[form] / cpu[None]:.3f} | {own} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, CPU, load {os.getloadavg()[0]:.1f}", flush=True)
    for name, spec in SETTINGS.items():
        if args.skip_resnet50 and spec[0] == "resnet50":
            continue
        measure(name, spec, args.repeats)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
