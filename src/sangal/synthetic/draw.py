"""Drawing one procedural pedestrian image for the synthetic dataset (see ``generate.py``).

A person is first drawn as a *label map* with ``PIL.ImageDraw`` (one small
integer per body part, in painter's order, then any occluder on top), and only
then coloured with numpy look-ups, garment patterns, body shading and the
camera's illumination. Because the masks are read off the same label map, they
are exactly the visible pixels of each part after scale/position jitter,
viewpoint and occlusion, in image coordinates.

Geometry is expressed in units of the person's height ``u`` (head top to sole),
so the same code draws 64x32, 128x64 or 256x128 images.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sangal.synthetic.labels import (
    BACKPACK,
    BACKPACK_DETAIL,
    BAG,
    BG,
    FACE,
    HAIR,
    HANDBAG,
    HAT,
    HAT_DETAIL,
    LOWER,
    LOWER_DETAIL,
    NUM_LABELS,
    OCCLUDER,
    PASSER_HEAD,
    PASSER_LOWER,
    PASSER_UPPER,
    SHOES,
    SKIN,
    STRAP,
    UPPER,
    UPPER_DETAIL,
)
from sangal.synthetic.scene import CameraStyle, Shot, draw_occluder, photograph

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Look:
    """Everything that makes one identity look the way it does, in every camera."""

    female: bool
    age: int  # Market code 1 young .. 4 old
    hair_long: bool
    sleeves_long: bool
    lower_kind: str  # pants | shorts | skirt_long | skirt_short
    hat: str | None  # None | cap | beanie
    backpack: bool
    bag: bool
    handbag: bool
    colours: dict[str, tuple[int, int, int]]  # skin hair upper lower shoes hat backpack bag handbag strap,
    #                                           and the detail colours upper2 lower2 hat2 backpack2
    upper_pattern: str  # plain | hstripes | vstripes | grid | logo | yoke | placket
    pattern_period: float  # stripe / grid period in units of u
    lower_detail: str  # plain | stripe | cuffs | belt | faded
    shoulder: float  # build factors around 1.0
    head: float
    bag_side: int  # +1 person's right, -1 person's left
    handbag_side: int
    carry_scale: float = 1.0  # size of backpack, bag and handbag (the real style's are often smaller)
    hair_tied: bool = False  # long hair tied back: hidden from the front, a narrow tail from behind


class _Pen:
    """ImageDraw on a label map with body-relative coordinates: x = cx + dx*u, y = y0 + dy*u."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, y0: float, u: float) -> None:
        self.d, self.cx, self.y0, self.u = draw, cx, y0, u

    def p(self, dx: float, dy: float) -> tuple[float, float]:
        return (self.cx + dx * self.u, self.y0 + dy * self.u)

    def poly(self, pts: list[tuple[float, float]], lab: int) -> None:
        self.d.polygon([self.p(x, y) for x, y in pts], fill=lab)

    def ell(self, dx: float, dy: float, rx: float, ry: float, lab: int) -> None:
        x, y = self.p(dx, dy)
        self.d.ellipse([x - rx * self.u, y - ry * self.u, x + rx * self.u, y + ry * self.u], fill=lab)

    def dome(self, dx: float, dy: float, rx: float, ry: float, lab: int) -> None:
        """Upper half of an ellipse (hat crowns)."""
        x, y = self.p(dx, dy)
        self.d.pieslice([x - rx * self.u, y - ry * self.u, x + rx * self.u, y + ry * self.u], 180, 360, fill=lab)

    def rect(self, x0: float, y0: float, x1: float, y1: float, lab: int, r: float = 0.0) -> None:
        (ax, ay), (bx, by) = self.p(x0, y0), self.p(x1, y1)
        box = [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]
        if r > 0 and min(box[2] - box[0], box[3] - box[1]) > 2 * r * self.u + 1:
            self.d.rounded_rectangle(box, radius=r * self.u, fill=lab)
        else:
            self.d.rectangle(box, fill=lab)

    def limb(self, a: tuple[float, float], b: tuple[float, float], w0: float, w1: float, lab: int) -> None:
        """Tapered segment from a to b (half widths w0, w1) with a rounded joint at a."""
        (ax, ay), (bx, by) = a, b
        length = max(np.hypot(bx - ax, by - ay), 1e-6)
        nx, ny = -(by - ay) / length, (bx - ax) / length
        self.poly([(ax + nx * w0, ay + ny * w0), (bx + nx * w1, by + ny * w1),
                   (bx - nx * w1, by - ny * w1), (ax - nx * w0, ay - ny * w0)], lab)
        self.ell(ax, ay, w0, w0, lab)

    def line(self, a: tuple[float, float], b: tuple[float, float], w: float, lab: int) -> None:
        self.d.line([self.p(*a), self.p(*b)], fill=lab, width=max(1, round(w * self.u)))


