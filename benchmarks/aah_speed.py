"""Speed of the batched AAH engine, and the training-step cost of SAN-GAL.

Section 1 — Grad-CAM for all K attributes at the three scale-changing stages
(outputs of layer2, layer3, layer4; paper eqs. 1-2): :func:`sangal.aah.gradcam.
attribute_heatmaps` (one forward pass, one backward pass vectorised over the
K attributes) against the ``grad-cam`` package (``pytorch_grad_cam.GradCAM``,
the reference implementation of Selvaraju et al.) looped over every
(stage, attribute) pair — 3 x 27 = 81 calls, each a full forward and backward
with a ``ClassifierOutputSoftmaxTarget`` on one attribute head. Same model,
same images, same run; the printed maps' largest difference shows that both
compute the same thing.

Section 2 — one SAN-GAL training step with cached AAH (the paper's offline
mode: heat maps read from the cache, ASAM after layer2/3/4, attribute heads
and loss) against the ``id`` baseline (and ``id+attr``): forward, losses,
backward and SGD step on the same batch and backbone; median over repeats,
modes interleaved so that machine load hits them alike.

Market-1501's binary schema is used: 9 binary heads (gender, hair, up, down,
clothes, hat, backpack, bag, handbag), age with 4 classes, 17 binary colour
heads: K = 27. No pretrained weights are needed (random initialisation).

The machine may be shared: the load average and thread count are printed,
and CPU time is printed next to wall time.

    python benchmarks/aah_speed.py                          # ResNet-50, batch 8, 256x128, CPU
    python benchmarks/aah_speed.py --batch 2 --height 128 --width 64 --repeats 2   # quick
    python benchmarks/aah_speed.py --device cuda            # on a GPU
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from torch import Tensor, nn

from sangal.aah import gradcam
from sangal.aah.gradcam import attribute_heatmaps, default_chunk, target_classes
from sangal.models.attribute_net import AttributeNet
from sangal.models.reid_net import ReIDNet
from sangal.train.losses import reid_losses
from sangal.train.timing import timed_steps

#: Market-1501 binary schema, in the .mat field order:
#: gender hair up down clothes hat backpack bag handbag | age | 17 colours.
MARKET_CLASSES = [2] * 9 + [4] + [2] * 17


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50", help="resnet18/34/50/101 (default resnet50, the paper's)")
    p.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--height", type=int, default=256, help="input height (default 256, Re-ID standard)")
    p.add_argument("--width", type=int, default=128, help="input width (default 128)")
    p.add_argument("--last-stride", type=int, default=1, choices=(1, 2), help="layer4 stride (default 1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats of the batched engine and of each training step; median reported")
    p.add_argument("--package-repeats", type=int, default=1,
                   help="timed repeats of the 81-call grad-cam loop (slow: ~81 forward+backward passes each)")
    p.add_argument("--chunk", type=int, default=None,
                   help="attributes per vectorised backward (default: sangal.aah.gradcam.default_chunk; "
                        "on CPU about 24 images of 64x32 per backward, on GPU all K)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--skip-package", action="store_true", help="skip the grad-cam package loop")
    p.add_argument("--skip-train", action="store_true", help="skip section 2 (training-step cost)")
    p.add_argument("--num-ids", type=int, default=751, help="ID classifier size in section 2 (Market: 751)")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


class HeadLogits(nn.Module):
    """Attribute head k of the network as a plain classifier, for pytorch_grad_cam."""

    def __init__(self, net: AttributeNet, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).logits[self.k]  # (B, C_k)


def package_loop(net: AttributeNet, images: Tensor, classes: Tensor) -> list[list]:
    """pytorch_grad_cam.GradCAM over every (stage, attribute): 3 x K calls. Returns the maps."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    layers = [net.backbone.layer2, net.backbone.layer3, net.backbone.layer4]
    maps: list[list] = []
    for layer in layers:
        per_stage = []
        for k in range(classes.shape[1]):
            targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes[:, k]]
            with GradCAM(model=HeadLogits(net, k), target_layers=[layer]) as cam:
                per_stage.append(cam(input_tensor=images, targets=targets))  # (B, H, W) numpy
        maps.append(per_stage)
    return maps


