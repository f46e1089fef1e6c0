"""Mixed precision and memory layout: bf16 autocast on CPUs with native bf16, channels-last convolutions.

On a CPU with AVX512-BF16 or AMX, bf16 autocast with channels-last tensors runs ResNet
convolutions 2-4x faster than float32 (measured on 2 cores, benchmarks/README.md);
without native support bf16 is emulated and slower, so the demo enables it only where
:func:`native_bf16_cpu` says so. Weights and optimiser state stay float32.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache

import torch

__all__ = ["autocast", "channels_last", "gradcam_channels_last", "native_bf16_cpu"]


@lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


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
