"""sangal: attribute-guided person re-identification (SAN-GAL, Hou et al. 2021).

The public API is imported lazily so that `import sangal` (and the CLI's start-up)
stays cheap: `sangal.Searcher`, `sangal.evaluate_rank`, `sangal.load_dataset`, ...
"""

from __future__ import annotations

import importlib

from sangal.version import __version__

_EXPORTS = {
    "Predictor": "sangal.evaluate.predictor",
    "MapSpec": "sangal.aah.spec",
    "EmbedSpec": "sangal.evaluate.embedding",
    "Searcher": "sangal.search",
    "build_index": "sangal.search",
    "evaluate_rank": "sangal.metrics.rank",
    "load_dataset": "sangal.data",
    "read_attribute_mat": "sangal.data.attributes",
    "get_schema": "sangal.data.attributes",
    "generate_synthetic": "sangal.synthetic.generate",
    "AttributeNet": "sangal.models.attribute_net",
    "ReIDNet": "sangal.models.reid_net",
    "ASAM": "sangal.models.asam",
    "attribute_heatmaps": "sangal.aah.gradcam",
    "load_config": "sangal.config",
    "load_model": "sangal.store.checkpoint",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sangal' has no attribute {name!r}")
