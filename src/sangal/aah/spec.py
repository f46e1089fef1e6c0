"""How a SAN-GAL model's heat maps are made: one frozen value, built once from the config, saved in checkpoints.

:class:`MapSpec` is the only place that decides which class each split's maps follow, how test-time maps
are computed and normalised, and where their cache lives. Training writes it into every Re-ID checkpoint
(``state["map_spec"]``); test time reads it back (:meth:`MapSpec.from_state`), so a checkpoint is scored,
indexed and exported with the maps it was trained for. :class:`Targets` is what one cache or one batch of
maps follows: a mode, plus the (N, K) attribute labels of label-guided maps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sangal.aah.gradcam import NORMALIZE_MODES
from sangal.errors import ConfigError

__all__ = ["MAP_METHODS", "MAP_MODES", "TRAIN_TARGETS", "MapSpec", "Targets"]

#: Class choice of the training maps (``train.aah_targets``; :mod:`sangal.aah.modes`, :mod:`sangal.aah.classes`).
TRAIN_TARGETS = ("labels", "predicted", "agnostic", "soft", "noisy")
#: What one cache or one batch of maps follows: labels only ever at training time; ``classes`` is the cache of
#: every class's signed map that soft and noisy training maps are read off.
MAP_MODES = ("labels", "predicted", "agnostic", "soft", "classes")
#: How test-time maps are computed (``eval.aah``): exact Grad-CAM, or forward only (:mod:`sangal.aah.fast`).
MAP_METHODS = ("exact", "fast")
SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True, eq=False)
class Targets:
    """The class every map of a cache or a batch follows: ``mode``, and ``labels`` (N, K) for mode "labels".

    Label-guided maps fall back to the predicted class where a label is ``IGNORE_INDEX``.
    """

    mode: str
    labels: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MAP_MODES:
            raise ValueError(f"map targets must be one of {', '.join(MAP_MODES)}, got {self.mode!r}")
        if (self.mode == "labels") != (self.labels is not None):
            raise ValueError("label-guided maps need their (N, K) labels, and only they take labels")


@dataclass(frozen=True)
class MapSpec:
    """The heat maps of a SAN-GAL model (paper §3.2): training targets, test-time method, normalisation.

    Attributes:
        targets: class of the training maps (:data:`TRAIN_TARGETS`; the paper: labels).
        method: test-time maps, exact Grad-CAM or fast (forward only). Training maps are always exact.
        normalize: per-map normalisation before ASAM (:data:`sangal.aah.gradcam.NORMALIZE_MODES`).
    """

    targets: str = "labels"
    method: str = "exact"
    normalize: str = "max"

    def __post_init__(self) -> None:
        for name, value, allowed in (("targets", self.targets, TRAIN_TARGETS), ("method", self.method, MAP_METHODS),
                                     ("normalize", self.normalize, NORMALIZE_MODES)):
            if value not in allowed:
                raise ConfigError(f"heat-map {name} {value!r} is not one of: {', '.join(allowed)}")

    @classmethod
    def from_config(cls, cfg: Any) -> MapSpec:
        """The spec a config trains: train.aah_targets, eval.aah, model.aah_normalize."""
        return cls(cfg.train.aah_targets, cfg.eval.aah, cfg.model.aah_normalize)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MapSpec:
        """The spec a Re-ID checkpoint's state.json records; older checkpoints: read from their config."""
        if isinstance(state.get("map_spec"), dict):
            return cls(**state["map_spec"])
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        section = {name: config.get(name) if isinstance(config.get(name), dict) else {}
                   for name in ("train", "eval", "model")}
        return cls(str(section["train"].get("aah_targets", "labels")), str(section["eval"].get("aah", "exact")),
                   str(section["model"].get("aah_normalize", "max")))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def with_method(self, method: str | None) -> MapSpec:
        """The same maps computed another way at test time (None: unchanged)."""
        return self if method is None or method == self.method else MapSpec(self.targets, method, self.normalize)

    def mode(self, split: str) -> str:
        """Class choice of a split's maps: the training targets for train; never the labels at test time
        (noisy models are label-guided with the attribute net's errors: their test maps are predicted ones)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split == "train":
            return self.targets
        return self.targets if self.targets in ("agnostic", "soft") else "predicted"

    def cache_mode(self, split: str) -> str:
        """What a split's cache holds: soft and noisy training maps are read off every class's map (``classes``)."""
        mode = self.mode(split)
        return "classes" if mode in ("soft", "noisy") and split == "train" else mode

    def split_method(self, split: str) -> str:
        """exact for the training maps (Grad-CAM, the paper), the spec's method for query and gallery."""
        return "exact" if split == "train" else self.method

    def cache_dir(self, root: str | Path, split: str) -> Path:
        """Cache folder of a split under ``root``: one per (split, class choice, normalisation, method).

        Label-guided train maps and predicted test maps keep the plain split name, as the first caches did.
        """
        mode = self.cache_mode(split)
        plain = mode == "labels" or (mode == "predicted" and split != "train")
        name = split if plain else f"{split}_{mode}"
        if self.normalize != "max":
            name += f"_{self.normalize}"
        if self.split_method(split) == "fast":  # forward-only test maps (`sangal distill`) live apart
            name += "_fast"
        return Path(root) / name
