"""`sangal demo`: a miniature of the paper's Table 1 on synthetic pedestrians, as a paired-seed study.

Steps: draw the dataset -> pretrain the attribute net -> cache AAH -> `sangal study`
over the Table-1 variants with N paired seeds (mean ± std, paired 95 % CIs against
`id`) -> attribute recognition and heat-map localisation against the generator's
part masks -> `study.json` and `report.html` (see `sangal.experiments.demo_report`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sangal.config import Config, load_config
from sangal.experiments.study import PRESETS, Variant

log = logging.getLogger(__name__)

#: The demo's rows: the paper's Table 1, SAN-GAL with sangal's defaults (class-agnostic training maps, the
#: residual ASAM form). The paper's literal row and the other modes: `sangal study --variants maps`.
VARIANTS: tuple[Variant, ...] = PRESETS["table1"]


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run; `standard` fits 10 minutes on 2 CPU cores."""

    ids: int  # identities drawn: half train, half test
    cams: int
    images_per_cam: int
    height: int
    width: int
    attr_epochs: int
    epochs: int
    p: int
    k: int
    seeds: int = 2
    steps_per_epoch: int = 0  # 0: the sampler's full epoch
    attr_extra_ids: int = 0  # a second synthetic set (other people, seed 1) for the attribute net only
    leak_seeds: int = 0  # seeds the label-leak check evaluates (0: every seed; each costs ~2 test evaluations)


#: Gallery images whose exact maps the localisation scores (an even spread; the demo's gallery caches are fast maps).
LOCALISATION_IMAGES = 300

PLANS = {
    "standard": DemoPlan(ids=300, cams=6, images_per_cam=2, height=128, width=64, attr_epochs=2, epochs=5,
                         p=8, k=4, seeds=3, steps_per_epoch=14, attr_extra_ids=200, leak_seeds=1),
    "quick": DemoPlan(ids=24, cams=3, images_per_cam=2, height=64, width=32, attr_epochs=1, epochs=2, p=4, k=2,
                      seeds=2),
}


def demo_config(out: Path, plan: DemoPlan, data_root: Path, extra: list[str] | tuple[str, ...] = ()) -> Config:
    """The packaged demo.yaml with this plan's sizes and folders."""
    base = resources.files("sangal") / "configs" / "demo.yaml"
    with resources.as_file(base) as path:
        return load_config(path, [
            f"out={out}", f"data.root={data_root}", f"data.height={plan.height}", f"data.width={plan.width}",
            f"data.p={plan.p}", f"data.k={plan.k}", f"train.epochs={plan.epochs}",
            f"train.max_steps_per_epoch={plan.steps_per_epoch}", f"attr_train.epochs={plan.attr_epochs}",
            f"optim.milestones=[{milestone(plan.epochs)}]", *extra])


def milestone(epochs: int) -> int:
    """The epoch of the learning-rate drop: four fifths of the run (the standard plan's 4 of 5), so that a
    longer budget (``--budget``) stretches the schedule instead of adding epochs at the low rate."""
    return max(1, round(epochs * 0.8))


def demo_data(out: Path, plan: DemoPlan, **generator: Any) -> tuple[Path, list[str]]:
    """The plan's synthetic data under ``out`` (reused when it exists) and the overrides that point the
    attribute net at its extra identities; ``generator``: more options of ``generate_synthetic`` (``style``)."""
    from sangal.synthetic.generate import generate_synthetic

    data_root = generate_synthetic(out / "data", num_ids=plan.ids, num_cams=plan.cams, seed=0, height=plan.height,
                                   width=plan.width, images_per_cam=plan.images_per_cam, progress=True, **generator)
    if not plan.attr_extra_ids:
        return data_root, []
    attr_root = generate_synthetic(out / "data_attr", num_ids=plan.attr_extra_ids, num_cams=plan.cams, seed=1,
                                   height=plan.height, width=plan.width, images_per_cam=2, progress=True, **generator)
    return data_root, [f"attr_train.extra_roots=[{attr_root}]"]


def run_demo(out: Path, seeds: int | None = None, quick: bool = False, budget_minutes: float | None = None,
             plan: DemoPlan | None = None, variants: tuple[Variant, ...] = VARIANTS,
             overrides: tuple[str, ...] = (), data: str = "real") -> dict:
    """Run the whole pipeline into `out` (resuming what is done); returns the study and the report path.

    ``overrides``: dotted config overrides of every row (e.g. ``train.ema=0.9``, ``optim.lr=5e-4``); sizes
    and budgets are the plan's (``DemoPlan``: ``ids`` for more test identities, ``epochs`` and
    ``steps_per_epoch`` for more steps). ``data``: the synthetic generator's style, "real" or "easy"
    (recorded in each data folder's synthetic.json and in study.json)."""
    from sangal.experiments.demo_deploy import prepare_deployment
    from sangal.experiments.demo_report import build_report
    from sangal.experiments.study import format_study, run_study
    from sangal.experiments.study_runs import stage_timings
    from sangal.store.files import write_json_atomic
    from sangal.synthetic.generate import synthetic_record

    t0 = time.time()
    out = Path(out)
    plan = plan or PLANS["quick" if quick else "standard"]
    if seeds is not None:
        plan = replace(plan, seeds=seeds)
    if budget_minutes is not None and not quick:
        scale = max(0.2, budget_minutes / 10.0)
        plan = replace(plan, epochs=max(2, round(plan.epochs * scale)))
    log.info("demo plan: %s, %s synthetic data", plan, data)
    data_root, extra = demo_data(out, plan, style=data)
    timings = {"data": time.time() - t0}
    cfg = demo_config(out, plan, data_root, [*extra, *overrides])
    doc = run_study(cfg, variants, list(range(plan.seeds)), localisation_images=LOCALISATION_IMAGES,
                    leak_seeds=plan.leak_seeds or None)
    doc["data"] = synthetic_record(data_root)  # which generator style and version drew the data
    write_json_atomic(out / "study.json", doc)
    timings.update(stage_timings(doc["timings"], doc.get("runs", {})))  # runs side by side: their stage's wall
    print(f"\nSAN-GAL ablation on synthetic pedestrians ({plan.seeds} paired seeds):\n{format_study(doc)}\n")
    t = time.time()
    deploy = prepare_deployment(cfg, doc) if any(v.name == "san-gal" for v in variants) else None
    timings["deployment"] = time.time() - t
    t = time.time()
    report = build_report(out, cfg, plan, doc, timings, variants, deploy)
    timings["report"] = time.time() - t
    print(f"study: {out / 'study.json'}\nreport: {report}   (total {(time.time() - t0) / 60:.1f} min)")
    if deploy:
        print(f"best san-gal model (seed {deploy['best']['seed']}): {deploy['best']['link']}; next steps: README "
              f"'What next' (export, index, search)")
    return {"study": doc, "report": report, "timings": timings, "deploy": deploy}
