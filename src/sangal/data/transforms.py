"""Train and test image transforms.

Train: resize -> horizontal flip -> pad-and-random-crop (the paper's "image expansion")
-> tensor -> ImageNet normalisation -> random erasing. Test: resize -> tensor -> normalise.
Every random choice uses torch's RNG only, so ``torch.manual_seed`` (as done per sample
by :class:`~sangal.data.dataset.ImageDataset`) makes augmentation reproducible.

The train transform also reports its geometry (:meth:`TrainTransform.with_params`):
where the crop landed and whether the image was mirrored, so heat maps cached for the
un-augmented image can be moved with it (:func:`sangal.aah.align.align_heatmaps`).
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
    resize = T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)
    to_tensor = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not train:
        return T.Compose([resize, *to_tensor])
    erasing = T.RandomErasing(p=erasing_p, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0) if erasing_p > 0 else None
    return TrainTransform(resize, flip_p if flip else 0.0, pad, T.Compose(to_tensor), erasing)


class TrainTransform:
    """Resize, flip, pad-and-random-crop, normalise, erase; :meth:`with_params` also says where the crop landed.

    ``shift = (dy, dx)``: output pixel (y, x) shows pixel (y + dy, x + dx) of the resized,
    possibly flipped image (dy, dx in [-pad, pad]; outside it the padding is black).
    """

    def __init__(self, resize: Callable, flip_p: float, pad: int, to_tensor: Callable,
                 erasing: Callable | None) -> None:
        self.resize, self.flip_p, self.pad = resize, flip_p, pad
        self.to_tensor, self.erasing = to_tensor, erasing

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.with_params(img)[0]

    def with_params(self, img: Image.Image) -> tuple[torch.Tensor, dict]:
        """(3, H, W) tensor and ``{"shift": (dy, dx), "flipped": bool}``."""
        img = self.resize(img)
        flipped = self.flip_p > 0 and bool(torch.rand(1) < self.flip_p)
        if flipped:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        dy = dx = 0
        if self.pad > 0:
            # Same draws as torchvision's Pad + RandomCrop: top in [0, 2*pad], then left.
            top = int(torch.randint(0, 2 * self.pad + 1, size=(1,)))
            left = int(torch.randint(0, 2 * self.pad + 1, size=(1,)))
            dy, dx = top - self.pad, left - self.pad
            img = T.functional.crop(T.functional.pad(img, self.pad), top, left, img.height, img.width)
        tensor = self.to_tensor(img)
        if self.erasing is not None:
            tensor = self.erasing(tensor)
        return tensor, {"shift": (dy, dx), "flipped": flipped}

    def __repr__(self) -> str:
        return (f"TrainTransform({self.resize}, flip_p={self.flip_p}, pad={self.pad}, "
                f"erasing={self.erasing is not None})")

