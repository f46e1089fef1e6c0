"""Synthetic pedestrians in the exact Market-1501 layout, with attribute labels and part masks.

What it is for: the demo, the tests and the heat-map localisation score need a
Re-ID dataset that is small, free to redistribute, learnable but not trivial,
and whose attributes are *visually grounded* with known pixel regions.

Two styles (``style=``), one layout:

* ``real`` (default, generator v2): attributes as hard as on real crops. Labels follow the real
  label statistics (``stats``: Lin et al.'s Market class ratios, so rare colours are as
  rare as there, and the main co-occurrences); each identity is drawn on its own. Pictures make
  attributes ambiguous (``people``, ``scene``): wide colour shades and colours
  off Market's lists, small and mostly dark bags, dark hats on dark hair, tied-back hair, dim or
  tinted light with flat contrast, small blurry detections scaled up (hats and shoes a few pixels),
  feet, head top or a side cut by the box, passers-by in front or behind, and a few percent of
  labels that the pictures contradict (annotator disagreement, ``DISAGREEMENT``).
* ``easy`` (generator v1, bit for bit): every identity is a coarse Market attribute combination
  drawn from a small pool with flat class ratios, so many identities share it, shown exactly as
  labelled, under milder cameras.

In both, identities also differ in fine details (exact shades, stripes / grid / logo / yoke
patterns, trouser stripes and cuffs, shoe, hair and skin colours, build, bag side). Each camera
has its own background scene, illumination gain and colour cast, scale range, viewpoint mix,
blur, noise and occlusion rate; per image the scale, position, viewpoint (front / back / side: a
backpack is seen from behind or the side, only its straps from the front), walking phase and
occluder (never over the head in ``easy``) vary.

Output (``generate_synthetic``), exactly as Market-1501 plus three extras::

    out/
      bounding_box_train/  0002_c1s3_000451_01.jpg ...   half of the ids
      query/               one image per test id and camera it appears in
      bounding_box_test/   the other test images, distractors 0000_*, junk -1_*
      market_attribute.mat Lin et al. structure: market_attribute.{train,test}.<field> uint8 1xN
      masks/<split folder>/<image stem>.npz   bool (H, W) arrays: hat hair upper lower
                                              backpack bag handbag shoes (visible pixels)
      synthetic.json       generator style and version, parameters, counts

Everything is deterministic per seed, byte for byte (fixed JPEG quality, no
timestamps in the .mat header or the .npz zip entries).
"""

from __future__ import annotations

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

from sangal.synthetic.draw import Look, render
from sangal.synthetic.people import (  # noqa: F401 (the palettes are part of this module's interface)
    ATTRIBUTE_FIELDS,
    LOWER_COLOURS,
    UPPER_COLOURS,
    assign_pool,
    sample_attributes_easy,
    sample_look_easy,
    sample_look_real,
    sample_pool,
    written_labels_real,
)
from sangal.errors import DatasetError
from sangal.synthetic.labels import region_masks
from sangal.synthetic.scene import (
    CameraStyle,
    Shot,
    sample_camera,
    sample_camera_real,
    sample_shot,
    sample_shot_real,
)
from sangal.synthetic.stats import market_codes, sample_labels

logger = logging.getLogger(__name__)

#: Generator version per style: ``easy`` is version 1 bit for bit, ``real`` (the default) version 2.
STYLE_VERSIONS = {"real": 2, "easy": 1}
STYLES = tuple(STYLE_VERSIONS)
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
JPEG_QUALITY = 92
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


