"""Move cached heat maps with the geometric augmentation of their training image.

Cached AAH are computed once on the un-augmented (test-transform) image. The Re-ID
training image is padded and randomly cropped (shifted by up to ``pad`` pixels) and
mirrored; without the same transform the attention would land next to the part it
describes (a 10 px shift is more than one layer2 cell at stride 8). Each map is
translated at its own resolution by the crop offset divided by its stride
(bilinear, zero outside the image, as the black padding is), then mirrored with
the image. Integer-cell shifts are exact; fractional ones interpolate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["align_heatmaps", "shift_heatmaps"]


def shift_heatmaps(maps: Tensor, shift: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Translate maps so that cell (i, j) shows image position (y + dy, x + dx) of the old map.

    Args:
        maps: (B, K, h, w) heat maps of an image of ``image_size`` = (H, W) pixels.
        shift: (B, 2) pixel offsets (dy, dx) of the crop (see ``TrainTransform.with_params``).

    Returns:
        (B, K, h, w); positions that come from outside the image are 0.
    """
    b, _, h, w = maps.shape
    if shift.shape != (b, 2):
        raise ValueError(f"shift must be (B={b}, 2) pixel offsets, got shape {tuple(shift.shape)}")
    shift = shift.to(device=maps.device, dtype=torch.float32)
    if not bool(shift.any()):
        return maps
    height, width = image_size
    # Cell i covers [i, i+1) in cell units; its centre i + 0.5 samples the old map at i + 0.5 + d/stride.
    sy = shift[:, 0] * h / height  # (B,) offsets in cells
    sx = shift[:, 1] * w / width
    ys = (torch.arange(h, device=maps.device, dtype=torch.float32) + 0.5)[None, :] + sy[:, None]  # (B, h)
    xs = (torch.arange(w, device=maps.device, dtype=torch.float32) + 0.5)[None, :] + sx[:, None]  # (B, w)
    gy = (2 * ys / h - 1)[:, :, None].expand(b, h, w)  # align_corners=False normalised coordinates
    gx = (2 * xs / w - 1)[:, None, :].expand(b, h, w)
    grid = torch.stack([gx, gy], dim=-1)  # (B, h, w, 2), (x, y) order
    out = F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(maps.dtype)


def align_heatmaps(aah: Sequence[Tensor], shift: Tensor | None, image_size: tuple[int, int]) -> tuple[Tensor, ...]:
    """Apply one batch's crop offsets (B, 2) to the maps of every stage (flips are applied with the image)."""
    if shift is None:
        return tuple(aah)
    return tuple(shift_heatmaps(a, shift, image_size) for a in aah)
