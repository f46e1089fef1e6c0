"""Cameras of the synthetic dataset: background scenes and the per-camera / per-image shot settings.

Each camera is a fixed scene (street wall over paving, park foliage, hall panels
or a plain gradient, all muted and textured) with its own illumination gain and
colour cast, person-scale range, viewpoint mix, blur, sensor noise and occlusion
rate; each image is then cut from the scene at its own offset and gets its own
viewpoint, scale, position and walking phase. Drawing itself is in
``draw``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sangal.synthetic.labels import OCCLUDER, PASSER_HEAD, PASSER_LOWER, PASSER_UPPER

logger = logging.getLogger(__name__)

VIEWS = ("front", "back", "left", "right")  # left/right: side view, walking towards that image side


@dataclass(frozen=True)
class Shot:
    """One picture of one person (or of nothing) in one camera."""

    kind: str  # person | fragment (junk: badly cropped person) | background (distractor)
    view: str  # one of VIEWS
    height: float  # person height as a fraction of the image height
    cx: float  # body centre x as a fraction of the image width
    feet: float  # sole y as a fraction of the image height
    stride: float  # walking phase in [-1, 1]
    brightness: float  # per-image gain on top of the camera's
    occluder: tuple[str, float, float, float] | None  # (pole|box|passer|passer_behind, a, b, c) in [0, 1]
    occluder_colour: tuple[int, int, int]
    bg_offset: tuple[float, float]  # where the image is cut from the camera's scene, in [0, 1]
    resolution: float = 1.0  # the detection's native size as a fraction of the image size (real style < 1)
    passer_colours: tuple[tuple[int, int, int], ...] = ()  # a passer-by's upper, lower, head colours
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-image white balance on top of the camera's


@dataclass(frozen=True)
class CameraStyle:
    """What one camera does to every picture it takes."""

    scene: np.ndarray  # (Hs, Ws, 3) float32 background larger than the image
    gain: tuple[float, float, float]  # illumination: brightness x colour cast per channel
    blur: float  # Gaussian blur radius in pixels at 128x64
    noise: float  # sensor noise sigma in grey levels
    height_range: tuple[float, float]
    view_probs: tuple[float, float, float, float]  # front, back, left, right
    occlusion: float  # probability that something covers part of the body
    occluder_colour: tuple[int, int, int]
    contrast: float = 1.0  # < 1: haze / flat low-light picture, pulled towards the scene's mean
    resolution: tuple[float, float] = (1.0, 1.0)  # range of the native detection size, fraction of the image
    passers: float = 0.0  # share of occlusions that are passers-by


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.uniform(0, 255, size=cells).astype(np.uint8)
    up = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    return np.asarray(up, np.float32) / 127.5 - 1.0


def _muted(rng: np.random.Generator, max_sat: float, value: tuple[float, float]) -> np.ndarray:
    """A random desaturated colour (walls, floors), as float RGB 0..255."""
    hue = rng.uniform(0, 1)
    rgb = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)  # pure hue
    sat, val = rng.uniform(0, max_sat), rng.uniform(*value)
    return ((1 - sat + sat * rgb) * val * 255).astype(np.float32)


def make_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A camera's background, larger than one image (each image is cut at its own offset).

    Kinds: street (wall with courses and windows over paving), park (foliage over
    a path), hall (vertical panels over a floor) and plain (gradient); all with
    low-frequency texture so the background is not a flat colour.
    """
    hs, ws = int(height * 1.25), int(width * 1.6)
    ys, xs = np.mgrid[0:hs, 0:ws].astype(np.float32)
    kind = ("street", "park", "hall", "plain")[int(rng.integers(4))]
    horizon = rng.uniform(0.5, 0.72) * hs
    top = _muted(rng, 0.35, (0.3, 0.85))
    floor = _muted(rng, 0.12, (0.35, 0.7))  # paving is greyish
    if kind == "park":
        top = np.array([rng.uniform(40, 90), rng.uniform(80, 130), rng.uniform(40, 70)], np.float32)
    scene = np.where((ys < horizon)[..., None], top, floor).astype(np.float32)
    tex = _smooth_noise(rng, hs, ws, (int(rng.integers(4, 12)), int(rng.integers(3, 9))))
    scene *= (1.0 + 0.12 * tex)[..., None]
    above = ys < horizon
    if kind == "street":
        course = max(2.0, height / rng.uniform(14, 24))
        scene[above & ((ys % course) < 1)] *= 0.8
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(0, ws * 0.8), rng.uniform(0.05, 0.5) * horizon
            win = (xs >= x0) & (xs < x0 + rng.uniform(0.15, 0.35) * ws) & (ys >= y0) & (ys < y0 + 0.3 * horizon)
            scene[win & above] = scene[win & above] * 0.35 + rng.uniform(20, 90)
    elif kind == "park":
        leaves = _smooth_noise(rng, hs, ws, (24, 12))
        scene[above] *= (1.0 + 0.35 * leaves[above])[:, None]
    elif kind == "hall":
        panel = max(3.0, width / rng.uniform(2, 5))
        scene[above & ((xs % panel) < panel * 0.5)] *= rng.uniform(0.8, 0.92)
    else:
        grad = (ys / hs)[..., None] * rng.uniform(-50, 50, size=3).astype(np.float32)
        scene += grad
    seam = max(3.0, height / 10)
    below = ~above
    scene[below & (((ys - horizon) % seam) < 1)] *= 0.85
    scene[below & ((xs % (seam * 2.5)) < 1)] *= 0.9
    return np.clip(scene, 0, 255)


