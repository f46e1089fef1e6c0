"""The real attribute statistics that the ``real`` synthetic style draws its labels from.

Source: Lin et al.'s identity labels, ``market_attribute.mat`` train + test (1,501 identities), the
schema the generator writes. The model is a small chain of conditionals, sampled in the order of
``NODES``; each node's table counts the identities per class for every combination of its parents'
classes. The structure keeps the co-occurrences that carry most mutual information in the file:
gender -> hair, gender -> dress, (dress, age) -> lower length, (gender, age) -> what is carried
(backpack, bag and handbag exclude each other in Market and in Duke: one ``carry`` node),
gender -> upper colour, (gender, dress) -> lower colour. Colours are one node per body part: one
named colour or ``other`` (no colour marked: a shade outside the list, 10 % of upper, 5 % of lower
garments). ``estimate_counts`` recomputes ``COUNTS`` from the file (tests/synthetic/test_stats.py).
Duke (``duke_attribute.mat``) adds one figure the Market schema lacks: how many people wear light shoes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

UPPER_NAMES = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
LOWER_NAMES = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
CARRY = ("none", "backpack", "bag", "handbag")


@dataclass(frozen=True)
class Node:
    """One sampled variable: its classes (index = value) and the earlier nodes it depends on."""

    name: str
    classes: tuple[str, ...]
    parents: tuple[str, ...] = ()


NODES: tuple[Node, ...] = (
    Node("gender", ("male", "female")),
    Node("age", ("young", "teenager", "adult", "old")),
    Node("hair", ("short", "long"), ("gender",)),
    Node("clothes", ("dress", "pants"), ("gender",)),
    Node("down", ("long", "short"), ("clothes", "age")),
    Node("up", ("long sleeve", "short sleeve"), ("gender",)),
    Node("hat", ("no", "yes")),
    Node("carry", CARRY, ("gender", "age")),
    Node("upper_colour", (*UPPER_NAMES, "other"), ("gender",)),
    Node("lower_colour", (*LOWER_NAMES, "other"), ("gender", "clothes")),
)

#: Identities per class, keyed by node and then by the parents' class indices (regenerate with
#: ``estimate_counts(read_market_fields(path))``; parent combinations without identities are absent).
COUNTS: dict[str, dict[tuple[int, ...], tuple[int, ...]]] = {
    "gender": {(): (845, 656)},
    "age": {(): (16, 1209, 263, 13)},
    "hair": {(0,): (840, 5), (1,): (141, 515)},
    "clothes": {(0,): (0, 845), (1,): (195, 461)},
    "down": {(0, 0): (0, 4), (0, 1): (20, 136), (0, 2): (4, 30), (0, 3): (1, 0),
             (1, 0): (5, 7), (1, 1): (328, 725), (1, 2): (187, 42), (1, 3): (11, 1)},
    "up": {(0,): (23, 822), (1,): (61, 595)},
    "hat": {(): (1458, 43)},
    "carry": {(0, 0): (10, 0, 0, 0), (0, 1): (292, 244, 84, 40), (0, 2): (80, 7, 46, 33), (0, 3): (8, 0, 1, 0),
              (1, 0): (6, 0, 0, 0), (1, 1): (161, 132, 198, 58), (1, 2): (24, 3, 41, 29), (1, 3): (2, 0, 0, 2)},
    "upper_colour": {(0,): (132, 214, 73, 31, 59, 131, 74, 56, 75), (1,): (90, 222, 81, 23, 38, 61, 24, 45, 72)},
    "lower_colour": {(0, 1): (365, 39, 6, 0, 0, 188, 135, 12, 80, 20),
                     (1, 0): (47, 38, 24, 0, 9, 17, 17, 9, 8, 26),
                     (1, 1): (168, 31, 19, 2, 2, 44, 125, 13, 29, 28)},
}

#: Duke identities with dark and with light shoes (``shoes`` 1 / 2; train + test).
DUKE_SHOES = (1567, 245)


def _field_values(raw: dict[str, np.ndarray], node: Node) -> np.ndarray:
    """Class index of every identity for ``node``; -1 where the file marks no class or several."""
    if node.name in ("carry", "upper_colour", "lower_colour"):
        if node.name == "carry":
            fields, none = ["backpack", "bag", "handbag"], 0
        else:
            prefix = "up" if node.name == "upper_colour" else "down"
            fields, none = [prefix + c for c in node.classes[:-1]], len(node.classes) - 1
        marked = np.stack([raw[f] == 2 for f in fields], axis=1)  # (N, C)
        count = marked.sum(axis=1)
        index = marked.argmax(axis=1) + (1 if node.name == "carry" else 0)
        return np.where(count == 1, index, np.where(count == 0, none, -1))
    values = raw[node.name].astype(np.int64) - 1
    return np.where(values >= 0, values, -1)


def estimate_counts(raw: dict[str, np.ndarray]) -> dict[str, dict[tuple[int, ...], tuple[int, ...]]]:
    """``COUNTS`` from Market's raw field values (one uint8 array per field, all identities)."""
    values = {node.name: _field_values(raw, node) for node in NODES}
    counts: dict[str, dict[tuple[int, ...], tuple[int, ...]]] = {}
    for node in NODES:
        cols = [values[node.name]] + [values[p] for p in node.parents]
        valid = np.all(np.stack(cols) >= 0, axis=0)
        table: dict[tuple[int, ...], list[int]] = {}
        for row in zip(*(c[valid] for c in cols)):
            key = tuple(int(v) for v in row[1:])
            table.setdefault(key, [0] * len(node.classes))[int(row[0])] += 1
        counts[node.name] = {k: tuple(table[k]) for k in sorted(table)}
    return counts


