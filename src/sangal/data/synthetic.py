"""Synthetic pedestrians in the exact Market-1501 layout, with attribute labels and part masks.

What it is for: the demo, the tests and the heat-map localisation score need a
Re-ID dataset that is small, free to redistribute, learnable but not trivial,
and whose attributes are *visually grounded* with known pixel regions.

How the task is made non-trivial: every identity is a coarse Market attribute
combination (gender, hair, sleeves, lower garment, hat, bags, age, colours)
drawn from a small pool, so many identities share it, plus identity-specific
fine details (exact shades, stripes / grid / logo / yoke patterns, trouser
stripes and cuffs, shoe, hair and skin colours, build, bag side). Each camera
has its own background scene, illumination gain and colour cast, scale range,
viewpoint mix, blur, noise and occlusion rate; per image the scale, position,
viewpoint (front / back / side: a backpack is seen from behind or the side, only
its straps from the front), walking phase and occluder (a pole or a box, never
over the head) vary.

Output (``generate_synthetic``), exactly as Market-1501 plus three extras::

    out/
      bounding_box_train/  0002_c1s3_000451_01.jpg ...   half of the ids
      query/               one image per test id and camera it appears in
      bounding_box_test/   the other test images, distractors 0000_*, junk -1_*
      market_attribute.mat Lin et al. structure: market_attribute.{train,test}.<field> uint8 1xN
      masks/<split folder>/<image stem>.npz   bool (H, W) arrays: hat hair upper lower
                                              backpack bag handbag shoes (visible pixels)
      synthetic.json       generator version, parameters, counts

Everything is deterministic per seed, byte for byte (fixed JPEG quality, no
timestamps in the .mat header or the .npz zip entries).
"""

from __future__ import annotations

import colorsys
import io
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from sangal.data.synthetic_draw import Look, render
from sangal.data.synthetic_labels import region_masks
from sangal.data.synthetic_scene import CameraStyle, Shot, sample_camera, sample_shot
from sangal.errors import DatasetError

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
JPEG_QUALITY = 92
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


@dataclass(frozen=True)
class SyntheticImage:
    """One planned image: where it goes, what it shows and how it is shot."""

    split: str  # train | query | gallery
    name: str  # Market file name
    pid: int  # identity in the file name (-1 junk, 0 distractor)
    cam: int  # 1-based camera
    look: Look | None  # None for a background-only distractor
    shot: Shot
    seed: int  # render seed (noise, hair texture)


@dataclass
class SyntheticPlan:
    """Everything ``generate_synthetic`` writes, before any pixel is drawn."""

    params: dict[str, int]
    attributes: dict[int, dict[str, int]]  # pid -> Market attribute codes
    looks: dict[int, Look]
    train_pids: list[int]
    test_pids: list[int]
    cameras: list[CameraStyle]
    images: list[SyntheticImage]


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


def _sample_attributes(rng: np.random.Generator) -> dict[str, int]:
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


def _sample_pool(rng: np.random.Generator, size: int) -> list[dict[str, int]]:
    """``size`` coarse combinations in which every binary attribute takes both values.

    Without this a small dataset (tests, demo) easily has no hat or no backpack at
    all, and those attributes could be neither learnt nor localised.
    """
    pool = [_sample_attributes(rng) for _ in range(size)]
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


def _assign(rng: np.random.Generator, pids: list[int], size: int) -> list[tuple[int, int]]:
    """Pool index per pid: every combination once (as far as the ids go), the rest at random.

    Done separately for train and test ids, so test ids share their coarse
    attributes with train ids, as in real data, and only details tell them apart.
    """
    order = list(rng.permutation(size)) + [int(i) for i in rng.integers(size, size=max(0, len(pids) - size))]
    return [(p, int(i)) for p, i in zip(rng.permutation(pids), order)]


def _sample_look(a: dict[str, int], rng: np.random.Generator) -> Look:
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


def _check_params(num_ids: int, num_cams: int, height: int, width: int, images_per_cam: int,
                  num_distractors: int, num_junk: int) -> None:
    problems = []
    if not 2 <= num_ids <= 9999:
        problems.append(f"num_ids must be 2..9999 (4-digit Market ids), got {num_ids}")
    if not 2 <= num_cams <= 9:
        problems.append(f"num_cams must be 2..9 (one-digit Market camera), got {num_cams}")
    if height < 32 or width < 16:
        problems.append(f"image size must be at least 32x16, got {height}x{width}")
    if images_per_cam < 2:
        problems.append(f"images_per_cam must be >= 2 (one query + gallery per camera), got {images_per_cam}")
    if num_distractors < 0 or num_junk < 0:
        problems.append("num_distractors and num_junk must be >= 0")
    if problems:
        raise DatasetError("synthetic dataset: " + "; ".join(problems))


