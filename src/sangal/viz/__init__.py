"""Visualisation: heat-map overlays, ranked lists, CMC curves, AAH localisation scores, the HTML report.
Takes arrays and images from the layers above (maps, rankings, part masks); writes PNGs and HTML.

Depends only on numpy, Pillow and matplotlib (Agg), so it is usable from the demo,
the search page and notebooks without loading a model.
"""

from sangal.viz.curves import cmc_figure
from sangal.viz.heatmap import heatmap_grid, overlay, upsample
from sangal.viz.localisation import REGION_KEYS, localisation_scores
from sangal.viz.ranklist import ranked_strip, side_by_side
from sangal.viz.report import ReportData, render_report, write_report

__all__ = [
    "REGION_KEYS",
    "ReportData",
    "cmc_figure",
    "heatmap_grid",
    "localisation_scores",
    "overlay",
    "ranked_strip",
    "render_report",
    "side_by_side",
    "upsample",
    "write_report",
]
