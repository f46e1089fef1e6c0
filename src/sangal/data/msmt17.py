"""MSMT17 reader (V1 and V2), from its ``list_*.txt`` files.

Reference: L. Wei, S. Zhang, W. Gao, Q. Tian, "Person Transfer GAN to Bridge Domain
Gap for Person Re-Identification", CVPR 2018.

Facts (4,101 identities, 15 cameras; no junk or distractor images):

* train: 1,041 ids, 32,621 images = ``list_train.txt`` (30,248) + ``list_val.txt``
  (2,373), the paper's training set;
* query: 3,060 ids, 11,659 images (``list_query.txt``);
* gallery: 3,060 ids, 82,161 images (``list_gallery.txt``).

Expected folder tree (the root may also be the folder that contains it)::

    MSMT17_V1/                         MSMT17_V2/
        train/0000/0000_000_01_0303morning_0015_0.jpg ...   mask_train_v2/...
        test/0000/...                                       mask_test_v2/...
        list_train.txt list_val.txt list_query.txt list_gallery.txt

List lines: ``<path under train|test> <id>``, e.g. ``0000/0000_000_01_0303morning_0015_0.jpg 0``.
The third ``_`` field of the file name is the camera (01..15). Ids in the lists start
at 0, which sangal reserves for distractors, so ``raw_pid = list id + 1`` (the
attribute-lookup key, e.g. for pseudo-labels); train ids are relabelled as usual.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sangal.data.records import ReIDDataset, build_dataset, make_records
from sangal.errors import DatasetError, read_text

logger = logging.getLogger(__name__)

NUM_CAMERAS = 15
# image folders (train lists, test lists) per release
IMAGE_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
LISTS = {"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",),
         "gallery": ("list_gallery.txt",)}
DIR_NAMES = ("MSMT17_V1", "MSMT17_V2", "MSMT17")


def find_msmt17_dir(root: str | Path) -> Path:
    """The folder holding ``list_train.txt``: ``root`` or one of its subfolders (DatasetError otherwise)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: msmt17 dataset folder does not exist or is not a folder")
    if (root / "list_train.txt").is_file():
        return root
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "list_train.txt").is_file())
    if len(found) > 1:
        raise DatasetError(f"{root}: several MSMT17 folders ({', '.join(p.name for p in found)}); "
                           "pass the one to use as data.root")
    if not found:
        raise DatasetError(f"{root}: no list_train.txt here or in a subfolder (usually {' or '.join(DIR_NAMES)})")
    return found[0]


def parse_list(path: Path, image_dir: Path) -> list[tuple[Path, int, int]]:
    """(image path, raw pid = list id + 1, 0-based camid) per line; DatasetError naming file:line."""
    if not path.is_file():
        raise DatasetError(f"{path}: MSMT17 list file is missing")
    items = []
    for number, line in enumerate(read_text(path, DatasetError, "MSMT17 list file").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{path}:{number}"
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{where}: expected '<image path> <id>' "
                               f"(e.g. 0000/0000_000_01_0303morning_0015_0.jpg 0), got {line.strip()!r}")
        parts = Path(fields[0]).name.split("_")
        if len(parts) < 3 or not parts[2].isdigit() or not 1 <= int(parts[2]) <= NUM_CAMERAS:
            raise DatasetError(f"{where}: no camera 01..{NUM_CAMERAS} in the third '_' field of {fields[0]!r}")
        items.append((image_dir / fields[0], int(fields[1]) + 1, int(parts[2]) - 1))
    if not items:
        raise DatasetError(f"{path}: MSMT17 list file is empty")
    return items


def read_msmt17(root: str | Path) -> ReIDDataset:
    """MSMT17 V1 or V2 from its folder (or the folder that contains it)."""
    folder = find_msmt17_dir(root)
    dirs = next((d for d in IMAGE_DIRS if all((folder / x).is_dir() for x in d)), None)
    if dirs is None:
        wanted = " or ".join("/".join(d) for d in IMAGE_DIRS)
        raise DatasetError(f"{folder}: no MSMT17 image folders ({wanted})")
    splits = {}
    for split, names in LISTS.items():
        image_dir = folder / (dirs[0] if split == "train" else dirs[1])
        items = [item for name in names for item in parse_list(folder / name, image_dir)]
        splits[split] = make_records(items, relabel=split == "train")[0]
    return build_dataset("msmt17", folder, splits)
