"""Heat-map upsampling, overlay and the AAH grid."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from sangal.viz.heatmap import heatmap_grid, overlay, upsample


def test_upsample_matches_hand_computed_bilinear() -> None:
    # 2 -> 4 with align_corners=False: row/col weights of the first input pixel are [1, .75, .25, 0].
    up = upsample(np.array([[1.0, 0.0], [0.0, 0.0]]), (4, 4))
    r = np.array([1.0, 0.75, 0.25, 0.0])
    np.testing.assert_allclose(up, np.outer(r, r))


def test_upsample_matches_torch_interpolate() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    maps = rng.random((2, 3, 8, 4))  # (N, K, h, w)
    ours = upsample(maps, (32, 20))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(maps), size=(32, 20), mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_upsample_keeps_constant_and_same_size_maps() -> None:
    np.testing.assert_allclose(upsample(np.full((3, 5), 0.7), (11, 13)), 0.7)
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(upsample(x, (3, 4)), x)


def test_overlay_blends_colour_map_with_image() -> None:
    img = np.full((16, 8, 3), 100, dtype=np.uint8)
    hm = np.zeros((4, 2))
    hm[0, 0] = 1.0  # hot top-left, cold elsewhere
    out = overlay(img, hm, alpha=1.0)
    assert out.shape == (16, 8, 3) and out.dtype == np.uint8
    jet = colormaps["jet"]
    np.testing.assert_allclose(out[0, 0], np.array(jet(1.0)[:3]) * 255, atol=1)  # hottest -> dark red
    np.testing.assert_allclose(out[-1, -1], np.array(jet(0.0)[:3]) * 255, atol=1)  # coldest -> dark blue
    np.testing.assert_array_equal(overlay(img, hm, alpha=0.0), img)
    half = overlay(img, hm, alpha=0.5)
    np.testing.assert_allclose(half[-1, -1], 0.5 * 100 + 0.5 * np.array(jet(0.0)[:3]) * 255, atol=1)


def test_overlay_normalises_by_max_and_handles_zero_maps() -> None:
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    a = overlay(img, np.full((2, 2), 0.2), alpha=1.0)
    b = overlay(img, np.full((2, 2), 5.0), alpha=1.0)
    np.testing.assert_array_equal(a, b)  # both are flat at their own max
    z = overlay(img, np.zeros((2, 2)), alpha=1.0)
    np.testing.assert_allclose(z[0, 0], np.array(colormaps["jet"](0.0)[:3]) * 255, atol=1)
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, np.zeros((2, 2)), alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay(img.astype(np.float32), np.zeros((2, 2)))


def _aah(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rng.random((k, 16, 8)), rng.random((k, 8, 4)), rng.random((k, 8, 4))


def test_heatmap_grid_lays_out_attributes_in_wrapped_blocks() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)
    names = [f"attr{i}" for i in range(5)]
    one_block = heatmap_grid(img, _aah(5, rng), names, cell_height=32, per_row=5)
    two_blocks = heatmap_grid(img, _aah(5, rng), names, labels=["yes"] * 5, cell_height=32, per_row=3)
    assert isinstance(one_block, Image.Image) and one_block.mode == "RGB"
    # 5 per row + the plain image is wider than 3 per row + image; two blocks are taller.
    assert one_block.width > two_blocks.width
    assert two_blocks.height > 1.8 * one_block.height


def test_heatmap_grid_shows_the_hot_spot_of_each_map() -> None:
    img = np.full((64, 32, 3), 128, dtype=np.uint8)
    maps = np.zeros((1, 8, 4))
    maps[0, 0, 0] = 1.0  # hot top-left corner at every stage
    grid = np.asarray(heatmap_grid(img, (maps, maps, maps), ["hat"], cell_height=64))
    r, b = grid[:, :, 0].astype(int), grid[:, :, 2].astype(int)
    red = r > b + 40  # grey image and blue (cold) overlay never satisfy this
    ys, _ = np.nonzero(red)
    assert red.sum() > 3 * 20  # a hot spot in each of the 3 stage rows
    assert len(np.unique(ys // 64)) >= 3  # spread over three rows of cells


def test_heatmap_grid_rejects_mismatched_inputs() -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="K=3"):
        heatmap_grid(img, _aah(2, rng), ["a", "b", "c"])
    with pytest.raises(ValueError, match="labels"):
        heatmap_grid(img, _aah(2, rng), ["a", "b"], labels=["x"])
