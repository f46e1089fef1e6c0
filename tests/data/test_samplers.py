"""IdentitySampler: P x K batches, determinism, rank sharding, mid-epoch resume, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sangal.data.samplers import IdentitySampler, sample_seed
from sangal.errors import ConfigError, DatasetError

# 8 identities with 2..9 images, shuffled dataset order
_rng = np.random.default_rng(3)
PIDS = _rng.permutation(np.repeat(np.arange(8), np.arange(2, 10))).tolist()


def _batches(sampler: IdentitySampler) -> list[list[tuple[int, int]]]:
    return list(iter(sampler))


def test_batches_are_p_distinct_ids_times_k() -> None:
    s = IdentitySampler(PIDS, p=4, k=3, seed=5)
    batches = _batches(s)
    assert len(batches) == len(s) == s.batches_per_epoch > 0
    for batch in batches:
        assert len(batch) == 12
        ids = [PIDS[i] for i, _ in batch]
        assert len(set(ids)) == 4
        assert all(ids[j * 3 : (j + 1) * 3] == [ids[j * 3]] * 3 for j in range(4))  # K consecutive of one id
    # id 0 has 2 images < K: topped up with repeats of its own images
    for batch in batches:
        zero = [i for i, _ in batch if PIDS[i] == 0]
        assert not zero or (len(zero) == 3 and len(set(zero)) == 2)


def test_epoch_length_is_maximal_and_constant() -> None:
    # chunks per id with K=3: ids 0..7 have 2..9 images -> 1,1,1,1,2,2,2,3 chunks = 13; P=4
    # T=3: sum(min(c, 3)) = 13 >= 12; T=4 would need 16 > 13
    s = IdentitySampler(PIDS, p=4, k=3, seed=2)
    lengths = set()
    for epoch in range(6):
        s.set_epoch(epoch)
        batches = _batches(s)
        lengths.add(len(batches))
        used = Counter(PIDS[i] for b in batches for i, _ in b)
        assert all(used[pid] <= 3 * 3 for pid in used)  # at most T chunks of K per identity
    assert lengths == {3} and s.batches_per_epoch == 3
    # skewed counts: chunks (20, 1, 1), P=2 -> T=2 only if id 0 is in both batches;
    # a uniform pick of {1, 2} first would end the epoch after one batch
    skewed = [0] * 40 + [1, 1, 2, 2]
    t = IdentitySampler(skewed, p=2, k=2)
    for epoch in range(5):
        t.set_epoch(epoch)
        batches = _batches(t)
        assert len(batches) == 2
        assert all(0 in {skewed[i] for i, _ in b} for b in batches)


def test_images_of_large_ids_not_repeated_within_epoch() -> None:
    s = IdentitySampler(PIDS, p=2, k=2, seed=1)
    used = [i for batch in s for i, _ in batch]
    assert len(used) == len(set(used))  # all ids have >= K images: no replacement


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = IdentitySampler(PIDS, 4, 3, seed=5), IdentitySampler(PIDS, 4, 3, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert _batches(a) == _batches(b)
    first = _batches(a)
    a.set_epoch(3)
    assert _batches(a) != first
    assert _batches(IdentitySampler(PIDS, 4, 3, seed=6)) != _batches(IdentitySampler(PIDS, 4, 3, seed=5))


def test_sample_seeds_unique_and_derived() -> None:
    s = IdentitySampler(PIDS, 4, 3, seed=5)
    s.set_epoch(1)
    batches = _batches(s)
    seeds = [seed for batch in batches for _, seed in batch]
    assert len(set(seeds)) == len(seeds)
    assert batches[1][4][1] == sample_seed(5, 1, 1, 4)
    assert all(0 <= x < 2**63 for x in seeds)


def test_rank_slices_union_is_single_process_batch() -> None:
    single = IdentitySampler(PIDS, 4, 3, seed=9)
    ranks = [IdentitySampler(PIDS, 4, 3, seed=9, rank=r, world_size=2) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(4)
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for full, r0, r1 in zip(_batches(single), _batches(ranks[0]), _batches(ranks[1])):
        assert len(r0) == len(r1) == 6
        assert r0 + r1 == full
        assert not {PIDS[i] for i, _ in r0} & {PIDS[i] for i, _ in r1}


def test_start_batch_skips_head_of_same_order() -> None:
    s = IdentitySampler(PIDS, 2, 2, seed=0)
    s.set_epoch(7)
    full = _batches(s)
    s.set_epoch(7, start_batch=3)
    assert len(s) == len(full) - 3
    assert _batches(s) == full[3:]
    with pytest.raises(ValueError, match="start_batch"):
        s.set_epoch(7, start_batch=len(full) + 1)


def test_singleton_ids_error_or_dropped(caplog: pytest.LogCaptureFixture) -> None:
    pids = [0, 0, 1, 2, 2, 3, 4, 4]
    with pytest.raises(DatasetError, match=r"2 identities have fewer than 2 images .*ids 1, 3"):
        IdentitySampler(pids, 2, 2)
    s = IdentitySampler(pids, 2, 2, drop_small=True)
    assert "dropping" in caplog.text
    assert {pids[i] for batch in s for i, _ in batch} <= {0, 2, 4}


def test_too_few_identities_and_bad_config() -> None:
    with pytest.raises(DatasetError, match=r"P=16 .* only 8 usable identities"):
        IdentitySampler(PIDS, 16, 2)
    with pytest.raises(ConfigError, match="divisible by the world size 3"):
        IdentitySampler(PIDS, 4, 2, world_size=3, rank=0)
    with pytest.raises(ConfigError, match="K=0"):
        IdentitySampler(PIDS, 4, 0)