@dataclass(frozen=True)
class _Body:
    """Key heights (fractions of u) and half widths of one person in one view."""

    head_rx: float
    head_ry: float
    shoulder_y: float
    shoulder: float
    waist: float
    hip: float


def _body(look: Look, side: bool) -> _Body:
    head = look.head * (1.12 if look.age == 1 else 1.04 if look.age == 2 else 1.0)
    ry = 0.066 * head
    shoulder = (0.102 if look.female else 0.118) * look.shoulder
    return _Body(
        head_rx=(0.056 if side else 0.050) * head,
        head_ry=ry,
        shoulder_y=2 * ry + 0.028,
        shoulder=0.064 * look.shoulder if side else shoulder,
        waist=0.056 if side else (0.076 if look.female else 0.086) * look.shoulder,
        hip=0.062 if side else (0.100 if look.female else 0.092),
    )


def _draw_legs(pen: _Pen, look: Look, b: _Body, legs: list[tuple[float, float]], toe: float) -> None:
    """Skin legs, lower garment and shoes; ``legs`` are (hip dx, ankle dx) back to front, ``toe`` the facing."""
    knee_y, ankle_y = 0.75, 0.955
    short = look.lower_kind in ("shorts", "skirt_short")
    for hx, ax in legs:
        pen.limb((hx, 0.56), (ax, ankle_y), 0.044, 0.026, SKIN)
        if look.lower_kind in ("pants", "shorts"):
            end = knee_y - 0.07 if short else ankle_y + 0.005
            t = (end - 0.56) / (ankle_y - 0.56)
            pen.limb((hx, 0.52), (hx + (ax - hx) * t, end), 0.048, 0.048 - 0.018 * t, LOWER)
            if look.lower_detail == "stripe":
                sx = 0.045 if hx >= 0 else -0.045
                pen.line((hx + sx, 0.53), (hx + (ax - hx) * t + sx * 0.6, end), 0.012, LOWER_DETAIL)
            if look.lower_detail == "cuffs":
                pen.limb((hx + (ax - hx) * (t - 0.06), end - 0.025), (hx + (ax - hx) * t, end), 0.032, 0.032, LOWER_DETAIL)
        pen.ell(ax + toe * 0.018, ankle_y + 0.022, 0.036 + abs(toe) * 0.01, 0.022, SHOES)
    if look.lower_kind in ("pants", "shorts"):
        pen.poly([(-b.hip, 0.44), (b.hip, 0.44), (b.hip, 0.58), (-b.hip, 0.58)], LOWER)
        if look.lower_detail == "belt":
            pen.rect(-b.waist - 0.01, 0.495, b.waist + 0.01, 0.515, LOWER_DETAIL)
    else:
        hem = 0.68 if look.lower_kind == "skirt_short" else 0.86
        flare = b.hip * (1.45 if hem < 0.8 else 1.7)
        pen.poly([(-b.waist, 0.44), (b.waist, 0.44), (flare, hem), (-flare, hem)], LOWER)
        if look.lower_detail in ("stripe", "cuffs"):
            pen.poly([(-flare * 0.97, hem - 0.03), (flare * 0.97, hem - 0.03), (flare, hem), (-flare, hem)], LOWER_DETAIL)


def _draw_arm(pen: _Pen, look: Look, shoulder: tuple[float, float], wrist: tuple[float, float]) -> None:
    elbow_t = 0.5 if look.sleeves_long else 0.22
    pen.limb(shoulder, wrist, 0.026, 0.02, SKIN)
    end = (shoulder[0] + (wrist[0] - shoulder[0]) * (1.0 if look.sleeves_long else elbow_t + 0.2),
           shoulder[1] + (wrist[1] - shoulder[1]) * (1.0 if look.sleeves_long else elbow_t + 0.2))
    pen.limb(shoulder, end, 0.032, 0.026 if look.sleeves_long else 0.03, UPPER)
    pen.ell(wrist[0], wrist[1] + 0.018, 0.02, 0.024, SKIN)


