"""Query/gallery evaluation of a Re-ID model: features, distances, optional re-ranking, CMC/mAP/mINP."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sangal.aah.job import aah_cache_dir
from sangal.aah.modes import aah_mode
from sangal.config import Config
from sangal.data import setup
from sangal.errors import CacheError, CheckpointError, ConfigError
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)


def heatmap_source(cfg: Config, records, split: str, paths: dict, device: torch.device):
    """Test-time AAH (predicted classes): the offline cache when it is valid, else the attribute net."""
    from sangal.aah.cache import AAHCache
    from sangal.evaluate.features import aah_from_cache, aah_from_net

    mode = aah_mode(cfg, split)  # predicted or agnostic: test time never sees the labels
    cache_dir = Path(paths["aah"]) / aah_cache_dir(cfg, split).name
    if cache_dir.exists():
        try:
            cache = AAHCache.open(cache_dir, attr_ckpt_dir=paths["attr_checkpoint"], records=records,
                                  height=cfg.data.height, width=cfg.data.width, normalize=cfg.model.aah_normalize,
                                  method=cfg.eval.aah)
            if cache.manifest["targets"]["mode"] != mode:
                raise CacheError(f"AAH cache {cache_dir} holds {cache.manifest['targets']['mode']} maps, "
                                 f"not the {mode} maps this model was trained for")
            return aah_from_cache(cache)
        except CacheError as exc:
            log.warning("%s; computing %s heat maps on the fly instead", exc, split)
    ckpt = Path(paths["attr_checkpoint"])
    if not ckpt.exists():
        raise CheckpointError(f"san-gal evaluation needs heat maps: no cache at {cache_dir} and no attribute "
                              f"checkpoint at {ckpt} (run `sangal train-attr` and `sangal aah`)")
    from sangal.store.checkpoint import load_model

    attr_net, _ = load_model(ckpt, expected_kind="attribute", device=str(device))
    predictor = None
    if cfg.eval.aah == "fast":  # forward-only maps: the predictor `sangal distill` saved with the checkpoint
        from sangal.aah.predictor import load_map_predictor

        predictor = load_map_predictor(ckpt, device=device)
    return aah_from_net(attr_net, normalize=cfg.model.aah_normalize, predictor=predictor, agnostic=mode == "agnostic")


def same_camera_camids(q_camids, g_camids, policy: str):
    """Query camids under ``eval.same_camera``: "keep" (or "auto" on a one-camera set) gives every
    query a camera no gallery image has, so no same-id match is excluded as same-camera junk."""
    q_camids = np.asarray(q_camids)
    one_camera = len(set(np.unique(q_camids)) | set(np.unique(g_camids))) == 1
    if policy == "exclude" and one_camera:
        raise ConfigError("query and gallery come from one camera: eval.same_camera=exclude would skip every "
                          "query; use eval.same_camera=auto or keep")
    if policy == "keep" or (policy == "auto" and one_camera):
        if policy == "auto":
            log.warning("query and gallery come from one camera: keeping same-camera matches "
                        "(the standard protocol would skip every query; eval.same_camera=exclude forces it)")
        return np.full_like(q_camids, int(np.max(g_camids)) + 1)
    return q_camids


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, cfg: Config) -> dict:
    """Distances (+ optional k-reciprocal re-ranking) and the Market/Duke protocol metrics."""
    from sangal.metrics import compute_distance, evaluate_rank, re_ranking

    q_camids = same_camera_camids(q_camids, g_camids, cfg.eval.same_camera)
    if cfg.eval.rerank:
        distmat = re_ranking(qf, gf, k1=cfg.eval.k1, k2=cfg.eval.k2, lambda_value=cfg.eval.lambda_value)
    else:
        distmat = compute_distance(qf, gf, metric=cfg.eval.metric)
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=cfg.eval.max_rank)
    cmc = np.asarray(result.cmc, dtype=np.float64)
    return {
        "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]), "rank10": float(cmc[min(9, len(cmc) - 1)]),
        "mAP": float(result.mAP), "mINP": float(result.mINP), "cmc": cmc.tolist(),
        "num_valid_queries": int(result.num_valid), "num_skipped_queries": int(result.num_skipped),
        # per query (first_rank 0: skipped); `sangal study` bootstraps them over query identities
        "per_query": {"pid": np.asarray(q_pids).tolist(), "ap": result.ap.tolist(),
                      "first_rank": result.first_rank.tolist()},
    }


def query_gallery_features(model, dataset, cfg: Config, paths: dict, device: torch.device,
                           aah_fns: dict | None = None, progress: bool = True):
    """Query and gallery FeatureSets of `model`; a san-gal model sees the test maps of `cfg`
    (heatmap_source) unless `aah_fns` gives one map source per split (the leak check's true-label maps)."""
    from sangal.evaluate.features import extract_features

    sets = []
    for split, records in (("query", dataset.query), ("gallery", dataset.gallery)):
        aah_fn = None
        if cfg.model.mode == "san-gal":
            aah_fn = aah_fns[split] if aah_fns else heatmap_source(cfg, records, split, paths, device)
        sets.append(extract_features(model, setup.test_loader(records, cfg), device=device, flip=cfg.eval.flip,
                                     aah_fn=aah_fn, progress=progress))
    return sets[0], sets[1]


def evaluate_reid(model, dataset, cfg: Config, paths: dict, device: torch.device) -> dict:
    """Extract query and gallery features with `model` and score them."""
    model.eval()
    q, g = query_gallery_features(model, dataset, cfg, paths, device)
    metrics = evaluate_features(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, cfg)
    if q.attr_probs is not None and cfg.model.mode != "id":
        metrics.update(attribute_metrics_from_probs(cfg, dataset, q, g))
    log.info("%s: Rank-1 %.1f%%  Rank-5 %.1f%%  mAP %.1f%%  mINP %.1f%%", cfg.model.mode,
             100 * metrics["rank1"], 100 * metrics["rank5"], 100 * metrics["mAP"], 100 * metrics["mINP"])
    return metrics


def attribute_metrics_from_probs(cfg: Config, dataset, q, g) -> dict:
    """mA of the Re-ID net's own attribute heads on the test identities (query + gallery)."""
    from sangal.metrics.attributes import mean_accuracy

    table = setup.load_attributes(cfg, dataset)
    records = list(dataset.query) + list(dataset.gallery)
    target = setup.attribute_targets(table, records, "test")
    pred = np.stack([np.concatenate([qp, gp]).argmax(1) for qp, gp in zip(q.attr_probs, g.attr_probs)], axis=1)
    res = mean_accuracy(pred, target, table.schema.num_classes)
    return {"reid_attr_mA": float(res["mA"])}


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path) -> dict:
    """`sangal evaluate`: load a Re-ID checkpoint and evaluate it on the configured dataset."""
    from sangal.runtime.distributed import resolve_device
    from sangal.store.checkpoint import load_model
    from sangal.store.reid_info import find_attribute_checkpoint

    device = resolve_device(cfg.train.device)
    model, ckpt = load_model(checkpoint, expected_kind="reid", device=str(device))
    arch = ckpt.arch
    cfg.model.mode, cfg.model.backbone = arch["mode"], arch["backbone"]
    cfg.data.height, cfg.data.width = arch["height"], arch["width"]
    paths = default_paths(cfg)
    if arch["mode"] == "san-gal" and not cfg.train.attr_checkpoint and ckpt.state.get("attr_checkpoint"):
        paths["attr_checkpoint"] = find_attribute_checkpoint(ckpt)
    dataset = setup.load_reid_dataset(cfg)
    return evaluate_reid(model, dataset, cfg, paths, device)
