"""The one place the server runs the model: a decoded image in; its feature, attributes and heat maps out.

It goes through the test-time pipeline that embedded the gallery (:class:`~sangal.search.embed.Embedder`,
built by :class:`~sangal.search.Searcher` from the checkpoint recorded in the index): the checkpoint's
test transform, features of the image and its mirror averaged and L2-normalised, and for ``san-gal``
models the heat maps of the index's kind (``fast`` or ``exact``, paper eqs. 1-2). The maps returned are
the very tensors the Re-ID net consumed for the image (the mirror gets them mirrored), computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sangal.search.embed import Embedder

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


def describe(embedder: Embedder) -> tuple[str, int, int]:
    """The model's mode (``id``, ``id+attr``, ``san-gal``) and input height and width."""
    return embedder.mode, embedder.height, embedder.width


def _batch(embedder: Embedder, image: Image.Image) -> dict:
    x = embedder.transform(image)[None]  # (1, 3, H, W)
    zero = torch.zeros(1, dtype=torch.long)
    return {"image": x, "pid": zero, "camid": zero, "index": zero, "path": ["query"]}


def _heat_maps(embedder: Embedder, batch: dict) -> tuple[torch.Tensor, ...] | None:
    """The maps a ``san-gal`` Re-ID net uses for ``batch``: 3 x (1, K, h, w); None for other modes."""
    from sangal.evaluate.features import aah_from_net

    if embedder.mode != "san-gal":
        return None
    assert embedder.attr_net is not None
    aah_fn = aah_from_net(embedder.attr_net, normalize=embedder.aah_normalize, predictor=embedder.map_predictor,
                          agnostic=embedder.aah_agnostic)
    with torch.no_grad():  # exact Grad-CAM enables gradients itself
        return tuple(m.detach().float() for m in aah_fn(batch))


def embed_image(embedder: Embedder, image: Image.Image) -> QueryEmbedding:
    """Feature, attribute probabilities and heat maps of ``image`` (the calls of ``Embedder.embed``, on one image)."""
    from sangal.evaluate.features import extract_features

    batch = _batch(embedder, image)
    maps = _heat_maps(embedder, batch)
    fs = extract_features(embedder.model, [batch], device=embedder.device, flip=True,
                          aah_fn=None if maps is None else (lambda _: maps), normalize=True, progress=False)
    probs = None
    if embedder.attr_source == "reid" and fs.attr_probs:
        probs = [np.asarray(p, dtype=np.float32) for p in fs.attr_probs]
    elif embedder.attr_source == "attribute_net":
        probs = embedder._attr_net_probs([batch])  # noqa: SLF001 -- today's Embedder internals, in one place
    feature = np.ascontiguousarray(fs.feats[0], dtype=np.float32)
    return QueryEmbedding(feature, probs, None if maps is None else [m[0].cpu().numpy() for m in maps])


def image_maps(embedder: Embedder, image: Image.Image) -> list[np.ndarray] | None:
    """The heat maps alone (layer2/3/4, each (K, h, w)), for an image whose feature is already indexed."""
    maps = _heat_maps(embedder, _batch(embedder, image))
    return None if maps is None else [m[0].cpu().numpy() for m in maps]
