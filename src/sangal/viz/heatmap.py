"""Heat-map overlays: one Grad-CAM map on its image, and the AAH grid of one image.

The attribute network gives one Attribute Attention Heat map (AAH) per attribute
at three backbone stages (layer2/3/4, Hou et al. 2021 eqs. 1-2). ``heatmap_grid``
lays them out so a reader can see at a glance *where* each attribute head looks
and how the maps sharpen from layer2 to layer4.

Only numpy, Pillow and matplotlib's colour maps are used, so the module works in
the demo, the search page and notebooks without torch.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

STAGE_NAMES = ("layer2", "layer3", "layer4")
_BG = (255, 255, 255)
_FG = (20, 20, 20)
_MUTED = (90, 90, 90)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights, as torch bilinear with align_corners=False."""
    scale = n_in / n_out
    src = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0.0, n_in - 1)  # (n_out,)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize maps (..., h, w) to (..., H, W) with ``size = (H, W)``.

    Same sampling grid as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``, so scores computed here match maps upsampled in torch.
    Leading dimensions are kept, which lets callers resize a whole batch at once.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim < 2:
        raise ValueError(f"heat map must have at least 2 dimensions (h, w), got shape {heatmap.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    h, w = heatmap.shape[-2:]
    if (h, w) == (out_h, out_w):
        return heatmap.copy()
    rows = _interp_matrix(out_h, h)  # (H, h)
    cols = _interp_matrix(out_w, w)  # (W, w)
    return rows @ heatmap @ cols.T  # (..., H, W)


def _as_uint8_image(image: np.ndarray | Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image or an array (grey or RGBA accepted)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    return arr[:, :, :3]


def overlay(
    image: np.ndarray | Image.Image,
    heatmap: np.ndarray,
    alpha: float = 0.5,
    cmap: str = "jet",
    vmax: float | None = None,
) -> np.ndarray:
    """Blend a colour-mapped heat map over an image.

    image: (H, W, 3) uint8; heatmap: (h, w) float, any size (upsampled bilinearly).
    Negative values are clipped to 0; the map is divided by ``vmax`` (default: its
    own maximum, so every map uses the full colour range; an all-zero map stays 0).
    Returns (H, W, 3) uint8 = (1 - alpha) * image + alpha * colour.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_uint8_image(image)  # (H, W, 3)
    hm = np.asarray(heatmap, dtype=np.float64)
    if hm.ndim != 2:
        raise ValueError(f"heat map must be (h, w), got shape {hm.shape}")
    up = np.clip(upsample(hm, img.shape[:2]), 0.0, None)  # (H, W)
    top = float(up.max()) if vmax is None else float(vmax)
    scaled = np.clip(up / top, 0.0, 1.0) if top > 0 else np.zeros_like(up)
    colour = colormaps[cmap](scaled)[:, :, :3] * 255.0  # (H, W, 3)
    blended = (1.0 - alpha) * img.astype(np.float64) + alpha * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (no system fonts needed)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def fit_text(text: str, fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """Shorten ``text`` with an ellipsis so it is at most ``width`` px wide."""
    if fnt.getlength(text) <= width:
        return text
    while text and fnt.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…" if text else ""


def resize_to_height(image: np.ndarray | Image.Image, height: int) -> Image.Image:
    """PIL image scaled to ``height`` px, aspect ratio kept."""
    img = Image.fromarray(_as_uint8_image(image))
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.BILINEAR)


def heatmap_grid(
    image: np.ndarray | Image.Image,
    aah: Sequence[np.ndarray],
    names: Sequence[str],
    labels: Sequence[str] | None = None,
    stage_names: Sequence[str] = STAGE_NAMES,
    cell_height: int = 128,
    per_row: int = 9,
    alpha: float = 0.5,
) -> Image.Image:
    """All AAH of one image: one column per attribute, one row per stage.

    image: (H, W, 3) uint8. aah: one array per stage, each (K, h_s, w_s).
    names: K attribute names; labels: K short strings (e.g. "pred yes / true no").

    Layout is transposed from "rows = attributes" on purpose: pedestrian crops are
    tall and narrow, so K attributes side by side in rows of ``per_row`` (wrapping
    into blocks) keep the picture readable for K = 27 instead of a 27-row strip.
    Each block starts with the plain image; each row is labelled with its stage.
    """
    img = _as_uint8_image(image)
    maps = [np.asarray(a, dtype=np.float64) for a in aah]  # each (K, h_s, w_s)
    if not maps:
        raise ValueError("aah must hold at least one stage")
    k = len(names)
    for s, m in enumerate(maps):
        if m.ndim != 3 or m.shape[0] != k:
            raise ValueError(f"aah[{s}] must be (K={k}, h, w), got shape {m.shape}")
    if len(stage_names) < len(maps):
        raise ValueError(f"{len(maps)} stages but only {len(stage_names)} stage names")
    if labels is not None and len(labels) != k:
        raise ValueError(f"{k} attribute names but {len(labels)} labels")
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")

    base = resize_to_height(img, cell_height)
    cell_w = base.width
    small = np.asarray(base)  # overlays are computed at cell size: fast and what is shown
    gap, pad = 4, 6
    name_font, label_font, stage_font = font(12), font(10), font(12)
    # columns widen (up to 1.5x the image) so that names such as "downpurple" fit
    longest = max(name_font.getlength(n) for n in names) if k else 0.0
    col_w = int(min(max(cell_w, longest + 2), 1.5 * cell_w))
    inset = (col_w - cell_w) // 2  # overlay centred in its column
    stage_w = int(max(stage_font.getlength(s) for s in stage_names[: len(maps)])) + 2 * pad
    header_h = 16 + (14 if labels is not None else 0)
    n_blocks = -(-k // per_row)
    cols = min(k, per_row) + 1  # +1: the plain image
    width = stage_w + cols * (col_w + gap) + pad
    block_h = header_h + len(maps) * (cell_height + gap) + 2 * gap
    canvas = Image.new("RGB", (width, n_blocks * block_h + pad), _BG)
    draw = ImageDraw.Draw(canvas)

    for b in range(n_blocks):
        idx = list(range(b * per_row, min(k, (b + 1) * per_row)))
        y0 = pad + b * block_h
        draw.text((stage_w + inset, y0), fit_text("image", name_font, col_w), fill=_FG, font=name_font)
        canvas.paste(base, (stage_w + inset, y0 + header_h))
        for c, a in enumerate(idx, start=1):
            x = stage_w + c * (col_w + gap)
            draw.text((x, y0), fit_text(names[a], name_font, col_w), fill=_FG, font=name_font)
            if labels is not None:
                draw.text((x, y0 + 16), fit_text(labels[a], label_font, col_w), fill=_MUTED, font=label_font)
        for s, stage_maps in enumerate(maps):
            y = y0 + header_h + s * (cell_height + gap)
            draw.text((pad, y + cell_height // 2 - 7), stage_names[s], fill=_FG, font=stage_font)
            for c, a in enumerate(idx, start=1):
                x = stage_w + c * (col_w + gap) + inset
                canvas.paste(Image.fromarray(overlay(small, stage_maps[a], alpha=alpha)), (x, y))
    logger.debug("heat-map grid: %d attributes x %d stages -> %dx%d px", k, len(maps), *canvas.size)
    return canvas