def sample_camera(rng: np.random.Generator, height: int, width: int) -> CameraStyle:
    """One camera: scene, illumination gain and colour cast, scale range, viewpoint mix, blur, noise, occlusion."""
    level = rng.uniform(0.72, 1.18)
    cast = 1.0 + np.clip(rng.normal(0, 0.06, size=3), -0.12, 0.12)
    base = rng.uniform(0.8, 0.9)
    views = 0.6 * rng.dirichlet((2.0, 2.0, 1.5, 1.5)) + 0.1
    return CameraStyle(
        scene=make_scene(rng, height, width), gain=tuple(float(g) for g in level * cast),  # type: ignore[arg-type]
        blur=float(rng.uniform(0.3, 1.0)), noise=float(rng.uniform(2.0, 6.0)),
        height_range=(base - 0.05, base + 0.07), view_probs=tuple(float(v) for v in views),  # type: ignore[arg-type]
        occlusion=float(rng.uniform(0.05, 0.3)),
        occluder_colour=tuple(int(c) for c in _muted(rng, 0.45, (0.25, 0.75))),  # type: ignore[arg-type]
    )


def sample_shot(cam: CameraStyle, rng: np.random.Generator, kind: str) -> Shot:
    """One picture in ``cam``: viewpoint, scale, position, walking phase, occluder, background offset.

    ``kind`` "fragment" (junk) is a badly cropped detection: the person is too large and off centre.
    """
    view = VIEWS[int(rng.choice(4, p=cam.view_probs))]
    height = float(rng.uniform(*cam.height_range))
    feet = float(rng.uniform(0.965, 0.995))
    cx = 0.5 + float(np.clip(rng.normal(0, 0.05), -0.1, 0.1))
    if kind == "fragment":  # junk: a badly cropped detection showing part of a person
        height, feet, cx = float(rng.uniform(1.2, 2.0)), float(rng.uniform(0.8, 1.7)), float(rng.uniform(0.1, 0.9))
    occluded = rng.random() < (0.5 if kind == "background" else cam.occlusion)
    occluder = (str(rng.choice(("pole", "box"))), *(float(x) for x in rng.random(3))) if occluded else None
    return Shot(kind=kind, view=view, height=min(height, feet - 0.01) if kind == "person" else height, cx=cx,
                feet=feet, stride=float(rng.uniform(-1, 1)), brightness=float(rng.uniform(0.92, 1.08)),
                occluder=occluder, occluder_colour=cam.occluder_colour,  # type: ignore[arg-type]
                bg_offset=(float(rng.random()), float(rng.random())))


