"""Image records and the folder-reading logic shared by the Re-ID dataset readers.

A dataset on disk is three folders of images (train / query / gallery) whose file
names carry the identity and the camera. Each dataset module describes its names
with a :class:`DatasetLayout`; :func:`read_layout` finds the folder, parses the
names and applies the standard protocol:

* pid ``-1`` (junk) is dropped everywhere;
* pid ``0`` (distractor) is kept in query/gallery and dropped from train
  (a distractor is not an identity to learn);
* camera ``cN`` becomes ``camid = N - 1``;
* train pids are relabelled ``0..N-1`` in sorted raw-id order (``raw_pid`` kept).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from sangal.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JUNK_PID = -1
DISTRACTOR_PID = 0
SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class ImageRecord:
    """One image: where it is, whom it shows and which camera took it."""

    path: Path
    pid: int  # train: relabelled 0..N-1; query/gallery: raw id (0 = distractor)
    camid: int  # 0-based camera index (file name c1 -> 0)
    raw_pid: int  # id as in the file name (attribute lookup key)


@dataclass
class ReIDDataset:
    """The three splits of a Re-ID dataset after the standard protocol."""

    name: str
    root: Path
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    num_train_pids: int

    def split(self, split: str) -> list[ImageRecord]:
        """Records of ``split`` ("train", "query" or "gallery")."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)

    def summary(self) -> str:
        """One line per split: ``train | 751 ids | 12936 images | 6 cameras``."""
        lines = []
        for split in SPLITS:
            records = self.split(split)
            ids = len({r.pid for r in records})
            cams = len({r.camid for r in records})
            lines.append(f"{split:<7} | {ids} ids | {len(records)} images | {cams} cameras")
        return "\n".join(lines)


@dataclass(frozen=True)
class DatasetLayout:
    """How one dataset names its split folders and image files.

    ``pattern`` is matched against the file stem and must define the named groups
    ``pid`` and ``cam``. ``max_camera`` (1-based), when set, rejects names with a
    camera the dataset does not have. ``dir_names`` are the usual names of the
    dataset folder, used only in messages.
    """

    name: str
    pattern: re.Pattern[str]
    name_example: str
    split_dirs: dict[str, str] = field(
        default_factory=lambda: {
            "train": "bounding_box_train",
            "query": "query",
            "gallery": "bounding_box_test",
        }
    )
    max_camera: int | None = None
    dir_names: tuple[str, ...] = ()


def parse_name(path: Path, layout: DatasetLayout) -> tuple[int, int]:
    """(raw pid, 0-based camid) from an image file name; DatasetError naming the file if it does not fit."""
    match = layout.pattern.fullmatch(path.stem)
    if match is None:
        raise DatasetError(
            f"{path}: file name does not follow the {layout.name} pattern "
            f"(expected names like {layout.name_example})"
        )
    pid = int(match.group("pid"))
    cam = int(match.group("cam"))
    if pid < JUNK_PID:
        raise DatasetError(f"{path}: negative identity {pid} in file name (only -1 = junk is allowed)")
    if cam < 1 or (layout.max_camera is not None and cam > layout.max_camera):
        limit = f"1..{layout.max_camera}" if layout.max_camera is not None else ">= 1"
        raise DatasetError(f"{path}: camera c{cam} in file name is outside {layout.name}'s cameras ({limit})")
    return pid, cam - 1


def list_images(folder: Path) -> list[Path]:
    """Image files (.jpg/.jpeg/.png) directly in ``folder``, sorted; other files are ignored."""
    images, skipped = [], 0
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            skipped += 1
    if skipped:
        logger.debug("%s: ignored %d non-image entries", folder, skipped)
    return images


def _has_any_split(folder: Path, layout: DatasetLayout) -> bool:
    return any((folder / d).is_dir() for d in layout.split_dirs.values())


def _has_all_splits(folder: Path, layout: DatasetLayout) -> bool:
    return all((folder / d).is_dir() for d in layout.split_dirs.values())


