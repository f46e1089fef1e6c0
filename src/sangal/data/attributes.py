"""Attribute schemas and the reader for Lin et al.'s identity-level attribute files.

Source: Y. Lin, L. Zheng, Z. Zheng et al., "Improving person re-identification by
attribute and identity learning", Pattern Recognition 95 (2019): ``market_attribute.mat``
and ``duke_attribute.mat``. Each holds a struct with ``train`` and ``test``; each of
those has one uint8 row per attribute (one value per identity) and ``image_index``
(4-digit identity strings). Encoding: 1 = no / first class, 2 = yes / second class,
Market ``age`` 1..4 = young, teenager, adult, old; 0 = unlabelled (Duke train
``top`` for ids 0370 and 0679). Fields are read by name: their order differs
between ``train`` and ``test``.

Two schemas per dataset (every attribute declares its classes, so a 4-way attribute
never reaches a binary loss by accident):

* ``colour_mode="binary"`` -- one head per .mat field in the fixed order of
  ``MARKET1501_FIELDS`` / ``DUKEMTMC_FIELDS`` (Market K=27, Duke K=23); the paper's form.
* ``colour_mode="merged"`` -- the non-colour fields, then one multi-class head per
  body part (``upper_colour``, ``lower_colour``) whose classes are the colour names.
  The files claim one colour per part, but some identities have none or several
  marked: those are *unlabelled* for that head (``IGNORE_INDEX``), not guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sangal import choices
from sangal.data.records import DISTRACTOR_PID, ImageRecord
from sangal.errors import AttributeFileError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -1
COLOUR_MODES = choices.COLOUR_MODES
REGIONS = ("hat", "hair", "upper", "lower", "backpack", "bag", "handbag", "shoes", "body")
FILE_SPLITS = ("train", "test")
_SPLIT_ALIASES = {"train": "train", "test": "test", "query": "test", "gallery": "test"}
_NO_YES = ("no", "yes")

# (field, classes, region) in the fixed head order of the binary schema.
MARKET1501_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("gender", ("male", "female"), "body"),
    ("hair", ("short", "long"), "hair"),
    ("up", ("long sleeve", "short sleeve"), "upper"),
    ("down", ("long", "short"), "lower"),
    ("clothes", ("dress", "pants"), "lower"),
    ("hat", _NO_YES, "hat"),
    ("backpack", _NO_YES, "backpack"),
    ("bag", _NO_YES, "bag"),
    ("handbag", _NO_YES, "handbag"),
    ("age", ("young", "teenager", "adult", "old"), "body"),
    *((f"up{c}", _NO_YES, "upper") for c in ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")),
    *(
        (f"down{c}", _NO_YES, "lower")
        for c in ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
    ),
)
DUKEMTMC_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("backpack", _NO_YES, "backpack"),
    ("bag", _NO_YES, "bag"),
    ("handbag", _NO_YES, "handbag"),
    ("boots", _NO_YES, "shoes"),
    ("gender", ("male", "female"), "body"),
    ("hat", _NO_YES, "hat"),
    ("shoes", ("dark", "light"), "shoes"),
    ("top", ("short", "long"), "upper"),
    *((f"up{c}", _NO_YES, "upper") for c in ("black", "white", "red", "purple", "gray", "blue", "green", "brown")),
    *((f"down{c}", _NO_YES, "lower") for c in ("black", "white", "red", "gray", "blue", "green", "brown")),
)
_FIELDS = {"market1501": MARKET1501_FIELDS, "dukemtmc": DUKEMTMC_FIELDS}
_STRUCT_NAMES = {"market1501": "market_attribute", "dukemtmc": "duke_attribute"}
_DATASET_ALIASES = {"market1501": "market1501", "synthetic": "market1501", "dukemtmc": "dukemtmc"}
# merged head name -> .mat field prefix of its colour one-hots
_COLOUR_GROUPS = (("upper_colour", "up", "upper"), ("lower_colour", "down", "lower"))


@dataclass(frozen=True)
class Attribute:
    """One classification head: its name, class names (index = label) and body region."""

    name: str
    classes: tuple[str, ...]
    region: str  # hat|hair|upper|lower|backpack|bag|handbag|shoes|body

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class AttributeSchema:
    """The ordered attribute heads of one dataset in one colour mode."""

    dataset: str
    colour_mode: str
    attributes: tuple[Attribute, ...]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def num_classes(self) -> list[int]:
        return [a.num_classes for a in self.attributes]

    def index(self, name: str) -> int:
        """Position of attribute ``name``; KeyError listing the names if absent."""
        for i, attribute in enumerate(self.attributes):
            if attribute.name == name:
                return i
        raise KeyError(f"no attribute {name!r} in the {self.dataset}/{self.colour_mode} schema; have {self.names}")

    def __len__(self) -> int:
        return len(self.attributes)


def _colour_fields(dataset: str, prefix: str) -> list[str]:
    return [f for f, _, _ in _FIELDS[dataset] if f.startswith(prefix) and f not in ("up", "down")]


def _canonical(dataset: str) -> str:
    if dataset not in _DATASET_ALIASES:
        choices = ", ".join(_DATASET_ALIASES)
        raise AttributeFileError(f"no attribute schema for dataset {dataset!r}; choose one of {choices}")
    return _DATASET_ALIASES[dataset]


def schema_name(dataset: str) -> str:
    """The attribute schema a dataset's labels follow (``data.dataset``): Duke's for DukeMTMC-reID, Market's for
    every other set (Market-1501, the synthetic set, and sets labelled with Market's schema: CSV, pseudo-labels)."""
    return "dukemtmc" if dataset == "dukemtmc" else "market1501"


@lru_cache(maxsize=None)
def get_schema(dataset: str, colour_mode: str = "binary") -> AttributeSchema:
    """Schema of ``dataset`` ("market1501", "dukemtmc"; "synthetic" = market1501)."""
    dataset = _canonical(dataset)
    if colour_mode not in COLOUR_MODES:
        raise AttributeFileError(f"unknown colour_mode {colour_mode!r}; choose one of {', '.join(COLOUR_MODES)}")
    fields = _FIELDS[dataset]
    if colour_mode == "binary":
        attributes = tuple(Attribute(f, classes, region) for f, classes, region in fields)
        return AttributeSchema(dataset, colour_mode, attributes)
    colour = {f for _, prefix, _ in _COLOUR_GROUPS for f in _colour_fields(dataset, prefix)}
    heads = [Attribute(f, classes, region) for f, classes, region in fields if f not in colour]
    for name, prefix, region in _COLOUR_GROUPS:
        names = tuple(f[len(prefix) :] for f in _colour_fields(dataset, prefix))
        heads.append(Attribute(name, names, region))
    return AttributeSchema(dataset, colour_mode, tuple(heads))


@dataclass
class AttributeTable:
    """Identity-level labels of one attribute file under one schema.

    ``raw[split][field]`` keeps the file's values (uint8, in ``raw_ids[split]`` order)
    for code that needs the original encoding.
    """

    schema: AttributeSchema
    labels: dict[str, dict[int, np.ndarray]]  # split ("train"/"test") -> raw pid -> (K,) int64
    path: Path | None = None
    raw: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    raw_ids: dict[str, np.ndarray] = field(default_factory=dict)

    def _split(self, split: str) -> dict[int, np.ndarray]:
        if split not in _SPLIT_ALIASES:
            raise ValueError(f"unknown split {split!r}; expected train, test, query or gallery")
        return self.labels[_SPLIT_ALIASES[split]]

    def lookup(self, split: str, raw_pid: int) -> np.ndarray:
        """(K,) labels of identity ``raw_pid``; "query"/"gallery" read the "test" split."""
        table = self._split(split)
        if raw_pid not in table:
            raise AttributeFileError(
                f"{self.path or 'attribute table'}: identity {raw_pid:04d} is not in the "
                f"{_SPLIT_ALIASES[split]} split ({len(table)} ids)"
            )
        return table[raw_pid]

    def labels_for(self, records: Iterable[ImageRecord], split: str) -> np.ndarray:
        """(N, K) int64 labels of ``records`` by ``raw_pid``; distractors (pid 0) get IGNORE_INDEX.

        AttributeFileError listing the missing identities if any other id is absent.
        """
        table = self._split(split)
        records = list(records)
        missing = sorted({r.raw_pid for r in records if r.raw_pid != DISTRACTOR_PID and r.raw_pid not in table})
        if missing:
            raise AttributeFileError(
                f"{self.path or 'attribute table'}: {len(missing)} identities of the {split} images are not "
                f"in the {_SPLIT_ALIASES[split]} split: {_id_list(missing)}"
            )
        out = np.full((len(records), len(self.schema)), IGNORE_INDEX, dtype=np.int64)
        for i, r in enumerate(records):
            if r.raw_pid != DISTRACTOR_PID:
                out[i] = table[r.raw_pid]
        return out


def _id_list(ids: list[int], limit: int = 10) -> str:
    shown = ", ".join(f"{i:04d}" for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


# ---------------------------------------------------------------- .mat reading


def _struct_field(struct: Any, name: str) -> Any | None:
    """Field ``name`` of a loadmat struct (a (1, 1) structured array), or None."""
    names = struct.dtype.names or ()
    if name not in names:
        return None
    value = struct[name]
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def _parse_ids(raw: Any, where: str) -> np.ndarray:
    arr = np.asarray(raw)
    items = list(arr.reshape(-1)) if arr.dtype.kind in "OUSiuf" else []
    ids = []
    for item in items:
        while isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size == 1 else "".join(map(str, item.reshape(-1)))
        try:
            number = isinstance(item, (int, float, np.integer, np.floating))
            ids.append(int(item) if number and float(item).is_integer() else int(str(item).strip()))
        except ValueError:
            raise AttributeFileError(f"{where}: image_index entry {item!r} is not an identity number") from None
    if not ids:
        raise AttributeFileError(f"{where}: image_index is empty or not a list of identity strings")
    out = np.asarray(ids, dtype=np.int64)
    uniq, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        raise AttributeFileError(f"{where}: image_index repeats identities {_id_list(uniq[counts > 1].tolist())}")
    return out


def _read_split(struct: Any, split: str, dataset: str, where: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    node = _struct_field(struct, split)
    if node is None or not isinstance(node, np.ndarray) or node.dtype.names is None:
        raise AttributeFileError(f"{where}: missing split struct {split!r}")
    here = f"{where} ({split})"
    index = _struct_field(node, "image_index")
    if index is None:
        raise AttributeFileError(f"{here}: missing field 'image_index'; found {', '.join(node.dtype.names)}")
    ids = _parse_ids(index, here)
    raw: dict[str, np.ndarray] = {}
    for name, classes, _ in _FIELDS[dataset]:
        value = _struct_field(node, name)
        if value is None:
            raise AttributeFileError(f"{here}: missing attribute field {name!r}; found {', '.join(node.dtype.names)}")
        values = np.asarray(value).reshape(-1)
        if values.dtype.kind not in "iuf" or values.size != ids.size:
            raise AttributeFileError(
                f"{here}: field {name!r} has {values.size} {values.dtype} values "
                f"for {ids.size} identities in image_index"
            )
        bad = (values < 0) | (values > len(classes)) | (values != np.round(values))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise AttributeFileError(
                f"{here}: field {name!r} has value {values[j]} for identity {ids[j]:04d}; "
                f"expected 1..{len(classes)} (or 0 = unlabelled)"
            )
        raw[name] = values.astype(np.uint8)
    return ids, raw


def encode_labels(raw: dict[str, np.ndarray], schema: AttributeSchema) -> np.ndarray:
    """(N, K) int64 labels from a split's raw file values (1-based, 0 = unlabelled)."""
    n = len(next(iter(raw.values())))
    out = np.full((n, len(schema)), IGNORE_INDEX, dtype=np.int64)
    groups = {name: prefix for name, prefix, _ in _COLOUR_GROUPS}
    for k, attribute in enumerate(schema.attributes):
        if schema.colour_mode == "merged" and attribute.name in groups:
            fields = [groups[attribute.name] + c for c in attribute.classes]
            onehot = np.stack([raw[f] for f in fields], axis=1)
            marked = onehot == 2
            clean = (marked.sum(axis=1) == 1) & (onehot != 0).all(axis=1)
            out[clean, k] = marked[clean].argmax(axis=1)
        else:
            values = raw[attribute.name].astype(np.int64)
            out[:, k] = np.where(values == 0, IGNORE_INDEX, values - 1)
    return out


def _infer_dataset(mat: dict[str, Any], where: str) -> str:
    found = [k for k in mat if not k.startswith("__")]
    for dataset, struct in _STRUCT_NAMES.items():
        if struct in mat:
            return dataset
    raise AttributeFileError(
        f"{where}: no 'market_attribute' or 'duke_attribute' struct; found variables {found or 'none'}"
    )


def read_attribute_mat(
    path: str | Path, dataset: str | None = None, colour_mode: str = "binary"
) -> AttributeTable:
    """Read a Lin et al. attribute file into labels under ``get_schema(dataset, colour_mode)``.

    ``dataset`` is inferred from the struct name when None. AttributeFileError naming the
    file and the split/field/identity for anything malformed.
    """
    import scipy.io

    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise AttributeFileError(f"{where}: attribute file does not exist")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError/... for non-.mat input
        raise AttributeFileError(f"{where}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from None
    dataset = _canonical(dataset) if dataset is not None else _infer_dataset(mat, where)
    schema = get_schema(dataset, colour_mode)
    struct_name = _STRUCT_NAMES[dataset]
    struct = mat.get(struct_name)
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None:
        found = [k for k in mat if not k.startswith("__")]
        raise AttributeFileError(
            f"{where}: no {struct_name!r} struct for dataset {dataset}; found variables {found or 'none'}"
        )
    table = AttributeTable(schema=schema, labels={}, path=path)
    for split in FILE_SPLITS:
        ids, raw = _read_split(struct, split, dataset, where)
        encoded = encode_labels(raw, schema)
        table.raw[split] = raw
        table.raw_ids[split] = ids
        table.labels[split] = {int(pid): row for pid, row in zip(ids, encoded)}
        ignored = (encoded == IGNORE_INDEX).sum(axis=0)
        for k in np.flatnonzero(ignored):
            logger.info("%s (%s): %d ids unlabelled for %s", path.name, split, ignored[k], schema.names[k])
    return table
