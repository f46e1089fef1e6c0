"""Images -> retrieval features and predicted attributes, with the models of a checkpoint.

Shared by :func:`~sangal.search.index.build_index` and
:class:`~sangal.search.searcher.Searcher`, so the gallery and the query go through
exactly the same pipeline (test transform at the checkpoint's input size, features
of the image and its mirror averaged, L2-normalised): otherwise their cosine
distances would not be comparable.

A ``san-gal`` Re-ID model needs the Attribute Attention Heat maps of the attribute
network (paper §3.2) at test time too, so its attribute checkpoint is loaded
alongside: the ``attr_checkpoint`` argument, else the path the Re-ID training
recorded in its checkpoint's ``state["attr_checkpoint"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sangal.data.attributes import AttributeSchema, get_schema
from sangal.data.dataset import ImageDataset, read_image
from sangal.data.records import ImageRecord
from sangal.data.transforms import build_transforms
from sangal.errors import CheckpointError, ConfigError
from sangal.store.checkpoint import MODEL_FILE, Checkpoint, load_model
from sangal.store.files import cached_sha256
from sangal.store.reid_info import aah_agnostic, aah_normalize, find_attribute_checkpoint, input_size

__all__ = ["Embedder", "Embedding", "probe_images", "records_for"]

logger = logging.getLogger(__name__)


@dataclass
class Embedding:
    """Features and attribute probabilities of a list of images (row i = ``paths[i]``).

    ``attr_probs`` holds K arrays (N, C_k), or None when no network predicts attributes.
    """

    feats: np.ndarray  # (N, D) float32, L2-normalised
    attr_probs: list[np.ndarray] | None
    paths: list[str]


def records_for(paths: Sequence[str | Path]) -> list[ImageRecord]:
    """Records for arbitrary image files: identity and camera unknown (0), as for a distractor."""
    return [ImageRecord(path=Path(p), pid=0, camid=0, raw_pid=0) for p in paths]


class _Probe(torch.utils.data.Dataset):
    """Decodes each image once; yields the reason it is unreadable ("" when fine)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        try:
            read_image(self.paths[i])
        except Exception as exc:  # DatasetError, or anything else PIL raises: both mean "cannot use it"
            return str(exc) or type(exc).__name__
        return ""


def probe_images(paths: Sequence[Path], num_workers: int = 0) -> list[str]:
    """Per path the reason it cannot be read ("" if readable), decoding with ``num_workers`` workers."""
    loader = torch.utils.data.DataLoader(
        _Probe(paths), batch_size=64, num_workers=num_workers, collate_fn=list
    )
    return [reason for batch in loader for reason in batch]


def _schema(ckpt: Checkpoint, num_heads: int) -> AttributeSchema | None:
    arch = ckpt.arch
    config = ckpt.state.get("config") or {}
    data = config.get("data", {}) if isinstance(config, dict) else {}
    dataset = arch.get("dataset", data.get("dataset"))
    colour_mode = arch.get("colour_mode", data.get("colour_mode", "binary"))
    if not dataset:
        logger.warning("checkpoint %s records no dataset: attributes are not named, filters unavailable", ckpt.path)
        return None
    schema = get_schema(dataset, colour_mode)
    if len(schema) != num_heads:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: {num_heads} attribute heads but the {schema.dataset}/{colour_mode} "
            f"schema has {len(schema)}"
        )
    return schema


