"""Checking files once: every image of a dataset (decodes) and every artefact's sha256, cached by file stat.

``data.on_bad_image`` decides what a bad image does: ``error`` stops with one line
naming the first bad file and the count; ``skip`` drops the bad files (train ids are
relabelled) with a one-line warning and, when given a path, writes their list there.
Results are cached per split in ``$SANGAL_CACHE_DIR`` (default
``$XDG_CACHE_HOME/sangal`` or ``~/.cache/sangal``), so a second load re-checks only
files whose size or mtime changed.

:func:`verify_sha256` is the one check of an artefact against the sha256 recorded when it was written
(checkpoints, heat-map caches, map predictors, gallery indexes, the weights cache). Hashing a ResNet-50
checkpoint or a Market-size index costs more than loading it (``benchmarks/hash_check.py``), so digests are
remembered in ``<cache>/sha256.json`` by (path, size, mtime_ns, ctime_ns, inode): a file is hashed again only
after it changes. ctime cannot be set back by hand, so even a change that restores the mtime is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from PIL import Image

from sangal.data.records import SPLITS, ImageRecord, ReIDDataset, make_records
from sangal.data.workers import default_num_workers
from sangal.errors import DatasetError, SangalError

logger = logging.getLogger(__name__)

POLICIES = ("error", "skip")
PROGRESS_THRESHOLD = 2000  # images to check before a progress bar is worth showing
CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where sangal keeps per-user caches ($SANGAL_CACHE_DIR, else the XDG cache folder)."""
    if os.environ.get("SANGAL_CACHE_DIR"):
        return Path(os.environ["SANGAL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sangal"


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks (no cache: for files just written)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: str | Path) -> str:
    """SHA-256 of a file, hashed again only when its (size, mtime_ns, ctime_ns, inode) changed."""
    key = str(Path(path).resolve())
    st = os.stat(key)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    cache = cache_dir() / "sha256.json"
    entries = _read_cache(cache)
    hit = entries.get(key)
    if isinstance(hit, list) and hit[:4] == stamp:
        return str(hit[4])
    digest = file_sha256(key)  # stamped before hashing: a change while hashing only costs a rehash later
    entries = {k: v for k, v in entries.items() if os.path.exists(k)}  # forget files that are gone
    entries[key] = [*stamp, digest]
    _write_cache(cache, entries)
    return digest


def verify_sha256(path: str | Path, expected: str, error: type[SangalError], remedy: str) -> None:
    """Raise ``error`` (one line naming the file and ``remedy``) unless the file's sha256 is ``expected``."""
    if not Path(path).is_file():
        raise error(f"{path} is missing; {remedy}")
    actual = cached_sha256(path)
    if actual != expected:
        raise error(f"{path}: sha256 {actual} differs from the {expected} recorded when it was written (the file "
                    f"is corrupt or was changed); {remedy}")


def image_problem(path: str | Path) -> str:
    """Why the image at ``path`` cannot be used ("" if it decodes fully)."""
    try:
        with Image.open(path) as img:
            img.verify()  # structure check; the object is unusable afterwards
        with Image.open(path) as img:
            img.load()  # full decode catches truncated data that verify() misses
    except FileNotFoundError:
        return "image file does not exist"
    except Exception as exc:  # PIL raises many types for broken files; all mean "bad image"
        return f"unreadable or corrupt image ({type(exc).__name__}: {exc})"
    return ""


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["entries"] if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_cache(path: Path, entries: dict) -> None:
    """Atomic (temp file + rename): a killed run never leaves half a cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump({"version": CACHE_VERSION, "entries": entries}, handle)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home must not stop training
        logger.debug("image-check cache %s not written: %s", path, exc)


def check_paths(paths: Sequence[Path], num_workers: int | None = None, cache: Path | None = None,
                desc: str = "checking images") -> list[tuple[Path, str]]:
    """(path, reason) of the unusable images among ``paths``, decoding the unchecked ones in threads."""
    entries = _read_cache(cache) if cache is not None else {}
    stats: dict[str, tuple[int, int] | None] = {}
    todo = []
    for path in paths:
        key = str(Path(path).resolve())
        try:
            st = os.stat(key)
            stats[key] = (st.st_size, st.st_mtime_ns)
        except OSError:
            stats[key] = None
            continue
        hit = entries.get(key)
        if not (hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns):
            todo.append(key)
    if todo:
        from tqdm import tqdm

        workers = max(1, num_workers if num_workers is not None else default_num_workers())
        with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without holding the GIL
            results = list(tqdm(pool.map(image_problem, todo), total=len(todo), desc=desc, unit="img",
                                disable=len(todo) < PROGRESS_THRESHOLD, leave=False))
        for key, reason in zip(todo, results):
            entries[key] = [*stats[key], reason]
        if cache is not None:
            _write_cache(cache, entries)
    bad = []
    for path in paths:
        key = str(Path(path).resolve())
        gone = "a link to a file that does not exist" if Path(path).is_symlink() else "image file does not exist"
        reason = gone if stats[key] is None else entries[key][2]
        if reason:
            bad.append((Path(path), reason))
    return bad


def _cache_file(dataset: ReIDDataset, split: str) -> Path:
    digest = hashlib.sha1(f"{Path(dataset.root).resolve()}|{dataset.name}|{split}".encode()).hexdigest()[:16]
    return cache_dir() / "image-checks" / f"{dataset.name}-{split}-{digest}.json"


def _without(records: list[ImageRecord], bad: set[Path], relabel: bool) -> list[ImageRecord]:
    kept = [r for r in records if r.path not in bad]
    if not relabel or len(kept) == len(records):
        return kept
    return make_records([(r.path, r.raw_pid, r.camid) for r in kept], relabel=True)[0]


def check_dataset(dataset: ReIDDataset, policy: str = "error", num_workers: int | None = None,
                  bad_list: Path | None = None) -> ReIDDataset:
    """Check every image of ``dataset``; apply ``policy`` ("error" or "skip") to the bad ones.

    ``skip`` returns the dataset without them (``bad_images`` lists them) and writes
    ``bad_list`` (one ``path<TAB>reason`` line each) when given.
    """
    if policy not in POLICIES:
        raise ValueError(f"on_bad_image must be one of {POLICIES}, got {policy!r}")
    bad: list[tuple[Path, str]] = []
    for split in SPLITS:
        paths = [r.path for r in dataset.split(split)]
        bad += check_paths(paths, num_workers, _cache_file(dataset, split), desc=f"checking {split} images")
    if not bad:
        return dataset
    total = sum(len(dataset.split(s)) for s in SPLITS)
    if policy == "error":
        raise DatasetError(f"{bad[0][0]}: {bad[0][1]}; {len(bad)} of {total} images are bad "
                           "(data.on_bad_image=skip drops them)")
    drop = {p for p, _ in bad}
    for split in SPLITS:
        setattr(dataset, split, _without(dataset.split(split), drop, relabel=split == "train"))
        if not dataset.split(split):
            raise DatasetError(f"{dataset.root}: every {split} image is bad (first: {bad[0][0]}: {bad[0][1]})")
    dataset.num_train_pids = len({r.pid for r in dataset.train})
    dataset.bad_images = bad
    where = ""
    if bad_list is not None:
        bad_list = Path(bad_list)
        bad_list.parent.mkdir(parents=True, exist_ok=True)
        tmp = bad_list.with_name(f".{bad_list.name}.tmp")
        tmp.write_text("".join(f"{p}\t{reason}\n" for p, reason in bad))
        os.replace(tmp, bad_list)
        where = f"; list in {bad_list}"
    logger.warning("skipped %d of %d images that are unreadable (first: %s)%s", len(bad), total, bad[0][0], where)
    return dataset
