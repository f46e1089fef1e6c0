"""Identity-balanced P x K batch sampler with deterministic per-sample seeds and rank sharding.

Each epoch's order is a pure function of ``(seed, epoch)`` (its own numpy generator,
never the global RNG):

1. every identity's images are shuffled and cut into chunks of K; a trailing partial
   chunk is dropped (as in torchreid's RandomIdentitySampler), except that an identity
   with 2..K-1 images is topped up to one chunk by sampling its images with replacement;
2. the epoch has T global batches, T the largest number of rounds in which P distinct
   identities can each give a chunk (``sum_i min(chunks_i, T) >= P * T``). T depends
   only on the image counts, so every epoch (and every rank) has the same length;
   when more chunks fit than P * T, randomly chosen ones are left out this epoch;
3. each batch takes one chunk of P distinct identities: those whose remaining chunks
   equal the remaining batches (they must be used now for the epoch to fill up), the
   rest drawn uniformly among identities with chunks left.

Each element is ``(dataset_index, sample_seed)``; the seed mixes (seed, epoch, batch,
position in the global batch), so :class:`~sangal.data.dataset.ImageDataset` augments a
sample the same way whatever the worker count, the world size or a mid-epoch resume.
Distributed: rank r yields identities ``[r*P/W, (r+1)*P/W)`` of every global batch, so
the union over ranks is exactly the single-process batch, with the same seeds.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

from sangal.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, batch: int, position: int) -> int:
    """Deterministic 63-bit seed for one sample of one global batch."""
    h = 0
    for part in (seed, epoch, batch, position):
        h = _splitmix64(h ^ (part & _MASK64))
    return h >> 1


def _max_rounds(chunks: np.ndarray, p: int) -> int:
    """Largest T with ``sum(min(chunks, T)) >= p * T``: rounds of p distinct ids one chunk each."""
    t = int(chunks.sum()) // p
    while t > 0 and int(np.minimum(chunks, t).sum()) < p * t:
        t -= 1
    return t


class IdentitySampler:
    """Batch sampler of P identities x K images (use as ``DataLoader(batch_sampler=...)``).

    ``pids`` are the identity labels of the dataset's items, in dataset order. Identities
    with fewer than 2 images (fewer than K if K < 2) cannot form a positive pair: they
    raise DatasetError unless ``drop_small=True`` drops them with a warning.
    ``set_epoch(epoch, start_batch=n)`` fixes the epoch and skips its first n batches;
    ``len()`` is the number of batches the next iteration yields (``batches_per_epoch``
    minus ``start_batch``), the same on every rank.
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_small: bool = False,
    ) -> None:
        if p < 1 or k < 1:
            raise ConfigError(f"sampler needs P >= 1 identities and K >= 1 images per identity, got P={p}, K={k}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"invalid distributed rank {rank} for world size {world_size}")
        if p % world_size:
            raise ConfigError(
                f"sampler P={p} identities per batch must be divisible by the world size {world_size}; "
                f"choose P as a multiple of {world_size}"
            )
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            by_pid[int(pid)].append(index)
        min_images = min(2, k)
        small = sorted(pid for pid, idx in by_pid.items() if len(idx) < min_images)
        if small:
            shown = ", ".join(map(str, small[:8])) + (", ..." if len(small) > 8 else "")
            msg = f"{len(small)} identities have fewer than {min_images} images and make no positive pair (ids {shown})"
            if not drop_small:
                raise DatasetError(f"{msg}; remove them or pass drop_small=True")
            logger.warning("%s; dropping them", msg)
            for pid in small:
                del by_pid[pid]
        if len(by_pid) < p:
            raise DatasetError(
                f"sampler needs P={p} identities per batch but the dataset has only {len(by_pid)} usable "
                f"identities; lower P"
            )
        self._pids = sorted(by_pid)
        self._indices = [np.asarray(by_pid[pid], dtype=np.int64) for pid in self._pids]
        self._per_rank = p // world_size
        self._num_chunks = np.array([max(len(i) // k, 1) for i in self._indices], dtype=np.int64)
        self._num_batches = _max_rounds(self._num_chunks, p)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Fix the epoch (its order depends on seed and epoch only) and skip its first ``start_batch`` batches."""
        self.epoch = epoch
        self._plan = self._epoch_plan(epoch)
        if not 0 <= start_batch <= len(self._plan):
            raise ValueError(f"start_batch {start_batch} outside epoch {epoch}'s {len(self._plan)} batches")
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in every epoch (depends only on the image counts, P and K)."""
        return self._num_batches

    def _epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """Global batches of epoch ``epoch``: each a (P, K) array of dataset indices."""
        rng = np.random.default_rng([self.seed & _MASK64, epoch & _MASK64])
        chunks: list[np.ndarray] = []  # per identity: (chunks, K)
        for indices in self._indices:
            shuffled = rng.permutation(indices)
            if len(shuffled) < self.k:
                extra = rng.choice(indices, size=self.k - len(shuffled), replace=True)
                shuffled = np.concatenate([shuffled, extra])
            n = len(shuffled) // self.k
            chunks.append(shuffled[: n * self.k].reshape(n, self.k))
        quota = np.minimum(self._num_chunks, self._num_batches)
        excess = int(quota.sum()) - self.p * self._num_batches
        if excess:  # leave out `excess` chunks picked uniformly among all usable ones
            owner = np.repeat(np.arange(len(quota)), quota)
            quota -= np.bincount(rng.choice(owner, size=excess, replace=False), minlength=len(quota))
        used = np.zeros(len(quota), dtype=np.int64)
        plan = []
        for remaining in range(self._num_batches, 0, -1):
            forced = np.flatnonzero(quota == remaining)
            free = np.flatnonzero((quota > 0) & (quota < remaining))
            chosen = np.concatenate([forced, rng.choice(free, size=self.p - len(forced), replace=False)])
            chosen = rng.permutation(chosen)
            plan.append(np.stack([chunks[i][used[i]] for i in chosen]))
            used[chosen] += 1
            quota[chosen] -= 1
        return plan

    def __len__(self) -> int:
        return len(self._plan) - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        lo, hi = self.rank * self._per_rank * self.k, (self.rank + 1) * self._per_rank * self.k
        for b in range(self.start_batch, len(self._plan)):
            flat = self._plan[b].reshape(-1)
            yield [(int(flat[j]), sample_seed(self.seed, self.epoch, b, j)) for j in range(lo, hi)]
