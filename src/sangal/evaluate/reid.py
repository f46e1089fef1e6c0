"""Query/gallery evaluation of a Re-ID model: features, distances, optional re-ranking, CMC/mAP/mINP."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import numpy as np

from sangal.config import Config, with_decided
from sangal.data import setup
from sangal.errors import CacheError, ConfigError, DatasetError
from sangal.evaluate.embedding import EmbedSpec
from sangal.evaluate.predictor import MapsFn, Predictor
from sangal.models.arch_keys import ARCH
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)


def cached_test_maps(predictor: Predictor, records, split: str, cache_root: str | Path | None) -> MapsFn | None:
    """A split's maps from its valid offline cache of the model's spec, precision included (a cache of another
    precision has another folder and is never read); None: the predictor computes them, in the record's precision."""
    from sangal.aah.cache import AAHCache

    spec = predictor.spec
    if predictor.mode != "san-gal" or cache_root is None:
        return None
    try:
        cache = AAHCache.open(cache_root, spec, split, attr_checkpoint=predictor.attr_checkpoint, records=records,
                              size=predictor.size)
    except CacheError as exc:
        if spec.cache_dir(cache_root, split).exists():
            log.warning("%s; computing %s heat maps on the fly (%s) instead", exc, split, spec.precision)
        return None
    return lambda batch: cache.get(batch["index"])  # 3 x (B, K, h, w) float32


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


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, cfg: Config, where: str = "evaluation") -> dict:
    """Distances (+ optional k-reciprocal re-ranking) and the Market/Duke protocol metrics; the queries without a
    true match are counted and logged, and with none left it is a DatasetError naming ``where`` (the dataset)."""
    from sangal.metrics import compute_distance, evaluate_rank, re_ranking
    from sangal.metrics.rank import NoTrueMatch

    q_camids = same_camera_camids(q_camids, g_camids, cfg.eval.same_camera)
    if cfg.eval.rerank:
        distmat = re_ranking(qf, gf, k1=cfg.eval.k1, k2=cfg.eval.k2, lambda_value=cfg.eval.lambda_value)
    else:
        distmat = compute_distance(qf, gf, metric=cfg.eval.metric)
    try:
        result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=cfg.eval.max_rank)
    except NoTrueMatch:
        raise DatasetError(f"{where}: none of the {len(q_pids)} queries has a true match among the {len(g_pids)} "
                           "gallery images (same identity, another camera unless eval.same_camera=keep); "
                           "nothing to score") from None
    if result.num_skipped:
        log.warning("%d of %d queries skipped (no true match in the gallery); the metrics average the other %d",
                    result.num_skipped, len(q_pids), result.num_valid)
    cmc = np.asarray(result.cmc, dtype=np.float64)
    return {
        "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]), "rank10": float(cmc[min(9, len(cmc) - 1)]),
        "mAP": float(result.mAP), "mINP": float(result.mINP), "cmc": cmc.tolist(),
        "num_valid_queries": int(result.num_valid), "num_skipped_queries": int(result.num_skipped),
        # per query (first_rank 0: skipped); `sangal study` bootstraps them over query identities
        "per_query": {"pid": np.asarray(q_pids).tolist(), "ap": result.ap.tolist(),
                      "first_rank": result.first_rank.tolist()},
    }


def query_gallery(predictor: Predictor, dataset, cfg: Config, cache_root: str | Path | None = None,
                  maps: dict | None = None, progress: bool = True):
    """Query and gallery FeatureSets: a split's maps from ``maps`` (split -> MapsFn, e.g. the leak check's
    true-label maps) when given, else from its valid cache under ``cache_root``, else computed."""
    sets = []
    for split, records in (("query", dataset.query), ("gallery", dataset.gallery)):
        source = maps[split] if maps else cached_test_maps(predictor, records, split, cache_root)
        sets.append(predictor.embed_loader(setup.test_loader(records, cfg), source, progress=progress))
    return sets[0], sets[1]


