"""Does a SAN-GAL model read the attribute labels out of its heat maps? (a diagnostic of the study)

A model trained on label-guided maps (the paper) is evaluated twice on the same query
and gallery images: with the maps test time allows (predicted classes) and with maps
guided by the TRUE attribute labels of the test identities (an oracle no deployment
has). Label-guided maps of a two-class head are ReLU(S) or ReLU(-S), picked by the
label, so the map pattern spells out the attribute vector. If the oracle maps score far
above the predicted ones, the network learnt to read identity from that pattern (a
shortcut that test-time maps scramble wherever the attribute net errs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sangal.config import Config
from sangal.data import setup
from sangal.runtime.precision import gradcam_channels_last
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)


def oracle_evaluation(run_cfg: Config) -> dict:
    """Rank-1/mAP/mINP (percent) of one finished san-gal run with predicted-class and true-label test maps."""
    from sangal.aah.cache import AAHCache
    from sangal.errors import CacheError
    from sangal.evaluate.features import aah_from_cache, extract_features
    from sangal.evaluate.reid import evaluate_features, heatmap_source
    from sangal.store.checkpoint import load_model

    paths = default_paths(run_cfg)
    model, _ = load_model(paths["reid_run"] / "checkpoints" / "final", expected_kind="reid")
    dataset = setup.load_reid_dataset(run_cfg)
    table = setup.load_attributes(run_cfg, dataset)
    out: dict = {}
    for kind in ("predicted", "true labels"):
        sets = {}
        for split, records in (("query", dataset.query), ("gallery", dataset.gallery)):
            if kind == "predicted":
                aah_fn = heatmap_source(run_cfg, records, split, paths, torch.device("cpu"))
            else:
                cache_dir = Path(paths["aah"]) / f"{split}_oracle_labels"
                targets = setup.attribute_targets(table, records, "test")  # distractors: IGNORE -> predicted
                try:
                    cache = AAHCache.open(cache_dir, attr_ckpt_dir=paths["attr_checkpoint"], records=records,
                                          targets=targets, normalize=run_cfg.model.aah_normalize)
                except CacheError:  # missing or stale: build it
                    cache = AAHCache.build(cache_dir, paths["attr_checkpoint"], records, run_cfg.data.height,
                                           run_cfg.data.width, targets=targets, batch_size=run_cfg.data.test_batch_size,
                                           normalize=run_cfg.model.aah_normalize, amp=run_cfg.train.amp,
                                           channels_last=gradcam_channels_last(run_cfg.train.amp,
                                                                                run_cfg.train.channels_last))
                aah_fn = aah_from_cache(cache)
            sets[split] = extract_features(model, setup.test_loader(records, run_cfg), flip=run_cfg.eval.flip,
                                           aah_fn=aah_fn, progress=False)
        q, g = sets["query"], sets["gallery"]
        m = evaluate_features(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, run_cfg)
        out[kind] = {k: 100.0 * float(m[k]) for k in ("rank1", "mAP", "mINP")}
    log.info("label leak check: %s", out)
    return out


def leak_summary(results: list[dict]) -> dict:
    """Mean over seeds of each evaluation and of the oracle-minus-predicted gap (percentage points)."""
    keys = ("rank1", "mAP", "mINP")
    summary = {kind: {k: float(np.mean([r[kind][k] for r in results])) for k in keys}
               for kind in ("predicted", "true labels")}
    summary["gap"] = {k: summary["true labels"][k] - summary["predicted"][k] for k in keys}
    summary["seeds"] = len(results)
    return summary