def plan_synthetic(num_ids: int = 100, num_cams: int = 6, seed: int = 0, height: int = 128, width: int = 64,
                   images_per_cam: int = 2, num_distractors: int | None = None,
                   num_junk: int | None = None) -> SyntheticPlan:
    """Identities, cameras and the list of images (names, splits, shots), deterministic per seed."""
    n_test = num_ids - num_ids // 2
    num_distractors = max(1, n_test // 2) if num_distractors is None else num_distractors
    num_junk = max(1, n_test // 2) if num_junk is None else num_junk
    _check_params(num_ids, num_cams, height, width, images_per_cam, num_distractors, num_junk)
    params = dict(num_ids=num_ids, num_cams=num_cams, seed=seed, height=height, width=width,
                  images_per_cam=images_per_cam, num_distractors=num_distractors, num_junk=num_junk)
    rng = np.random.default_rng([seed, 0])
    cameras = [sample_camera(np.random.default_rng([seed, 1, c]), height, width) for c in range(num_cams)]
    pool = _sample_pool(rng, max(2, math.ceil(num_ids / 3)))
    pids = sorted(int(p) for p in rng.choice(np.arange(1, min(9999, max(1501, 2 * num_ids)) + 1), num_ids, replace=False))
    order = rng.permutation(num_ids)
    train_pids = sorted(pids[i] for i in order[: num_ids // 2])
    test_set = set(pids) - set(train_pids)
    attributes = {p: dict(pool[i]) for ids in (train_pids, sorted(test_set)) for p, i in _assign(rng, ids, len(pool))}
    looks = {p: _sample_look(attributes[p], np.random.default_rng([seed, 2, p])) for p in pids}
    images: list[SyntheticImage] = []
    used: set[str] = set()

    def add(split: str, pid: int, cam: int, seq: int, frame: int, look: Look | None, kind: str) -> None:
        prefix, box = (f"{pid:04d}" if pid >= 0 else "-1"), 1
        while (name := f"{prefix}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg") in used:
            box += 1
        used.add(name)
        k = len(images)
        shot = sample_shot(cameras[cam - 1], np.random.default_rng([seed, 3, k]), kind)
        render_seed = int(np.random.SeedSequence([seed, 4, k]).generate_state(1)[0])
        images.append(SyntheticImage(split, name, pid, cam, look, shot, render_seed))

    for pid in pids:
        cams = sorted(int(c) + 1 for c in rng.choice(num_cams, int(rng.integers(2, num_cams + 1)), replace=False))
        for cam in cams:
            seq, frame = int(rng.integers(1, 7)), int(rng.integers(50, 5000))
            query_at = int(rng.integers(images_per_cam)) if pid in test_set else -1
            for j in range(images_per_cam):
                frame += int(rng.integers(5, 150))
                split = "train" if pid not in test_set else ("query" if j == query_at else "gallery")
                add(split, pid, cam, seq, frame, looks[pid], "person")
    test_pids = sorted(test_set)
    for i in range(num_distractors):
        cam, seq, frame = int(rng.integers(1, num_cams + 1)), int(rng.integers(1, 7)), int(rng.integers(50, 9000))
        person = i % 2 == 1  # half unknown passers-by, half false detections of background
        stranger = _sample_look(_sample_attributes(rng), np.random.default_rng([seed, 5, i])) if person else None
        add("gallery", 0, cam, seq, frame, stranger, "person" if person else "background")
    for _ in range(num_junk):
        cam, seq, frame = int(rng.integers(1, num_cams + 1)), int(rng.integers(1, 7)), int(rng.integers(50, 9000))
        add("gallery", -1, cam, seq, frame, looks[test_pids[int(rng.integers(len(test_pids)))]], "fragment")
    return SyntheticPlan(params, attributes, looks, train_pids, test_pids, cameras, images)


def render_image(plan: SyntheticPlan, image: SyntheticImage) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The (H, W, 3) uint8 picture and its region masks for one planned image."""
    p = plan.params
    rgb, labels = render(image.look, image.shot, plan.cameras[image.cam - 1], p["height"], p["width"], image.seed)
    return rgb, region_masks(labels)


def _save_masks(path: Path, masks: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so the file is byte-reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, mask in masks.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(mask, dtype=bool), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def _attribute_struct(pids: list[int], attributes: dict[int, dict[str, int]]) -> dict[str, np.ndarray]:
    struct = {f: np.array([[attributes[p][f] for p in pids]], dtype=np.uint8) for f in ATTRIBUTE_FIELDS}
    index = np.empty((1, len(pids)), dtype=object)
    index[0, :] = [f"{p:04d}" for p in pids]
    struct["image_index"] = index
    return struct


def _save_attribute_mat(path: Path, plan: SyntheticPlan) -> None:
    """``market_attribute.mat`` as Lin et al. publish it, with a fixed header instead of a timestamp."""
    data = {"market_attribute": {"train": _attribute_struct(plan.train_pids, plan.attributes),
                                 "test": _attribute_struct(plan.test_pids, plan.attributes)}}
    buf = io.BytesIO()
    scipy.io.savemat(buf, data, format="5", oned_as="row")
    raw = bytearray(buf.getvalue())
    raw[:116] = f"MATLAB 5.0 MAT-file, sangal synthetic v{GENERATOR_VERSION}".encode().ljust(116, b" ")
    path.write_bytes(bytes(raw))


def _manifest(plan: SyntheticPlan) -> dict:
    count = lambda split, cond=lambda im: True: sum(1 for im in plan.images if im.split == split and cond(im))  # noqa: E731
    counts = {
        "train_ids": len(plan.train_pids), "test_ids": len(plan.test_pids),
        "attribute_combinations": len({tuple(a.values()) for a in plan.attributes.values()}),
        "train_images": count("train"), "query_images": count("query"),
        "gallery_images": count("gallery", lambda im: im.pid > 0),
        "distractors": count("gallery", lambda im: im.pid == 0), "junk": count("gallery", lambda im: im.pid == -1),
    }
    return {"generator": "sangal.data.synthetic", "version": GENERATOR_VERSION, "params": plan.params,
            "counts": counts, "layout": "market1501", "mask_keys": list(region_masks(np.zeros((1, 1), np.uint8)))}


def _existing(out: Path, manifest: dict) -> bool:
    """True if ``out`` already holds this very dataset; DatasetError if it holds something else."""
    if not out.exists():
        return False
    if out.is_dir() and not any(out.iterdir()):
        return False
    meta = out / "synthetic.json"
    if not meta.is_file():
        raise DatasetError(f"{out}: already exists and is not a synthetic dataset (no synthetic.json); "
                           "choose another output folder")
    try:
        old = json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{meta}: unreadable ({err}); delete {out} to regenerate") from err
    if old.get("version") == manifest["version"] and old.get("params") == manifest["params"]:
        return True
    old_params = old.get("params", {})
    diff = ", ".join(f"{k}={old_params.get(k)!r} (wanted {v!r})" for k, v in manifest["params"].items()
                     if old_params.get(k) != v) or f"generator version {old.get('version')} (now {GENERATOR_VERSION})"
    raise DatasetError(f"{out}: already holds a synthetic dataset generated with different parameters: {diff}; "
                       "delete it or choose another output folder")


def generate_synthetic(out: str | Path, num_ids: int = 100, num_cams: int = 6, seed: int = 0, height: int = 128,
                       width: int = 64, images_per_cam: int = 2, num_distractors: int | None = None,
                       num_junk: int | None = None, progress: bool = False) -> Path:
    """Write the synthetic dataset to ``out`` (Market-1501 layout, see module docstring) and return its path.

    Built in a temporary folder next to ``out`` and renamed into place at the end, so
    ``out`` is either complete or absent. If ``out`` already holds the dataset for the
    same parameters it is returned as is; other parameters raise DatasetError.
    ``num_distractors`` / ``num_junk`` default to half the number of test ids.
    """
    from tqdm import tqdm

    out = Path(out).expanduser()
    plan = plan_synthetic(num_ids, num_cams, seed, height, width, images_per_cam, num_distractors, num_junk)
    manifest = _manifest(plan)
    if _existing(out, manifest):
        logger.info("%s: synthetic dataset with these parameters already exists; reusing it", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        for folder in SPLIT_DIRS.values():
            (tmp / folder).mkdir()
            (tmp / "masks" / folder).mkdir(parents=True)
        for image in tqdm(plan.images, desc="synthetic", unit="img", disable=not progress):
            rgb, masks = render_image(plan, image)
            folder = SPLIT_DIRS[image.split]
            Image.fromarray(rgb).save(tmp / folder / image.name, format="JPEG", quality=JPEG_QUALITY)
            _save_masks(tmp / "masks" / folder / (Path(image.name).stem + ".npz"), masks)
        _save_attribute_mat(tmp / "market_attribute.mat", plan)
        (tmp / "synthetic.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            tmp.rename(out)
        except OSError:
            if _existing(out, manifest):  # another process finished the same dataset first
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote synthetic dataset to %s: %s", out, manifest["counts"])
    return out