def section_aah(args: argparse.Namespace, device: torch.device) -> None:
    print(f"== 1. AAH: all K={len(MARKET_CLASSES)} attributes x 3 stages, {args.backbone} "
          f"(last stride {args.last_stride}), batch {args.batch}, {args.height}x{args.width}, {device}")
    torch.manual_seed(0)
    net = AttributeNet(MARKET_CLASSES, backbone=args.backbone, pretrained=False,
                       last_stride=args.last_stride).to(device).eval()
    images = torch.randn(args.batch, 3, args.height, args.width, device=device)

    def ours() -> tuple[Tensor, Tensor, Tensor]:
        return attribute_heatmaps(net, images, normalize="minmax", chunk=args.chunk)

    def one_vmap() -> tuple[Tensor, Tensor, Tensor]:  # all K attributes in one vectorised backward
        return attribute_heatmaps(net, images, normalize="minmax", chunk=len(MARKET_CLASSES))

    def unfolded() -> tuple[Tensor, Tensor, Tensor]:  # the engine with its BatchNorms left in place
        with mock.patch.object(gradcam, "fold_batchnorm", lambda module, probe: module):
            return ours()

    ours(), one_vmap(), unfolded()  # warm-up (allocator, oneDNN primitives, cuDNN autotuning)
    every = [(timed(ours, device), timed(one_vmap, device), timed(unfolded, device)) for _ in range(args.repeats)]
    runs = [r[0] for r in every]  # interleaved repeats, so that machine load hits the three alike
    t_ours = statistics.median(r[0] for r in runs)
    cpu_ours = statistics.median(r[1] for r in runs)
    print(f"batched engine      : {t_ours:9.3f} s wall (median of {args.repeats}), "
          f"{cpu_ours:9.3f} s CPU  -> {t_ours / (3 * len(MARKET_CLASSES)) * 1e3:.1f} ms per (stage, attribute)")
    chunk = args.chunk or default_chunk(args.batch, len(MARKET_CLASSES), device, args.height * args.width)
    for i, what in ((1, "all K in one vmap "), (2, "BatchNorm unfolded")):
        t = statistics.median(r[i][0] for r in every)
        print(f"  {what}: {t:9.3f} s wall, side by side ({t / t_ours:.2f}x the engine: {chunk} attributes a "
              "backward, BatchNorm folded)")
    if device.type == "cuda":
        print(f"peak GPU memory     : {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    # Floor of exact Grad-CAM at layer2: every attribute needs its own
    # vector-Jacobian product through layer3 + layer4, whose input-gradient
    # convolutions cost as many FLOPs as the forward ones. So one forward of
    # the net plus forwards of layer3 + layer4 on K x B samples (grouped as the
    # engine groups its backward: `chunk` attributes at a time) bound it.
    groups = [min(chunk, len(MARKET_CLASSES) - s) for s in range(0, len(MARKET_CLASSES), chunk)]
    with torch.no_grad():
        a2 = net.forward_to_stage2(images)
        t_fwd = statistics.median(timed(lambda: net(images), device)[0] for _ in range(args.repeats))
        t_k = 0.0
        for size in sorted(set(groups)):
            a2k = a2.repeat(size, 1, 1, 1)  # (size*B, C2, h, w)
            t_group = statistics.median(
                timed(lambda: net.stage3_to_4(net.stage2_to_3(a2k)), device)[0] for _ in range(args.repeats)
            )
            t_k += groups.count(size) * t_group
        del a2, a2k
    print(f"  reference         : forward {t_fwd:.3f} s; layer3+layer4 forward on K*B samples "
          f"({len(groups)} groups of <= {chunk} attributes) {t_k:.3f} s "
          f"-> FLOP floor ~{t_fwd + t_k:.3f} s (engine at {t_ours / (t_fwd + t_k):.2f}x the floor)")
    if args.skip_package:
        return
    with torch.no_grad():
        classes = target_classes(net(images).logits)  # predicted classes, as the engine uses
    aah = ours()
    # warm-up: one package call
    package_loop_one(net, images, classes)
    pkg_runs = []
    pkg_maps: list[list] = []
    for _ in range(args.package_repeats):
        holder: list = []
        pkg_runs.append(timed(lambda: holder.append(package_loop(net, images, classes)), device))
        pkg_maps = holder[0]
    t_pkg = statistics.median(r[0] for r in pkg_runs)
    cpu_pkg = statistics.median(r[1] for r in pkg_runs)
    print(f"grad-cam, 81 calls  : {t_pkg:9.3f} s wall (median of {args.package_repeats}), "
          f"{cpu_pkg:9.3f} s CPU  -> {t_pkg / 81 * 1e3:.1f} ms per call")
    print(f"speed-up            : {t_pkg / t_ours:9.1f}x wall, {cpu_pkg / max(cpu_ours, 1e-9):.1f}x CPU "
          f"(ceiling for exact maps ~{t_pkg / (t_fwd + t_k):.1f}x: the FLOP floor above)")
    # Same maps? The package returns min-max maps resized to the image; resize ours alike.
    worst = 0.0
    for s, stage_maps in enumerate(pkg_maps):
        up = torch.nn.functional.interpolate(aah[s].float(), size=(args.height, args.width),
                                             mode="bilinear", align_corners=False)
        for k, ref in enumerate(stage_maps):
            ref_t = torch.as_tensor(ref, device=up.device)
            mine = up[:, k]
            mine = (mine - mine.amin((1, 2), keepdim=True)) / (
                mine.amax((1, 2), keepdim=True) - mine.amin((1, 2), keepdim=True) + 1e-7)
            worst = max(worst, float((mine - ref_t).abs().max()))
    print(f"max |ours - grad-cam| after the same resize and min-max scale: {worst:.2e} "
          f"(bilinear torch vs cv2 resize differ slightly at borders; exact equality at layer "
          f"resolution is tests/test_gradcam.py's job)")


def package_loop_one(net: AttributeNet, images: Tensor, classes: Tensor) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes[:, 0]]
    with GradCAM(model=HeadLogits(net, 0), target_layers=[net.backbone.layer4]) as cam:
        cam(input_tensor=images, targets=targets)


