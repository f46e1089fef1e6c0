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

from sangal.config import Config
from sangal.data import setup
from sangal.runtime.precision import gradcam_channels_last
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)


def oracle_evaluation(run_cfg: Config) -> dict:
    """Rank-1/mAP/mINP (percent) of one finished san-gal run with predicted-class and true-label test maps."""
    from sangal.aah.cache import AAHCache
    from sangal.aah.spec import Targets
    from sangal.errors import CacheError
    from sangal.evaluate.predictor import Predictor
    from sangal.evaluate.reid import cached_test_maps, evaluate_features

    paths = default_paths(run_cfg)
    predictor = Predictor.from_checkpoint(paths["reid_run"] / "checkpoints" / "final", paths["attr_checkpoint"],
                                          flip=run_cfg.eval.flip)
    dataset = setup.load_reid_dataset(run_cfg)
    table = setup.load_attributes(run_cfg, dataset)
    out: dict = {}
    for kind in ("predicted", "true labels"):
        sets = {}
        for split, records in (("query", dataset.query), ("gallery", dataset.gallery)):
            if kind == "predicted":
                maps = cached_test_maps(predictor, records, split, paths["aah"])
            else:
                cache_dir = Path(paths["aah"]) / f"{split}_oracle_labels"
                targets = Targets("labels", setup.attribute_targets(table, records, "test"))  # distractors: predicted
                try:
                    cache = AAHCache.open(cache_dir, attr_ckpt_dir=paths["attr_checkpoint"], records=records,
                                          targets=targets, normalize=run_cfg.model.aah_normalize)
                except CacheError:  # missing or stale: build it
                    cache = AAHCache.build(cache_dir, paths["attr_checkpoint"], records, run_cfg.data.height,
                                           run_cfg.data.width, targets=targets, batch_size=run_cfg.data.test_batch_size,
                                           normalize=run_cfg.model.aah_normalize, amp=run_cfg.train.amp,
                                           channels_last=gradcam_channels_last(run_cfg.train.amp,
                                                                                run_cfg.train.channels_last))
                maps = lambda batch, cache=cache: cache.get(batch["index"])  # noqa: E731
            sets[split] = predictor.embed_loader(setup.test_loader(records, run_cfg), maps, progress=False)
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
