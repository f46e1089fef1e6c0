"""The one test-time path: a Re-ID checkpoint -> features, attribute probabilities and the heat maps it used.

:meth:`Predictor.from_checkpoint` builds everything test time needs from the checkpoint alone (fast-reid's
``DefaultPredictor``): the Re-ID net, the attribute net and the distilled map predictor of a SAN-GAL model,
and the :class:`~sangal.evaluate.embedding.EmbedSpec` it was trained with (maps, flip, input size). ``sangal
evaluate``, ``sangal index`` / ``search``, the search page and ``sangal export`` (which traces
:meth:`Predictor.forward`) all embed through it, so one checkpoint is scored with exactly the maps it is
deployed with, computed in the precision it records. The flip-average (features of the image and its mirror, maps
mirrored with it) lives in :meth:`Predictor.embed`; only san-gal models compute heat maps there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from sangal.aah.modes import attribute_maps
from sangal.aah.spec import MapSpec
from sangal.data.attributes import AttributeSchema, get_schema
from sangal.data.transforms import build_transforms
from sangal.errors import CheckpointError, ConfigError
from sangal.evaluate.embedding import EmbedSpec
from sangal.evaluate.features import FeatureSet, batch_paths
from sangal.runtime.precision import autocast
from sangal.store.checkpoint import MODEL_FILE, Checkpoint, load_model
from sangal.store.files import cached_sha256
from sangal.store.reid_info import find_attribute_checkpoint

__all__ = ["Embedded", "MapsFn", "Predictor"]

logger = logging.getLogger(__name__)

Heatmaps = tuple[Tensor, Tensor, Tensor]
#: batch dict (as an ImageDataset loader yields it) -> its heat maps (e.g. read from an offline cache)
MapsFn = Callable[[dict[str, Any]], Sequence[Tensor]]


@dataclass
class Embedded:
    """One batch through the predictor.

    Attributes:
        features: (B, D) float32, L2-normalised (flip-averaged when the predictor flips).
        attr_probs: K tensors (B, C_k), or None when nothing predicts attributes.
        maps: the heat maps the san-gal Re-ID net used for the un-mirrored images, 3 x (B, K, h, w); None for the
            ``id`` and ``id+attr`` modes, which use none (and so compute none).
    """

    features: Tensor
    attr_probs: list[Tensor] | None
    maps: Heatmaps | None


class Predictor(nn.Module):
    """A trained Re-ID net with everything its test-time features need.

    Args:
        reid: the ReIDNet.
        embedding: how it embeds an image (maps, flip, input size; test-time maps never follow the labels).
        attr_net: its attribute net (required by ``san-gal``; otherwise it only predicts attributes).
        fast_map_net: the distilled fast-map network (``san-gal`` with fast maps).
        schema: the attribute schema of the predicted attributes, if known.
        source: provenance (checkpoint paths and sha256) for indexes and ONNX metadata.
    """

    def __init__(self, reid: nn.Module, embedding: EmbedSpec, attr_net: nn.Module | None = None,
                 fast_map_net: nn.Module | None = None, schema: AttributeSchema | None = None,
                 source: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.reid = reid.eval()
        self.mode = str(getattr(reid, "mode", "id"))
        self.attr_net = attr_net.eval() if attr_net is not None else None
        self.fast_map_net = fast_map_net.eval() if fast_map_net is not None else None
        if self.mode == "san-gal" and self.attr_net is None:
            raise ConfigError("a san-gal Predictor needs the attribute net that makes its heat maps")
        if self.mode == "san-gal" and embedding.maps.method == "fast" and self.fast_map_net is None:
            raise ConfigError("fast heat maps need the distilled map predictor (`sangal distill`)")
        self.embedding, self.schema = embedding, schema
        self.source = dict(source or {})
        self.transform = build_transforms(embedding.height, embedding.width, train=False)
        heads = getattr(reid, "attr_heads", None) is not None
        self.attr_source = "reid" if heads else ("attribute_net" if self.attr_net is not None else None)

    @property
    def spec(self) -> MapSpec:
        return self.embedding.maps

    @property
    def size(self) -> tuple[int, int]:
        return self.embedding.size

    @property
    def device(self) -> torch.device:
        return next(self.reid.parameters()).device

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, attr_checkpoint: str | Path | None = None,
                        device: str | torch.device = "cpu", method: str | None = None,
                        record: Callable[[EmbedSpec], EmbedSpec] | None = None) -> Predictor:
        """Everything from a Re-ID checkpoint directory, embedding as its :class:`EmbedSpec` says.

        ``method`` ("exact"/"fast") computes the test-time maps another way (None: as recorded); ``record`` maps the
        checkpoint's record to the one to embed with (an index's, :meth:`EmbedSpec.from_index`); it may
        differ in flip and method only. ``attr_checkpoint``: where the attribute net is (None: as recorded).

        Raises:
            CheckpointError: not a Re-ID checkpoint, a san-gal model whose attribute net or predictor is missing,
                or a ``record`` for another input size or other maps.
        """
        reid, ckpt = load_model(checkpoint, expected_kind="reid", device=device)
        recorded = EmbedSpec.from_checkpoint(ckpt)
        embedding = (record(recorded) if record is not None else recorded).with_method(method)
        other = recorded.differences(embedding, allowed=("flip", "method"))
        if other:
            raise CheckpointError(f"checkpoint {checkpoint} cannot embed as asked: {'; '.join(other)}")
        mode = str(ckpt.arch.get("mode", "san-gal"))
        if mode == "san-gal":
            attr_checkpoint = find_attribute_checkpoint(ckpt, attr_checkpoint)
        source = {"checkpoint": str(Path(checkpoint).resolve()), "sha256": cached_sha256(Path(checkpoint) / MODEL_FILE),
                  "arch": {**ckpt.arch, "height": embedding.height, "width": embedding.width}}
        attr_net = fast_map_net = None
        if attr_checkpoint is not None:
            attr_net, _ = load_model(attr_checkpoint, expected_kind="attribute", device=device)
            source.update(attr_checkpoint=str(Path(attr_checkpoint).resolve()),
                          attr_sha256=cached_sha256(Path(attr_checkpoint) / MODEL_FILE))
        if mode == "san-gal" and embedding.maps.method == "fast":
            from sangal.aah.fast_map_files import load_fast_map_net

            fast_map_net = load_fast_map_net(attr_checkpoint, device=device)
        heads = len(ckpt.arch.get("attr_classes") or []) if mode != "id" else getattr(attr_net, "num_attributes", 0)
        schema = checkpoint_schema(ckpt, heads) if heads else None
        predictor = cls(reid, embedding, attr_net, fast_map_net, schema, source)
        logger.info("loaded %s model %s (%dx%d, flip %s, %s %s maps)%s", mode, checkpoint, *embedding.size,
                    embedding.flip, embedding.maps.method, embedding.maps.mode("query"),
                    f" with attribute net {attr_checkpoint}" if attr_net is not None else "")
        return predictor

    @property
    def attr_checkpoint(self) -> Path | None:
        return Path(self.source["attr_checkpoint"]) if "attr_checkpoint" in self.source else None

    def maps(self, images: Tensor) -> Heatmaps | None:
        """Test-time heat maps of normalised images (B, 3, H, W): the spec's class choice and method, computed in its
        precision (bf16 autocast for a model trained under ``train.amp``, as ``sangal aah`` builds its caches)."""
        if self.attr_net is None:
            return None
        fast = self.fast_map_net if self.spec.method == "fast" else None
        with autocast(images.device, self.spec.precision == "bf16", dtype=torch.bfloat16):
            maps = attribute_maps(self.attr_net, images, self.spec.mode("query"), None, self.spec.normalize, fast)
        return tuple(m.float() for m in maps)  # type: ignore[return-value]

    def _once(self, images: Tensor, maps: Heatmaps | None) -> tuple[Tensor, list[Tensor] | None]:
        """BN-neck features (B, D) float32 and the Re-ID heads' softmax K x (B, C_k) (or None)."""
        out = self.reid(images) if maps is None else self.reid(images, maps)
        probs = None if not out.attr_logits else [torch.softmax(z.float(), dim=1) for z in out.attr_logits]
        return out.features.float(), probs

    @torch.no_grad()
    def embed(self, images: Tensor, maps: Sequence[Tensor] | None = None) -> Embedded:
        """Features, attribute probabilities and maps of a batch; ``maps`` given (e.g. from a cache) are used as
        they are, else computed (:meth:`maps`), by san-gal models only. The one place the flip-average happens."""
        if self.mode != "san-gal":
            maps = None  # id and id+attr use no maps, so they compute none
        elif maps is None:
            maps = self.maps(images)
        else:
            maps = tuple(m.to(device=images.device, dtype=torch.float32) for m in maps)
        feats, probs = self._once(images, maps)
        if self.embedding.flip:
            feats2, probs2 = self._once(images.flip(-1), None if maps is None else tuple(m.flip(-1) for m in maps))
            feats = (feats + feats2) / 2
            probs = None if probs is None or probs2 is None else [(a + b) / 2 for a, b in zip(probs, probs2)]
        if self.attr_source == "attribute_net":
            probs, _ = self.attr_net.predict(images)
        return Embedded(F.normalize(feats, dim=1), probs, maps)

    def embed_image(self, image) -> Embedded:
        """One PIL image (any size): resized and normalised with the test transform, then :meth:`embed`."""
        return self.embed(self.transform(image)[None].to(self.device))

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """The export graph: (B, 3, H, W) -> embedding (B, D) [, Re-ID attribute probabilities (B, sum C_k)]."""
        e = self.embed(images)
        if self.attr_source != "reid":
            return (e.features,)
        return e.features, torch.cat(e.attr_probs, dim=1)

    def embed_loader(self, loader: Iterable[dict[str, Any]], maps_fn: MapsFn | None = None,
                     progress: bool = True) -> FeatureSet:
        """Embed every image of an ImageDataset loader (``maps_fn(batch)``: their maps, e.g. from a cache)."""
        feats, probs, pids, camids, paths = [], [], [], [], []
        device = self.device
        for batch in tqdm(loader, desc="features", unit="batch", disable=not progress, leave=False):
            images = batch["image"].to(device)  # (B, 3, H, W)
            e = self.embed(images, None if maps_fn is None else maps_fn(batch))
            feats.append(e.features.cpu())
            if e.attr_probs is not None:
                probs.append([p.float().cpu() for p in e.attr_probs])
            pids.append(torch.as_tensor(batch["pid"]).reshape(-1))
            camids.append(torch.as_tensor(batch["camid"]).reshape(-1))
            paths.extend(batch_paths(batch, loader))
        if not feats:
            raise ValueError("the loader yielded no images")
        attr_probs = [torch.cat(k).numpy() for k in zip(*probs)] if probs else None
        logger.info("extracted %d features of dimension %d", len(paths), feats[0].shape[1])
        return FeatureSet(torch.cat(feats).numpy().astype(np.float32), torch.cat(pids).numpy().astype(np.int64),
                          torch.cat(camids).numpy().astype(np.int64), paths, attr_probs)

    def embed_paths(self, paths: Sequence[str | Path], batch_size: int = 64, num_workers: int = 0,
                    progress: bool = False) -> FeatureSet:
        """Embed image files (identity and camera unknown: 0), decoded with the test transform."""
        from sangal.data.dataset import ImageDataset
        from sangal.data.records import ImageRecord

        records = [ImageRecord(path=Path(p), pid=0, camid=0, raw_pid=0) for p in paths]
        loader = torch.utils.data.DataLoader(ImageDataset(records, self.transform), batch_size=batch_size,
                                             num_workers=num_workers)
        return self.embed_loader(loader, progress=progress)


def checkpoint_schema(ckpt: Checkpoint, num_heads: int) -> AttributeSchema | None:
    """The attribute schema a checkpoint's ``num_heads`` heads follow (None when it records no dataset)."""
    config = ckpt.state.get("config") if isinstance(ckpt.state.get("config"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    dataset = ckpt.arch.get("dataset", data.get("dataset"))
    colour_mode = ckpt.arch.get("colour_mode", data.get("colour_mode", "binary"))
    if not dataset:
        logger.warning("checkpoint %s records no dataset: attributes are not named, filters unavailable", ckpt.path)
        return None
    schema = get_schema(dataset, colour_mode)
    if len(schema) != num_heads:
        raise CheckpointError(f"checkpoint {ckpt.path}: {num_heads} attribute heads but the "
                              f"{schema.dataset}/{colour_mode} schema has {len(schema)}")
    return schema
