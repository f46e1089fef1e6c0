"""Turning a resolved Config into datasets, attribute labels, models and loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sangal.config import Config
from sangal.errors import AttributeFileError, ConfigError

log = logging.getLogger(__name__)


def parse_pretrained(value: str) -> bool | str:
    """`true`/`false` or a local weights path (config strings are kept as written)."""
    text = str(value).strip()
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0", "none", ""):
        return False
    return text


def load_reid_dataset(cfg: Config):
    """Read the dataset named in the config (the reader logs its one-line-per-split summary).

    Every image is checked once (cached); under data.on_bad_image=skip the dropped
    files are listed in <out>/bad_images.txt.
    """
    from sangal.data import load_dataset

    return load_dataset(cfg.data.dataset, cfg.data.root, on_bad_image=cfg.data.on_bad_image,
                        num_workers=cfg.data.num_workers, bad_list=Path(cfg.out) / "bad_images.txt")


def attribute_file(cfg: Config, dataset_root: Path) -> Path:
    """The Lin et al. .mat for this dataset: data.attributes, or one found beside the images."""
    if cfg.data.attributes:
        path = Path(cfg.data.attributes)
        if not path.is_file():
            raise AttributeFileError(f"attribute file {path} (data.attributes) does not exist")
        return path
    stem = "duke" if cfg.data.dataset == "dukemtmc" else "market"
    candidates = [dataset_root / f"{stem}_attribute.mat", dataset_root.parent / f"{stem}_attribute.mat",
                  Path(cfg.data.root) / f"{stem}_attribute.mat"]
    for path in candidates:
        if path.is_file():
            return path
    raise AttributeFileError(
        f"no attribute labels found (looked for {', '.join(str(c) for c in candidates)}); "
        f"pass data.attributes=/path/to/{stem}_attribute.mat (Lin et al.) or use model.mode=id")


def load_attributes(cfg: Config, dataset):
    """Attribute table for the dataset, checked against every identity it holds."""
    from sangal.data.attributes import read_attribute_mat

    if not cfg.data.attributes and getattr(dataset, "attributes", None) is not None:  # a CSV's attribute columns
        table = dataset.attributes
        if table.schema.colour_mode != cfg.data.colour_mode:
            raise ConfigError(f"{table.path}: attribute columns are in the {table.schema.colour_mode} schema; "
                              f"set data.colour_mode={table.schema.colour_mode}")
        return table
    schema_dataset = "dukemtmc" if cfg.data.dataset == "dukemtmc" else "market1501"
    table = read_attribute_mat(attribute_file(cfg, Path(dataset.root)), dataset=schema_dataset,
                               colour_mode=cfg.data.colour_mode)
    return table


def attribute_targets(table, records, split: str) -> np.ndarray:
    """(N, K) int64 labels for records of a split ("train" or "test"); distractors get IGNORE."""
    from sangal.data.attributes import IGNORE_INDEX

    out = np.full((len(records), len(table.schema)), IGNORE_INDEX, dtype=np.int64)
    keep = [i for i, r in enumerate(records) if r.raw_pid > 0]
    if keep:
        out[keep] = table.labels_for([records[i] for i in keep], split)
    return out


def arch_for(cfg: Config, kind: str, num_ids: int = 0, attr_classes: list[int] | None = None) -> dict:
    """The `arch` dict stored in checkpoints: everything needed to rebuild the model."""
    arch = {
        "kind": kind,
        "backbone": cfg.model.attribute_backbone() if kind == "attribute" else cfg.model.backbone,
        "last_stride": cfg.model.last_stride,
        "attr_classes": list(attr_classes or []),
        "dataset": "dukemtmc" if cfg.data.dataset == "dukemtmc" else "market1501",
        "colour_mode": cfg.data.colour_mode,
        "height": cfg.data.height,
        "width": cfg.data.width,
    }
    if kind == "reid":
        arch.update(num_ids=num_ids, mode=cfg.model.mode, extra_sigmoid=cfg.model.extra_sigmoid,
                    asam_stages=list(cfg.model.asam_stages), asam_gain=cfg.model.asam_gain)
    return arch


def test_loader(records, cfg: Config, attributes: np.ndarray | None = None) -> torch.utils.data.DataLoader:
    """Sequential loader with the test transform (resize + normalise)."""
    from sangal.data import ImageDataset, build_transforms

    transform = build_transforms(cfg.data.height, cfg.data.width, train=False)
    return torch.utils.data.DataLoader(
        ImageDataset(records, transform, attributes), batch_size=cfg.data.test_batch_size, shuffle=False,
        num_workers=cfg.data.num_workers)


def default_paths(cfg: Config) -> dict[str, Path]:
    """Where each stage of a run reads and writes, derived from `out` unless configured."""
    out = Path(cfg.out)
    return {
        "out": out,
        "attr_run": out / "attr",
        "attr_checkpoint": Path(cfg.train.attr_checkpoint) if cfg.train.attr_checkpoint
        else out / "attr" / "checkpoints" / "final",
        "aah": Path(cfg.train.aah_cache) if cfg.train.aah_cache else out / "aah",
        "reid_run": out / "reid" / cfg.model.mode,
    }


def aah_mode(cfg: Config, split: str) -> str:
    """Grad-CAM class of a split's maps: labels (train only), predicted or agnostic (sangal.aah_modes)."""
    from sangal.aah_modes import eval_mode

    return cfg.train.aah_targets if split == "train" else eval_mode(cfg.train.aah_targets)


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


def aah_targets_for(cfg: Config, table, records, split: str) -> np.ndarray | str | None:
    """Grad-CAM targets for AAHCache: labels (N, K) for label-guided maps, "agnostic", or None (predicted)."""
    mode = aah_mode(cfg, split)
    if mode == "labels":
        return attribute_targets(table, records, "train")
    return "agnostic" if mode == "agnostic" else None


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
