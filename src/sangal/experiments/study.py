"""`sangal study`: the paper's Table 1 (or any set of variants) over N paired seeds, with paired CIs.

Pairing: for seed s every variant starts from the same initial weights of the layers
they share (backbone, BN neck, ID classifier are built first, from ``train.seed``) and
sees the same batches (the P×K sampler, the per-sample augmentation and the flips
are pure functions of the seed and the schedule position). Each run records hashes of
both (``pairing``), and the study checks they agree across variants.

Steps: attribute net (trained once, if a variant needs it) -> heat-map caches of every
map mode the variants use -> step-0 diagnostics of the san-gal rows (``step0``,
:mod:`sangal.experiments.step0`) -> one Re-ID run per (seed, variant), each resumable and
recorded in ``runs/<variant>/seed<s>/result.json`` (with its per-query AP and Rank-1 hits)
-> the label-leak check of the san-gal rows (``leak``, :mod:`sangal.experiments.leak`) ->
``study.json`` (rewritten atomically after every run, ``complete`` once all are done), whose
``paired`` entries carry both noise sources (:mod:`sangal.experiments.noise`). With ``study.workers`` > 1 the
runs that need no maps (``id``, ``id+attr``) start first, beside the attribute net and the maps
(:mod:`sangal.experiments.study_runs`).

What a study can vary is what a config can: a variant's overrides change one row (e.g.
``train.ema=0.9``), the study's config changes every row (``optim.lr``, ``train.epochs``,
``train.max_steps_per_epoch``), and the data (e.g. more test identities) is the data root's.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sangal.config import Config, parse_pretrained, to_dict, with_overrides
from sangal.data import setup
from sangal.errors import ConfigError
from sangal.experiments.leak import applies as leak_applies
from sangal.experiments.leak import leak_row
from sangal.experiments.localisation import localisation_rows
from sangal.experiments.noise import paired_entries
from sangal.experiments.step0 import step0_run, step0_summary
from sangal.experiments.study_format import format_study, markdown_study
from sangal.experiments.study_runs import METRICS, run_queue, scheduling, stage_threads
from sangal.runtime.precision import numerics
from sangal.store.files import atomic_write_text, provenance, write_json_atomic
from sangal.store.paths import default_paths
from sangal.train.maps import uses_training_maps

log = logging.getLogger(__name__)

__all__ = ["PAPER", "PRESETS", "Variant", "format_study", "markdown_study", "parse_variant", "run_study",
           "variant_config"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Variant:
    """One study row: a name and the dotted overrides that make it."""

    name: str
    overrides: tuple[str, ...]


#: The paper's literal SAN-GAL: label-guided training maps, prediction-guided test maps, ASAM as eqs. 3-4.
PAPER = "san-gal (paper: label-guided maps)"

#: The paper's SAN-GAL settings (training maps and ASAM form), which sangal's defaults depart from.
_PAPER_ROW = ("model.mode=san-gal", "train.aah_targets=labels", "model.asam_form=paper")

#: Variant sets by name (`sangal study --variants table1`).
PRESETS: dict[str, tuple[Variant, ...]] = {
    "table1": (Variant("id", ("model.mode=id",)), Variant("id+attr", ("model.mode=id+attr",)),
               Variant("san-gal", ("model.mode=san-gal",))),
    # One row per training-map mode, paper form (issue 21); noisy needs an attribute net with attr_train.holdout.
    "maps": (Variant("id", ("model.mode=id",)), Variant("id+attr", ("model.mode=id+attr",)),
             *(Variant(f"san-gal, {t} maps", ("model.mode=san-gal", f"train.aah_targets={t}", "model.asam_form=paper"))
               for t in ("labels", "predicted", "agnostic", "noisy", "soft"))),
    # One row per hypothesis for why the paper's SAN-GAL can trail `id` (docs/experiments/hypotheses; the rows
    # pin the settings that were the defaults when it ran).
    "hypotheses": (
        Variant("id", ("model.mode=id",)),
        Variant(PAPER, _PAPER_ROW),
        Variant("san-gal, predicted-class maps", ("model.mode=san-gal", "train.aah_targets=predicted",
                                                  "model.asam_form=paper")),
        Variant("san-gal, class-agnostic maps", ("model.mode=san-gal", "train.aah_targets=agnostic",
                                                 "model.asam_form=paper")),
        Variant("san-gal (paper), crop not followed", (*_PAPER_ROW, "train.aah_align=false")),
        Variant("san-gal (paper), layer2 only", (*_PAPER_ROW, "model.asam_stages=[2]")),
        Variant("san-gal (paper), gain 4", (*_PAPER_ROW, "model.asam_gain=4")),
        Variant("san-gal (paper), extra sigmoid", (*_PAPER_ROW, "model.extra_sigmoid=true")),
        # The regime: both Re-ID rows again from random weights (the study's attribute net stays as it is).
        Variant("id, from scratch", ("model.mode=id", "model.pretrained=false")),
        Variant("san-gal, from scratch", (*_PAPER_ROW, "model.pretrained=false")),
    ),
}


def parse_variant(text: str) -> Variant:
    """``"name: key=value key=value"`` -> Variant (overrides split like a shell line)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise ConfigError(f"variant {text!r} must look like 'NAME: section.key=value ...'")
    overrides = tuple(shlex.split(rest))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"variant {name.strip()!r}: {bad[0]!r} is not a section.key=value override")
    return Variant(name.strip(), overrides)


