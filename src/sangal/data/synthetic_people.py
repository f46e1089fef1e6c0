"""Who the synthetic pedestrians are: attribute labels and the looks that show them, for both styles.

``easy`` (generator v1, kept bit for bit): a pool of coarse Market attribute combinations shared by
several identities, with uniform-ish class ratios; every label is shown exactly as written.
``real`` (the default): labels drawn from the real label statistics (``synthetic_stats``), shown
through wide colour shades, off-list colours, small dark bags and annotator disagreement.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from sangal.data.synthetic_draw import Look

UPPER_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 34), "white": (232, 232, 226), "red": (192, 34, 40), "purple": (112, 54, 150),
    "yellow": (230, 196, 44), "gray": (128, 128, 132), "blue": (42, 74, 172), "green": (44, 132, 66),
}
LOWER_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (32, 32, 36), "white": (228, 228, 222), "pink": (228, 138, 170), "purple": (104, 56, 132),
    "yellow": (222, 190, 60), "gray": (120, 120, 124), "blue": (48, 72, 138), "green": (58, 108, 62),
    "brown": (110, 76, 48),
}
BINARY_FIELDS = ("gender", "hair", "up", "down", "clothes", "hat", "backpack", "bag", "handbag")
ATTRIBUTE_FIELDS = (*BINARY_FIELDS, "age", *("up" + c for c in UPPER_COLOURS), *("down" + c for c in LOWER_COLOURS))
_UPPER_P = (0.2, 0.2, 0.1, 0.05, 0.05, 0.15, 0.15, 0.1)
_LOWER_P = (0.3, 0.08, 0.04, 0.03, 0.03, 0.15, 0.25, 0.04, 0.08)
_SKIN = ((238, 200, 170), (224, 178, 140), (198, 148, 110), (160, 110, 78), (112, 76, 52))
_HAIR = ((24, 20, 18), (52, 36, 26), (92, 62, 38), (140, 96, 54), (196, 164, 104))
_GREY_HAIR = ((150, 150, 148), (206, 204, 198))
_ACCENTS = ((240, 240, 236), (24, 24, 28), (200, 40, 40), (30, 50, 110), (235, 200, 60), (140, 140, 140),
            (60, 150, 80), (230, 120, 40), (120, 170, 220))
_SHOES = ((25, 25, 28), (235, 235, 235), (96, 60, 36), (110, 110, 115), (170, 40, 40))


def _shade(rgb: tuple[int, int, int], rng: np.random.Generator, achromatic: str | None) -> tuple[int, int, int]:
    """An identity-specific shade that still reads as the same named colour."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    if achromatic is not None:
        lo, hi = {"black": (0.08, 0.2), "white": (0.84, 0.96), "gray": (0.4, 0.6)}[achromatic]
        h, s, v = rng.uniform(0, 1), rng.uniform(0, 0.07), rng.uniform(lo, hi)
    else:
        h = (h + rng.uniform(-0.025, 0.025)) % 1.0
        s, v = min(1.0, s * rng.uniform(0.75, 1.08)), min(1.0, v * rng.uniform(0.8, 1.1))
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def _accent(rng: np.random.Generator, base: tuple[int, int, int], min_dist: float = 110.0) -> tuple[int, int, int]:
    """A pattern colour clearly different from ``base``."""
    far = [c for c in _ACCENTS if math.dist(c, base) > min_dist]
    return far[int(rng.integers(len(far)))]


def sample_attributes_easy(rng: np.random.Generator) -> dict[str, int]:
    """One coarse Market attribute combination (1 = no / first class, 2 = yes / second class)."""
    yes = lambda p: 2 if rng.random() < p else 1  # noqa: E731
    female = rng.random() < 0.45
    a = {"gender": 2 if female else 1, "hair": yes(0.8 if female else 0.08), "up": yes(0.55)}
    a["clothes"] = 1 if female and rng.random() < 0.3 else 2
    a["down"] = yes(0.5 if a["clothes"] == 1 else 0.28)
    a.update(hat=yes(0.2), backpack=yes(0.3), bag=yes(0.25), handbag=yes(0.15))
    a["age"] = int(rng.choice(4, p=(0.06, 0.2, 0.64, 0.1))) + 1
    up = int(rng.choice(len(UPPER_COLOURS), p=_UPPER_P))
    down = int(rng.choice(len(LOWER_COLOURS), p=_LOWER_P))
    a.update({"up" + c: 2 if i == up else 1 for i, c in enumerate(UPPER_COLOURS)})
    a.update({"down" + c: 2 if i == down else 1 for i, c in enumerate(LOWER_COLOURS)})
    return a


