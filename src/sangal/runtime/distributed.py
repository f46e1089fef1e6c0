"""Process-group setup for `torchrun` (gloo on CPU, NCCL on GPU) and cross-rank helpers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sangal.config.checks import device_problem
from sangal.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; world_size 1 means no process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0, setting: str = "train.device") -> torch.device:
    """`auto` picks CUDA when available (one device per local rank), else CPU; a device this machine lacks (or a
    name that is no device) is a ConfigError naming ``setting``, the key or flag that asked for it."""
    if problem := device_problem(pref, setting):
        raise ConfigError(problem)
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}={pref}: no CUDA device here; use cpu")
        index = local_rank if device.index is None else device.index
        if index >= (count := torch.cuda.device_count()):
            raise ConfigError(f"{setting}={pref}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        device = torch.device(f"cuda:{index}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{setting}={pref}: no MPS device here; use cpu")
    return device


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank (rank order), keeping gradients to the local slice.

    Batch-hard triplet mining then sees the global P×K batch on every rank, as in
    single-process training.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_plain(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradients (labels, ids)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
