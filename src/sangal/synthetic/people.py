"""Who the synthetic pedestrians are: attribute labels and the looks that show them, for both styles.

``easy`` (generator v1, kept bit for bit): a pool of coarse Market attribute combinations shared by
several identities, with uniform-ish class ratios; every label is shown exactly as written.
``real`` (the default): labels drawn from the real label statistics (``stats``), shown
through wide colour shades, off-list colours, small dark bags and annotator disagreement.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from sangal.synthetic.draw import Look
from sangal.synthetic.stats import CARRY, DUKE_SHOES, NODES, market_codes, sample_labels

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


# ---------------------------------------------------------------- the real style

#: How often, per identity, what the pictures show differs from the written label: the annotator's
#: call on a borderline case (Lin et al. label once per identity). Chosen, not measured: a few percent,
#: more where the call is subjective (age, colour names, hair length) or the object small (bags, hat).
DISAGREEMENT = {"gender": 0.01, "age": 0.08, "hair": 0.03, "clothes": 0.01, "down": 0.03, "up": 0.02,
                "hat": 0.02, "carry": 0.03, "upper_colour": 0.05, "lower_colour": 0.05}
#: Colour names an annotator may give to the same shade (cross-palette: an upper "pink" is off Market's list).
CONFUSABLE = {"black": ("gray", "blue", "brown"), "white": ("gray", "yellow", "pink"), "red": ("pink", "purple", "brown"),
              "purple": ("blue", "pink", "red"), "yellow": ("white", "green", "brown"), "gray": ("black", "white", "blue"),
              "blue": ("black", "purple", "gray"), "green": ("gray", "blue", "yellow"), "pink": ("red", "purple", "white"),
              "brown": ("black", "red", "yellow")}
_ALL_COLOURS = {**LOWER_COLOURS, **UPPER_COLOURS, "brown": LOWER_COLOURS["brown"], "pink": LOWER_COLOURS["pink"]}
#: Garment colours outside Market's lists (what "no colour marked" looks like).
_OFF_LIST = {"upper": ("pink", "brown", "orange", "beige", "teal", "maroon"),
             "lower": ("red", "orange", "beige", "khaki", "teal", "maroon")}
_EXTRA = {"orange": (226, 118, 38), "beige": (206, 184, 146), "khaki": (150, 136, 92), "teal": (36, 118, 120),
          "maroon": (112, 30, 42)}
_HAIR_P = (0.55, 0.3, 0.1, 0.04, 0.01)  # mostly black and dark brown (Market is filmed in Beijing)
_DARK = ((22, 22, 24), (40, 40, 44), (62, 44, 32), (30, 36, 60), (70, 70, 72))  # most bags, hats and shoes
_LIGHT_SHOES = ((232, 232, 228), (196, 196, 192), (214, 200, 170))


def _disagree(labels: dict[str, int], rng: np.random.Generator) -> tuple[dict[str, int], dict[str, str]]:
    """What the pictures show: the written labels (``stats`` classes), each overturned at its
    ``DISAGREEMENT`` rate; returns the shown classes and the shown colour name per garment ("upper", "lower")."""
    shown = dict(labels)
    colours = {}
    for node in NODES:
        n, v = len(node.classes), labels[node.name]
        flip = rng.random() < DISAGREEMENT[node.name]
        if node.name.endswith("_colour"):
            name = node.classes[v]
            if flip and name != "other":
                name = CONFUSABLE[name][int(rng.integers(len(CONFUSABLE[name])))]
            colours[node.name.removesuffix("_colour")] = name
        elif flip and node.name == "age":
            shown["age"] = int(np.clip(v + rng.choice((-1, 1)), 0, n - 1))
        elif flip and (node.name != "clothes" or labels["gender"] == 1):  # a dress is only mistaken on a woman
            shown[node.name] = int((v + 1 + rng.integers(n - 1)) % n)
    return shown, colours


def _garment_colour(name: str, part: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A shade of colour ``name`` ("other": a colour off Market's list for that garment)."""
    if name == "other":
        name = _OFF_LIST[part][int(rng.integers(len(_OFF_LIST[part])))]
    rgb = _ALL_COLOURS.get(name) or _EXTRA[name]
    return _shade_real(rgb, rng, name if name in ("black", "white", "gray") else None)


