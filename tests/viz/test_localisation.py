"""AAH localisation scores, hand-computed cases."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from sangal.viz.localisation import REGION_KEYS, _scores_for, localisation_scores


def energy_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The energy share of one (h, w) map in one (H, W) mask, as localisation_scores computes it (NaN: a map
    with no positive energy, which the scores count as 0)."""
    energy, _, _, _, zero = _scores_for(np.asarray(heatmap, float)[None], np.asarray(mask, bool)[None], 0, 64)
    return math.nan if zero else float(energy[0])


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """The pointing-game hit of one map, as localisation_scores computes it."""
    return bool(_scores_for(np.asarray(heatmap, float)[None], np.asarray(mask, bool)[None], tolerance, 64)[1][0])


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_map_equal_to_mask_scores_energy_one_and_hits() -> None:
    mask = _box(16, 8, 2, 6, 1, 5)
    assert energy_inside(mask.astype(float), mask) == pytest.approx(1.0)
    assert pointing_hit(mask.astype(float), mask)


def test_uniform_map_scores_the_area_fraction() -> None:
    mask = _box(16, 8, 0, 4, 0, 8)  # 32 of 128 pixels
    assert energy_inside(np.ones((4, 2)), mask) == pytest.approx(0.25)


def test_energy_after_bilinear_upsampling_hand_computed() -> None:
    # [[1,0],[0,0]] -> 4x4 is outer(r, r), r = [1, .75, .25, 0]; total (sum r)^2 = 4,
    # top-left quadrant holds (1 + .75)^2 = 3.0625 -> 0.765625.
    heat = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert energy_inside(heat, _box(4, 4, 0, 2, 0, 2)) == pytest.approx(0.765625)
    # clipping comes after upsampling: [[1,-5],[-5,-5]] upsamples to 6 r_i r_j - 5, positive only at
    # pixel (0, 0), so all the energy is in any mask holding that pixel and none elsewhere
    neg = np.array([[1.0, -5.0], [-5.0, -5.0]])
    assert energy_inside(neg, _box(4, 4, 0, 1, 0, 1)) == pytest.approx(1.0)
    assert energy_inside(neg, _box(4, 4, 0, 4, 1, 4)) == pytest.approx(0.0)


def test_all_zero_map_is_nan_energy_and_a_miss() -> None:
    mask = _box(8, 8, 0, 4, 0, 4)
    assert math.isnan(energy_inside(np.zeros((2, 2)), mask))
    assert math.isnan(energy_inside(-np.ones((2, 2)), mask))  # nothing left after clipping
    assert not pointing_hit(np.zeros((2, 2)), mask)


def test_pointing_tolerance() -> None:
    mask = _box(20, 20, 0, 5, 0, 20)  # rows 0..4
    heat = np.zeros((20, 20))
    heat[6, 10] = 1.0  # two rows below the mask's last row (4)
    assert not pointing_hit(heat, mask)
    assert not pointing_hit(heat, mask, tolerance=1)
    assert pointing_hit(heat, mask, tolerance=2)


def _fixture() -> tuple[np.ndarray, dict, list[str], list[str]]:
    n, h, w = 3, 16, 8
    hat = np.stack([_box(h, w, 0, 2, 2, 6), np.zeros((h, w), bool), _box(h, w, 0, 3, 2, 6)])  # image 1: no hat
    upper = np.stack([_box(h, w, 4, 9, 1, 7)] * n)  # 30 of 128 px, excludes (0, 0)
    heat = np.zeros((n, 3, h, w))
    heat[:, 0] = hat  # hat map == hat mask
    heat[1, 0] = 1.0  # garbage on the image without a hat: must not count
    heat[:, 1] = 1.0  # uniform map for upper; its first argmax (0, 0) misses
    heat[:, 2] = np.random.default_rng(0).random((n, h, w))  # gender: body, skipped
    names, regions = ["hat", "upblack", "gender"], ["hat", "upper", "body"]
    return heat, {"hat": hat, "upper": upper}, names, regions


