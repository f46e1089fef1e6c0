"""The one place the server runs the model: a decoded image in; its feature, attributes and heat maps out.

It is the test-time pipeline that embedded the gallery (:class:`~sangal.evaluate.predictor.Predictor`, built by
:class:`~sangal.search.Searcher` from the checkpoint and the test-time record of the index): the checkpoint's
test transform, features L2-normalised (averaged with the mirror's where the record flips), and for ``san-gal``
models the heat maps of the index's kind (``fast`` or ``exact``, paper eqs. 1-2). The maps returned are the
very tensors the Re-ID net consumed for the image (the mirror gets them mirrored), computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sangal.evaluate.predictor import Predictor

__all__ = ["QueryEmbedding", "describe", "embed_image", "image_maps"]


@dataclass
class QueryEmbedding:
    """What the model says about one image.

    ``feature``: (D,) float32, L2-normalised, comparable with the index's rows.
    ``attr_probs``: K arrays (1, C_k) of attribute probabilities, or None.
    ``maps``: layer2/3/4 heat maps, each (K, h, w) float32, that the Re-ID net used; None for models
    that use none (``id``, ``id+attr``).
    """

    feature: np.ndarray
    attr_probs: list[np.ndarray] | None
    maps: list[np.ndarray] | None


def describe(predictor: Predictor) -> tuple[str, int, int]:
    """The model's mode (``id``, ``id+attr``, ``san-gal``) and input height and width."""
    return predictor.mode, *predictor.size


def _used(predictor: Predictor, maps) -> list[np.ndarray] | None:
    """The maps a ``san-gal`` Re-ID net used, each (K, h, w); None for the modes that use none."""
    if predictor.mode != "san-gal" or maps is None:
        return None
    return [m[0].detach().float().cpu().numpy() for m in maps]


def embed_image(predictor: Predictor, image: Image.Image) -> QueryEmbedding:
    """Feature, attribute probabilities and heat maps of ``image``, through the index's predictor."""
    e = predictor.embed_image(image)
    probs = None if e.attr_probs is None else [p.float().cpu().numpy() for p in e.attr_probs]
    feature = np.ascontiguousarray(e.features[0].cpu().numpy(), dtype=np.float32)
    return QueryEmbedding(feature, probs, _used(predictor, e.maps))


@torch.no_grad()
def image_maps(predictor: Predictor, image: Image.Image) -> list[np.ndarray] | None:
    """The heat maps alone (layer2/3/4, each (K, h, w)), for an image whose feature is already indexed."""
    if predictor.mode != "san-gal":
        return None
    return _used(predictor, predictor.maps(predictor.transform(image)[None].to(predictor.device)))
