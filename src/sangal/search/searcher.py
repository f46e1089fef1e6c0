"""Query a gallery index: cosine ranking, attribute filters, the HTML results page.

:class:`Searcher` embeds the query with the very checkpoint the index was built
with -- it refuses another one (by model.safetensors sha256), since features of
two different models are not comparable -- and ranks the gallery by cosine
distance ``1 - <q, g>`` on L2-normalised features. Attribute filters
(:mod:`sangal.search.where`) are applied to the whole gallery *before* the top-k
is taken, so ``k`` matches come back whenever at least ``k`` images pass. Ties are
broken by gallery order, so results are deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sangal.data.dataset import read_image
from sangal.errors import CheckpointError, ConfigError
from sangal.evaluate.embedding import EmbedSpec
from sangal.evaluate.predictor import Embedded, Predictor
from sangal.search.html import render_page
from sangal.search.index import HNSW_EF_SEARCH, META_FILE, GalleryIndex
from sangal.search.match import Match
from sangal.search.where import predicted_attributes, where_mask
from sangal.store.checkpoint import MODEL_FILE
from sangal.store.files import atomic_write_text, cached_sha256

__all__ = ["Match", "Searcher", "search_html", "top_k"]

logger = logging.getLogger(__name__)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first; ties keep the lower position first.

    Equal to ``np.argsort(-scores, kind="stable")[:k]`` but O(N) for k << N.
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    neg = -np.asarray(scores, dtype=np.float64)
    if k < n:
        kth = np.partition(neg, k - 1)[k - 1]
        cand = np.flatnonzero(neg <= kth)  # every row that can be in the top k, ties included
    else:
        cand = np.arange(n)
    return cand[np.argsort(neg[cand], kind="stable")][:k]


def _resolve_checkpoint(given: str | Path | None, recorded: Mapping | None, what: str, index_dir: Path) -> Path | None:
    if given is not None:
        return Path(given)
    if not recorded:
        return None
    path = Path(recorded["path"])
    if not path.exists():
        raise CheckpointError(
            f"index {index_dir} was built with the {what} {path}, which no longer exists; "
            f"pass the checkpoint explicitly"
        )
    return path


def _check_sha(path: Path, recorded: Mapping, what: str, index_dir: Path) -> None:
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise CheckpointError(f"{what} {path} has no {MODEL_FILE}")
    sha = cached_sha256(model_file)
    if sha != recorded["sha256"]:
        raise CheckpointError(
            f"{what} {path} (model sha256 {sha[:12]}) is not the one index {index_dir} was built with "
            f"({recorded['path']}, sha256 {recorded['sha256'][:12]}): their features are not comparable; "
            f"rebuild the index with this checkpoint or search with the original one"
        )


class Searcher:
    """Ranks the images of a gallery index against query images.

    Args:
        index_dir: folder written by :func:`~sangal.search.index.build_index`.
        checkpoint: Re-ID checkpoint; default the one recorded in the index. Must be
            the same model (sha256 of model.safetensors) as the index's.
        attr_checkpoint: attribute checkpoint (heat maps of san-gal models and of the
            HTML page); default the one recorded in the index, if any.
        device: torch device string.
    """

    def __init__(
        self,
        index_dir: str | Path,
        checkpoint: str | Path | None = None,
        attr_checkpoint: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.index = GalleryIndex.load(index_dir)
        index_dir, meta = self.index.directory, self.index.meta
        ckpt = _resolve_checkpoint(checkpoint, meta["checkpoint"], "checkpoint", index_dir)
        assert ckpt is not None
        _check_sha(ckpt, meta["checkpoint"], "checkpoint", index_dir)
        recorded_attr = meta.get("attr_checkpoint")
        needs_attr = meta.get("arch", {}).get("mode") == "san-gal"
        if attr_checkpoint is None and recorded_attr and not needs_attr and not Path(recorded_attr["path"]).exists():
            logger.warning("attribute checkpoint %s of the index is gone: no heat maps", recorded_attr["path"])
            recorded_attr = None
        attr = _resolve_checkpoint(attr_checkpoint, recorded_attr, "attribute checkpoint", index_dir)
        # queries embedded exactly as the gallery was: the index's test-time record
        where = str(index_dir / META_FILE)
        self.predictor = Predictor.from_checkpoint(ckpt, attr, device,
                                                   record=lambda recorded: EmbedSpec.from_index(meta, recorded, where))
        self._last_query: tuple[tuple[str, int, int], Embedded] | None = None
        if recorded_attr and self.predictor.source.get("attr_sha256") != recorded_attr["sha256"]:
            if self.predictor.mode == "san-gal":  # its heat maps shape the features
                assert self.predictor.attr_checkpoint is not None
                _check_sha(self.predictor.attr_checkpoint, recorded_attr, "attribute checkpoint", index_dir)
            logger.warning("attribute checkpoint differs from the index's %s", recorded_attr["path"])
        logger.info("searcher over %d images of %s (%s)", len(self.index), self.index.gallery_dir, self.index.backend)

    def __len__(self) -> int:
        return len(self.index)

    def query(self, image_path: str | Path) -> Embedded:
        """The query through the index's predictor: (1, D) feature, attribute probabilities, the maps it used.

        The last query is remembered (keyed by path, size and modification time), so searching and then
        drawing its page embeds it once.
        """
        image = read_image(image_path)  # DatasetError naming the file if it cannot be used
        stat = Path(image_path).stat()
        key = (str(Path(image_path).resolve()), stat.st_size, stat.st_mtime_ns)
        if self._last_query is None or self._last_query[0] != key:
            self._last_query = (key, self.predictor.embed_image(image))
        return self._last_query[1]

    def embed_query(self, image_path: str | Path) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """(D,) normalised feature and the K attribute probability rows (1, C_k) of one image."""
        e = self.query(image_path)
        probs = None if e.attr_probs is None else [p.float().cpu().numpy() for p in e.attr_probs]
        return e.features[0].cpu().numpy(), probs

    def query_attributes(self, image_path: str | Path) -> dict[str, str]:
        """Predicted attributes of a query image ({} when the model predicts none)."""
        _, probs = self.embed_query(image_path)
        if probs is None or self.index.schema is None:
            return {}
        return predicted_attributes(self.index.schema, probs)[0]

    def search(self, image_path: str | Path, k: int = 10, where: Mapping[str, str] | None = None) -> list[Match]:
        """The ``k`` gallery images closest to ``image_path`` that satisfy ``where``, best first.

        ``where`` maps attribute names (or ``upper_colour``/``lower_colour`` and their
        ``color`` spellings) to class names, see :mod:`sangal.search.where`; every
        condition must hold for the image's predicted attributes.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        mask = self.filter_mask(where)  # checks names before embedding
        q, _ = self.embed_query(image_path)
        return self.rank(q, k, mask)

    def filter_mask(self, where: Mapping[str, str] | None) -> np.ndarray | None:
        """(N,) bool: the gallery images whose predicted attributes satisfy ``where`` (None: no filter)."""
        if not where:
            return None
        index = self.index
        if index.attr_probs is None or index.schema is None:
            raise ConfigError(
                f"index {index.directory} holds no predicted attributes (model mode "
                f"{self.predictor.mode!r}, no attribute network): attribute filters are unavailable"
            )
        return where_mask(where, index.schema, index.attr_probs)

    def rank(self, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[Match]:
        """The ``k`` gallery images closest to the normalised feature ``q`` (D,), among those ``mask`` keeps."""
        index = self.index
        if mask is not None:
            rows = np.flatnonzero(mask)
            # scores of all rows, then the passing ones: bit-identical to the unfiltered ranking
            # (a product over a row subset may round differently) at the same O(N*D) cost.
            sims = np.asarray(index.features @ q)[rows]
            order = top_k(sims, k)
            ids, sims = rows[order], sims[order]
        elif index.faiss_index is not None:
            index.faiss_index.hnsw.efSearch = max(HNSW_EF_SEARCH, 4 * k)
            s, i = index.faiss_index.search(np.ascontiguousarray(q[None], dtype=np.float32), min(k, len(index)))
            keep = i[0] >= 0
            ids, sims = i[0][keep].astype(np.int64), s[0][keep]
        else:
            sims = np.asarray(index.features @ q)
            order = top_k(sims, k)
            ids, sims = order, sims[order]
        attributes: list[dict[str, str]] = [{} for _ in ids]
        if index.attr_probs is not None and index.schema is not None and len(ids):
            attributes = predicted_attributes(index.schema, [p[ids] for p in index.attr_probs])
        return [
            Match(rank=r + 1, path=index.absolute_path(int(g)), distance=float(np.clip(1.0 - s, 0.0, 2.0)),
                  attributes=attributes[r], gallery_id=int(g))
            for r, (g, s) in enumerate(zip(ids, sims))
        ]

    def search_html(
        self, query_path: str | Path, matches: Sequence[Match], out_html: str | Path, heatmaps: bool = True
    ) -> Path:
        """Write the results page (see :func:`search_html`); returns its path."""
        return search_html(self, query_path, matches, out_html, heatmaps)

    def heatmap_image(self, query_path: str | Path):
        """AAH grid (PIL image) of the query: every attribute at layer2/3/4, the maps the model used.

        Raises ConfigError when no attribute network is loaded.
        """
        from sangal.viz.heatmap import heatmap_grid

        predictor = self.predictor
        net = predictor.attr_net
        if net is None:
            raise ConfigError("no attribute network: pass attr_checkpoint to Searcher for heat maps")
        image = read_image(query_path)
        maps = self.query(query_path).maps  # the maps a san-gal model used; other modes use none: drawn for the page
        if maps is None:
            with torch.no_grad():
                maps = predictor.maps(predictor.transform(image)[None].to(predictor.device))
        with torch.no_grad():
            probs, labels = net.predict(predictor.transform(image)[None].to(predictor.device))
        schema = predictor.schema if predictor.schema is not None and len(predictor.schema) == net.num_attributes \
            else None
        names = schema.names if schema else [f"attribute {k}" for k in range(net.num_attributes)]
        classes = [schema.attributes[k].classes[int(c)] if schema else str(int(c)) for k, c in enumerate(labels[0])]
        text = [f"{c} {float(p[0].max()):.2f}" for c, p in zip(classes, probs)]
        picture = np.asarray(image.resize((predictor.size[1], predictor.size[0])))
        return heatmap_grid(picture, [m[0].detach().cpu().numpy() for m in maps], names, text)


def search_html(
    searcher: Searcher,
    query_path: str | Path,
    matches: Sequence[Match],
    out_html: str | Path,
    heatmaps: bool = True,
) -> Path:
    """Write a self-contained HTML page: query, its heat maps, ranked matches; returns its path.

    All images are embedded as base64 data URIs. Heat maps need the attribute network
    (``heatmaps=False`` skips them); without one the page says so instead.
    """
    out_html = Path(out_html)
    grid, note = None, None
    if heatmaps:
        try:
            grid = searcher.heatmap_image(query_path)
        except ConfigError as exc:
            note = str(exc)
            logger.warning("%s", exc)
    page = render_page(
        query_path,
        matches,
        query_attributes=searcher.query_attributes(query_path),
        heatmap=grid,
        heatmap_note=note,
        title=f"sangal search: {Path(query_path).name}",
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, page)
    logger.info("wrote %s", out_html)
    return out_html
