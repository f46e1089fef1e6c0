"""The label map of a synthetic pedestrian: one small integer per body part, and the part masks read off it.

``draw`` paints people into such a map; the masks it yields are what the localisation scores
(:mod:`sangal.viz.localisation`) compare heat maps with.
"""

from __future__ import annotations

import numpy as np

# Label values of the label map (painter's order decides which one a pixel keeps).
(BG, SKIN, HAIR, HAT, UPPER, LOWER, SHOES, BACKPACK, BAG, HANDBAG, STRAP, OCCLUDER,
 UPPER_DETAIL, LOWER_DETAIL, HAT_DETAIL, FACE, BACKPACK_DETAIL, PASSER_UPPER, PASSER_LOWER, PASSER_HEAD) = range(20)
NUM_LABELS = 20
# Region masks (the keys of the .npz files) and the labels that make them up.
# Straps (of backpacks and shoulder bags) are deliberately in no region: a
# backpack seen from the front shows only its straps, so its mask is empty there.
REGION_LABELS: dict[str, tuple[int, ...]] = {
    "hat": (HAT, HAT_DETAIL),
    "hair": (HAIR,),
    "upper": (UPPER, UPPER_DETAIL),
    "lower": (LOWER, LOWER_DETAIL),
    "backpack": (BACKPACK, BACKPACK_DETAIL),
    "bag": (BAG,),
    "handbag": (HANDBAG,),
    "shoes": (SHOES,),
}


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (H, W) mask of the visible pixels of every attribute region."""
    return {name: np.take(_REGION_LUT[name], labels) for name in REGION_LABELS}


_REGION_LUT = {name: np.isin(np.arange(256), labs) for name, labs in REGION_LABELS.items()}