def evaluate_predictor(predictor: Predictor, dataset, cfg: Config, cache_root: str | Path | None = None) -> dict:
    """Embed the query and gallery splits (maps from the caches under ``cache_root`` when valid) and score them."""
    q, g = query_gallery(predictor, dataset, cfg, cache_root)
    metrics = evaluate_features(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, cfg, where=str(dataset.root))
    if q.attr_probs is not None and predictor.attr_source == "reid":
        metrics.update(attribute_metrics_from_probs(cfg, dataset, q, g))
    log.info("%s: Rank-1 %.1f%%  Rank-5 %.1f%%  mAP %.1f%%  mINP %.1f%%", predictor.mode,
             100 * metrics["rank1"], 100 * metrics["rank5"], 100 * metrics["mAP"], 100 * metrics["mINP"])
    return metrics


def training_predictor(model, cfg: Config, attr_checkpoint: str | Path | None) -> Predictor:
    """The predictor of a model being trained: its record from the config (as its checkpoints will hold it), its
    attribute net from disk."""
    from sangal.store.checkpoint import load_model

    embedding = EmbedSpec.from_config(cfg)
    spec = embedding.maps
    attr_net = fast_map_net = None
    source = {}
    if cfg.model.mode == "san-gal":
        device = next(model.parameters()).device
        attr_net, _ = load_model(attr_checkpoint, expected_kind="attribute", device=device)
        source["attr_checkpoint"] = str(attr_checkpoint)
        if spec.method == "fast":
            from sangal.aah.fast_map_files import load_fast_map_net

            fast_map_net = load_fast_map_net(attr_checkpoint, device=device)
    return Predictor(model, embedding, attr_net, fast_map_net, source=source)


def attribute_metrics_from_probs(cfg: Config, dataset, q, g) -> dict:
    """mA of the Re-ID net's own attribute heads on the test identities (query + gallery)."""
    from sangal.metrics.attributes import mean_accuracy

    table = setup.load_attributes(cfg, dataset)
    records = list(dataset.query) + list(dataset.gallery)
    target = setup.attribute_targets(table, records, "test")
    pred = np.stack([np.concatenate([qp, gp]).argmax(1) for qp, gp in zip(q.attr_probs, g.attr_probs)], axis=1)
    res = mean_accuracy(pred, target, table.schema.num_classes)
    return {"reid_attr_mA": float(res["mA"])}


def checkpoint_config(cfg: Config, predictor: Predictor, given: Collection[str], checkpoint: str | Path) -> Config:
    """``cfg`` with what the checkpoint decides (its arch's strict keys, its test-time record: input size, flip, map
    spec); a key the user gave (``given``: set in the config file or an override) that contradicts it is refused in
    one line."""
    arch, record = predictor.reid.arch_dict(), predictor.embedding
    decided = {key.config: arch[key.name] for key in ARCH if key.strict and key.config and key.name in arch}
    decided.update({"data.height": record.height, "data.width": record.width, "eval.flip": record.flip,
                    "train.aah_targets": record.maps.targets, "model.aah_normalize": record.maps.normalize,
                    "eval.aah": record.maps.method})
    return with_decided(cfg, decided, given, f"checkpoint {checkpoint}")


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, given: Collection[str] = ()) -> dict:
    """`sangal evaluate`: the checkpoint's predictor on the configured dataset, embedding as the checkpoint records
    (``given``: the config keys the user set; ``eval.aah`` among them computes the test maps that way instead)."""
    from sangal.runtime.distributed import resolve_device

    device = resolve_device(cfg.train.device)
    method = cfg.eval.aah if "eval.aah" in given else None
    attr = cfg.train.attr_checkpoint if "train.attr_checkpoint" in given else None
    predictor = Predictor.from_checkpoint(checkpoint, attr, device, method=method)
    cfg = checkpoint_config(cfg, predictor, set(given) - {"eval.aah"}, checkpoint)
    dataset = setup.load_reid_dataset(cfg)
    return evaluate_predictor(predictor, dataset, cfg, cache_root=default_paths(cfg)["aah"])
