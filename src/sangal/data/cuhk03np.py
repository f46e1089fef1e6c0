"""CUHK03-NP reader: the new protocol of Zhong et al. in the Market-1501 layout.

References: W. Li, R. Zhao, T. Xiao, X. Wang, "DeepReID: Deep Filter Pairing Neural
Network for Person Re-identification", CVPR 2014; Z. Zhong, L. Zheng, D. Cao, S. Li,
"Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017 (the
767/700 split, github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP).

Facts (1,467 identities; each seen by the 2 cameras of one of 5 camera pairs):

* ``detected``: train 767 ids / 7,365 images, query 700 / 1,400, gallery 700 / 5,332;
* ``labeled``:  train 767 ids / 7,368 images, query 700 / 1,400, gallery 700 / 5,328.

Expected folder tree (``data.root`` may be ``cuhk03-np``, its parent, or one of the
two box folders)::

    cuhk03-np/
        detected/  bounding_box_train/ query/ bounding_box_test/   0001_c1_1.png ...
        labeled/   bounding_box_train/ query/ bounding_box_test/

File names: ``PPPP_cC_N.png`` = identity, camera C (1 or 2, within the pair), index.
Select the boxes with ``data.dataset=cuhk03np_detected`` or ``cuhk03np_labeled``.
"""

from __future__ import annotations

import re
from pathlib import Path

from sangal.data.records import DatasetLayout, ReIDDataset, read_layout

VARIANTS = ("detected", "labeled")


def cuhk03np_layout(variant: str) -> DatasetLayout:
    """The Market-style layout of one CUHK03-NP box variant ("detected" or "labeled")."""
    return DatasetLayout(
        name=f"cuhk03np_{variant}",
        pattern=re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)(_.*)?"),
        name_example="0001_c1_1.png",
        max_camera=2,
        dir_names=(f"cuhk03-np/{variant}",),
    )


def read_cuhk03np(root: str | Path, variant: str = "detected") -> ReIDDataset:
    """CUHK03-NP ``variant`` boxes from ``cuhk03-np``, its parent, or the variant folder itself."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown CUHK03-NP variant {variant!r}; expected one of {VARIANTS}")
    root = Path(root).expanduser()
    for candidate in (root / variant, root / "cuhk03-np" / variant):
        if candidate.is_dir():
            root = candidate
            break
    return read_layout(root, cuhk03np_layout(variant))
