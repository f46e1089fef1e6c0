"""Your own data: a CSV file or a plain folder tree, read under the same contract as Market.

**CSV** (``data.dataset=csv data.root=FILE.csv``): a header, then one row per image::

    path,pid,camid,split[,<attribute>...]
    images/0001_a.jpg,1,0,train,male,short,...

* ``path``: absolute, or relative to the CSV file's folder;
* ``pid``: integer identity; ``0`` = distractor (kept in the gallery, dropped from
  train), ``-1`` = junk (dropped);
* ``camid``: 0-based camera index (use 0 everywhere for a single camera);
* ``split``: ``train``, ``query`` or ``gallery``;
* optional attribute columns named after the market1501 schema (``gender, hair, up,
  ...`` for ``colour_mode=binary``, or ``upper_colour, lower_colour`` for ``merged``),
  valued by class name (``male``, ``yes``) or 0-based class index; empty = unlabelled.
  Labels are per identity, so every row of one identity must agree.

**Folder** (``data.dataset=folder data.root=DIR``)::

    DIR/train/<pid>/<anything>.jpg   DIR/query/<pid>/...   DIR/gallery/<pid>/...

``<pid>`` folders are integers (``0`` = distractors, ``-1`` = junk). The camera is the
number of a ``c<N>`` or ``cam<N>`` token in the file name (between ``_ - .`` or the
ends: ``0001_c2_f77.jpg``, ``cam3-0004.png``) and becomes ``camid = N - 1``; when no
file has such a token the whole set is one camera (camid 0).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import numpy as np

from sangal.data.attributes import IGNORE_INDEX, AttributeTable, get_schema
from sangal.data.records import SPLITS, ReIDDataset, build_dataset, is_image_entry, make_records
from sangal.errors import DatasetError, read_text

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "pid", "camid", "split")
CAMERA_TOKEN = re.compile(r"(?:^|[_\-. ])c(?:am)?(\d+)(?=$|[_\-. ])", re.IGNORECASE)
SCHEMA_DATASET = "market1501"  # custom sets use the Market-1501 attribute schema (as the synthetic set does)


def _int(text: str, what: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DatasetError(f"{where}: {what} must be an integer, got {text!r}") from None


def _attribute_schema(columns: list[str], path: Path):
    """The schema whose names include every attribute column (binary tried first); DatasetError otherwise."""
    for mode in ("binary", "merged"):
        schema = get_schema(SCHEMA_DATASET, mode)
        if set(columns) <= set(schema.names):
            return schema
    names = get_schema(SCHEMA_DATASET, "binary").names
    unknown = [c for c in columns if c not in names]
    raise DatasetError(f"{path}: unknown column(s) {', '.join(unknown)}; columns are {', '.join(CSV_COLUMNS)} and "
                       f"attributes of the {SCHEMA_DATASET} schema ({', '.join(names)}; or upper_colour/lower_colour)")


def _class_index(value: str, classes: tuple[str, ...], column: str, where: str) -> int:
    text = value.strip()
    if text == "":
        return IGNORE_INDEX
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise DatasetError(f"{where}: {column}={text!r} is not one of {', '.join(classes)} (or 0..{len(classes) - 1})")


def read_csv_dataset(path: str | Path) -> ReIDDataset:
    """A dataset described by a CSV file (format in the module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: CSV dataset file does not exist (data.dataset=csv wants data.root=FILE.csv)")
    try:
        reader = csv.reader(io.StringIO(read_text(path, DatasetError, "CSV dataset file"), newline=""))
        header = [h.strip() for h in next(reader, [])]
        rows = list(reader)
    except csv.Error as exc:
        raise DatasetError(f"CSV dataset file {path} is not a CSV table ({exc})") from None
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} in the header "
                           f"(expected {','.join(CSV_COLUMNS)}[,attributes...]); found {','.join(header) or 'nothing'}")
    attr_cols = [h for h in header if h not in CSV_COLUMNS]
    schema = _attribute_schema(attr_cols, path) if attr_cols else None
    col = {h: i for i, h in enumerate(header)}
    items: dict[str, list[tuple[Path, int, int]]] = {s: [] for s in SPLITS}
    labels: dict[str, dict[int, np.ndarray]] = {"train": {}, "test": {}}
    first_row: dict[tuple[str, int], int] = {}
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{number}"
        if len(row) != len(header):
            raise DatasetError(f"{where}: {len(row)} fields, the header has {len(header)}")
        split = row[col["split"]].strip()
        if split not in SPLITS:
            raise DatasetError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        pid = _int(row[col["pid"]], "pid", where)
        camid = _int(row[col["camid"]], "camid", where)
        if pid < -1 or camid < 0:
            raise DatasetError(f"{where}: pid must be >= -1 (-1 = junk) and camid >= 0, got pid {pid}, camid {camid}")
        image = Path(row[col["path"]].strip()).expanduser()
        items[split].append((image if image.is_absolute() else path.parent / image, pid, camid))
        if schema is None or pid <= 0:
            continue
        values = np.full(len(schema), IGNORE_INDEX, dtype=np.int64)
        for name in attr_cols:
            k = schema.index(name)
            values[k] = _class_index(row[col[name]], schema.attributes[k].classes, name, where)
        file_split = "train" if split == "train" else "test"
        known = labels[file_split].get(pid)
        if known is not None and not np.array_equal(known, values):
            k = int(np.flatnonzero(known != values)[0])
            raise DatasetError(f"{where}: identity {pid} has {schema.names[k]} different from its row "
                               f"{first_row[(file_split, pid)]} (attributes are per identity)")
        labels[file_split][pid] = values
        first_row.setdefault((file_split, pid), number)
    splits = {s: make_records(items[s], relabel=s == "train")[0] for s in SPLITS}
    table = AttributeTable(schema=schema, labels=labels, path=path) if schema is not None else None
    return build_dataset("csv", path, splits, attributes=table)


