"""Image records and the folder-reading logic shared by the Re-ID dataset readers.

A dataset on disk is three folders of images (train / query / gallery) whose file
names carry the identity and the camera. Each dataset module describes its names
with a :class:`DatasetLayout`; :func:`read_layout` finds the folder, parses the
names and applies the standard protocol (``sangal.data.registry.load_dataset``
picks the reader by name; this module imports no reader, so dependencies run one way):

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
from typing import Any

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


@dataclass(repr=False)
class ReIDDataset:
    """The three splits of a Re-ID dataset after the standard protocol.

    ``attributes`` holds labels that came with the dataset itself (the attribute
    columns of a CSV dataset, an AttributeTable); ``bad_images`` the (path, reason)
    pairs dropped under ``on_bad_image="skip"``.
    """

    name: str
    root: Path
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    num_train_pids: int
    attributes: Any = None
    bad_images: list[tuple[Path, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        """A header line and one line per split; never the records (a full Duke repr would be megabytes)."""
        return f"{self.name} at {self.root}\n{self.summary()}"

    __str__ = __repr__

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


def is_image_entry(path: Path) -> bool:
    """An image file by its name (.jpg/.jpeg/.png), a symlink too even when it dangles: the image check then names
    it as missing (an error, or listed under data.on_bad_image=skip) instead of a silent drop."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and (path.is_file() or path.is_symlink())


def list_images(folder: Path) -> list[Path]:
    """Image files (:func:`is_image_entry`) directly in ``folder``, sorted; other files are ignored."""
    images, skipped = [], 0
    for path in sorted(folder.iterdir()):
        if is_image_entry(path):
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


def make_records(items: list[tuple[Path, int, int]], relabel: bool) -> tuple[list[ImageRecord], int]:
    """Records from (path, raw pid, camid) under the standard protocol, and how many were dropped.

    Junk (-1) is always dropped, distractors (0) only when ``relabel`` (train); train
    pids become 0..N-1 in sorted raw-id order.
    """
    kept = [(p, pid, c) for p, pid, c in items if pid != JUNK_PID and not (relabel and pid == DISTRACTOR_PID)]
    if not relabel:
        return [ImageRecord(path=p, pid=pid, camid=c, raw_pid=pid) for p, pid, c in kept], len(items) - len(kept)
    label = {raw: i for i, raw in enumerate(sorted({pid for _, pid, _ in kept}))}
    return [ImageRecord(path=p, pid=label[pid], camid=c, raw_pid=pid) for p, pid, c in kept], len(items) - len(kept)


def build_dataset(name: str, root: Path, splits: dict[str, list[ImageRecord]], attributes: Any = None) -> ReIDDataset:
    """A ReIDDataset from its three record lists; DatasetError naming ``root`` if a split is empty."""
    empty = [s for s in SPLITS if not splits.get(s)]
    if empty:
        raise DatasetError(f"{root}: no usable {name} images in split(s) {', '.join(empty)}")
    dataset = ReIDDataset(name=name, root=Path(root), train=splits["train"], query=splits["query"],
                          gallery=splits["gallery"], num_train_pids=len({r.pid for r in splits["train"]}),
                          attributes=attributes)
    logger.info("loaded %s from %s\n" + dataset.summary(), name, root)  # the summary's lines are our own text
    return dataset


def read_split(folder: Path, layout: DatasetLayout, relabel: bool) -> list[ImageRecord]:
    """Records of one split folder under the standard protocol (see module docstring)."""
    parsed = [(path, *parse_name(path, layout)) for path in list_images(folder)]
    records, dropped = make_records(parsed, relabel)
    if dropped:
        logger.debug("%s: dropped %d junk/distractor images", folder, dropped)
    if not records:
        raise DatasetError(f"{folder}: no usable {layout.name} images (expected names like {layout.name_example})")
    return records


def read_layout(root: str | Path, layout: DatasetLayout) -> ReIDDataset:
    """Find, check and read a dataset described by ``layout`` (root may be its parent folder)."""
    folder = find_dataset_dir(root, layout)
    dirs = layout.split_dirs
    splits = {split: read_split(folder / dirs[split], layout, relabel=split == "train") for split in SPLITS}
    return build_dataset(layout.name, folder, splits)
