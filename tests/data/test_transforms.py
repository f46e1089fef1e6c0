"""Train/test transforms: shapes, normalisation, determinism under torch seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sangal.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def _image() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8))


def test_test_transform_shape_and_normalisation() -> None:
    out = build_transforms(32, 16, train=False)(Image.new("RGB", (20, 40), (124, 116, 104)))
    assert out.shape == (3, 32, 16)
    # a mean-coloured image normalises to ~0 everywhere
    assert out.abs().max() < 0.01
    white = build_transforms(32, 16, train=False)(Image.new("RGB", (20, 40), (255, 255, 255)))
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(white[:, 0, 0], expected)


def test_train_transform_deterministic_under_seed() -> None:
    t = build_transforms(32, 16, train=True, pad=4, erasing_p=0.5)
    img = _image()
    torch.manual_seed(7)
    a = t(img)
    torch.manual_seed(7)
    b = t(img)
    assert a.shape == (3, 32, 16) and torch.equal(a, b)
    torch.manual_seed(8)
    others = [t(img) for _ in range(5)]
    assert any(not torch.equal(a, o) for o in others)


def test_flip_only_mirrors() -> None:
    img = _image()
    plain = build_transforms(32, 16, train=False)(img)
    t = build_transforms(32, 16, train=True, flip_p=1.0, pad=0, erasing_p=0.0)
    torch.testing.assert_close(t(img), plain.flip(-1))
    off = build_transforms(32, 16, train=True, flip=False, pad=0, erasing_p=0.0)
    torch.testing.assert_close(off(img), plain)


def test_erasing_sets_region_to_mean() -> None:
    t = build_transforms(32, 16, train=True, flip=False, pad=0, erasing_p=1.0)
    plain = build_transforms(32, 16, train=False)(_image())
    out = t(_image())
    changed = (out != plain).any(dim=0)
    assert changed.any() and (out[:, changed] == 0).all()




def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="erasing_p"):
        build_transforms(32, 16, erasing_p=1.5)
    with pytest.raises(ValueError, match="pad"):
        build_transforms(32, 16, pad=-1)


def test_train_transform_reports_its_crop_shift_and_flip() -> None:
    """Output pixel (y, x) shows pixel (y + dy, x + dx) of the resized image; mirrored when flipped."""
    pixels = np.zeros((32, 16, 3), dtype=np.uint8)
    pixels[10, 5] = 255
    img = Image.fromarray(pixels)
    t = build_transforms(32, 16, train=True, pad=4, erasing_p=0.0, flip_p=0.5)
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out, params = t.with_params(img)
        dy, dx = params["shift"]
        assert -4 <= dy <= 4 and -4 <= dx <= 4
        x = 15 - 5 if params["flipped"] else 5
        y_out, x_out = 10 - dy, x - dx
        bright = (out[0] > 1.0).nonzero().tolist()
        if 0 <= y_out < 32 and 0 <= x_out < 16:
            assert bright == [[y_out, x_out]]
        else:
            assert bright == []
        seen.add(params["flipped"])
        torch.manual_seed(seed)
        assert torch.equal(t(img), out)  # __call__ draws the same augmentation
    assert seen == {True, False}
