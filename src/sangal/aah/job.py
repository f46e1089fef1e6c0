"""`sangal aah`: heat-map caches, one per split: the train split's every class's exact maps (one exact pass serves
every training-map mode and the map predictor's distillation), query/gallery maps of the spec's test-time mode."""

from __future__ import annotations

import logging
from pathlib import Path

from sangal.aah.spec import MapSpec
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
    spec = MapSpec.from_config(cfg)
    dataset = setup.load_reid_dataset(cfg)
    device = resolve_device(cfg.train.device)
    size = (cfg.data.height, cfg.data.width)
    out: dict[str, Path] = {}
    for split in splits:
        records = getattr(dataset, split)
        cache_dir = spec.cache_dir(paths["aah"], split)
        try:
            AAHCache.open(paths["aah"], spec, split, attr_checkpoint=ckpt, records=records, size=size)
            log.info("%s heat maps are up to date in %s", split, cache_dir)
        except CacheError as exc:
            if cache_dir.exists():
                log.info("rebuilding %s: %s", cache_dir, exc)
            AAHCache.build(paths["aah"], spec, split, ckpt, records, size, batch_size=cfg.data.test_batch_size,
                           device=str(device), num_workers=cfg.data.num_workers,
                           channels_last=gradcam_channels_last(cfg.train.amp, cfg.train.channels_last))
        out[split] = cache_dir
    return out
