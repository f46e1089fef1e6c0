"""`sangal aah`: heat-map caches for the train (label-guided) and query/gallery (predicted) splits."""

from __future__ import annotations

import logging
from pathlib import Path

from sangal.aah.modes import aah_mode, aah_targets_for
from sangal.config import Config
from sangal.data import setup
from sangal.errors import CheckpointError, ConfigError
from sangal.runtime.precision import gradcam_channels_last
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)

SPLITS = ("train", "query", "gallery")


def build_caches(cfg: Config, splits: list[str] | tuple[str, ...] = SPLITS) -> dict[str, Path]:
    """Build (or resume) one cache per split; an up-to-date cache is left as it is."""
    from sangal.aah.cache import AAHCache
    from sangal.errors import CacheError
    from sangal.runtime.distributed import resolve_device

    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ConfigError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    paths = default_paths(cfg)
    ckpt = paths["attr_checkpoint"]
    if not Path(ckpt).exists():
        raise CheckpointError(f"no attribute checkpoint at {ckpt}: run `sangal train-attr` first "
                              "or set train.attr_checkpoint=DIR")
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    device = resolve_device(cfg.train.device)
    out: dict[str, Path] = {}
    for split in splits:
        records = getattr(dataset, split)
        # Training maps follow train.aah_targets (labels: the paper's "GAL"); test maps never see labels.
        targets = aah_targets_for(cfg, table, records, split)
        cache_dir = aah_cache_dir(cfg, split)
        method = "exact" if split == "train" else cfg.eval.aah  # training keeps exact maps
        try:
            AAHCache.open(cache_dir, attr_ckpt_dir=ckpt, records=records, height=cfg.data.height,
                          width=cfg.data.width, targets="predicted" if targets is None else targets,
                          normalize=cfg.model.aah_normalize, method=method)
            log.info("%s heat maps are up to date in %s", split, cache_dir)
        except CacheError as exc:
            if cache_dir.exists():
                log.info("rebuilding %s: %s", cache_dir, exc)
            AAHCache.build(cache_dir, ckpt, records, cfg.data.height, cfg.data.width, targets=targets,
                           batch_size=cfg.data.test_batch_size, device=str(device),
                           num_workers=cfg.data.num_workers, normalize=cfg.model.aah_normalize, method=method,
                           amp=cfg.train.amp,
                           channels_last=gradcam_channels_last(cfg.train.amp, cfg.train.channels_last))
        out[split] = cache_dir
    return out


def aah_cache_dir(cfg: Config, split: str) -> Path:
    """Cache folder of a split: one per (split, map mode, normalisation), so study variants never rebuild
    each other's caches. Label-guided train maps and predicted test maps keep the plain split name."""
    root = default_paths(cfg)["aah"]
    mode = aah_mode(cfg, split)
    name = split if mode in ("labels", "predicted") and not (split == "train" and mode == "predicted") \
        else f"{split}_{mode}"
    if cfg.model.aah_normalize != "max":
        name += f"_{cfg.model.aah_normalize}"
    if split != "train" and cfg.eval.aah == "fast":  # forward-only test maps (`sangal distill`) live apart
        name += "_fast"
    return root / name
