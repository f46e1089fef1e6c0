"""The dataset readers: one per allowed ``data.dataset`` name."""

from __future__ import annotations

from sangal import choices
from sangal.data.registry import READERS


def test_there_is_one_reader_per_allowed_dataset_name() -> None:
    assert sorted(READERS) == sorted(choices.DATASETS)
