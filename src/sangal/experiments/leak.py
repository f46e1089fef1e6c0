"""Does a SAN-GAL model read the attribute labels out of its heat maps? (a diagnostic of the study)

A model trained on label-guided maps (the paper) is evaluated twice on the same query
and gallery images: with the maps test time allows (predicted classes) and with maps
guided by the TRUE attribute labels of the test identities (an oracle no deployment
has). Label-guided maps of a two-class head are ReLU(S) or ReLU(-S), picked by the
label, so the map pattern spells out the attribute vector. If the oracle maps score far
above the predicted ones, the network learnt to read identity from that pattern (a
shortcut that test-time maps scramble wherever the attribute net errs).

The oracle maps are made the way the row's test maps are (``eval.aah``: exact Grad-CAM, or the
forward-only maps of the distilled predictor, with the true labels as targets; the same
normalisation). They depend only on the attribute net, the labels and those settings, so a study
builds them once (one cache per setting) and every row and seed reads them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from sangal.aah.spec import MapSpec, Targets
from sangal.config import Config
from sangal.data import setup
from sangal.runtime.precision import gradcam_channels_last
from sangal.store.files import write_json_atomic
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)

KEYS = ("rank1", "mAP", "mINP")
RESULT_FILE = "leak.json"  # one run's check, beside its result.json


def applies(run_cfg: Config) -> bool:
    """Whether the check means anything for a row: san-gal whose test maps follow a class (not agnostic)."""
    return run_cfg.model.mode == "san-gal" and MapSpec.from_config(run_cfg).mode("query") != "agnostic"


def oracle_cache_dir(run_cfg: Config, split: str) -> Path:
    """The true-label maps of a test split, one folder per map setting (normalisation, exact or fast)."""
    name = f"{split}_oracle_labels"
    if run_cfg.model.aah_normalize != "max":
        name += f"_{run_cfg.model.aah_normalize}"
    if run_cfg.eval.aah == "fast":
        name += "_fast"
    if run_cfg.train.amp:
        name += "_bf16"  # the precision of the run's maps, as MapSpec.cache_dir names it
    return Path(default_paths(run_cfg)["aah"]) / name


def oracle_maps(run_cfg: Config, split: str, records, table, device):
    """Open (or build, if missing or stale) the true-label map cache of one test split."""
    from sangal.aah.cache import AAHCache
    from sangal.errors import CacheError

    paths = default_paths(run_cfg)
    cache_dir = oracle_cache_dir(run_cfg, split)
    targets = Targets("labels", setup.attribute_targets(table, records, "test"))  # distractors: IGNORE -> predicted
    spec = MapSpec.from_config(run_cfg)  # the oracle maps differ from the run's test maps in their class only
    try:
        return AAHCache.open_path(cache_dir, attr_ckpt_dir=paths["attr_checkpoint"], records=records, targets=targets,
                                  normalize=spec.normalize, method=spec.method, precision=spec.precision)
    except CacheError:
        return AAHCache.build_path(cache_dir, paths["attr_checkpoint"], records, run_cfg.data.height,
                                   run_cfg.data.width, targets=targets, batch_size=run_cfg.data.test_batch_size,
                                   device=str(device), normalize=spec.normalize, method=spec.method,
                                   precision=spec.precision, progress=False,
                                   channels_last=gradcam_channels_last(run_cfg.train.amp, run_cfg.train.channels_last))


def oracle_evaluation(run_cfg: Config) -> dict:
    """Rank-1/mAP/mINP (percent) of one finished san-gal run with predicted-class and true-label test maps."""
    from sangal.evaluate.predictor import Predictor
    from sangal.evaluate.reid import evaluate_features, query_gallery
    from sangal.runtime.distributed import resolve_device

    device = resolve_device(run_cfg.train.device)
    paths = default_paths(run_cfg)
    predictor = Predictor.from_checkpoint(paths["reid_run"] / "checkpoints" / "final", paths["attr_checkpoint"],
                                          device)
    dataset = setup.load_reid_dataset(run_cfg)
    table = setup.load_attributes(run_cfg, dataset)
    oracle = {split: _reader(oracle_maps(run_cfg, split, getattr(dataset, split), table, device))
              for split in ("query", "gallery")}
    out: dict = {}
    for kind, maps in (("predicted", None), ("true labels", oracle)):
        q, g = query_gallery(predictor, dataset, run_cfg, paths["aah"], maps=maps, progress=False)
        m = evaluate_features(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, run_cfg)
        out[kind] = {k: 100.0 * float(m[k]) for k in KEYS}
    log.info("label leak check: %s", out)
    return out


def _reader(cache):
    """The maps of a batch's images (their record positions) from a cache."""
    return lambda batch: cache.get(batch["index"])


def leak_summary(results: list[dict]) -> dict:
    """Mean over seeds of each evaluation and of the oracle-minus-predicted gap (percentage points)."""
    summary = {kind: {k: float(np.mean([r[kind][k] for r in results])) for k in KEYS}
               for kind in ("predicted", "true labels")}
    summary["gap"] = {k: summary["true labels"][k] - summary["predicted"][k] for k in KEYS}
    summary["seeds"] = len(results)
    return summary


def leak_row(run_cfgs: list[Config]) -> dict:
    """The check of one row over some of its finished runs (each kept in its run folder, so a study resumes)."""
    per_seed = []
    for run_cfg in run_cfgs:
        path = Path(run_cfg.out) / RESULT_FILE
        if path.is_file():
            result = json.loads(path.read_text())
        else:
            result = {"seed": run_cfg.train.seed, **oracle_evaluation(run_cfg)}
            write_json_atomic(path, result)
        per_seed.append(result)
    return {**leak_summary(per_seed), "per_seed": per_seed, "maps": run_cfgs[0].eval.aah}
