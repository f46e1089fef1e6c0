"""Cached heat maps follow the pad-and-crop and flip of their training image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sangal.aah.align import align_heatmaps, shift_heatmaps
from sangal.aah.gradcam import attribute_heatmaps
from sangal.data import ImageDataset, build_transforms
from sangal.data.records import ImageRecord
from sangal.models.attribute_net import AttributeNet


def test_whole_cell_shift_is_an_exact_translation_with_zero_fill() -> None:
    maps = torch.rand(2, 3, 8, 4)
    # image 64x32 -> stride 8: a (16, -8) px shift is (2, -1) cells
    out = shift_heatmaps(maps, torch.tensor([[16, -8], [0, 0]]), (64, 32))
    expected = torch.zeros_like(maps[0])
    expected[:, :6, 1:] = maps[0, :, 2:, :3]  # cell (i, j) shows old cell (i + 2, j - 1)
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], maps[1])  # no shift: unchanged


def test_half_cell_shift_interpolates_between_neighbours() -> None:
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 2, 2] = 1.0
    out = shift_heatmaps(maps, torch.tensor([[4, 0]]), (32, 32))  # stride 8: half a cell down
    torch.testing.assert_close(out[0, 0, 1:3, 2], torch.tensor([0.5, 0.5]))
    assert float(out.sum()) == pytest.approx(1.0)


def test_bad_shift_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"shift must be \(B=2, 2\)"):
        shift_heatmaps(torch.rand(2, 1, 4, 4), torch.zeros(2, 3), (32, 32))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))


def test_aligned_cached_maps_match_maps_computed_on_the_cropped_image(tmp_path, one_torch_thread) -> None:
    """The train transform's shift, applied to maps of the plain image, reproduces the maps of the cropped image
    far better than the unshifted maps do (the claim the training loop relies on)."""
    torch.manual_seed(0)
    h, w, pad = 128, 64, 16
    rng = np.random.default_rng(0)
    base = rng.random((h // 16, w // 16, 3))
    pixels = np.kron(base, np.ones((16, 16, 1)))  # blocky picture: strong, local structure
    pixels[40:70, 10:50] = [1.0, 0.1, 0.1]
    path = tmp_path / "img.png"
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    record = ImageRecord(path=path, pid=0, camid=0, raw_pid=1)
    net = AttributeNet([2, 2, 3], backbone="resnet18", pretrained=False).eval()
    plain = ImageDataset([record], build_transforms(h, w, train=False))[0]["image"][None]
    train_ds = ImageDataset([record], build_transforms(h, w, train=True, flip_p=0.0, pad=pad, erasing_p=0.0))
    shifts = []
    for seed in range(40):  # find crops that move by whole layer2 cells (stride 8) in both directions
        item = train_ds[(0, seed)]
        dy, dx = item["shift"].tolist()
        if dy % 8 == 0 and dx % 8 == 0 and (dy, dx) != (0, 0):
            shifts.append(item)
    assert shifts, "no whole-cell crop drawn in 40 seeds"
    cached = attribute_heatmaps(net, plain, normalize="none")
    for item in shifts[:2]:
        truth = attribute_heatmaps(net, item["image"][None], normalize="none")
        aligned = align_heatmaps(cached, item["shift"][None], (h, w))
        inner = (slice(None), slice(None), slice(3, -3), slice(2, -2))  # away from the padded border
        r_aligned = _corr(aligned[0][inner], truth[0][inner])
        r_plain = _corr(cached[0][inner], truth[0][inner])
        assert r_aligned > 0.9, (item["shift"], r_aligned)
        assert r_aligned > r_plain + 0.1, (item["shift"], r_aligned, r_plain)