def _draw_head(pen: _Pen, look: Look, b: _Body, view: str, face_dx: float) -> None:
    hy = b.head_ry
    rx, ry = b.head_rx, b.head_ry
    pen.rect(-0.018, hy, 0.018, b.shoulder_y + 0.01, SKIN)  # neck
    if view == "back":
        pen.ell(0, hy, rx, ry, SKIN)
        pen.ell(0, hy - 0.06 * ry, rx * 1.06, ry * 0.96, HAIR)
    elif view == "front":
        pen.ell(0, hy - 0.1 * ry, rx * 1.07, ry * 0.93, HAIR)
        pen.ell(0, hy + 0.14 * ry, rx * 0.93, ry * 0.86, SKIN)
        for ex in (-0.4, 0.4) if pen.u > 80 else ():  # eyes vanish below ~1 px
            pen.ell(ex * rx, hy + 0.1 * ry, 0.008, 0.008, FACE)
    else:
        pen.ell(face_dx * 0.15 * rx, hy, rx, ry, SKIN)
        pen.poly([(face_dx * rx * 0.95, hy - 0.1 * ry), (face_dx * rx * 1.25, hy + 0.25 * ry),
                  (face_dx * rx * 0.95, hy + 0.3 * ry)], SKIN)  # nose
        pen.ell(-face_dx * 0.4 * rx, hy - 0.14 * ry, rx * 0.78, ry * 0.88, HAIR)
        pen.ell(-face_dx * 0.05 * rx, hy - 0.62 * ry, rx * 0.7, ry * 0.4, HAIR)  # crown
        if pen.u > 80:
            pen.ell(face_dx * 0.55 * rx, hy - 0.02 * ry, 0.008, 0.008, FACE)
    if look.hat is not None:
        crown = 1.1 if look.hat == "beanie" else 1.0
        pen.dome(0, hy - 0.08 * ry, rx * 1.1, ry * crown, HAT)
        if look.hat == "beanie":
            pen.rect(-rx * 1.1, hy - 0.2 * ry, rx * 1.1, hy - 0.02 * ry, HAT_DETAIL)
        elif view == "front":
            pen.ell(0, hy - 0.1 * ry, rx * 1.25, ry * 0.16, HAT_DETAIL)
        elif view != "back":
            pen.rect(min(0, face_dx) * rx * 1.9, hy - 0.2 * ry, max(0, face_dx) * rx * 1.9, hy - 0.05 * ry, HAT_DETAIL)