def read_fields(path: str | Path) -> dict[str, np.ndarray]:
    """Raw field values of a Lin et al. file, train and test identities together."""
    from sangal.data.attributes import read_attribute_mat

    table = read_attribute_mat(path)
    return {f: np.concatenate([table.raw[s][f] for s in ("train", "test")]) for f in table.raw["train"]}


def duke_shoe_counts(raw: dict[str, np.ndarray]) -> tuple[int, int]:
    """``DUKE_SHOES`` from Duke's raw field values."""
    return int((raw["shoes"] == 1).sum()), int((raw["shoes"] == 2).sum())


def _probabilities() -> dict[str, dict[tuple[int, ...], np.ndarray]]:
    """Cumulative class probabilities per node and parent combination; key () is the node's marginal."""
    out: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
    for node in NODES:
        cells = {k: np.asarray(v, np.float64) for k, v in COUNTS[node.name].items()}
        cells[()] = np.sum(list(cells.values()), axis=0)
        out[node.name] = {k: np.cumsum(v / v.sum()) for k, v in cells.items()}
    return out


def sample_labels(rng: np.random.Generator) -> dict[str, int]:
    """One identity's class index per node, drawn in ``NODES`` order from its parents' cell.

    A parent combination the file never shows falls back to the node's marginal.
    """
    out: dict[str, int] = {}
    for node in NODES:
        cells = _CUMULATIVE[node.name]
        cum = cells.get(tuple(out[p] for p in node.parents), cells[()])
        out[node.name] = min(int(np.searchsorted(cum, rng.random(), side="right")), len(node.classes) - 1)
    return out


def market_codes(labels: dict[str, int]) -> dict[str, int]:
    """Lin et al. field codes (1 = no / first class, 2 = yes / second; age 1..4) of one sampled identity."""
    codes = {name: labels[name] + 1 for name in ("gender", "hair", "up", "down", "clothes", "hat", "age")}
    codes.update({name: 2 if labels["carry"] == i else 1 for i, name in enumerate(CARRY) if i})
    codes.update({"up" + c: 2 if labels["upper_colour"] == i else 1 for i, c in enumerate(UPPER_NAMES)})
    codes.update({"down" + c: 2 if labels["lower_colour"] == i else 1 for i, c in enumerate(LOWER_NAMES)})
    return codes


_CUMULATIVE = _probabilities()
