"""Which gallery images can be decoded, checked before any is embedded (the index lists the others as skipped).

Embedding itself goes through the one test-time path, :class:`~sangal.evaluate.predictor.Predictor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sangal.data.dataset import read_image

__all__ = ["probe_images"]


class _Probe(torch.utils.data.Dataset):
    """Decodes each image once; yields the reason it is unreadable ("" when fine)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        try:
            read_image(self.paths[i])
        except Exception as exc:  # DatasetError, or anything else PIL raises: both mean "cannot use it"
            return str(exc) or type(exc).__name__
        return ""


def probe_images(paths: Sequence[Path], num_workers: int = 0) -> list[str]:
    """Per path the reason it cannot be read ("" if readable), decoding with ``num_workers`` workers."""
    loader = torch.utils.data.DataLoader(
        _Probe(paths), batch_size=64, num_workers=num_workers, collate_fn=list
    )
    return [reason for batch in loader for reason in batch]
