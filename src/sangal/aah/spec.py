"""How a SAN-GAL model's heat maps are made: one frozen value, built once from the config, saved in checkpoints.

:class:`MapSpec` is the only place that decides which class each split's maps follow, how test-time maps
are computed and normalised, and where their cache lives. Training writes it into every Re-ID checkpoint
(in its test-time record, ``state["embed_spec"]``, :mod:`sangal.evaluate.embedding`; earlier checkpoints:
``state["map_spec"]``, read by :meth:`MapSpec.from_state`), so a checkpoint is scored,
indexed and exported with the maps it was trained for. :class:`Targets` is what one cache or one batch of
maps follows: a mode, plus the (N, K) attribute labels of label-guided maps.

One exact pass per training set: whatever the training targets, the train split's cache holds every class's
signed map (``classes``, :mod:`sangal.aah.classes`), from which the training maps of any mode and the
label-guided maps the map predictor is distilled from are read. The precision the maps are computed in
(``float32``, or ``bf16`` autocast under ``train.amp``) is part of a cache's identity: its folder name and
its manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from sangal.aah.gradcam import NORMALIZE_MODES
from sangal.config.schema import Config
from sangal.errors import ConfigError

__all__ = ["MAP_METHODS", "MAP_MODES", "PRECISIONS", "TRAIN_TARGETS", "MapMode", "MapSpec", "Method", "Precision",
           "TrainTargets", "Targets", "check_choice"]

#: Class choice of the training maps (``train.aah_targets``; :mod:`sangal.aah.modes`, :mod:`sangal.aah.classes`).
#: (The typed forms of sangal.choices.TRAIN_TARGETS and MAP_METHODS; tests/aah/test_spec.py holds them equal.)
TrainTargets = Literal["labels", "predicted", "agnostic", "soft", "noisy"]
#: What one cache or one batch of maps follows: labels only ever at training time; ``classes`` is the cache of
#: every class's signed map that every training-map mode is read off.
MapMode = Literal["labels", "predicted", "agnostic", "soft", "classes"]
#: How test-time maps are computed (``eval.aah``): exact Grad-CAM, or forward only (:mod:`sangal.aah.fast`).
Method = Literal["exact", "fast"]
#: What the maps are computed in: float32, or bf16 autocast (``train.amp``; :func:`sangal.runtime.precision.autocast`).
Precision = Literal["float32", "bf16"]
TRAIN_TARGETS: tuple[str, ...] = get_args(TrainTargets)
MAP_MODES: tuple[str, ...] = get_args(MapMode)
MAP_METHODS: tuple[str, ...] = get_args(Method)
PRECISIONS: tuple[str, ...] = get_args(Precision)
SPLITS = ("train", "query", "gallery")


def check_choice(name: str, value: Any, allowed: tuple[str, ...], error: type[Exception] = ConfigError) -> None:
    """The one check of a heat-map choice (targets, mode, method, normalisation, precision): one line naming it."""
    if value not in allowed:
        raise error(f"heat-map {name} {value!r} is not one of: {', '.join(allowed)}")


def _config_default(section: str, key: str) -> Any:
    """A key's default in :class:`sangal.config.Config`: MapSpec() is the spec of the default config."""
    return getattr(getattr(Config(), section), key)


@dataclass(frozen=True, eq=False)
class Targets:
    """The class every map of a cache or a batch follows: ``mode``, and ``labels`` (N, K) for mode "labels".

    Label-guided maps fall back to the predicted class where a label is ``IGNORE_INDEX``.
    """

    mode: MapMode
    labels: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MAP_MODES, ValueError)
        if (self.mode == "labels") != (self.labels is not None):
            raise ValueError("label-guided maps need their (N, K) labels, and only they take labels")


@dataclass(frozen=True)
class MapSpec:
    """The heat maps of a SAN-GAL model (paper §3.2): training targets, test-time method, normalisation, precision.

    The defaults are the default config's (:meth:`from_config` of ``Config()``).

    Attributes:
        targets: class of the training maps (:data:`TRAIN_TARGETS`; the paper: labels).
        method: test-time maps, exact Grad-CAM or fast (forward only). Training maps are always exact.
        normalize: per-map normalisation before ASAM (:data:`sangal.aah.gradcam.NORMALIZE_MODES`).
        precision: what every map of the model is computed in: ``float32``, or ``bf16`` autocast (``train.amp``).
    """

    targets: TrainTargets = field(default_factory=lambda: _config_default("train", "aah_targets"))
    method: Method = field(default_factory=lambda: _config_default("eval", "aah"))
    normalize: str = field(default_factory=lambda: _config_default("model", "aah_normalize"))
    precision: Precision = field(default_factory=lambda: "bf16" if _config_default("train", "amp") else "float32")

    def __post_init__(self) -> None:
        for name, value, allowed in (("targets", self.targets, TRAIN_TARGETS), ("method", self.method, MAP_METHODS),
                                     ("normalize", self.normalize, NORMALIZE_MODES),
                                     ("precision", self.precision, PRECISIONS)):
            check_choice(name, value, allowed)

    @classmethod
    def from_config(cls, cfg: Any) -> MapSpec:
        """The spec a config trains: train.aah_targets, eval.aah, model.aah_normalize, train.amp (bf16 maps)."""
        return cls(cfg.train.aah_targets, cfg.eval.aah, cfg.model.aah_normalize,
                   "bf16" if cfg.train.amp else "float32")

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MapSpec:
        """The spec a Re-ID checkpoint's state.json records; older checkpoints: read from their config (the
        precision, recorded since issue 26: bf16 when their config trained under train.amp)."""
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        section = {name: config.get(name) if isinstance(config.get(name), dict) else {}
                   for name in ("train", "eval", "model")}
        precision = "bf16" if section["train"].get("amp") is True else "float32"
        if isinstance(state.get("map_spec"), dict):
            return cls(**{"precision": precision, **state["map_spec"]})
        return cls(str(section["train"].get("aah_targets", "labels")), str(section["eval"].get("aah", "exact")),
                   str(section["model"].get("aah_normalize", "max")), precision)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def with_method(self, method: str | None) -> MapSpec:
        """The same maps computed another way at test time (None: unchanged)."""
        return self if method is None or method == self.method else replace(self, method=method)

    def mode(self, split: str) -> str:
        """Class choice of a split's maps: the training targets for train; never the labels at test time
        (noisy models are label-guided with the attribute net's errors: their test maps are predicted ones)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split == "train":
            return self.targets
        return self.targets if self.targets in ("agnostic", "soft") else "predicted"

    def cache_mode(self, split: str) -> str:
        """What a split's cache holds: the train split, every class's map (``classes``), which each training-map
        mode and the map predictor's distillation read (one exact pass); a test split, its mode's maps."""
        return "classes" if split == "train" else self.mode(split)

    def split_method(self, split: str) -> str:
        """exact for the training maps (Grad-CAM, the paper), the spec's method for query and gallery."""
        return "exact" if split == "train" else self.method

    def cache_dir(self, root: str | Path, split: str) -> Path:
        """Cache folder of a split under ``root``: one per (split, class choice, normalisation, method, precision).

        Predicted test maps keep the plain split name, as the first caches did; bf16 maps end in ``_bf16``.
        """
        mode = self.cache_mode(split)
        plain = mode == "predicted" and split != "train"
        name = split if plain else f"{split}_{mode}"
        if self.normalize != "max":
            name += f"_{self.normalize}"
        if self.split_method(split) == "fast":  # forward-only test maps (`sangal distill`) live apart
            name += "_fast"
        if self.precision != "float32":
            name += f"_{self.precision}"
        return Path(root) / name