def sample_pool(rng: np.random.Generator, size: int) -> list[dict[str, int]]:
    """``size`` coarse combinations in which every binary attribute takes both values.

    Without this a small dataset (tests, demo) easily has no hat or no backpack at
    all, and those attributes could be neither learnt nor localised.
    """
    pool = [sample_attributes_easy(rng) for _ in range(size)]
    for name in BINARY_FIELDS:
        if len({a[name] for a in pool}) > 1:
            continue
        if name == "clothes":  # the dress goes to a woman's combination
            a = next((a for a in pool if a["gender"] == 2), pool[0])
            a["gender"] = 2
        else:
            a = pool[int(rng.integers(size))]
        a[name] = 3 - a[name]
        if name == "gender" and a["gender"] == 1:
            a["clothes"] = 2
    return pool


def assign_pool(rng: np.random.Generator, pids: list[int], size: int) -> list[tuple[int, int]]:
    """Pool index per pid: every combination once (as far as the ids go), the rest at random.

    Done separately for train and test ids, so test ids share their coarse
    attributes with train ids, as in real data, and only details tell them apart.
    """
    order = list(rng.permutation(size)) + [int(i) for i in rng.integers(size, size=max(0, len(pids) - size))]
    return [(p, int(i)) for p, i in zip(rng.permutation(pids), order)]


def sample_look_easy(a: dict[str, int], rng: np.random.Generator) -> Look:
    """Fine, identity-specific details on top of a coarse attribute combination."""
    up_name = next(c for c in UPPER_COLOURS if a["up" + c] == 2)
    down_name = next(c for c in LOWER_COLOURS if a["down" + c] == 2)
    grey = lambda n: n if n in ("black", "white", "gray") else None  # noqa: E731
    upper = _shade(UPPER_COLOURS[up_name], rng, grey(up_name))
    lower = _shade(LOWER_COLOURS[down_name], rng, grey(down_name))
    kind = {(1, 1): "skirt_long", (1, 2): "skirt_short", (2, 1): "pants", (2, 2): "shorts"}[(a["clothes"], a["down"])]
    hat = _shade(_ACCENTS[int(rng.integers(len(_ACCENTS)))], rng, None)
    backpack = _shade(_ACCENTS[int(rng.integers(len(_ACCENTS)))], rng, None)
    bag = _shade(_ACCENTS[int(rng.integers(len(_ACCENTS)))], rng, None)
    colours = {
        "skin": _SKIN[int(rng.integers(len(_SKIN)))],
        "hair": (_GREY_HAIR if a["age"] == 4 else _HAIR)[int(rng.integers(2 if a["age"] == 4 else len(_HAIR)))],
        "upper": upper, "upper2": _accent(rng, upper), "lower": lower, "lower2": _accent(rng, lower, 90.0),
        "shoes": _SHOES[int(rng.integers(len(_SHOES)))], "hat": hat, "hat2": _accent(rng, hat, 60.0),
        "backpack": backpack, "backpack2": tuple(int(c * 0.7) for c in backpack),
        "bag": bag, "handbag": _shade(_ACCENTS[int(rng.integers(len(_ACCENTS)))], rng, None),
        "strap": tuple(int(c * 0.7) for c in (backpack if a["backpack"] == 2 else bag)),
    }
    pattern = str(rng.choice(("plain", "hstripes", "vstripes", "grid", "logo", "yoke", "placket"),
                             p=(0.3, 0.16, 0.1, 0.1, 0.14, 0.1, 0.1)))
    lower_detail = str(rng.choice(("plain", "stripe", "cuffs", "belt", "faded"), p=(0.4, 0.15, 0.15, 0.15, 0.15)))
    return Look(
        female=a["gender"] == 2, age=a["age"], hair_long=a["hair"] == 2, sleeves_long=a["up"] == 1,
        lower_kind=kind, hat=(("cap", "beanie")[int(rng.integers(2))] if a["hat"] == 2 else None),
        backpack=a["backpack"] == 2, bag=a["bag"] == 2, handbag=a["handbag"] == 2, colours=colours,  # type: ignore[arg-type]
        upper_pattern=pattern, pattern_period=float(rng.uniform(0.05, 0.085)), lower_detail=lower_detail,
        shoulder=float(rng.uniform(0.9, 1.1)), head=float(rng.uniform(0.94, 1.06)),
        bag_side=int(rng.choice((-1, 1))), handbag_side=int(rng.choice((-1, 1))),
    )