def camera_of(name: str) -> int | None:
    """0-based camera of a file name's ``c<N>``/``cam<N>`` token, or None if it has none."""
    match = CAMERA_TOKEN.search(Path(name).stem)
    return int(match.group(1)) - 1 if match else None


def read_folder_dataset(root: str | Path) -> ReIDDataset:
    """A dataset in ``<root>/<split>/<pid>/<image>`` folders (format in the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: folder dataset does not exist or is not a folder")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        found = ", ".join(sorted(p.name for p in root.iterdir())) or "nothing"
        raise DatasetError(f"{root}: missing split folder(s) {', '.join(missing)} "
                           f"(expected {root}/<train|query|gallery>/<pid>/<image>); found: {found}")
    found_items: dict[str, list[tuple[Path, int, int | None]]] = {}
    for split in SPLITS:
        found_items[split] = []
        for pid_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            pid = _int(pid_dir.name, "identity folder name", str(pid_dir))
            for image in sorted(p for p in pid_dir.rglob("*") if is_image_entry(p)):
                found_items[split].append((image, pid, camera_of(image.name)))
    every = [item for split in SPLITS for item in found_items[split]]
    with_cam = [item for item in every if item[2] is not None]
    if with_cam and len(with_cam) < len(every):
        bad = next(item[0] for item in every if item[2] is None)
        raise DatasetError(f"{bad}: no camera token (c<N> or cam<N>) in the file name, but other files have one; "
                           "name every file with its camera or none (one camera)")
    if with_cam and min(item[2] for item in with_cam) < 0:
        bad = next(item[0] for item in with_cam if item[2] < 0)
        raise DatasetError(f"{bad}: camera numbers start at 1 (c1 -> camid 0)")
    if not with_cam:
        logger.info("%s: no camera token in any file name; one camera for the whole set", root)
    splits = {s: make_records([(p, pid, cam or 0) for p, pid, cam in found_items[s]], relabel=s == "train")[0]
              for s in SPLITS}
    return build_dataset("folder", root, splits)