def test_localisation_scores_per_attribute_and_mean() -> None:
    heat, masks, names, regions = _fixture()
    rows = localisation_scores(heat, masks, names, regions)
    by = {r["attribute"]: r for r in rows}
    assert [r["attribute"] for r in rows] == ["hat", "upblack", "mean"]  # gender (body) skipped
    hat = by["hat"]
    assert hat["n"] == 2 and hat["region"] == "hat"
    assert hat["energy"] == pytest.approx(1.0) and hat["pointing"] == pytest.approx(1.0)
    assert hat["energy_uniform"] == pytest.approx((8 / 128 + 12 / 128) / 2)
    assert hat["pointing_uniform"] == pytest.approx(hat["energy_uniform"])
    up = by["upblack"]
    assert up["n"] == 3 and up["energy"] == pytest.approx(30 / 128) and up["energy_uniform"] == pytest.approx(30 / 128)
    assert up["pointing"] == 0.0 and up["pointing_uniform"] == pytest.approx(30 / 128)
    mean = by["mean"]
    assert mean["n"] == 5
    assert mean["energy"] == pytest.approx((1.0 + 30 / 128) / 2)
    assert mean["pointing"] == pytest.approx(0.5)


def test_present_filter_zero_maps_and_empty_attributes() -> None:
    heat, masks, names, regions = _fixture()
    heat[2, 1] = 0.0  # all-zero upper map on image 2: energy 0, miss
    present = np.ones((3, 3), dtype=bool)
    present[0, 0] = False  # hat absent on image 0 -> only image 2 counts
    rows = {r["attribute"]: r for r in localisation_scores(heat, masks, names, regions, present=present)}
    assert rows["hat"]["n"] == 1 and rows["hat"]["energy_uniform"] == pytest.approx(12 / 128)
    assert rows["upblack"]["n_zero"] == 1
    assert rows["upblack"]["energy"] == pytest.approx(2 / 3 * 30 / 128)
    present[:, 0] = False
    rows = {r["attribute"]: r for r in localisation_scores(heat, masks, names, regions, present=present)}
    assert rows["hat"]["n"] == 0 and math.isnan(rows["hat"]["energy"])
    assert rows["mean"]["n"] == 3  # the empty hat row does not enter the mean
    assert rows["mean"]["energy"] == pytest.approx(rows["upblack"]["energy"])


def test_batch_scores_agree_with_per_image_functions() -> None:
    rng = np.random.default_rng(3)
    n, k = 5, 2
    heat = rng.random((n, k, 8, 4)) - 0.3  # coarse maps with negatives
    masks = {"upper": rng.random((n, 32, 16)) > 0.7, "shoes": rng.random((n, 32, 16)) > 0.9}
    heads = [SimpleNamespace(name="a", region="upper"), SimpleNamespace(name="b", region="shoes")]
    schema = SimpleNamespace(attributes=heads)  # duck-typed AttributeSchema
    for tol in (0, 1):
        rows = localisation_scores(heat, masks, schema, tolerance=tol, chunk=2)
        for a, region in enumerate(("upper", "shoes")):
            e = np.mean([energy_inside(heat[i, a], masks[region][i]) for i in range(n)])
            p = np.mean([pointing_hit(heat[i, a], masks[region][i], tolerance=tol) for i in range(n)])
            assert rows[a]["energy"] == pytest.approx(e)
            assert rows[a]["pointing"] == pytest.approx(p)
        if tol:  # the chance baseline uses the grown mask, so it exceeds the plain area
            assert rows[0]["pointing_uniform"] > rows[0]["energy_uniform"]


def test_bad_inputs_are_rejected() -> None:
    heat, masks, names, regions = _fixture()
    with pytest.raises(ValueError, match="region"):
        localisation_scores(heat, masks, names)
    with pytest.raises(ValueError, match="K=2"):
        localisation_scores(heat[:, :2], masks, names, regions)
    with pytest.raises(ValueError, match="present"):
        localisation_scores(heat, masks, names, regions, present=np.ones((3, 2), bool))
    assert REGION_KEYS == ("hat", "hair", "upper", "lower", "backpack", "bag", "handbag", "shoes")