def section_train(args: argparse.Namespace, device: torch.device) -> None:
    print(f"\n== 2. One training step (forward + losses + backward + SGD), {args.backbone}, "
          f"batch {args.batch}, {args.height}x{args.width}, {device}")
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.height, args.width, generator=g).to(device)
    per_id = 4 if args.batch % 4 == 0 else 2
    pids = torch.arange(args.batch // per_id).repeat_interleave(per_id)
    pids = torch.cat([pids, pids[-1:].expand(args.batch - len(pids))]).to(device)  # P x K sampler batch
    attrs = torch.stack([torch.randint(0, c, (args.batch,), generator=g) for c in MARKET_CLASSES], 1).to(device)
    # Cached AAH: what AAHCache.get returns (float32 (B, K, h, w) per stage), computed once.
    attr_net = AttributeNet(MARKET_CLASSES, backbone=args.backbone, pretrained=False,
                            last_stride=args.last_stride).to(device).eval()
    cached = attribute_heatmaps(attr_net, images, attrs)
    del attr_net
    weights = {"id": 1.0, "triplet": 1.0, "attr": 1.0}

    steps: dict[str, Callable[[], None]] = {}
    for mode in ("id", "id+attr", "san-gal"):
        torch.manual_seed(0)
        model = ReIDNet(args.num_ids, MARKET_CLASSES, mode=mode, backbone=args.backbone,
                        pretrained=False, last_stride=args.last_stride).to(device).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                              lr=1e-3, momentum=0.9, weight_decay=5e-4)

        def loss(_, model: ReIDNet = model, mode: str = mode) -> dict[str, torch.Tensor]:
            aah = tuple(m.clone() for m in cached) if mode == "san-gal" else None  # cache read
            return reid_losses(model(images, aah), pids, attrs if mode != "id" else None, weights)

        def step(loss=loss, opt: torch.optim.Optimizer = opt) -> None:  # one step of the project's loop
            timed_steps(loss, opt, lambda: itertools.repeat(None), device, steps=1)

        step()  # warm-up
        steps[mode] = step
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(args.repeats):
        for mode, step in steps.items():  # interleaved: load drifts hit every mode alike
            times[mode].append(timed(step, device)[0])
    base = statistics.median(times["id"])
    for mode, ts in times.items():
        med = statistics.median(ts)
        extra = "" if mode == "id" else f"  overhead vs id: {100 * (med / base - 1):+6.1f} %"
        print(f"{mode:8s}: {med:8.3f} s per step (median of {args.repeats}; "
              f"min {min(ts):.3f}, max {max(ts):.3f}){extra}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    section_aah(args, device)
    if not args.skip_train:
        section_train(args, device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
