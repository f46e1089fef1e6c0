"""Mixed precision and memory layout: bf16 autocast on CPUs with native bf16, channels-last convolutions.

On a CPU with AVX512-BF16 or AMX, bf16 autocast with channels-last tensors runs ResNet
convolutions 2-4x faster than float32 (measured on 2 cores, benchmarks/README.md);
without native support bf16 is emulated and slower, so the demo enables it only where
:func:`native_bf16_cpu` says so. Weights and optimiser state stay float32.
"""

from __future__ import annotations

import platform
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["autocast", "channels_last", "gradcam_channels_last", "native_bf16_cpu", "numerics"]


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` line's value in /proc/cpuinfo (Linux; None elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; False elsewhere)."""
    return bool(set((_cpuinfo("flags") or "").split()) & {"avx512_bf16", "amx_bf16"})


def numerics() -> dict[str, str | int]:
    """What decides a run's floating-point sums besides code, data and seeds: torch, its intra-op threads, the
    kernels' instruction set and the CPU (model, last-level cache). Two runs agree bit for bit only where these
    match: the standard demo's `id` seed 0 scores 29.4 Rank-1 at 1 thread and 31.7 at 2 (README)."""
    cache = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    l3 = cache.read_text().strip() if cache.is_file() else "?"
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": f"{_cpuinfo('model name') or platform.processor() or platform.machine()}, L3 {l3}"}


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None):
    """bf16 autocast on CPU, fp16 on CUDA (``dtype`` given: that one, e.g. bf16 heat maps everywhere); a no-op
    context when disabled."""
    if not enabled:
        return nullcontext()
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def channels_last(x, enabled: bool = True):
    """A module or a 4-D tensor in channels-last memory format (unchanged when disabled or not 4-D)."""
    if not enabled:
        return x
    if isinstance(x, torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    return x.to(memory_format=torch.channels_last)


def gradcam_channels_last(amp: bool, channels_last_enabled: bool) -> bool:
    """Channels-last for exact Grad-CAM passes only together with bf16 autocast.

    Grad-CAM's batched backward runs slower in channels-last float32 (2 threads, 128x64, 27 heads: ResNet-18
    103 -> 133 ms per image, MobileNetV2 79 -> 107), while channels-last bf16 is what makes bf16 fast.
    """
    return channels_last_enabled and amp
