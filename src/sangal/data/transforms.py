"""Train and test image transforms.

Train: resize -> horizontal flip -> pad-and-random-crop (the paper's "image expansion")
-> tensor -> ImageNet normalisation -> random erasing. Test: resize -> tensor -> normalise.
Every random choice uses torch's RNG only, so ``torch.manual_seed`` (as done per sample
by :class:`~sangal.data.dataset.ImageDataset`) makes augmentation reproducible.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from PIL import Image
from torchvision import transforms as T

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int = 256,
    width: int = 128,
    train: bool = True,
    flip: bool = True,
    pad: int = 10,
    erasing_p: float = 0.5,
    flip_p: float = 0.5,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised (3, height, width) float tensor.

    ``flip=False`` or ``flip_p=0`` disables flipping; ``pad=0`` disables pad-and-crop;
    ``erasing_p=0`` disables random erasing. Erased pixels are set to 0 after
    normalisation, i.e. to the ImageNet mean colour.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    for name, p in (("flip_p", flip_p), ("erasing_p", erasing_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    steps: list[Callable] = [T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)]
    if train:
        if flip and flip_p > 0:
            steps.append(T.RandomHorizontalFlip(p=flip_p))
        if pad > 0:
            steps += [T.Pad(pad), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and erasing_p > 0:
        steps.append(T.RandomErasing(p=erasing_p, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0))
    return T.Compose(steps)


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of a (3, H, W) or (B, 3, H, W) tensor; values clamped to [0, 1]."""
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"expected a (3, H, W) or (B, 3, H, W) tensor, got shape {tuple(t.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=t.dtype, device=t.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return (t * std + mean).clamp(0.0, 1.0)
