"""The GPU figures of one lent-GPU session, printed as one table (run by benchmarks/gpu_check.sh).

Rows:

1. the CUDA tests (``pytest -k cuda``: Grad-CAM CUDA vs CPU, fast maps on CUDA, device following);
2. training img/s on a slice of one paper-config epoch: ResNet-50, 256x128, P x K = 16 x 4,
   synthetic pedestrians, SGD step with ID + triplet (+ attribute) losses; ``id`` and
   ``san-gal`` with cached heat maps (offline AAH cache built first, exact label-guided
   maps of a random-weight attribute net), AMP off and on (fp16 + GradScaler on CUDA);
3. AAH img/s at batch 64: exact Grad-CAM (``sangal.aah.gradcam``) vs forward-only maps
   (``sangal.aah.fast``, random predictor: its speed does not depend on its weights);
4. ``evaluate_rank`` on a Market-size matrix (3,368 x 15,913, 751 ids): the distance matrix
   and ranking from GPU features vs from CPU features. ``evaluate_rank`` itself runs on the
   CPU (a CUDA distance matrix is copied back), so the GPU row shows what the GPU saves
   end to end (the cosine matrix), not a GPU ranking kernel.

``--dry-run`` rehearses every row on the CPU at toy sizes (ResNet-18, 64x32, P x K 4 x 2) in
about a minute: the figures mean nothing, the code paths are the GPU run's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKET_CLASSES = [2] * 9 + [4] + [2] * 17


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU rehearsal at toy sizes")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per setting (after 3 warm-up)")
    p.add_argument("--skip-tests", action="store_true")
    a = p.parse_args()
    a.device = "cpu" if a.dry_run else "cuda"
    if a.dry_run:
        a.backbone, a.height, a.width, a.p, a.k, a.ids, a.steps = "resnet18", 64, 32, 4, 2, 8, min(a.steps, 2)
        a.aah_batch, a.eval_size = 4, (300, 1500, 60, 128)
    else:
        a.backbone, a.height, a.width, a.p, a.k, a.ids = "resnet50", 256, 128, 16, 4, 64
        a.aah_batch, a.eval_size = 64, (3368, 15913, 751, 2048)
    return a


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cuda_tests(a: argparse.Namespace) -> tuple[str, str]:
    """Run the tests selected by ``-k cuda``; (summary line, verdict)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
           "tests/test_gradcam.py", "tests/test_gradcam_fast.py", "tests/models/test_attribute_net.py"]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        return "timed out after 150 s", "FAIL"
    missing = re.search(r"No module named '([\w.]+)'", proc.stdout + proc.stderr)
    if missing:  # e.g. pytest or grad-cam absent from the device's Python: say so instead of "FAIL"
        return f"not run: Python module {missing.group(1)} is missing", "n/a"
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    summary = (lines[-1].strip("= ") if lines else proc.stdout.strip().splitlines()[-1:] or ["no output"])
    summary = summary if isinstance(summary, str) else summary[0]
    verdict = "ok" if proc.returncode == 0 else "FAIL"
    return f"{summary} ({time.time() - t0:.0f} s)", verdict


def prepare_data(a: argparse.Namespace, tmp: Path):
    """Synthetic dataset, attribute labels, a random attribute checkpoint and its train AAH cache."""
    from sangal.aah.cache import AAHCache
    from sangal.aah.spec import Targets
    from sangal.data import load_dataset, read_attribute_mat
    from sangal.models.attribute_net import AttributeNet
    from sangal.store.checkpoint import save_checkpoint
    from sangal.synthetic.generate import generate_synthetic

    root = generate_synthetic(tmp / "synth", num_ids=2 * a.ids, num_cams=6 if not a.dry_run else 3, seed=0,
                              height=a.height, width=a.width, images_per_cam=2)
    ds = load_dataset("synthetic", root)
    attrs = read_attribute_mat(root / "market_attribute.mat", "market1501").labels_for(ds.train, "train")
    torch.manual_seed(0)
    attr = AttributeNet(MARKET_CLASSES, backbone=a.backbone, pretrained=False).eval()
    arch = {**attr.arch_dict(), "dataset": "market1501", "colour_mode": "binary", "height": a.height,
            "width": a.width}
    ckpt = save_checkpoint(tmp / "attr", attr, arch, {})
    t0 = time.perf_counter()
    cache = AAHCache.build_path(tmp / "aah_train", ckpt, ds.train, a.height, a.width,
                                targets=Targets("labels", attrs), batch_size=64 if not a.dry_run else 8, device=a.device,
                                progress=False)
    sync(a.device)
    return ds, attrs, cache, len(ds.train) / (time.perf_counter() - t0)


