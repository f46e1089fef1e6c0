"""Result presentation: the CLI's text table and a self-contained HTML page.

The page embeds every picture as a base64 data URI, so it can be mailed or
archived as one file: the query, its Attribute Attention Heat maps (one column per
attribute, one row per stage -- layer2/3/4, Hou et al. 2021 eqs. 1-2 -- from
:func:`sangal.viz.heatmap.heatmap_grid`) and the ranked matches with their cosine
distances and predicted attributes.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from sangal.data.dataset import read_image
from sangal.errors import DatasetError, printable
from sangal.search.match import Match

__all__ = ["SHOWN_ATTRIBUTES", "format_matches", "render_page", "image_data_uri"]

logger = logging.getLogger(__name__)

#: Attributes shown in the text table, in this order, when the index has them.
SHOWN_ATTRIBUTES = ("gender", "age", "upper_colour", "lower_colour", "backpack", "bag", "handbag", "hat")
_TABLE_ATTRIBUTES = 5
_THUMB_HEIGHT = 160

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
.query { display: flex; gap: 1.5em; align-items: flex-start; }
.matches { display: flex; flex-wrap: wrap; gap: 1em; }
.match { width: 13em; font-size: 0.8em; border: 1px solid #ddd; padding: 0.5em; }
.match img, .query img.person { height: 160px; }
.path { word-break: break-all; color: #555; }
.attrs { color: #333; } .note { color: #a33; }
"""


def format_matches(matches: Sequence["Match"], attributes: int = _TABLE_ATTRIBUTES) -> str:
    """Plain-text table for the terminal: rank, cosine distance, path, a few predicted attributes.

    Control characters in a path are escaped (:func:`sangal.errors.printable`): a file name cannot drive the terminal.
    """
    if not matches:
        return "no matches (the gallery is empty or no image passes the filter)"
    rows = [("rank", "distance", "path", "attributes")]
    for m in matches:
        rows.append((str(m.rank), f"{m.distance:.4f}", printable(m.path),
                     printable(_short_attributes(m.attributes, attributes))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:>{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
    return "\n".join(lines)


def _short_attributes(attributes: Mapping[str, str], limit: int) -> str:
    shown = [k for k in SHOWN_ATTRIBUTES if k in attributes][:limit]
    return " ".join(f"{k}={attributes[k]}" for k in shown)


def image_data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    """``data:image/...;base64,...`` for a PIL image (PNG by default, JPEG for photos)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _thumbnail(path: str | Path) -> str | None:
    """Data URI of the image at ``path`` scaled to the thumbnail height, or None if unreadable."""
    try:
        img = read_image(path)
    except DatasetError as exc:
        logger.warning("%s", exc)
        return None
    width = max(1, round(img.width * _THUMB_HEIGHT / img.height))
    return image_data_uri(img.resize((width, _THUMB_HEIGHT), Image.BILINEAR), "JPEG")


def _attr_text(attributes: Mapping[str, str]) -> str:
    return ", ".join(f"{html.escape(k)}={html.escape(v)}" for k, v in attributes.items())


def render_page(
    query_path: str | Path,
    matches: Sequence["Match"],
    query_attributes: Mapping[str, str] | None = None,
    heatmap: Image.Image | None = None,
    heatmap_note: str | None = None,
    title: str = "sangal search",
) -> str:
    """The HTML text of the results page (images embedded; nothing refers to other files)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        '<h2>Query</h2><div class="query">',
    ]
    thumb = _thumbnail(query_path)
    if thumb is not None:
        parts.append(f'<img class="person" src="{thumb}" alt="query">')
    parts.append(f'<div><div class="path">{esc(str(query_path))}</div>')
    if query_attributes:
        parts.append(f'<p class="attrs">predicted: {_attr_text(query_attributes)}</p>')
    parts.append("</div></div>")
    if heatmap is not None:
        parts.append("<h2>Attribute attention heat maps (Grad-CAM at layer2, layer3, layer4)</h2>")
        parts.append(f'<img src="{image_data_uri(heatmap)}" alt="attribute heat maps">')
    elif heatmap_note:
        parts.append(f'<p class="note">{esc(heatmap_note)}</p>')
    parts.append(f"<h2>Matches ({len(matches)})</h2>")
    if not matches:
        parts.append('<p class="note">no gallery image passed the filter</p>')
    parts.append('<div class="matches">')
    for m in matches:
        parts.append('<div class="match">')
        thumb = _thumbnail(m.path)
        if thumb is not None:
            parts.append(f'<img src="{thumb}" alt="rank {m.rank}">')
        else:
            parts.append('<p class="note">image unreadable</p>')
        parts.append(f"<div><b>#{m.rank}</b> distance {m.distance:.4f}</div>")
        parts.append(f'<div class="path">{esc(m.path)}</div>')
        parts.append(f'<div class="attrs">{_attr_text(m.attributes)}</div></div>')
    parts.append("</div></body></html>")
    return "\n".join(parts)