def _draw_person(pen: _Pen, look: Look, view: str, stride: float) -> tuple[float, float]:
    """Draw one person on ``pen``; returns the head's (dx, half width) for occluder placement."""
    side = view in ("left", "right")
    b = _body(look, side)
    face = 1.0 if view == "right" else -1.0  # side views: the direction the person faces
    right = -1.0 if view == "front" else 1.0  # front/back: image x sign of the person's right
    near_side = -face  # side views: walking right shows the person's left (-1)
    hair_len = b.shoulder_y + (0.12 if look.hair_long else 0.0)
    sy, s, k = b.shoulder_y, b.shoulder, look.carry_scale

    if look.hair_long and view != "back" and not (look.hair_tied and view == "front"):
        pen.rect(-face * 0.25 * b.head_rx - b.head_rx * 1.05, b.head_ry, -face * 0.25 * b.head_rx + b.head_rx * 1.05,
                 hair_len, HAIR, r=0.02)
    if side:
        swing = 0.13 * stride * face
        if look.backpack:
            pen.rect(-face * _span(s - 0.03, s + 0.07, k), sy + 0.02, -face * (s - 0.03), sy + _span(0.02, 0.27, k),
                     BACKPACK, r=0.025)
        _draw_arm(pen, look, (0.0, sy + 0.02), (swing, 0.5))  # far arm
        if look.handbag and look.handbag_side != near_side:
            _draw_handbag(pen, swing, k)
        _draw_legs(pen, look, b, [(0.0, -0.11 * stride * face), (0.0, 0.11 * stride * face)], face)
    else:
        spread = 0.01 * stride
        _draw_legs(pen, look, b, [(-0.046, -0.05 - spread), (0.046, 0.05 + spread)], 0.0)
    _draw_torso(pen, look, b, view, right)
    if side:
        arm_x = -0.13 * stride * face
        if look.bag:
            pen.line((face * 0.02, sy), (-face * 0.04, 0.5), 0.014, STRAP)
            pen.rect(-face * 0.11 * k, 0.47, face * 0.01, _span(0.47, 0.57, k), BAG, r=0.015)
        if look.backpack:
            pen.line((face * 0.03, sy), (-face * s, sy + 0.2), 0.02, STRAP)
        _draw_arm(pen, look, (0.0, sy + 0.02), (arm_x, 0.5))  # near arm
        if look.handbag and look.handbag_side == near_side:
            _draw_handbag(pen, arm_x, k)
    else:
        if look.backpack and view == "front":
            for sx in (-1, 1):
                pen.line((sx * s * 0.55, sy - 0.005), (sx * s * 0.62, sy + 0.2), 0.022, STRAP)
        if look.backpack and view == "back":
            pen.rect(-s * 0.78 * k, sy + 0.015, s * 0.78 * k, sy + _span(0.015, 0.27, k), BACKPACK, r=0.03)
            pen.rect(-s * 0.5 * k, sy + _span(0.015, 0.16, k), s * 0.5 * k, sy + _span(0.015, 0.25, k),
                     BACKPACK_DETAIL, r=0.015)
        if look.bag:
            bx = right * look.bag_side
            pen.line((-bx * s * 0.8, sy), (bx * b.hip, 0.5), 0.014, STRAP)
            pen.rect(bx * (b.hip - 0.03), 0.47, bx * _span(b.hip - 0.03, b.hip + 0.075, k), _span(0.47, 0.57, k),
                     BAG, r=0.015)
        for sx in (-1, 1):
            _draw_arm(pen, look, (sx * (s - 0.022), sy + 0.025), (sx * (s + 0.012), 0.5))
        if look.handbag:
            _draw_handbag(pen, right * look.handbag_side * (s + 0.012), k)
    if look.hair_long and view == "back":
        tail = b.head_rx * (0.4 if look.hair_tied else 1.05)
        pen.rect(-tail, b.head_ry, tail, hair_len, HAIR, r=0.02)
    _draw_head(pen, look, b, view, face)
    return (face * 0.15 * b.head_rx if side else 0.0), b.head_rx * 1.3


def _draw_torso(pen: _Pen, look: Look, b, view: str, right: float) -> None:
    """The upper garment over the waistband, its belt, logo or placket, and the neckline."""
    sy, s = b.shoulder_y, b.shoulder
    pen.poly([(-s * 0.75, sy - 0.012), (s * 0.75, sy - 0.012), (s, sy + 0.02), (b.waist, 0.42),
              (b.hip * 0.98, 0.535), (-b.hip * 0.98, 0.535), (-b.waist, 0.42), (-s, sy + 0.02)], UPPER)
    if look.lower_detail == "belt" and look.lower_kind in ("pants", "shorts"):
        pen.rect(-b.hip * 0.98, 0.51, b.hip * 0.98, 0.535, LOWER_DETAIL)
    if view == "front" and look.upper_pattern == "logo":
        pen.ell(0.35 * s * right, sy + 0.08, 0.028, 0.024, UPPER_DETAIL)
    if view == "front" and look.upper_pattern == "placket":
        pen.rect(-0.009, sy, 0.009, 0.52, UPPER_DETAIL)
    if view == "front":
        pen.poly([(-0.035, sy - 0.012), (0.035, sy - 0.012), (0.0, sy + 0.035)], SKIN)  # neckline


def _draw_handbag(pen: _Pen, x: float, k: float) -> None:
    """A small bag with two handles hanging from the hand at ``x``, ``k`` times the usual size."""
    pen.line((x - 0.022, 0.535), (x, 0.515), 0.01, HANDBAG)
    pen.line((x + 0.022, 0.535), (x, 0.515), 0.01, HANDBAG)
    bottom, w0, w1 = _span(0.535, 0.6, k), 0.035 * k, 0.045 * k
    pen.poly([(x - w0, 0.535), (x + w0, 0.535), (x + w1, bottom), (x - w1, bottom)], HANDBAG)


def _span(start: float, end: float, k: float) -> float:
    """The end of [start, end] shrunk by ``k`` towards ``start``; exactly ``end`` at k = 1 (the easy style)."""
    return end if k == 1.0 else start + (end - start) * k


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return ys, xs