class Embedder:
    """The Re-ID model of a checkpoint (+ its attribute network when needed or given).

    Args:
        checkpoint: Re-ID checkpoint directory (``kind == "reid"``).
        attr_checkpoint: attribute checkpoint directory; required (here or recorded in
            the Re-ID checkpoint's state) for ``san-gal`` models, optional otherwise
            (then used only to predict attributes when the Re-ID net has no heads).
        device: torch device string.
        aah: heat maps of ``san-gal`` models: ``"exact"`` Grad-CAM or ``"fast"`` (forward
            only, the predictor `sangal distill` saved in the attribute checkpoint).
    """

    def __init__(
        self, checkpoint: str | Path, attr_checkpoint: str | Path | None = None, device: str = "cpu",
        aah: str = "exact",
    ) -> None:
        if aah not in ("exact", "fast"):
            raise ConfigError(f"aah must be 'exact' or 'fast', got {aah!r}")
        self.aah = aah
        self.device = torch.device(device)
        self.checkpoint = Path(checkpoint).resolve()
        self.model, self.ckpt = load_model(self.checkpoint, expected_kind="reid", device=self.device)
        self.sha256 = cached_sha256(self.checkpoint / MODEL_FILE)
        self.mode: str = str(self.ckpt.arch.get("mode", "san-gal"))
        self.height, self.width = input_size(self.ckpt)
        self.transform = build_transforms(self.height, self.width, train=False)
        self.aah_normalize = aah_normalize(self.ckpt)
        self.aah_agnostic = aah_agnostic(self.ckpt)  # test-time maps of the kind the model trained on
        if self.mode == "san-gal":
            attr_checkpoint = find_attribute_checkpoint(self.ckpt, attr_checkpoint)
        self.attr_net: nn.Module | None = None
        self.attr_checkpoint: Path | None = None
        self.attr_sha256: str | None = None
        if attr_checkpoint is not None:
            self.attr_checkpoint = Path(attr_checkpoint).resolve()
            self.attr_net, _ = load_model(self.attr_checkpoint, expected_kind="attribute", device=self.device)
            self.attr_sha256 = cached_sha256(self.attr_checkpoint / MODEL_FILE)
        self.map_predictor: nn.Module | None = None
        if self.mode == "san-gal" and aah == "fast":
            from sangal.aah.predictor import load_map_predictor

            assert self.attr_checkpoint is not None
            self.map_predictor = load_map_predictor(self.attr_checkpoint, device=self.device)
        heads = getattr(self.model, "attr_heads", None)
        self.attr_source: str | None = "reid" if heads is not None else ("attribute_net" if self.attr_net else None)
        num_heads = len(heads) if heads is not None else (self.attr_net.num_attributes if self.attr_net else 0)
        self.schema = _schema(self.ckpt, num_heads) if num_heads else None
        if self.schema is None:
            self.attr_source = None
        logger.info(
            "loaded %s model %s (%dx%d)%s", self.mode, self.checkpoint, self.height, self.width,
            f" with attribute net {self.attr_checkpoint}" if self.attr_net is not None else "",
        )

    def arch(self) -> dict[str, Any]:
        """The Re-ID checkpoint's arch with the input size actually used."""
        return {**self.ckpt.arch, "height": self.height, "width": self.width}

    def embed(
        self, paths: Sequence[str | Path], batch_size: int = 64, num_workers: int = 0, progress: bool = False
    ) -> Embedding:
        """Features (flip-averaged, L2-normalised) and attribute probabilities of readable images."""
        from sangal.evaluate.features import aah_from_net, extract_features

        dataset = ImageDataset(records_for(paths), self.transform)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        aah_fn = None
        if self.mode == "san-gal":
            assert self.attr_net is not None
            aah_fn = aah_from_net(self.attr_net, normalize=self.aah_normalize, predictor=self.map_predictor,
                                  agnostic=self.aah_agnostic)
        fs = extract_features(self.model, loader, device=self.device, flip=True, aah_fn=aah_fn,
                              normalize=True, progress=progress)
        feats = np.ascontiguousarray(fs.feats, dtype=np.float32)
        probs = None
        if self.attr_source == "reid":
            probs = [np.asarray(p, dtype=np.float32) for p in fs.attr_probs] if fs.attr_probs else None
        elif self.attr_source == "attribute_net":
            probs = self._attr_net_probs(loader)
        return Embedding(feats, probs, [str(p) for p in paths])

    @torch.no_grad()
    def _attr_net_probs(self, loader: torch.utils.data.DataLoader) -> list[np.ndarray]:
        assert self.attr_net is not None
        chunks: list[list[np.ndarray]] = []
        for batch in loader:
            probs, _ = self.attr_net.predict(batch["image"].to(self.device))
            chunks.append([p.float().cpu().numpy() for p in probs])
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]