def slug(name: str) -> str:
    """Folder name of a variant: letters, digits, '-' and '_' only."""
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in name.replace("+", "_plus_"))
    return "_".join(part for part in keep.split("_") if part) or "variant"


def run_dir(out: Path, variant: str, seed: int) -> Path:
    """Run folder of one (variant, seed); its Re-ID run lands in `<dir>/reid/<mode>/`."""
    return Path(out) / "runs" / slug(variant) / f"seed{seed}"


def variant_config(cfg: Config, variant: Variant, seed: int) -> Config:
    """The config of one run: the study's, the variant's overrides, its seed and the shared attribute net."""
    paths = default_paths(cfg)
    return with_overrides(cfg, [*variant.overrides, f"out={run_dir(Path(cfg.out), variant.name, seed)}",
                                f"train.seed={seed}", f"train.attr_checkpoint={paths['attr_checkpoint']}",
                                f"train.aah_cache={paths['aah']}"])


def run_study(cfg: Config, variants: tuple[Variant, ...] | list[Variant], seeds: list[int],
              reference: str = "id", localisation_images: int = 600, leak_seeds: int | None = None) -> dict:
    """Run every (seed, variant) into ``cfg.out`` (resuming what is done) and write ``study.json``.

    Besides the runs: step-0 diagnostics of each san-gal row (before training) and the label-leak check
    of each san-gal row whose test maps follow a class, on the first ``leak_seeds`` seeds (None: all).
    """
    from sangal.train.reid import train_reid

    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names must be distinct, got {names}")
    if reference not in names:
        raise ConfigError(f"the reference variant {reference!r} is not among the variants ({', '.join(names)})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    configs = {v.name: with_overrides(cfg, list(v.overrides)) for v in variants}
    sections: dict = {"attributes": None, "localisation": None}
    results: dict[str, list[dict]] = {v.name: [] for v in variants}

    def save() -> None:
        write_json_atomic(out / "study.json", _document(cfg, variants, seeds, reference, results, sections, timings,
                                                        complete=False))

    def localise() -> None:  # needs the attribute net and the part masks, no run: it goes beside the last runs
        if sections["attributes"] is not None and localisation_images and (Path(cfg.data.root) / "masks").is_dir():
            t = time.time()
            rows, sections["localisation"] = localisation_rows(cfg, max_images=localisation_images)
            write_json_atomic(out / "localisation.json", rows)
            timings["localisation"] = time.time() - t

    distilled, sangal_rows = _stages_and_runs(cfg, variants, seeds, configs, train_reid,
                                              (results, timings, sections), save, localise)
    t = time.time()
    sections["leak"] = _leak(cfg, sangal_rows, configs, seeds[:leak_seeds] if leak_seeds else seeds)
    timings["leak check"] = time.time() - t
    if distilled is not None:
        sections["distill"] = distilled
    doc = _document(cfg, variants, seeds, reference, results, sections, timings, complete=True)
    write_json_atomic(out / "study.json", doc)
    atomic_write_text(out / "study.md", markdown_study(doc))
    return doc


def _stages_and_runs(cfg: Config, variants, seeds: list[int], configs: dict[str, Config], train_reid,
                     record: tuple[dict, dict, dict], save, localise) -> tuple[dict | None, list[Variant]]:
    """The study's own stages (attribute net, heat maps, step 0) and every (seed, variant) run, scheduled by
    ``study.workers``. With more than one worker the map-free runs (``uses_training_maps`` false: no attribute
    net, no maps) start first, at most workers - 1 of them beside the stages, which then run at the workers'
    threads (whether or not a run is left to go beside them: their figures follow the config alone); the others
    join as soon as the training maps exist, the san-gal runs evaluating only once the test maps do (the queue's
    gate); workers - 1 of them go while ``localise()`` (the heat maps' localisation, which needs no run) goes
    beside them at the workers' threads, then all of them. ``record``: results (variant -> runs in seed order,
    filled as they finish; ``save()`` after each), timings, sections (``runs``: the schedule, the wall and CPU
    seconds). Returns the distillation's figures and the san-gal rows."""
    results, timings, sections = record
    plan = scheduling(cfg)
    keys = {f"{v.name} seed {s}": (v, s) for s in seeds for v in variants}  # the order of one run at a time
    jobs = [(key, variant_config(cfg, v, s)) for key, (v, s) in keys.items()]
    early = {key for key, c in jobs if plan.workers > 1 and not uses_training_maps(c)}
    runs_record = sections["runs"] = {**plan.record(), "cpu_s": {}}

    def done(key: str, result: dict, wall: float, cpu: float) -> None:
        rows = results[keys[key][0].name]
        rows.append(result)
        rows.sort(key=lambda r: seeds.index(r["seed"]))
        timings[key], runs_record["cpu_s"][key] = wall, cpu
        runs_record["cpu_s"] = {k: runs_record["cpu_s"][k] for k in keys if k in runs_record["cpu_s"]}
        save()

    later = [job for job in jobs if job[0] not in early]

    def training_maps() -> None:  # workers: the runs start, those with test-time maps evaluate after the gate
        runs.add([job for job in later if job[1].model.mode != "san-gal"], max(1, plan.workers - 1))
        runs.add([job for job in later if job[1].model.mode == "san-gal"], max(1, plan.workers - 1), gated=True)

    t0 = time.time()
    with run_queue(plan, train_reid, done) as runs:
        runs.add([job for job in jobs if job[0] in early], plan.workers - 1)
        with stage_threads(plan):
            distilled, sangal_rows = _stages(cfg, variants, seeds, configs, (sections, timings), (
                runs.poll, training_maps if plan.workers > 1 else None, runs.open_gate))
        t1 = time.time()
        if plan.workers == 1:
            runs.add(later, 1)
        t2 = time.time()
        with stage_threads(plan):
            localise()
        local = time.time() - t2  # beside the runs with workers; after them (not run time) with one
        runs.add([], plan.workers)
        runs.finish()
    parallel = plan.workers > 1
    runs_record["wall_s"] = time.time() - (t0 if early else t1) - (0.0 if parallel else local)
    runs_record["beside_stages_s"] = (t1 - t0 if early else 0.0) + (local if parallel else 0.0)
    return distilled, sangal_rows


def _stages(cfg: Config, variants, seeds: list[int], configs: dict[str, Config], record: tuple[dict, dict],
            hooks: tuple) -> tuple[dict | None, list[Variant]]:
    """The attribute net (if a variant needs it), the heat-map caches and the step-0 diagnostics of the san-gal
    rows. ``hooks``: ``poll()`` between them hands over the runs finished beside them (and stops on a failed one);
    ``training_maps()`` (or None) once the training maps exist, ``test_maps()`` once the test maps do."""
    sections, timings = record
    poll, training_maps, test_maps = hooks
    if any(c.model.mode != "id" or uses_training_maps(c) for c in configs.values()):
        t = time.time()
        sections["attributes"] = ensure_attribute_net(cfg)
        timings["attribute net"] = time.time() - t
        poll()
    distilled = _heat_maps(configs, timings, training_maps)
    test_maps()
    poll()
    sangal_rows = [v for v in variants if configs[v.name].model.mode == "san-gal"]
    t = time.time()
    memo: dict = {}
    sections["step0"] = {v.name: [step0_run(variant_config(cfg, v, s), memo) for s in seeds] for v in sangal_rows}
    timings["step-0 diagnostics"] = time.time() - t
    return distilled, sangal_rows


def _leak(cfg: Config, rows: list[Variant], configs: dict[str, Config], seeds: list[int]) -> dict | None:
    """``leak`` of study.json: the oracle gap of each san-gal row on ``seeds`` (``leak.seeds``); rows with
    class-agnostic maps, which follow no class, are listed under ``not_applicable``."""
    if not rows:
        return None
    return {"seeds": list(seeds),
            "rows": {v.name: leak_row([variant_config(cfg, v, s) for s in seeds])
                     for v in rows if leak_applies(configs[v.name])},
            "not_applicable": [v.name for v in rows if not leak_applies(configs[v.name])]}


def _by_seed(runs: list[dict]) -> dict[int, dict]:
    return {r["seed"]: r for r in runs}


def _heat_maps(configs: dict[str, Config], timings: dict[str, float], training_maps=None) -> dict | None:
    """Every cache the variants read (training maps of san-gal and ``loss.guide`` rows; test maps of san-gal rows);
    with eval.aah=fast, the map predictor is distilled from the exact train maps before the (forward-only)
    query/gallery caches are built. ``training_maps()`` (if given) once the training maps exist. Returns the
    predictor's figures."""
    from sangal.train.distill import ensure_distilled
    from sangal.aah.job import build_caches

    guided = [c for c in configs.values() if uses_training_maps(c) and c.train.aah == "offline"]
    offline = [c for c in guided if c.model.mode == "san-gal"]  # test-time maps too
    t = time.time()
    for c in guided:
        build_caches(c, splits=["train"])  # one cache per (split, map mode); up-to-date ones are left alone
    timings["heat-map caches"] = time.time() - t
    if training_maps is not None:
        training_maps()
    fast = [c for c in offline if c.eval.aah == "fast"]
    distilled = None
    if fast:
        t = time.time()
        distilled = ensure_distilled(fast[0])
        timings["distill"] = time.time() - t
    t = time.time()
    for c in offline:
        build_caches(c, splits=["query", "gallery"])
    timings["heat-map caches"] += time.time() - t
    return distilled


def ensure_attribute_net(cfg: Config) -> dict:
    """Train the study's attribute net unless its final checkpoint exists; its test-split scores in %."""
    from sangal.runtime.distributed import resolve_device
    from sangal.store.checkpoint import load_model
    from sangal.train.attr import evaluate_attribute_net, train_attribute_net

    paths = default_paths(cfg)
    ckpt = paths["attr_checkpoint"]
    if Path(ckpt).exists():
        device = resolve_device(cfg.train.device)
        model, _ = load_model(ckpt, expected_kind="attribute", device=str(device))
        dataset = setup.load_reid_dataset(cfg)
        metrics = evaluate_attribute_net(model, dataset, setup.load_attributes(cfg, dataset), cfg, device)
    else:
        last = paths["attr_run"] / "checkpoints" / "last"
        metrics = train_attribute_net(cfg, resume=last.exists())
    return {"mean_accuracy": 100.0 * metrics["accuracy"], "mA": 100.0 * metrics["mA"],
            "per_attribute": {name: {k: 100.0 * v for k, v in vals.items()}
                              for name, vals in metrics["per_attribute"].items()}}


def _document(cfg, variants, seeds, reference, results, sections, timings, complete) -> dict:
    """study.json: runs, their mean ± std, the paired differences with both noise sources, the diagnostics."""
    doc: dict = {"format_version": FORMAT_VERSION, "complete": complete, "units": "percent",
                 "seeds": list(seeds), "reference": reference, "variants": {}, "paired": {}, "pairing": {},
                 **{k: v for k, v in sections.items() if k not in ("distill", "step0", "runs")},
                 "step0": {n: step0_summary(r, _by_seed(results[n])) for n, r in sections.get("step0", {}).items()},
                 "timings": timings,
                 "config": {**to_dict(cfg), "networks": networks(cfg)},
                 "runs": sections.get("runs", {}),  # the schedule, the stage's wall and each run's CPU seconds
                 # commit and numerics: two studies' figures are comparable bit for bit only where these match
                 # (``threads``: this process's, which ran the leak check; the attribute net, the maps, step 0
                 # and the localisation ran at ``stage_threads``, the Re-ID runs at ``run_threads``)
                 "environment": {**provenance(), **numerics(),
                                 **{k: sections.get("runs", {}).get(k)
                                    for k in ("study_workers", "run_threads", "stage_threads")}}}
    for v in variants:
        runs = [{k: x for k, x in r.items() if k != "per_query"} for r in results[v.name]]  # arrays: result.json
        # the Re-ID net follows the variant's overrides; the attribute net is the study's, trained once from cfg
        entry: dict = {"overrides": list(v.overrides), "seeds": runs,
                       "networks": {**networks(cfg), "reid": networks(with_overrides(cfg, list(v.overrides)))["reid"]}}
        if runs:
            for stat, fn in (("mean", np.mean), ("std", lambda x: np.std(x, ddof=1) if len(x) > 1 else math.nan)):
                entry[stat] = {k: _num(fn([r[k] for r in runs])) for k in METRICS}
        doc["variants"][v.name] = entry
    ref_runs = _by_seed(results[reference])
    for v in variants:
        pairs = [(ref_runs[r["seed"]], r) for r in results[v.name] if r["seed"] in ref_runs]
        if v.name == reference or not pairs:
            continue
        doc["paired"][v.name] = paired_entries(pairs, METRICS)
        doc["pairing"][v.name] = {
            "init_equal": all(a.get("pairing", {}).get("init_sha256") == b.get("pairing", {}).get("init_sha256")
                              for a, b in pairs),
            "batches_equal": all(a.get("pairing", {}).get("batches_sha256")
                                 == b.get("pairing", {}).get("batches_sha256") for a, b in pairs)}
    if "distill" in sections:
        doc["distill"] = sections["distill"]
    return doc


def networks(cfg: Config) -> dict:
    """Each network's backbone and whether it starts from ImageNet weights (``weights``: "imagenet", a file, or None)."""
    def entry(backbone: str, pretrained: str) -> dict:
        value = parse_pretrained(pretrained)
        return {"backbone": backbone, "pretrained": value is not False,
                "weights": "imagenet" if value is True else (value or None)}

    return {"reid": entry(cfg.model.backbone, cfg.model.pretrained),
            "attribute": entry(cfg.model.attribute_backbone(), cfg.model.attribute_pretrained())}


def _num(x: float) -> float | None:
    """JSON-safe float (NaN -> None)."""
    x = float(x)
    return None if math.isnan(x) else x
