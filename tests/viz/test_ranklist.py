"""Ranked-list strips: frame colours follow the match flags, strips stack."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sangal.viz.ranklist import MATCH, MISMATCH, QUERY, ranked_strip, side_by_side


def _grey(value: int) -> np.ndarray:
    return np.full((64, 32, 3), value, dtype=np.uint8)  # (H, W, 3), no frame colour inside


def _colour_mask(img: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.asarray(img) == np.array(colour, dtype=np.uint8), axis=2)  # (H, W)


def test_frames_are_green_for_matches_and_red_otherwise() -> None:
    gallery = [_grey(60), _grey(120), _grey(180)]
    strip = ranked_strip(_grey(90), gallery, [True, False, True], [0.1, 0.2, 0.3], title="q 1")
    green, red, blue = (_colour_mask(strip, c) for c in (MATCH, MISMATCH, QUERY))
    assert green.sum() > 0 and red.sum() > 0 and blue.sum() > 0
    # the query comes first, the red frame (rank 2) lies between the two green ones
    gx, rx, bx = (np.nonzero(m)[1] for m in (green, red, blue))
    assert bx.max() < gx.min()
    assert gx.min() < rx.min() and rx.max() < gx.max()
    all_match = ranked_strip(_grey(90), gallery, [True] * 3)
    assert _colour_mask(all_match, MISMATCH).sum() < red.sum() / 4  # only rank-number text, no frame


def test_strip_width_grows_with_k_and_height_with_distances() -> None:
    short = ranked_strip(_grey(90), [_grey(50)] * 2, [False] * 2)
    long = ranked_strip(_grey(90), [_grey(50)] * 6, [False] * 6)
    with_dist = ranked_strip(_grey(90), [_grey(50)] * 2, [False] * 2, [0.5, 0.6])
    assert long.width > short.width + 3 * 32
    assert with_dist.height > short.height


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="is_match"):
        ranked_strip(_grey(90), [_grey(50)] * 3, [True])
    with pytest.raises(ValueError, match="distances"):
        ranked_strip(_grey(90), [_grey(50)] * 2, [True, False], [0.1])


def test_side_by_side_stacks_strips_in_order() -> None:
    a = ranked_strip(_grey(90), [_grey(50)] * 3, [True] * 3)
    b = ranked_strip(_grey(90), [_grey(50)] * 5, [False] * 5)
    both = side_by_side({"id": a, "san-gal": b})
    assert both.height >= a.height + b.height
    assert both.width > b.width  # label column on the left
    green, red = _colour_mask(both, MATCH), _colour_mask(both, MISMATCH)
    assert np.nonzero(green)[0].max() < np.nonzero(red)[0].min()  # "id" strip above "san-gal"
    with pytest.raises(ValueError):
        side_by_side({})
