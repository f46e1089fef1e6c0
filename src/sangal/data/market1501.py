"""Market-1501 reader (and the synthetic dataset, which uses the same layout).

Reference: L. Zheng, L. Shen, L. Tian, S. Wang, J. Wang, Q. Tian, "Scalable Person
Re-identification: A Benchmark", ICCV 2015.

Facts (1,501 identities, 6 cameras):

* train (``bounding_box_train``): 751 ids, 12,936 images;
* query (``query``): 750 ids, 3,368 images;
* gallery (``bounding_box_test``): 19,732 files. Under the standard protocol the
  3,819 junk images (pid ``-1``) are dropped, leaving 15,913 images of 751 ids:
  the 750 test ids plus the distractor id ``0000``, which is kept.

Expected folder tree (the root may also be the folder that contains it)::

    Market-1501-v15.09.15/
        bounding_box_train/  0002_c1s1_000451_03.jpg ...
        query/               0001_c1s1_001051_00.jpg ...
        bounding_box_test/   0000_c1s1_000151_01.jpg  -1_c1s1_000401_03.jpg ...
        (gt_bbox/, gt_query/, Thumbs.db ... are ignored)

File names: ``PPPP_cCsS_FFFFFF_NN.jpg`` = identity, camera C (1..6), sequence S,
frame, box index; the identity is ``-1`` for junk.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from sangal.data.records import DatasetLayout, ReIDDataset, read_layout

MARKET1501_LAYOUT = DatasetLayout(
    name="market1501",
    pattern=re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)s\d+_\d+_\d+"),
    name_example="0002_c1s1_000451_03.jpg",
    max_camera=6,
    dir_names=("Market-1501-v15.09.15", "Market-1501"),
)

# The synthetic generator (sangal.synthetic.generate) writes exactly the Market layout;
# its camera count is its own choice, so no camera limit is enforced.
SYNTHETIC_LAYOUT = replace(MARKET1501_LAYOUT, name="synthetic", max_camera=None, dir_names=())


def read_market1501(root: str | Path) -> ReIDDataset:
    """Market-1501 from its folder or the folder that contains it."""
    return read_layout(root, MARKET1501_LAYOUT)