def _colour_person(img: np.ndarray, labels: np.ndarray, look: Look, view: str,
                   cx: float, y0: float, u: float, rng: np.random.Generator) -> None:
    """Garment patterns and cylindrical shading, in place on the label-coloured image."""
    ys, xs = _grid(*labels.shape)
    rel_y = (ys - y0) / u
    rel_x = (xs - cx) / u
    upper = labels == UPPER
    period = look.pattern_period
    pat = None
    if look.upper_pattern == "hstripes":
        pat = (rel_y / period) % 1.0 < 0.36
    elif look.upper_pattern == "vstripes":
        pat = (rel_x / period + 0.25) % 1.0 < 0.34
    elif look.upper_pattern == "grid":  # checked shirt
        pat = ((rel_y / period) % 1.0 < 0.18) | (((rel_x / period) + 0.1) % 1.0 < 0.18)
    elif look.upper_pattern == "yoke":  # contrasting shoulder panel, in full colour
        yoke = upper & (rel_y < _body(look, False).shoulder_y + 0.07)
        img[yoke] = look.colours["upper2"]
    if pat is not None:  # half-tone: stripes stay visible without changing the garment's colour class
        sel = upper & pat
        img[sel] = 0.5 * img[sel] + 0.5 * np.asarray(look.colours["upper2"], np.float32)
    if look.lower_detail == "faded":
        lower = labels == LOWER
        fade = np.clip(1.0 - np.abs(rel_y - 0.64) / 0.1, 0, 1)[lower] * 0.16
        img[lower] = img[lower] * (1 - fade[:, None]) + 230.0 * fade[:, None]
    body = (labels != BG) & (labels != OCCLUDER) & (labels < PASSER_UPPER)
    shade = 1.0 - 0.55 * np.clip(rel_x / 0.17, -1, 1) ** 2 * 0.35 + 0.04 * np.clip(rel_x / 0.17, -1, 1)
    img[body] *= shade[body][:, None]
    hair = labels == HAIR
    img[hair] *= rng.uniform(0.85, 1.15, size=(int(hair.sum()), 1)).astype(np.float32)


def render(look: Look | None, shot: Shot, cam: CameraStyle, height: int, width: int,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image: (H, W, 3) uint8 RGB and the (H, W) uint8 label map of the visible parts."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("L", (width, height), BG)
    pen = None
    u = shot.height * height
    y0 = shot.feet * height - u
    cx = shot.cx * width
    head = (0.0, 0.0)
    behind = shot.occluder is not None and shot.occluder[0] == "passer_behind"
    if behind:
        draw_occluder(ImageDraw.Draw(canvas), shot, height, width, 0.0, 0.0, 0.0)
    if look is not None and shot.kind != "background":
        pen = _Pen(ImageDraw.Draw(canvas), cx, y0, u)
        head = _draw_person(pen, look, shot.view, shot.stride)
    if shot.occluder is not None and not behind:
        draw_occluder(ImageDraw.Draw(canvas), shot, height, width, cx + head[0] * u, head[1] * u, y0 + 0.62 * u)
    labels = np.asarray(canvas).copy()

    lut = np.zeros((NUM_LABELS, 3), np.float32)
    if look is not None:
        c = look.colours
        for lab, key in ((SKIN, "skin"), (HAIR, "hair"), (HAT, "hat"), (UPPER, "upper"), (LOWER, "lower"),
                         (SHOES, "shoes"), (BACKPACK, "backpack"), (BAG, "bag"), (HANDBAG, "handbag"),
                         (STRAP, "strap"), (UPPER_DETAIL, "upper2"), (LOWER_DETAIL, "lower2"),
                         (HAT_DETAIL, "hat2"), (BACKPACK_DETAIL, "backpack2")):
            lut[lab] = c[key]
        lut[FACE] = np.asarray(c["skin"], np.float32) * 0.35
    lut[OCCLUDER] = shot.occluder_colour
    for lab, rgb in zip((PASSER_UPPER, PASSER_LOWER, PASSER_HEAD), shot.passer_colours):
        lut[lab] = rgb
    img = np.take(lut, labels, axis=0)
    if pen is not None:
        _colour_person(img, labels, look, shot.view, cx, y0, u, rng)
    return photograph(img, labels == BG, cam, shot, rng), labels
