"""A resolved Config turned into what the data layer holds: the dataset, its attribute labels, test loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sangal.config import Config
from sangal.errors import AttributeFileError, ConfigError

log = logging.getLogger(__name__)


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
    from sangal.data.attributes import read_attribute_mat, schema_name

    if not cfg.data.attributes and getattr(dataset, "attributes", None) is not None:  # a CSV's attribute columns
        table = dataset.attributes
        if table.schema.colour_mode != cfg.data.colour_mode:
            raise ConfigError(f"{table.path}: attribute columns are in the {table.schema.colour_mode} schema; "
                              f"set data.colour_mode={table.schema.colour_mode}")
        return table
    table = read_attribute_mat(attribute_file(cfg, Path(dataset.root)), dataset=schema_name(cfg.data.dataset),
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


def test_loader(records, cfg: Config, attributes: np.ndarray | None = None) -> torch.utils.data.DataLoader:
    """Sequential loader with the test transform (resize + normalise)."""
    from sangal.data import ImageDataset, build_transforms

    transform = build_transforms(cfg.data.height, cfg.data.width, train=False)
    return torch.utils.data.DataLoader(
        ImageDataset(records, transform, attributes), batch_size=cfg.data.test_batch_size, shuffle=False,
        num_workers=cfg.data.num_workers)
