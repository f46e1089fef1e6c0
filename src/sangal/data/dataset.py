"""Torch dataset over image records: loading, labels, attributes, per-sample seeded augmentation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from sangal.data.records import ImageRecord
from sangal.errors import DatasetError

logger = logging.getLogger(__name__)


def read_image(path: str | Path) -> Image.Image:
    """The image at ``path`` as RGB; DatasetError naming the file if it is missing or unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image ({exc})") from None


def check_images(records: Sequence[ImageRecord]) -> list[tuple[Path, str]]:
    """Open every image fully (PIL verify, then decode) and return ``(path, reason)`` for the bad ones."""
    bad = []
    for record in records:
        try:
            with Image.open(record.path) as img:
                img.verify()  # header/structure check; the object is unusable afterwards
            with Image.open(record.path) as img:
                img.load()  # full decode catches truncated data that verify() misses
        except Exception as exc:  # PIL raises many types for broken files; all mean "bad image"
            bad.append((record.path, f"{type(exc).__name__}: {exc}"))
    if bad:
        logger.warning("%d of %d images are unreadable, first: %s", len(bad), len(records), bad[0][0])
    return bad


class ImageDataset(torch.utils.data.Dataset):
    """Images of ``records`` with their labels, for a DataLoader.

    An item is a dict ``image, pid, camid, index, path`` (+ ``attrs`` (K,) long when
    ``attributes`` (N, K) is given; + ``shift`` (2,) and ``flipped`` with a train
    transform). The key may be an index or ``(index, seed)`` (what :class:`~sangal.data.samplers.IdentitySampler` yields): the transform then
    runs under a forked torch RNG seeded with ``seed``, so augmentation depends only
    on the sample, not on worker count or order (bit-exact resume, DDP equivalence).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], torch.Tensor],
        attributes: np.ndarray | None = None,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.attributes: torch.Tensor | None = None
        if attributes is not None:
            attrs = np.asarray(attributes)
            if attrs.ndim != 2 or attrs.shape[0] != len(self.records):
                raise ValueError(f"attributes must be (N={len(self.records)}, K), got shape {attrs.shape}")
            self.attributes = torch.as_tensor(attrs, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, seed = int(key[0]), int(key[1])
        else:
            index, seed = int(key), None
        record = self.records[index]
        img = read_image(record.path)
        apply = getattr(self.transform, "with_params", None)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            image, params = apply(img) if apply is not None else (self.transform(img), None)
        item: dict[str, Any] = {
            "image": image,
            "pid": record.pid,
            "camid": record.camid,
            "index": index,
            "path": str(record.path),
        }
        if params is not None:  # train geometry, so cached heat maps can follow the crop and flip
            item["shift"] = torch.tensor(params["shift"], dtype=torch.long)  # (2,) dy, dx in pixels
            item["flipped"] = params["flipped"]
        if self.attributes is not None:
            item["attrs"] = self.attributes[index]
        return item