def _shade_real(rgb: tuple[int, int, int], rng: np.random.Generator, achromatic: str | None) -> tuple[int, int, int]:
    """A wide spread of shades around a named colour: neighbouring names overlap at the edges."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    if achromatic is not None:
        lo, hi = {"black": (0.04, 0.3), "white": (0.72, 0.97), "gray": (0.28, 0.7)}[achromatic]
        h, s, v = rng.uniform(0, 1), rng.uniform(0, 0.14), rng.uniform(lo, hi)
    else:
        h = (h + rng.uniform(-0.07, 0.07)) % 1.0  # washed-out, dark and off-hue garments of a colour name
        s, v = min(1.0, s * rng.uniform(0.4, 1.1)), min(1.0, v * rng.uniform(0.5, 1.15))
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def sample_look_real(labels: dict[str, int], rng: np.random.Generator) -> Look:
    """The look of one identity whose written labels (``stats`` classes) are ``labels``.

    Bags, hats and shoes are mostly dark (on dark clothes and hair they barely show), bags are
    smaller, long hair is often tied back, and builds overlap more between women and men.
    """
    shown, names = _disagree(labels, rng)
    upper, lower = _garment_colour(names["upper"], "upper", rng), _garment_colour(names["lower"], "lower", rng)
    dress, short = shown["clothes"] == 0, shown["down"] == 1
    kind = {(True, False): "skirt_long", (True, True): "skirt_short", (False, False): "pants", (False, True): "shorts"}
    carry = CARRY[shown["carry"]]

    def item(p_dark: float) -> tuple[int, int, int]:
        if rng.random() < p_dark:
            return _DARK[int(rng.integers(len(_DARK)))]
        return _shade_real(_ACCENTS[int(rng.integers(len(_ACCENTS)))], rng, None)

    hat, backpack, bag, handbag = item(0.6), item(0.6), item(0.6), item(0.5)
    light = rng.random() < DUKE_SHOES[1] / sum(DUKE_SHOES)
    shoes = (_LIGHT_SHOES if light else _DARK)[int(rng.integers(len(_LIGHT_SHOES if light else _DARK)))]
    hair = _GREY_HAIR[int(rng.integers(2))] if shown["age"] == 3 else _HAIR[int(rng.choice(5, p=_HAIR_P))]
    colours = {
        "skin": _SKIN[int(rng.integers(len(_SKIN)))], "hair": hair,
        "upper": upper, "upper2": _accent(rng, upper), "lower": lower, "lower2": _accent(rng, lower, 90.0),
        "shoes": shoes, "hat": hat, "hat2": _accent(rng, hat, 60.0),
        "backpack": backpack, "backpack2": tuple(int(c * 0.7) for c in backpack), "bag": bag, "handbag": handbag,
        "strap": tuple(int(c * 0.7) for c in (backpack if carry == "backpack" else bag)),
    }
    pattern = str(rng.choice(("plain", "hstripes", "vstripes", "grid", "logo", "yoke", "placket"),
                             p=(0.3, 0.16, 0.1, 0.1, 0.14, 0.1, 0.1)))
    lower_detail = str(rng.choice(("plain", "stripe", "cuffs", "belt", "faded"), p=(0.4, 0.15, 0.15, 0.15, 0.15)))
    long_hair = shown["hair"] == 1
    return Look(
        female=shown["gender"] == 1, age=shown["age"] + 1, hair_long=long_hair, sleeves_long=shown["up"] == 0,
        lower_kind=kind[(dress, short)], hat=(("cap", "beanie")[int(rng.integers(2))] if shown["hat"] else None),
        backpack=carry == "backpack", bag=carry == "bag", handbag=carry == "handbag", colours=colours,  # type: ignore[arg-type]
        upper_pattern=pattern, pattern_period=float(rng.uniform(0.05, 0.085)), lower_detail=lower_detail,
        shoulder=float(rng.uniform(0.85, 1.15)), head=float(rng.uniform(0.92, 1.08)),
        bag_side=int(rng.choice((-1, 1))), handbag_side=int(rng.choice((-1, 1))),
        carry_scale=float(rng.uniform(0.55, 1.0)), hair_tied=bool(long_hair and rng.random() < 0.35),
    )


def written_labels_real(pids: list[int], seed: int, tag: int) -> dict[int, dict[str, int]]:
    """Written labels (``stats`` classes) of ``pids``, each identity from its own stream.

    Where a binary Market field takes one value in every identity (a tiny set: tests, smoke runs),
    one identity is redrawn from the model until it shows the other value, so that the attribute
    can be learnt and localised at all; at the demo's size this almost never happens.
    """
    labels = {p: sample_labels(np.random.default_rng([seed, 6, p])) for p in pids}
    rng = np.random.default_rng([seed, 7, tag])
    for _ in range(20):  # a redraw can take away another field's only other value: repeat until settled
        codes = [market_codes(a) for a in labels.values()]
        missing = [f for f in BINARY_FIELDS if len({c[f] for c in codes}) == 1]
        if len(pids) < 2 or not missing:
            break
        while market_codes(draw := sample_labels(rng))[missing[0]] == codes[0][missing[0]]:
            pass
        labels[pids[int(rng.integers(len(pids)))]] = draw
    return labels
