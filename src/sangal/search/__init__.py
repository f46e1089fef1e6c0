"""Person search over a folder of images: a gallery index, ranked queries, attribute filters, an HTML page.
Embeds images with a trained checkpoint (``evaluate.features``, ``aah``); writes ``<folder>.sangal-index/`` and results.

* :func:`build_index` -- features, predicted attributes and paths of every image under
  a folder, written atomically (exact search, or FAISS HNSW for large galleries);
* :class:`Searcher` -- ranks the gallery by cosine distance to a query image, with
  attribute filters (``where={"upper_color": "red", "backpack": "yes"}``);
* :func:`parse_where`, :func:`format_matches`, :func:`search_html` -- for the CLI.
"""

from sangal.search.html import format_matches
from sangal.search.index import GalleryIndex, build_index, list_gallery
from sangal.search.searcher import Match, Searcher, search_html
from sangal.search.where import parse_where

__all__ = [
    "GalleryIndex",
    "Match",
    "Searcher",
    "build_index",
    "format_matches",
    "list_gallery",
    "parse_where",
    "search_html",
]
