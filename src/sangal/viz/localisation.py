"""How well the attribute heat maps (AAH) land on the right body part.

The synthetic generator knows, for every image, the pixel mask of each region
(hat, hair, upper, lower, backpack, bag, handbag, shoes). Two scores compare an
attribute's heat map with the mask of the region that attribute describes:

* **energy share** -- the heat map is upsampled bilinearly to the mask size,
  clipped at 0, and the fraction of its total mass that falls inside the mask is
  taken. A uniform map scores the mask's area fraction, reported beside it as
  the baseline (``energy_uniform``).
* **pointing game** (Zhang et al., ECCV 2016) -- a hit when the single hottest
  pixel of the upsampled map is inside the mask. ``tolerance`` (default 0, i.e.
  strict) accepts a max pixel within that many pixels (square neighbourhood) of
  the mask. The default is strict so that the chance baseline is exactly the
  mask's area fraction; with a tolerance the baseline reported is the area
  fraction of the mask grown by the same amount, so the comparison stays fair.

Only images whose region mask is non-empty (and, when ``present`` is given, where
the attribute is present) count: a hat heat map cannot localise a hat that is
not there. Attributes of region ``body`` (gender, age) have no mask and are
skipped.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np

from sangal.viz.heatmap import upsample

logger = logging.getLogger(__name__)

REGION_KEYS = ("hat", "hair", "upper", "lower", "backpack", "bag", "handbag", "shoes")


def _dilate(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """Grow boolean masks (..., H, W) by ``tolerance`` px in a square neighbourhood."""
    out = np.asarray(mask, dtype=bool)
    for axis in (-2, -1):  # separable: a square max-filter is rows then columns
        grown = out.copy()
        n = out.shape[axis]
        for shift in range(1, min(tolerance, n - 1) + 1):
            fwd = [slice(None)] * out.ndim
            src = [slice(None)] * out.ndim
            fwd[axis], src[axis] = slice(shift, None), slice(None, n - shift)
            grown[tuple(fwd)] |= out[tuple(src)]
            grown[tuple(src)] |= out[tuple(fwd)]
        out = grown
    return out


def _attribute_regions(schema: Any, regions: Sequence[str] | None) -> list[tuple[str, str]]:
    """(name, region) per attribute from an AttributeSchema or from names + regions."""
    if hasattr(schema, "attributes"):
        return [(a.name, a.region) for a in schema.attributes]
    names = list(schema)
    if regions is None or len(regions) != len(names):
        raise ValueError(
            f"with attribute names instead of a schema, pass one region per attribute "
            f"({len(names)} names, {None if regions is None else len(regions)} regions)"
        )
    return list(zip(names, regions))


def _scores_for(
    maps: np.ndarray, masks: np.ndarray, tolerance: int, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Per image: energy share (0 for all-zero maps), pointing hit, area, grown area; zero-map count.

    maps: (n, h, w); masks: (n, H, W) bool. Upsampled in chunks to bound memory.
    """
    n = maps.shape[0]
    energy, hit = np.zeros(n), np.zeros(n, dtype=bool)
    zero = 0
    grown = _dilate(masks, tolerance) if tolerance > 0 else masks  # (n, H, W)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        up = np.clip(upsample(maps[sl], masks.shape[1:]), 0.0, None)  # (c, H, W)
        flat = up.reshape(up.shape[0], -1)
        total = flat.sum(axis=1)
        inside = (flat * masks[sl].reshape(flat.shape[0], -1)).sum(axis=1)
        nonzero = total > 0.0
        zero += int((~nonzero).sum())
        energy[sl] = np.where(nonzero, inside / np.where(nonzero, total, 1.0), 0.0)
        top = np.argmax(flat, axis=1)
        hit[sl] = nonzero & grown[sl].reshape(flat.shape[0], -1)[np.arange(flat.shape[0]), top]
    area = masks.reshape(n, -1).mean(axis=1)
    grown_area = grown.reshape(n, -1).mean(axis=1)
    return energy, hit, area, grown_area, zero


def localisation_scores(
    heatmaps: np.ndarray,
    masks: Mapping[str, np.ndarray],
    schema: Any,
    regions: Sequence[str] | None = None,
    present: np.ndarray | None = None,
    tolerance: int = 0,
    chunk: int = 64,
) -> list[dict]:
    """Energy share and pointing game per attribute, with their uniform baselines.

    heatmaps: (N, K, h, w) AAH of one stage. masks: region -> (N, H, W) bool.
    schema: an ``AttributeSchema`` (name and region of each of the K heads), or a
    list of K attribute names together with ``regions`` (K region names).
    present: optional (N, K) bool; only images where the attribute is present count.

    Returns one dict per attribute whose region is in ``masks`` (region ``body`` and
    regions without masks skipped): ``attribute, region, n, energy, energy_uniform,
    pointing, pointing_uniform, n_zero``; ``n`` counts the images scored (region
    non-empty [and present]); ``n_zero`` of those had an all-zero map, counted as
    energy 0 and a miss. Scores are means over those images (NaN when n == 0). A
    last row ``attribute="mean"`` averages the rows with n > 0 (macro mean, each
    attribute weighted equally) and sums their n.
    """
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, h, w), got shape {heatmaps.shape}")
    n_img, k = heatmaps.shape[:2]
    pairs = _attribute_regions(schema, regions)
    if len(pairs) != k:
        raise ValueError(f"heatmaps have K={k} attributes but the schema names {len(pairs)}")
    if present is not None:
        present = np.asarray(present, dtype=bool)
        if present.shape != (n_img, k):
            raise ValueError(f"present must be (N={n_img}, K={k}), got shape {present.shape}")
    for region, m in masks.items():
        if np.ndim(m) != 3 or np.shape(m)[0] != n_img:
            raise ValueError(f"mask {region!r} must be (N={n_img}, H, W), got shape {np.shape(m)}")

    rows: list[dict] = []
    for a, (name, region) in enumerate(pairs):
        if region not in masks:
            continue
        mask = np.asarray(masks[region], dtype=bool)  # (N, H, W)
        valid = mask.reshape(n_img, -1).any(axis=1)  # (N,)
        if present is not None:
            valid &= present[:, a]
        idx = np.flatnonzero(valid)
        row: dict = {"attribute": name, "region": region, "n": int(idx.size)}
        if idx.size == 0:
            row.update(energy=math.nan, energy_uniform=math.nan, pointing=math.nan, pointing_uniform=math.nan, n_zero=0)
        else:
            maps = heatmaps[idx, a].astype(np.float64)  # (n, h, w)
            energy, hit, area, grown_area, zero = _scores_for(maps, mask[idx], tolerance, chunk)
            row.update(
                energy=float(energy.mean()),
                energy_uniform=float(area.mean()),
                pointing=float(hit.mean()),
                pointing_uniform=float(grown_area.mean()),
                n_zero=zero,
            )
        rows.append(row)

    scored = [r for r in rows if r["n"] > 0]
    mean_row: dict = {"attribute": "mean", "region": "all", "n": sum(r["n"] for r in scored)}
    for key in ("energy", "energy_uniform", "pointing", "pointing_uniform"):
        mean_row[key] = float(np.mean([r[key] for r in scored])) if scored else math.nan
    mean_row["n_zero"] = sum(r["n_zero"] for r in scored)
    rows.append(mean_row)
    logger.debug("localisation: %d attributes scored over %d images", len(scored), n_img)
    return rows
