"""Ranked retrieval lists: the query, then the top-k gallery images.

A green border marks a true match (same identity), red a false one, so the
difference between two models on the same query (``id`` vs ``san-gal``) is
visible without reading numbers. Rank numbers sit above each image and the
distance, when given, below it.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from sangal.viz.heatmap import fit_text, font, resize_to_height

logger = logging.getLogger(__name__)

MATCH = (22, 160, 60)
MISMATCH = (215, 40, 40)
QUERY = (40, 90, 200)
_BG = (255, 255, 255)
_FG = (20, 20, 20)


def _framed(image: np.ndarray | Image.Image, colour: tuple[int, int, int], height: int, border: int) -> Image.Image:
    """Image scaled to ``height`` inside a ``border``-px frame of ``colour``."""
    inner = resize_to_height(image, height)
    framed = Image.new("RGB", (inner.width + 2 * border, inner.height + 2 * border), colour)
    framed.paste(inner, (border, border))
    return framed


def ranked_strip(
    query_image: np.ndarray | Image.Image,
    gallery_images: Sequence[np.ndarray | Image.Image],
    is_match: Sequence[bool],
    distances: Sequence[float] | None = None,
    title: str | None = None,
    cell_height: int = 128,
    border: int = 4,
) -> Image.Image:
    """One row: the query (blue frame) then the gallery images in rank order.

    query_image / gallery_images: (H, W, 3) uint8 arrays or PIL images.
    is_match[i]: whether gallery image i has the query's identity (green / red frame).
    distances[i]: shown under image i (3 decimals). title: a line above the strip.
    """
    if len(is_match) != len(gallery_images):
        raise ValueError(f"{len(gallery_images)} gallery images but {len(is_match)} is_match flags")
    if distances is not None and len(distances) != len(gallery_images):
        raise ValueError(f"{len(gallery_images)} gallery images but {len(distances)} distances")
    label_font, small_font, title_font = font(12), font(10), font(13)
    gap, sep, pad = 4, 16, 6
    top = pad + (20 if title else 0) + 16  # title line, then rank numbers
    bottom = 14 if distances is not None else 2
    frames = [_framed(query_image, QUERY, cell_height, border)]
    frames += [
        _framed(img, MATCH if bool(m) else MISMATCH, cell_height, border)
        for img, m in zip(gallery_images, is_match)
    ]
    width = pad + sum(f.width for f in frames) + gap * (len(frames) - 1) + sep + pad
    height = top + cell_height + 2 * border + bottom + pad
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), fit_text(title, title_font, width - 2 * pad), fill=_FG, font=title_font)
    x = pad
    for i, frame in enumerate(frames):
        label = "query" if i == 0 else f"{i}"
        colour = QUERY if i == 0 else (MATCH if bool(is_match[i - 1]) else MISMATCH)
        tw = label_font.getlength(label)
        draw.text((x + (frame.width - tw) / 2, top - 16), label, fill=colour, font=label_font)
        canvas.paste(frame, (x, top))
        if i > 0 and distances is not None:
            text = fit_text(f"{float(distances[i - 1]):.3f}", small_font, frame.width)
            dw = small_font.getlength(text)
            draw.text((x + (frame.width - dw) / 2, top + frame.height + 1), text, fill=_FG, font=small_font)
        x += frame.width + gap + (sep if i == 0 else 0)
    return canvas


def side_by_side(strips: Mapping[str, Image.Image]) -> Image.Image:
    """Stack strips vertically, each labelled on the left with its key (e.g. id above san-gal)."""
    if not strips:
        raise ValueError("side_by_side needs at least one strip")
    label_font = font(13)
    pad, gap = 6, 6
    label_w = int(max(label_font.getlength(name) for name in strips)) + 2 * pad
    width = label_w + max(s.width for s in strips.values())
    height = sum(s.height for s in strips.values()) + gap * (len(strips) - 1)
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    y = 0
    for i, (name, strip) in enumerate(strips.items()):
        if i > 0:  # thin rule between variants
            draw.line([(pad, y - gap // 2), (width - pad, y - gap // 2)], fill=(200, 200, 200), width=1)
        canvas.paste(strip.convert("RGB"), (label_w, y))
        draw.text((pad, y + strip.height // 2 - 8), name, fill=_FG, font=label_font)
        y += strip.height + gap
    return canvas
