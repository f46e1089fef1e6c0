"""`sangal demo`: the paper's Table 1 on synthetic pedestrians, end to end on a CPU, with a report.

Steps: draw the dataset -> pretrain the attribute net -> cache AAH -> train `id`,
`id+attr` and `san-gal` with equal budgets for each seed -> evaluate -> print the
comparison -> write `report.html` (see `sangal.engine.demo_report`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from sangal.config import Config, load_config

log = logging.getLogger(__name__)

# The paper's Table 1 rows, plus SAN-GAL trained on heat maps of the *predicted* classes: at test time the
# maps can only follow predictions, so this row shows what the train/test gap of label-guided maps costs.
VARIANTS: dict[str, list[str]] = {
    "id": ["model.mode=id"],
    "id+attr": ["model.mode=id+attr"],
    "san-gal": ["model.mode=san-gal"],
    "san-gal (pred. maps)": ["model.mode=san-gal", "train.aah_targets=predicted"],
}
METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run; `standard` fits ~10 minutes on 2 CPU cores."""

    ids: int
    cams: int
    images_per_cam: int
    height: int
    width: int
    attr_epochs: int
    epochs: int
    p: int
    k: int


PLANS = {
    "standard": DemoPlan(ids=160, cams=6, images_per_cam=2, height=64, width=32, attr_epochs=6, epochs=10, p=8, k=4),
    "quick": DemoPlan(ids=24, cams=3, images_per_cam=2, height=64, width=32, attr_epochs=1, epochs=2, p=4, k=2),
}


def demo_config(out: Path, plan: DemoPlan, data_root: Path, extra: list[str] = ()) -> Config:
    """The packaged demo.yaml with this plan's sizes and folders."""
    base = resources.files("sangal") / "configs" / "demo.yaml"
    with resources.as_file(base) as path:
        return load_config(path, [
            f"out={out}", f"data.root={data_root}", f"data.height={plan.height}", f"data.width={plan.width}",
            f"data.p={plan.p}", f"data.k={plan.k}", f"train.epochs={plan.epochs}",
            f"attr_train.epochs={plan.attr_epochs}", *extra])


def variant_dir(out: Path, variant: str, seed: int) -> Path:
    """Run folder of one variant and seed (its Re-ID run lands in `<dir>/reid/<mode>/`)."""
    slug = variant.replace(" ", "").replace("(", "-").replace(")", "").replace(".", "").replace("+", "_")
    return Path(out) / "runs" / slug / f"seed{seed}"


def summarise(results: dict[str, list[dict]], attr_mA: float | None) -> list[dict]:
    """Mean and std over seeds for each variant: the Table-1-style rows."""
    rows = []
    for mode, runs in results.items():
        row: dict = {"variant": mode, "seeds": len(runs)}
        for key in METRICS:
            values = np.array([r[key] for r in runs], dtype=np.float64)
            row[key] = float(values.mean())
            if len(values) > 1:
                row[f"{key}_std"] = float(values.std(ddof=1))
        reid_mA = [r["reid_attr_mA"] for r in runs if "reid_attr_mA" in r]
        row["attr_mA"] = float(np.mean(reid_mA)) if reid_mA else None
        rows.append(row)
    rows.append({"variant": "attribute net", "seeds": 1, "attr_mA": attr_mA,
                 **{k: None for k in METRICS}})
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text Table 1 for the terminal."""
    head = f"{'variant':<22}{'Rank-1':>14}{'Rank-5':>14}{'mAP':>14}{'mINP':>14}{'attr mA':>10}"
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for key in ("rank1", "rank5", "mAP", "mINP"):
            if row.get(key) is None:
                cells.append(f"{'-':>14}")
            elif f"{key}_std" in row:
                cells.append(f"{100 * row[key]:>8.1f}±{100 * row[key + '_std']:<4.1f}".rjust(14))
            else:
                cells.append(f"{100 * row[key]:>14.1f}")
        attr = "-" if row.get("attr_mA") is None else f"{100 * row['attr_mA']:.1f}"
        lines.append(f"{row['variant']:<22}{''.join(cells)}{attr:>10}")
    return "\n".join(lines)


def run_demo(out: Path, seeds: int = 2, quick: bool = False, budget_minutes: float | None = None,
             plan: DemoPlan | None = None) -> dict:
    """Run the whole pipeline into `out`; returns the table rows and the report path."""
    from sangal.data.synthetic import generate_synthetic
    from sangal.engine.aah_job import build_caches
    from sangal.engine.demo_report import build_report
    from sangal.engine.train_attr import train_attribute_net
    from sangal.engine.train_reid import train_reid

    t0 = time.time()
    out = Path(out)
    plan = plan or PLANS["quick" if quick else "standard"]
    if budget_minutes is not None and not quick:
        scale = max(0.2, budget_minutes / 10.0)
        plan = DemoPlan(**{**plan.__dict__, "epochs": max(2, round(plan.epochs * scale))})
    log.info("demo plan: %s, %d seed(s)", plan, seeds)
    data_root = generate_synthetic(out / "data", num_ids=plan.ids, num_cams=plan.cams, seed=0,
                                   images_per_cam=plan.images_per_cam, progress=True)
    cfg = demo_config(out, plan, data_root)
    timings = {"data": time.time() - t0}

    t = time.time()
    attr_metrics = train_attribute_net(cfg)
    timings["attribute net"] = time.time() - t
    t = time.time()
    build_caches(cfg)
    build_caches(demo_config(out, plan, data_root, ["train.aah_targets=predicted"]), splits=["train"])
    timings["heat-map cache"] = time.time() - t

    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for seed in range(seeds):
        for name, overrides in VARIANTS.items():
            t = time.time()
            run_cfg = demo_config(variant_dir(out, name, seed), plan, data_root, [
                *overrides, f"train.seed={seed}",
                f"train.attr_checkpoint={out / 'attr' / 'checkpoints' / 'final'}", f"train.aah_cache={out / 'aah'}"])
            results[name].append(train_reid(run_cfg))
            timings[f"{name} seed {seed}"] = time.time() - t
    rows = summarise(results, attr_metrics["mA"])
    table = format_table(rows)
    print("\nSAN-GAL ablation on synthetic pedestrians (paper Table 1 layout; mean ± std over "
          f"{seeds} seed(s)):\n{table}\n")
    t = time.time()
    report = build_report(out, cfg, plan, rows, results, attr_metrics, timings, seeds)
    timings["report"] = time.time() - t
    print(f"report: {report}   (total {(time.time() - t0) / 60:.1f} min)")
    return {"rows": rows, "report": report, "timings": timings}