def sample_camera_real(rng: np.random.Generator, height: int, width: int) -> CameraStyle:
    """A camera of the real style: dim or strongly tinted light, flat contrast, small blurry detections,
    more noise, more and busier occlusion (passers-by) than ``sample_camera``."""
    level = rng.uniform(0.5, 1.1)
    cast = 1.0 + np.clip(rng.normal(0, 0.12, size=3), -0.3, 0.3)
    base = rng.uniform(0.78, 0.92)
    views = 0.6 * rng.dirichlet((2.0, 2.0, 1.5, 1.5)) + 0.1
    low = rng.uniform(0.3, 0.6)
    return CameraStyle(
        scene=make_scene(rng, height, width), gain=tuple(float(g) for g in level * cast),  # type: ignore[arg-type]
        blur=float(rng.uniform(0.4, 1.2)), noise=float(rng.uniform(3.0, 9.0)),
        height_range=(base - 0.08, base + 0.08), view_probs=tuple(float(v) for v in views),  # type: ignore[arg-type]
        occlusion=float(rng.uniform(0.15, 0.45)),
        occluder_colour=tuple(int(c) for c in _muted(rng, 0.45, (0.25, 0.75))),  # type: ignore[arg-type]
        contrast=float(rng.uniform(0.6, 1.0)), resolution=(float(low), float(low + 0.3)),
        passers=float(rng.uniform(0.3, 0.7)),
    )


def sample_shot_real(cam: CameraStyle, rng: np.random.Generator, kind: str) -> Shot:
    """A real-style picture: looser detection boxes (feet, head top or a side cut off), passers-by
    among the occluders, the native detection size and a wider per-image light change."""
    view = VIEWS[int(rng.choice(4, p=cam.view_probs))]
    height = float(rng.uniform(*cam.height_range))
    feet = float(rng.uniform(1.0, 1.12) if rng.random() < 0.2 else rng.uniform(0.965, 0.995))
    head_cut = float(rng.uniform(0.0, 0.06)) if rng.random() < 0.12 else -0.01
    cx = 0.5 + float(np.clip(rng.normal(0, 0.08), -0.18, 0.18))
    if kind == "fragment":
        height, feet, cx = float(rng.uniform(1.2, 2.0)), float(rng.uniform(0.8, 1.7)), float(rng.uniform(0.1, 0.9))
    elif kind == "person":
        height = min(height, feet + head_cut)
    occluder, colours = None, ()
    if rng.random() < (0.5 if kind == "background" else cam.occlusion):
        passer = rng.random() < cam.passers
        what = ("passer" if rng.random() < 0.5 else "passer_behind") if passer else str(rng.choice(("pole", "box")))
        occluder = (what, *(float(x) for x in rng.random(3)))
        if passer:
            colours = tuple(tuple(int(c) for c in _muted(rng, 0.9, v)) for v in ((0.1, 0.95), (0.1, 0.8), (0.05, 0.3)))
    return Shot(kind=kind, view=view, height=height, cx=cx, feet=feet, stride=float(rng.uniform(-1, 1)),
                brightness=float(rng.uniform(0.8, 1.15)), occluder=occluder,  # type: ignore[arg-type]
                occluder_colour=cam.occluder_colour, bg_offset=(float(rng.random()), float(rng.random())),
                resolution=float(rng.uniform(*cam.resolution)), passer_colours=colours,  # type: ignore[arg-type]
                cast=tuple(float(c) for c in 1.0 + np.clip(rng.normal(0, 0.06, size=3), -0.12, 0.12)))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """Fixed Gaussian noise, twice the image size; images take random crops (much faster than drawing anew)."""
    return np.random.default_rng(height * 10007 + width).standard_normal((2 * height, 2 * width, 3), dtype=np.float32)


