"""``load_dataset``: the dataset readers by name, and the image check every load goes through.

Each reader returns a :class:`~sangal.data.records.ReIDDataset` under the same protocol
and raises :class:`~sangal.errors.DatasetError` naming the file or folder at fault.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from sangal.data.cuhk03np import read_cuhk03np
from sangal.data.custom import read_csv_dataset, read_folder_dataset
from sangal.data.dukemtmc import read_dukemtmc
from sangal.data.market1501 import SYNTHETIC_LAYOUT, read_market1501
from sangal.data.msmt17 import read_msmt17
from sangal.data.records import ReIDDataset, read_layout
from sangal.data.verify import check_dataset
from sangal.errors import DatasetError

#: One reader per name of :data:`sangal.choices.DATASETS` (held equal by tests/data/test_registry.py).
READERS: dict[str, Callable[[str | Path], ReIDDataset]] = {
    "market1501": read_market1501,
    "dukemtmc": read_dukemtmc,
    "synthetic": partial(read_layout, layout=SYNTHETIC_LAYOUT),
    "msmt17": read_msmt17,
    "cuhk03np_detected": partial(read_cuhk03np, variant="detected"),
    "cuhk03np_labeled": partial(read_cuhk03np, variant="labeled"),
    "csv": read_csv_dataset,
    "folder": read_folder_dataset,
}


def load_dataset(name: str, root: str | Path, on_bad_image: str | None = None, num_workers: int | None = None,
                 bad_list: Path | None = None) -> ReIDDataset:
    """Read dataset ``name`` from ``root`` (a folder, its parent, or a CSV file for ``csv``).

    ``on_bad_image`` ("error" or "skip") checks every image once (cached by size and
    mtime, see :mod:`sangal.data.verify`); None skips the check (a bad file then fails
    when it is loaded). ``bad_list``: where ``skip`` writes the dropped files.
    """
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(READERS)}")
    dataset = READERS[name](root)
    if on_bad_image is not None:
        dataset = check_dataset(dataset, on_bad_image, num_workers=num_workers, bad_list=bad_list)
    return dataset
