"""What `sangal serve` answers, without HTTP: searches by gallery id or upload, filter chips, maps, thumbnails.

One :class:`SearchService` holds the index and its model, loaded once by :class:`~sangal.search.Searcher`.
A search by gallery id ranks the stored feature row (no model call). A search by upload decodes the bytes
(:mod:`sangal.serve.images`), embeds them (:mod:`sangal.serve.model`) and ranks; the last few uploads are
remembered by their sha256, so paging or filtering the same upload runs the model once. Nothing here
returns a file path: images are named by their row in the index (the gallery id), and files are read
only through ``GalleryIndex.absolute_path``.

The model runs on one thread of its own, one call at a time: a forward pass toggles module modes and uses
every core anyway, and torch's OpenMP team then lives on one thread instead of one team per request thread
(a team spin-waits after each call; on the shared 2-core machine that made an embedding in the main thread
take 1.7 s instead of 0.1-0.25 s, ``benchmarks/serve_speed.py``). Ranking runs under a lock, since a FAISS
search sets the shared ``efSearch`` first.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sangal.data.custom import camera_of
from sangal.data.market1501 import MARKET1501_LAYOUT
from sangal.errors import CacheError, RequestError
from sangal.search import Searcher, parse_where
from sangal.search.where import colour_groups, predicted_attributes, where_mask
from sangal.serve.images import decode_image, thumbnail_jpeg
from sangal.serve.model import QueryEmbedding, describe, embed_image, image_maps
from sangal.viz.heatmap import STAGE_NAMES

__all__ = ["MAX_RESULTS", "SearchService", "camera_label"]

logger = logging.getLogger(__name__)

#: The deepest hit a request may reach (offset + k).
MAX_RESULTS = 1000
_REMEMBERED_UPLOADS = 16
_REMEMBERED_THUMBNAILS = 4096


def camera_label(relative_path: str) -> str | None:
    """Camera of a gallery file from its name ("c3"), by the Market/Duke pattern or a ``c<N>``/``cam<N>`` token."""
    name = Path(relative_path).name
    market = MARKET1501_LAYOUT.pattern.match(name)
    if market:
        return f"c{int(market.group('cam'))}"
    cam = camera_of(name)
    return None if cam is None else f"c{cam + 1}"


def _ms(start: float) -> float:
    return round(1000 * (time.perf_counter() - start), 2)


class SearchService:
    """The server's state and answers; every method returns JSON-ready data or bytes."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        self.index = searcher.index
        self.predictor = searcher.predictor  # what sangal.serve.model runs: the index's own test-time pipeline
        self.mode, height, width = describe(self.predictor)
        self.input_size = [height, width]
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sangal-model")
        self._rank_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._uploads: OrderedDict[str, QueryEmbedding] = OrderedDict()
        self._thumbnails: OrderedDict[int, bytes] = OrderedDict()
        self.cameras = [camera_label(p) for p in self.index.paths]
        self.filters = self._filters()

    def _filters(self) -> list[dict[str, Any]]:
        """Filter chips: per attribute (the colour heads folded into ``upper_colour``/``lower_colour``) its
        classes with the number of gallery images each keeps."""
        schema, probs = self.index.schema, self.index.attr_probs
        if schema is None or probs is None:
            return []
        groups = colour_groups(schema)
        folded = {k for g in groups.values() for k in g.heads}
        names = [(a.name, a.classes) for k, a in enumerate(schema.attributes) if k not in folded]
        names += [(f"{part}_colour", g.colours) for part, g in groups.items() if g.merged_head is None]
        return [{"name": name, "classes": [{"value": c, "count": int(where_mask({name: c}, schema, probs).sum())}
                                           for c in classes]} for name, classes in names]

    def info(self) -> dict[str, Any]:
        """The gallery and model in a few fields, and the filter chips."""
        return {
            "num_images": len(self.index), "backend": self.index.backend, "mode": self.mode,
            "aah": self.predictor.spec.method, "input_size": self.input_size,
            "heat_maps": self.mode == "san-gal", "filters": self.filters, "max_results": MAX_RESULTS,
        }

    # --- searches -------------------------------------------------------------------------------

    def _check_id(self, gallery_id: int) -> int:
        if not 0 <= gallery_id < len(self.index):
            raise RequestError(f"no gallery image {gallery_id}: the index holds ids 0 to {len(self.index) - 1}", 404)
        return gallery_id

    def _mask(self, where: str | None) -> tuple[dict[str, str], np.ndarray | None]:
        parsed = parse_where(where)
        return parsed, self.searcher.filter_mask(parsed)

    def _attributes(self, rows: np.ndarray) -> list[dict[str, str]]:
        if self.index.attr_probs is None or self.index.schema is None:
            return [{} for _ in rows]
        return predicted_attributes(self.index.schema, [p[rows] for p in self.index.attr_probs])

    @staticmethod
    def _check_page(k: int, offset: int) -> None:
        if k < 1 or offset < 0 or offset + k > MAX_RESULTS:
            raise RequestError(f"k must be >= 1, offset >= 0 and offset + k <= {MAX_RESULTS}; "
                               f"got k={k}, offset={offset}", 422)

    def _results(self, query: dict[str, Any], q: np.ndarray, k: int, offset: int,
                 filtered: tuple[dict[str, str], np.ndarray | None], timing: dict[str, float]) -> dict[str, Any]:
        start = time.perf_counter()
        parsed, mask = filtered
        with self._rank_lock:
            matches = self.searcher.rank(q, offset + k, mask)[offset:]
        hits = [{"rank": m.rank, "gallery_id": m.gallery_id, "distance": round(m.distance, 6),
                 "camera": self.cameras[int(m.gallery_id)], "attributes": m.attributes} for m in matches]
        total = len(self.index) if mask is None else int(mask.sum())
        timing["rank"] = _ms(start)
        return {"query": query, "where": parsed, "total": total, "offset": offset, "k": k, "hits": hits,
                "timing_ms": timing}

    def search_gallery(self, gallery_id: int, k: int = 20, offset: int = 0, where: str | None = None) -> dict:
        """Hits for gallery image ``gallery_id``, ranked with its stored feature row (no model call)."""
        self._check_id(gallery_id)
        self._check_page(k, offset)
        filtered = self._mask(where)
        q = np.asarray(self.index.features[gallery_id], dtype=np.float32)
        query = {"kind": "gallery", "gallery_id": gallery_id, "camera": self.cameras[gallery_id],
                 "attributes": self._attributes(np.array([gallery_id]))[0]}
        return self._results(query, q, k, offset, filtered, {})

    def _embed_upload(self, data: bytes, timing: dict[str, float]) -> tuple[str, QueryEmbedding]:
        key = hashlib.sha256(data).hexdigest()
        with self._cache_lock:
            known = self._uploads.get(key)
            if known is not None:
                self._uploads.move_to_end(key)
                return key, known
        start = time.perf_counter()
        image = decode_image(data)
        timing["decode"] = _ms(start)
        start = time.perf_counter()
        embedded = self._model.submit(embed_image, self.predictor, image).result()
        timing["embed"] = _ms(start)
        with self._cache_lock:
            self._uploads[key] = embedded
            while len(self._uploads) > _REMEMBERED_UPLOADS:
                self._uploads.popitem(last=False)
        return key, embedded

    def search_upload(self, data: bytes, k: int = 20, offset: int = 0, where: str | None = None) -> dict:
        """Hits for an uploaded image: decoded under the limits of :mod:`sangal.serve.images`, embedded, ranked."""
        self._check_page(k, offset)
        filtered = self._mask(where)  # a bad filter or page is refused before the model runs
        timing: dict[str, float] = {}
        key, embedded = self._embed_upload(data, timing)
        attributes = {}
        if embedded.attr_probs is not None and self.index.schema is not None:
            attributes = predicted_attributes(self.index.schema, embedded.attr_probs)[0]
        query = {"kind": "upload", "sha256": key, "attributes": attributes}
        return self._results(query, embedded.feature, k, offset, filtered, timing)

    # --- heat maps and thumbnails -----------------------------------------------------------------

    def _maps_json(self, maps: list[np.ndarray] | None) -> dict[str, Any]:
        names = self.index.schema.names if self.index.schema is not None else []
        if maps is None:
            return {"stages": [], "attributes": names, "maps": [], "note": f"this {self.mode} model uses no heat maps"}
        return {"stages": list(STAGE_NAMES), "attributes": names or [f"attribute {k}" for k in range(len(maps[0]))],
                "maps": [np.round(m, 4).tolist() for m in maps], "note": None,
                "kind": self.predictor.spec.method}

    def gallery_maps(self, gallery_id: int) -> dict[str, Any]:
        """The heat maps the model used for gallery image ``gallery_id`` (computed now: the index keeps none)."""
        image = self._gallery_image(gallery_id)
        return self._maps_json(self._model.submit(image_maps, self.predictor, image).result())

    def upload_maps(self, data: bytes) -> dict[str, Any]:
        """The heat maps the model used for an upload (from the search's embedding when it is remembered)."""
        _, embedded = self._embed_upload(data, {})
        return self._maps_json(embedded.maps)

    def _gallery_image(self, gallery_id: int):
        try:
            data = Path(self.index.absolute_path(self._check_id(gallery_id))).read_bytes()
        except CacheError as exc:  # a link swapped in that leads outside the gallery: the log names it, not the body
            logger.warning("%s", exc)
            raise RequestError(f"gallery image {gallery_id} is not served: its file now leads outside the gallery "
                               f"(the server log says where)", 403) from None
        except OSError:
            raise RequestError(f"gallery image {gallery_id} can no longer be read", 410) from None
        return decode_image(data, f"gallery image {gallery_id}")

    def thumbnail(self, gallery_id: int) -> bytes:
        """JPEG thumbnail of gallery image ``gallery_id``."""
        with self._cache_lock:
            known = self._thumbnails.get(gallery_id)
        if known is not None:
            return known
        data = thumbnail_jpeg(self._gallery_image(gallery_id))
        with self._cache_lock:
            self._thumbnails[gallery_id] = data
            while len(self._thumbnails) > _REMEMBERED_THUMBNAILS:
                self._thumbnails.popitem(last=False)
        return data

    def browse(self, k: int = 20, offset: int = 0, where: str | None = None) -> dict[str, Any]:
        """Gallery images in index order (those the filter keeps), to pick a first query from."""
        if not 1 <= k <= MAX_RESULTS or offset < 0:
            raise RequestError(f"k must be in 1..{MAX_RESULTS} and offset >= 0; got k={k}, offset={offset}", 422)
        parsed, mask = self._mask(where)
        rows = np.arange(len(self.index)) if mask is None else np.flatnonzero(mask)
        page = rows[offset:offset + k]
        hits = [{"rank": offset + i + 1, "gallery_id": int(g), "distance": None, "camera": self.cameras[int(g)],
                 "attributes": a} for i, (g, a) in enumerate(zip(page, self._attributes(page)))]
        return {"query": None, "where": parsed, "total": len(rows), "offset": offset, "k": k, "hits": hits,
                "timing_ms": {}}