def _listing(folder: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "nothing (empty folder)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def find_dataset_dir(root: str | Path, layout: DatasetLayout) -> Path:
    """The folder holding the split folders: ``root`` itself or one of its direct subfolders.

    Hidden subfolders (such as a generator's temporary folder) are not considered.

    DatasetError when ``root`` does not exist, when a split is missing (naming the
    folder and listing what is there), or when several subfolders qualify.
    """
    root = Path(root).expanduser()
    wanted = ", ".join(layout.split_dirs.values())
    if not root.is_dir():
        raise DatasetError(f"{root}: {layout.name} dataset folder does not exist or is not a folder")
    if _has_any_split(root, layout):
        folder = root
    else:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        complete = [p for p in subdirs if _has_all_splits(p, layout)]
        partial = [p for p in subdirs if _has_any_split(p, layout)]
        candidates = complete or partial
        if len(candidates) > 1:
            raise DatasetError(
                f"{root}: several subfolders look like {layout.name} datasets "
                f"({', '.join(p.name for p in candidates)}); pass the one to use as the dataset root"
            )
        if not candidates:
            usual = f" (usually {' or '.join(layout.dir_names)})" if layout.dir_names else ""
            raise DatasetError(
                f"{root}: no {layout.name} split folders ({wanted}) here or in a subfolder{usual}; "
                f"found: {_listing(root)}"
            )
        folder = candidates[0]
        logger.info("using %s as the %s dataset folder", folder, layout.name)
    missing = [d for d in layout.split_dirs.values() if not (folder / d).is_dir()]
    if missing:
        raise DatasetError(
            f"{folder}: missing {layout.name} split folder(s) {', '.join(missing)} "
            f"(expected {wanted}); found: {_listing(folder)}"
        )
    return folder


def read_split(folder: Path, layout: DatasetLayout, relabel: bool) -> list[ImageRecord]:
    """Records of one split folder under the standard protocol (see module docstring)."""
    parsed = []
    junk = 0
    for path in list_images(folder):
        pid, camid = parse_name(path, layout)
        if pid == JUNK_PID or (relabel and pid == DISTRACTOR_PID):
            junk += 1
            continue
        parsed.append((path, pid, camid))
    if junk:
        logger.debug("%s: dropped %d junk/distractor images", folder, junk)
    if not parsed:
        raise DatasetError(f"{folder}: no usable {layout.name} images (expected names like {layout.name_example})")
    if not relabel:
        return [ImageRecord(path=p, pid=pid, camid=c, raw_pid=pid) for p, pid, c in parsed]
    label = {raw: i for i, raw in enumerate(sorted({pid for _, pid, _ in parsed}))}
    return [ImageRecord(path=p, pid=label[pid], camid=c, raw_pid=pid) for p, pid, c in parsed]


def read_layout(root: str | Path, layout: DatasetLayout) -> ReIDDataset:
    """Find, check and read a dataset described by ``layout`` (root may be its parent folder)."""
    folder = find_dataset_dir(root, layout)
    dirs = layout.split_dirs
    train = read_split(folder / dirs["train"], layout, relabel=True)
    query = read_split(folder / dirs["query"], layout, relabel=False)
    gallery = read_split(folder / dirs["gallery"], layout, relabel=False)
    dataset = ReIDDataset(
        name=layout.name,
        root=folder,
        train=train,
        query=query,
        gallery=gallery,
        num_train_pids=len({r.pid for r in train}),
    )
    logger.info("loaded %s from %s\n%s", layout.name, folder, dataset.summary())
    return dataset


def load_dataset(name: str, root: str | Path) -> ReIDDataset:
    """Read dataset ``name`` ("market1501", "dukemtmc" or "synthetic") from ``root`` or its parent."""
    from sangal.data.dukemtmc import DUKEMTMC_LAYOUT
    from sangal.data.market1501 import MARKET1501_LAYOUT, SYNTHETIC_LAYOUT

    layouts = {"market1501": MARKET1501_LAYOUT, "dukemtmc": DUKEMTMC_LAYOUT, "synthetic": SYNTHETIC_LAYOUT}
    if name not in layouts:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(layouts)}")
    return read_layout(root, layouts[name])