def _check_params(num_ids: int, num_cams: int, height: int, width: int, images_per_cam: int,
                  num_distractors: int, num_junk: int, style: str) -> None:
    problems = []
    if style not in STYLES:
        problems.append(f"style must be one of {', '.join(STYLES)}, got {style!r}")
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
                   num_junk: int | None = None, style: str = "real") -> SyntheticPlan:
    """Identities, cameras and the list of images (names, splits, shots), deterministic per seed and style."""
    n_test = num_ids - num_ids // 2
    num_distractors = max(1, n_test // 2) if num_distractors is None else num_distractors
    num_junk = max(1, n_test // 2) if num_junk is None else num_junk
    _check_params(num_ids, num_cams, height, width, images_per_cam, num_distractors, num_junk, style)
    params = dict(num_ids=num_ids, num_cams=num_cams, seed=seed, height=height, width=width,
                  images_per_cam=images_per_cam, num_distractors=num_distractors, num_junk=num_junk, style=style)
    easy = style == "easy"
    rng = np.random.default_rng([seed, 0])
    camera = sample_camera if easy else sample_camera_real
    cameras = [camera(np.random.default_rng([seed, 1, c]), height, width) for c in range(num_cams)]
    pool = sample_pool(rng, max(2, math.ceil(num_ids / 3))) if easy else []
    pids = sorted(int(p) for p in rng.choice(np.arange(1, min(9999, max(1501, 2 * num_ids)) + 1), num_ids, replace=False))
    order = rng.permutation(num_ids)
    train_pids = sorted(pids[i] for i in order[: num_ids // 2])
    test_set = set(pids) - set(train_pids)
    if easy:
        attributes = {p: dict(pool[i]) for ids in (train_pids, sorted(test_set)) for p, i in assign_pool(rng, ids, len(pool))}
        looks = {p: sample_look_easy(attributes[p], np.random.default_rng([seed, 2, p])) for p in pids}
    else:  # each split on its own, so that a tiny test split also shows both values of every binary field
        labels = {**written_labels_real(train_pids, seed, 0), **written_labels_real(sorted(test_set), seed, 1)}
        attributes = {p: market_codes(labels[p]) for p in pids}
        looks = {p: sample_look_real(labels[p], np.random.default_rng([seed, 2, p])) for p in pids}
    shot_of = sample_shot if easy else sample_shot_real
    images: list[SyntheticImage] = []
    used: set[str] = set()

    def add(split: str, pid: int, cam: int, seq: int, frame: int, look: Look | None, kind: str) -> None:
        prefix, box = (f"{pid:04d}" if pid >= 0 else "-1"), 1
        while (name := f"{prefix}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg") in used:
            box += 1
        used.add(name)
        k = len(images)
        shot = shot_of(cameras[cam - 1], np.random.default_rng([seed, 3, k]), kind)
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
        stranger = _stranger(rng, np.random.default_rng([seed, 5, i]), easy) if person else None
        add("gallery", 0, cam, seq, frame, stranger, "person" if person else "background")
    for _ in range(num_junk):
        cam, seq, frame = int(rng.integers(1, num_cams + 1)), int(rng.integers(1, 7)), int(rng.integers(50, 9000))
        add("gallery", -1, cam, seq, frame, looks[test_pids[int(rng.integers(len(test_pids)))]], "fragment")
    return SyntheticPlan(params, attributes, looks, train_pids, test_pids, cameras, images)


def _stranger(rng: np.random.Generator, own: np.random.Generator, easy: bool) -> Look:
    """An unlabelled passer-by of the gallery (a distractor, pid 0)."""
    if easy:
        return sample_look_easy(sample_attributes_easy(rng), own)
    return sample_look_real(sample_labels(own), own)


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
    version = STYLE_VERSIONS[plan.params["style"]]
    raw[:116] = f"MATLAB 5.0 MAT-file, sangal synthetic v{version}".encode().ljust(116, b" ")
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
    # "sangal.data.synthetic": the generator's module before it became sangal.synthetic.generate, kept so that
    # synthetic.json (and every dataset hash over it) stays byte for byte what it was.
    return {"generator": "sangal.data.synthetic", "version": STYLE_VERSIONS[plan.params["style"]],
            "style": plan.params["style"], "params": plan.params,
            "counts": counts, "layout": "market1501", "mask_keys": list(region_masks(np.zeros((1, 1), np.uint8)))}


def synthetic_record(root: str | Path) -> dict:
    """Generator, style, version and parameters of the synthetic dataset at ``root`` (its synthetic.json)."""
    meta = Path(root) / "synthetic.json"
    try:
        manifest = json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{meta}: not a readable synthetic dataset manifest ({err})") from err
    params = manifest.get("params", {})
    return {"style": manifest.get("style", "easy"), "version": manifest.get("version"), "params": params}


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
    old_params = dict(old.get("params", {}))
    if old.get("version") == 1:
        old_params.setdefault("style", "easy")  # written before there were styles
    if old.get("version") == manifest["version"] and old_params == manifest["params"]:
        return True
    diff = ", ".join(f"{k}={old_params.get(k)!r} (wanted {v!r})" for k, v in manifest["params"].items()
                     if old_params.get(k) != v) or f"generator version {old.get('version')} (now {manifest['version']})"
    raise DatasetError(f"{out}: already holds a synthetic dataset generated with different parameters: {diff}; "
                       "delete it or choose another output folder")


def generate_synthetic(out: str | Path, num_ids: int = 100, num_cams: int = 6, seed: int = 0, height: int = 128,
                       width: int = 64, images_per_cam: int = 2, num_distractors: int | None = None,
                       num_junk: int | None = None, progress: bool = False, style: str = "real") -> Path:
    """Write the synthetic dataset to ``out`` (Market-1501 layout, see module docstring) and return its path.

    Built in a temporary folder next to ``out`` and renamed into place at the end, so
    ``out`` is either complete or absent. If ``out`` already holds the dataset for the
    same parameters it is returned as is; other parameters raise DatasetError.
    ``num_distractors`` / ``num_junk`` default to half the number of test ids.
    """
    from tqdm import tqdm

    out = Path(out).expanduser()
    plan = plan_synthetic(num_ids, num_cams, seed, height, width, images_per_cam, num_distractors, num_junk, style)
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
