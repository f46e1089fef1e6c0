"""One search result, in its own module so the searcher and the page renderer both import it
(html.py -> match.py <- searcher.py, instead of html.py and searcher.py importing each other)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Match"]


@dataclass
class Match:
    """One ranked gallery image: 1-based rank, absolute path, cosine distance, predicted attributes, row in the index."""

    rank: int
    path: str
    distance: float
    attributes: dict[str, str] = field(default_factory=dict)
    gallery_id: int | None = None