def training_rate(a: argparse.Namespace, ds, attrs, cache, mode: str, amp: bool) -> float:
    """Images per second of the training loop's step (forward + losses + backward + SGD), P x K batches of real
    images (sangal.train.timing.timed_steps: run_task itself)."""
    from sangal.data import ImageDataset, build_transforms
    from sangal.data.samplers import IdentitySampler
    from sangal.models.reid_net import ReIDNet
    from sangal.train.losses import reid_losses
    from sangal.train.timing import timed_steps

    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = ReIDNet(ds.num_train_pids, MARKET_CLASSES, mode=mode, backbone=a.backbone, pretrained=False).to(dev)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    sampler = IdentitySampler([r.pid for r in ds.train], a.p, a.k, seed=0)  # a batch sampler, as in train_reid
    workers = min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        ImageDataset(ds.train, build_transforms(a.height, a.width, train=True), attrs),
        batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    if len(sampler) == 0:
        raise RuntimeError(f"the P x K sampler yields no batch from {len(ds.train)} training images")
    weights = {"id": 1.0, "triplet": 1.0, "attr": 1.0}

    def batches():
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from loader

    def loss(batch) -> dict[str, torch.Tensor]:
        aah = None
        if mode == "san-gal":
            aah = tuple(m.to(dev, non_blocking=True) for m in cache.get(batch["index"]))
        out = model(batch["image"].to(dev, non_blocking=True), aah)
        return reid_losses(out, batch["pid"].to(dev), batch["attrs"].to(dev), weights)

    # the project's loop (autocast, fp16 GradScaler, finite-loss check), 3 untimed steps first
    return a.p * a.k / timed_steps(loss, opt, batches, dev, a.steps, warm=3, amp=amp)


def aah_rates(a: argparse.Namespace) -> dict[str, float]:
    """Images per second of exact and fast heat maps (all K attributes x 3 stages), median of 3."""
    from sangal.aah.fast import fast_attribute_heatmaps
    from sangal.aah.gradcam import attribute_heatmaps
    from sangal.models.attribute_net import AttributeNet
    from sangal.models.fast_map_net import FastMapNet

    torch.manual_seed(0)
    net = AttributeNet(MARKET_CLASSES, backbone=a.backbone, pretrained=False).to(a.device).eval()
    images = torch.randn(a.aah_batch, 3, a.height, a.width, device=a.device)
    with torch.no_grad():
        a2, a3, _ = net.forward_stages(images[:1])
    predictor = FastMapNet((a2.shape[1], a3.shape[1]), sum(MARKET_CLASSES)).to(a.device).eval()
    runs = {"exact": lambda: attribute_heatmaps(net, images),
            "fast": lambda: fast_attribute_heatmaps(net, predictor, images)}
    out = {}
    for name, fn in runs.items():
        fn()
        times = []
        for _ in range(3):
            sync(a.device)
            t0 = time.perf_counter()
            fn()
            sync(a.device)
            times.append(time.perf_counter() - t0)
        out[name] = a.aah_batch / statistics.median(times)
    return out