def _noise_patch(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    bank = _noise_bank(height, width)
    oy, ox = int(rng.integers(height)), int(rng.integers(width))
    patch = bank[oy:oy + height, ox:ox + width]
    return patch[:, ::-1] if rng.random() < 0.5 else patch


def photograph(img: np.ndarray, background: np.ndarray, cam: CameraStyle, shot: Shot,
               rng: np.random.Generator) -> np.ndarray:
    """What the camera makes of the (H, W, 3) float coloured person: scene behind, light, noise, blur -> uint8."""
    height, width = background.shape
    scene = cam.scene
    oy = int(shot.bg_offset[0] * (scene.shape[0] - height))
    ox = int(shot.bg_offset[1] * (scene.shape[1] - width))
    img[background] = scene[oy:oy + height, ox:ox + width][background]
    img *= np.asarray(cam.gain, np.float32) * shot.brightness
    if cam.contrast != 1.0 or shot.resolution != 1.0:  # the real style only
        return _photograph_small(img, cam, shot, rng)
    img += _noise_patch(rng, height, width) * np.float32(cam.noise)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    radius = cam.blur * height / 128.0
    if radius > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(out)


def draw_occluder(draw: ImageDraw.ImageDraw, shot: Shot, height: int, width: int,
                  head_x: float, head_half: float, box_top_min: float) -> None:
    """A pole or a box in front of the person, never over the head; or a passer-by (real style), in front or behind."""
    kind, a, b, c = shot.occluder  # type: ignore[misc]
    if kind in ("passer", "passer_behind"):
        _draw_passer(draw, shot, height, width)
    elif kind == "pole":
        w = (0.1 + 0.1 * b) * width
        free_left = head_x - head_half - 1  # room left of the head
        free_right = width - (head_x + head_half + 1)
        if a < 0.5 and free_left > w * 0.5:
            x1 = free_left * (0.4 + 0.6 * c)
            x0 = x1 - w
        elif free_right > w * 0.5:
            x0 = width - free_right * (0.4 + 0.6 * c)
            x1 = x0 + w
        else:
            return
        draw.rectangle([x0, 0, x1, height], fill=OCCLUDER)
    else:
        top = max(box_top_min, (0.62 + 0.25 * a) * height)
        if top > height - 2:
            return
        x0 = -1 if b < 0.5 else c * 0.5 * width
        x1 = width if b >= 0.5 else width * (0.5 + 0.5 * c)
        draw.rectangle([x0, top, x1, height], fill=OCCLUDER)


def _photograph_small(img: np.ndarray, cam: CameraStyle, shot: Shot, rng: np.random.Generator) -> np.ndarray:
    """The real style's camera: this picture's white balance, flat contrast, then the detection at its native
    size with sensor noise there, blurred and scaled up to the image size (hats and shoes end up a few pixels)."""
    height, width = img.shape[:2]
    img = img * np.asarray(shot.cast, np.float32)
    img = img * np.float32(cam.contrast) + np.float32(1.0 - cam.contrast) * img.mean(axis=(0, 1))
    small = (max(8, round(width * shot.resolution)), max(16, round(height * shot.resolution)))
    low = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(small, Image.BOX), np.float32)
    low = low + _noise_patch(rng, height, width)[:small[1], :small[0]] * np.float32(cam.noise)
    out = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8))
    radius = cam.blur * small[1] / 128.0
    if radius > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(out.resize((width, height), Image.BILINEAR))


def _draw_passer(draw: ImageDraw.ImageDraw, shot: Shot, height: int, width: int) -> None:
    """Part of another pedestrian at one side of the box: nearer and larger in front, smaller behind."""
    _, a, b, c = shot.occluder  # type: ignore[misc]
    front = shot.occluder[0] == "passer"  # type: ignore[index]
    u = shot.height * height * ((1.0 + 0.25 * c) if front else (0.8 + 0.15 * c))
    feet = height * ((1.02 + 0.1 * c) if front else (0.93 + 0.05 * c))
    top = feet - u
    half = 0.12 * u  # torso half width
    edge = (0.12 + 0.28 * b) * width  # how far into the picture the passer reaches
    cx = edge - half if a < 0.5 else width - edge + half
    draw.ellipse([cx - 0.06 * u, top, cx + 0.06 * u, top + 0.14 * u], fill=PASSER_HEAD)
    draw.rectangle([cx - half, top + 0.15 * u, cx + half, top + 0.53 * u], fill=PASSER_UPPER)
    draw.rectangle([cx - 0.09 * u, top + 0.52 * u, cx + 0.09 * u, feet], fill=PASSER_LOWER)
