"""The real style's label statistics: the committed table is what the real files say, and sampled labels follow it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from sangal.synthetic.stats import (
    CARRY,
    COUNTS,
    DUKE_SHOES,
    LOWER_NAMES,
    NODES,
    UPPER_NAMES,
    duke_shoe_counts,
    estimate_counts,
    market_codes,
    read_fields,
    sample_labels,
)

ATTRIBUTES = Path("/work/shared/data/attributes")  # as tests/data/test_attributes.py; absent in CI
MARKET, DUKE = ATTRIBUTES / "market_attribute.mat", ATTRIBUTES / "duke_attribute.mat"
N = 4000


@pytest.fixture(scope="module")
def sampled() -> list[dict[str, int]]:
    rng = np.random.default_rng(123)
    return [sample_labels(rng) for _ in range(N)]


@pytest.mark.skipif(not (MARKET.is_file() and DUKE.is_file()), reason="the real attribute files are not here (CI)")
def test_committed_table_is_what_the_real_files_say() -> None:
    market, duke = read_fields(MARKET), read_fields(DUKE)
    assert estimate_counts(market) == COUNTS
    assert duke_shoe_counts(duke) == DUKE_SHOES
    # the model's one carry node: backpack, bag and handbag exclude each other in both files
    for raw in (market, duke):
        carried = sum((raw[f] == 2).astype(int) for f in ("backpack", "bag", "handbag"))
        assert carried.max() == 1
    # every Market identity counts in every table (no colour or carry marked twice)
    assert all(sum(map(sum, COUNTS[node.name].values())) == len(market["gender"]) for node in NODES)


def test_table_is_well_formed() -> None:
    names = [node.name for node in NODES]
    for i, node in enumerate(NODES):
        assert set(node.parents) <= set(names[:i]), f"{node.name}: parents must be sampled before it"
        for key, counts in COUNTS[node.name].items():
            assert len(key) == len(node.parents) and len(counts) == len(node.classes)
            assert all(0 <= k < len(next(n for n in NODES if n.name == p).classes) for k, p in zip(key, node.parents))
    assert sum(COUNTS["gender"][()]) == 1501  # Market train + test


def test_sampled_labels_follow_every_conditional_table(sampled) -> None:
    """Per node and parent combination with enough draws: chi-square against the table's class ratios."""
    checked = 0
    for node in NODES:
        for key, counts in COUNTS[node.name].items():
            rows = [s[node.name] for s in sampled if tuple(s[p] for p in node.parents) == key]
            if len(rows) < 200:
                continue
            expected = np.asarray(counts, float) / sum(counts) * len(rows)
            observed = np.bincount(rows, minlength=len(node.classes))
            assert (observed[expected == 0] == 0).all(), f"{node.name} {key}: a class the real files never show"
            keep = expected > 0
            if keep.sum() < 2:  # one possible class (a man's dress): nothing more to test
                continue
            p = chisquare(observed[keep], expected[keep]).pvalue
            assert p > 1e-3, f"{node.name} given {key}: observed {observed.tolist()} vs {expected.round(1).tolist()}"
            checked += 1
    assert checked >= 15


def test_market_shares_match_the_real_files(sampled) -> None:
    """Each Market field's share of "yes" within 3 standard errors (+0.5 points of model error) of the real one."""
    real = {node.name: np.sum(list(COUNTS[node.name].values()), axis=0) for node in NODES}
    real = {k: v / v.sum() for k, v in real.items()}
    want = {f: real[f][1] for f in ("gender", "hair", "up", "down", "clothes", "hat")}
    want |= {f: real["carry"][i] for i, f in enumerate(CARRY) if i}
    want |= {"up" + c: real["upper_colour"][i] for i, c in enumerate(UPPER_NAMES)}
    want |= {"down" + c: real["lower_colour"][i] for i, c in enumerate(LOWER_NAMES)}
    codes = [market_codes(s) for s in sampled]
    for field, p in want.items():
        share = np.mean([c[field] == 2 for c in codes])
        assert abs(share - p) < 3 * np.sqrt(p * (1 - p) / N) + 0.005, f"{field}: {share:.3f} vs real {p:.3f}"
    assert 0.001 < want["downpurple"] < 0.002 and want["hat"] < 0.04, "the rare classes stay rare"


def test_market_codes_keep_the_one_hot_structure(sampled) -> None:
    codes = [market_codes(s) for s in sampled]
    ups = np.array([[c["up" + n] == 2 for n in UPPER_NAMES] for c in codes]).sum(1)
    downs = np.array([[c["down" + n] == 2 for n in LOWER_NAMES] for c in codes]).sum(1)
    carried = np.array([sum(c[f] == 2 for f in CARRY[1:]) for c in codes])
    assert ups.max() == 1 and downs.max() == 1 and carried.max() == 1
    # "other" colours (none marked) as often as in the real files: 147 of 1501 upper, 74 of 1501 lower
    assert abs((ups == 0).mean() - 147 / 1501) < 0.02 and abs((downs == 0).mean() - 74 / 1501) < 0.015
    assert all(c["clothes"] == 2 for c in codes if c["gender"] == 1), "no man in a dress, as in the files"
