"""`sangal aah`: heat-map caches for the train (label-guided) and query/gallery (predicted) splits."""

from __future__ import annotations

import logging
from pathlib import Path

from sangal.aah.spec import MapSpec, Targets
from sangal.config import Config
from sangal.data import setup
from sangal.errors import CheckpointError, ConfigError
from sangal.runtime.precision import gradcam_channels_last
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)

SPLITS = ("train", "query", "gallery")


def split_targets(spec: MapSpec, split: str, table, records) -> Targets:
    """What a split's cache follows under ``spec``: the attribute labels (training maps of the paper) or a mode."""
    mode = spec.cache_mode(split)
    return Targets(mode, setup.attribute_targets(table, records, "train") if mode == "labels" else None)


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
    spec = MapSpec.from_config(cfg)
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    device = resolve_device(cfg.train.device)
    out: dict[str, Path] = {}
    for split in splits:
        records = getattr(dataset, split)
        targets = split_targets(spec, split, table, records)  # test maps never see the labels
        cache_dir, method = spec.cache_dir(paths["aah"], split), spec.split_method(split)
        try:
            AAHCache.open(cache_dir, attr_ckpt_dir=ckpt, records=records, height=cfg.data.height,
                          width=cfg.data.width, targets=targets, normalize=spec.normalize, method=method)
            log.info("%s heat maps are up to date in %s", split, cache_dir)
        except CacheError as exc:
            if cache_dir.exists():
                log.info("rebuilding %s: %s", cache_dir, exc)
            AAHCache.build(cache_dir, ckpt, records, cfg.data.height, cfg.data.width, targets=targets,
                           batch_size=cfg.data.test_batch_size, device=str(device),
                           num_workers=cfg.data.num_workers, normalize=spec.normalize, method=method,
                           amp=cfg.train.amp,
                           channels_last=gradcam_channels_last(cfg.train.amp, cfg.train.channels_last))
        out[split] = cache_dir
    return out