def ranking(a: argparse.Namespace) -> dict[str, float]:
    """Seconds for cosine distances + evaluate_rank from CPU features and from GPU features."""
    from sangal.metrics import compute_distance, evaluate_rank

    nq, ng, ids, dim = a.eval_size
    rng = np.random.default_rng(0)
    g_pids = np.concatenate([rng.integers(1, ids + 1, ng - ng // 6), np.zeros(ng // 6, dtype=np.int64)])
    q_pids = rng.permutation(np.resize(np.arange(1, ids + 1), nq))
    q_cams, g_cams = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    centroids = rng.standard_normal((ids + 1, dim), dtype=np.float32)
    qf = centroids[q_pids] + 0.8 * rng.standard_normal((nq, dim), dtype=np.float32)
    gf = centroids[g_pids] + 0.8 * rng.standard_normal((ng, dim), dtype=np.float32)
    out = {}
    t0 = time.perf_counter()
    res_cpu = evaluate_rank(compute_distance(qf, gf, "cosine"), q_pids, g_pids, q_cams, g_cams)
    out["cpu"] = time.perf_counter() - t0
    dev = torch.device(a.device)
    q, g = torch.from_numpy(qf).to(dev), torch.from_numpy(gf).to(dev)
    sync(a.device)
    t0 = time.perf_counter()
    qn, gn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    dist = 1.0 - qn @ gn.T  # (Q, G) on the device
    res_dev = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)  # copied to the CPU for ranking
    out["device"] = time.perf_counter() - t0
    out["mAP diff"] = abs(res_cpu.mAP - res_dev.mAP)
    return out


def main() -> None:
    a = parse_args()
    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run `benchmarks/gpu_check.sh --dry-run` for a CPU rehearsal")
    t_start = time.time()
    where = "CPU (dry run)" if a.dry_run else torch.cuda.get_device_name(0)
    rows: list[tuple[str, str, str]] = []
    print(f"gpu_check: {where}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{a.backbone} {a.height}x{a.width}, PxK {a.p}x{a.k}", flush=True)
    if not a.skip_tests:
        summary, verdict = cuda_tests(a)
        rows.append(("CUDA tests (pytest -k cuda)", verdict, summary))
    with tempfile.TemporaryDirectory(prefix="sangal-gpu-") as tmp:
        ds, attrs, cache, cache_rate = prepare_data(a, Path(tmp))
        rows.append(("AAH train cache build (exact, label-guided)", f"{cache_rate:.1f} img/s",
                     f"{len(ds.train)} images"))
        rates = {}
        for mode in ("id", "san-gal"):
            for amp in (False, True):
                rate = rates[(mode, amp)] = training_rate(a, ds, attrs, cache, mode, amp)
                name = f"train {mode}{' (cached AAH)' if mode == 'san-gal' else ''}, AMP {'on' if amp else 'off'}"
                note = f"{a.steps} steps of {a.p * a.k}"
                if mode != "id":
                    note += f"; {rate / rates[('id', amp)]:.2f}x id"
                rows.append((name, f"{rate:.1f} img/s", note))
                print(f"  {name}: {rate:.1f} img/s", flush=True)
    aah = aah_rates(a)
    rows.append((f"AAH exact (Grad-CAM backward), batch {a.aah_batch}", f"{aah['exact']:.1f} img/s", ""))
    rows.append((f"AAH fast (forward only), batch {a.aah_batch}", f"{aah['fast']:.1f} img/s",
                 f"{aah['fast'] / aah['exact']:.1f}x exact"))
    rank = ranking(a)
    size = f"{a.eval_size[0]}x{a.eval_size[1]}"
    rows.append((f"cosine + evaluate_rank {size}, CPU features", f"{rank['cpu']:.2f} s", ""))
    rows.append((f"cosine + evaluate_rank {size}, {a.device} features", f"{rank['device']:.2f} s",
                 f"{rank['cpu'] / rank['device']:.1f}x; |mAP diff| {rank['mAP diff']:.1e}"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  {'result':<24}  note")
    print("-" * (width + 40))
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<24}  {note}")
    print(f"total {time.time() - t_start:.0f} s on {where}")


if __name__ == "__main__":
    main()
