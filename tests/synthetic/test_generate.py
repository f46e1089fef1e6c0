"""Synthetic pedestrians: Market layout, determinism, attribute .mat, masks that match the pixels, both styles.

The pixel-exact checks (masks against drawn colours, hat and backpack masks against labels) run on the
``easy`` style, where every label is drawn as written; the ``real`` style shows some labels otherwise
on purpose (tests/synthetic/test_people.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy.ndimage import binary_erosion

from sangal.errors import DatasetError
from sangal.synthetic.generate import (
    ATTRIBUTE_FIELDS,
    LOWER_COLOURS,
    SPLIT_DIRS,
    UPPER_COLOURS,
    generate_synthetic,
    plan_synthetic,
    render_image,
    synthetic_record,
)

NAME = re.compile(r"^(-?\d+)_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
REAL_MAT = Path("/work/shared/data/attributes/market_attribute.mat")
MASK_KEYS = {"hat", "hair", "upper", "lower", "backpack", "bag", "handbag", "shoes"}
PARAMS = dict(num_ids=12, num_cams=3, seed=0, height=128, width=64, style="easy")
REAL = dict(PARAMS, style="real")
#: Generator v1 (today's ``easy``) before the real style existed: sha256 prefixes of the plan (attributes
#: and file names) and of every ~12th image's pixels and masks (Pillow 13.0.0, NumPy 2.4.6; another
#: Pillow may rasterise or blur differently, which this test would then report).
V1_FINGERPRINTS = [(dict(num_ids=12, num_cams=3, seed=0), "87016ec7e49f6800", "b8a731427118c967", 70),
                   (dict(num_ids=20, num_cams=6, seed=1, height=64, width=32), "a1e3c611c707ae98", "c1e3cde2c2dd6006", 170)]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "s", **PARAMS)


@pytest.fixture(scope="module")
def plan():
    return plan_synthetic(**PARAMS)


@pytest.fixture(scope="module")
def real_synth(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "r", **REAL)


@pytest.fixture(scope="module")
def real_plan():
    return plan_synthetic(**REAL)


def _fingerprint(plan) -> tuple[str, str, int]:
    head = hashlib.sha256()
    head.update(json.dumps({str(p): a for p, a in sorted(plan.attributes.items())}, sort_keys=True).encode())
    head.update(json.dumps([im.name for im in plan.images]).encode())
    pixels = hashlib.sha256()
    for im in plan.images[:: max(1, len(plan.images) // 12)]:
        rgb, masks = render_image(plan, im)
        pixels.update(rgb.tobytes())
        for key in sorted(masks):
            pixels.update(masks[key].tobytes())
    return head.hexdigest()[:16], pixels.hexdigest()[:16], len(plan.images)


@pytest.mark.parametrize("params, plan_hash, pixel_hash, images", V1_FINGERPRINTS)
def test_easy_is_generator_v1_bit_for_bit(params: dict, plan_hash: str, pixel_hash: str, images: int) -> None:
    assert _fingerprint(plan_synthetic(**params, style="easy")) == (plan_hash, pixel_hash, images)
    assert _fingerprint(plan_synthetic(**params))[0] != plan_hash, "the default is the real style"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _person_images(plan):
    return [im for im in plan.images if im.pid > 0]


def _masks(root: Path, im) -> dict[str, np.ndarray]:
    with np.load(root / "masks" / SPLIT_DIRS[im.split] / (Path(im.name).stem + ".npz")) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("style", ["easy", "real"])
def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path: Path, style: str) -> None:
    params = dict(PARAMS, num_ids=4, height=64, width=32, style=style)
    a = _files(generate_synthetic(tmp_path / "a", **params))
    b = _files(generate_synthetic(tmp_path / "b", **params))
    c = _files(generate_synthetic(tmp_path / "c", **dict(params, seed=1)))
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)
    assert not list(tmp_path.glob(".*tmp*")), "temporary build folders must be renamed or removed"


STYLES = [("synth", "plan"), ("real_synth", "real_plan")]


@pytest.mark.parametrize("fixtures", STYLES, ids=["easy", "real"])
def test_market_layout_and_protocol(request, fixtures: tuple[str, str]) -> None:
    synth = request.getfixturevalue(fixtures[0])
    names = {split: sorted(p.name for p in (synth / folder).iterdir()) for split, folder in SPLIT_DIRS.items()}
    parsed = {split: [NAME.match(n) for n in ns] for split, ns in names.items()}
    for split, matches in parsed.items():
        assert matches and all(matches), f"{split}: names must parse as Market: {names[split][:3]}"
        assert all(1 <= int(m.group(2)) <= PARAMS["num_cams"] for m in matches)
    pids = {split: [int(m.group(1)) for m in ms] for split, ms in parsed.items()}
    train_ids, query_ids = set(pids["train"]), set(pids["query"])
    gallery_ids = set(pids["gallery"]) - {0, -1}
    assert len(train_ids) == PARAMS["num_ids"] // 2 and len(query_ids) == PARAMS["num_ids"] - PARAMS["num_ids"] // 2
    assert not train_ids & query_ids and gallery_ids == query_ids
    # one query per test id and camera it appears in; every test id in >= 2 cameras, with a cross-camera match
    q_pairs = [(int(m.group(1)), int(m.group(2))) for m in parsed["query"]]
    g_pairs = {(int(m.group(1)), int(m.group(2))) for m in parsed["gallery"] if int(m.group(1)) > 0}
    assert len(q_pairs) == len(set(q_pairs)) and set(q_pairs) == g_pairs
    for pid in query_ids:
        assert len({c for p, c in q_pairs if p == pid}) >= 2
    # junk (-1) and distractors (0000) only in the gallery, with the exact Market spelling
    assert {-1, 0} <= set(pids["gallery"])
    assert all(p > 0 for p in pids["train"] + pids["query"])
    assert any(n.startswith("-1_c") for n in names["gallery"]) and any(n.startswith("0000_c") for n in names["gallery"])
    meta = json.loads((synth / "synthetic.json").read_text())
    assert meta["params"]["num_ids"] == PARAMS["num_ids"]
    style = "easy" if fixtures[0] == "synth" else "real"
    assert meta["style"] == meta["params"]["style"] == style and meta["version"] == {"easy": 1, "real": 2}[style]
    assert synthetic_record(synth) == {"style": style, "version": meta["version"], "params": meta["params"]}
    assert meta["counts"]["train_images"] == len(names["train"]) and meta["counts"]["query_images"] == len(names["query"])
    assert meta["counts"]["junk"] + meta["counts"]["distractors"] + meta["counts"]["gallery_images"] == len(names["gallery"])
    # one mask file per image, right keys, shapes and dtype
    for split, folder in SPLIT_DIRS.items():
        stems = sorted(p.stem for p in (synth / "masks" / folder).glob("*.npz"))
        assert stems == sorted(Path(n).stem for n in names[split])
    with np.load(next((synth / "masks" / "query").glob("*.npz"))) as npz:
        assert set(npz.files) == MASK_KEYS
        assert all(npz[k].shape == (PARAMS["height"], PARAMS["width"]) and npz[k].dtype == bool for k in npz.files)
    with Image.open(synth / "query" / names["query"][0]) as im:
        assert im.format == "JPEG" and im.size == (PARAMS["width"], PARAMS["height"]) and im.mode == "RGB"


@pytest.mark.parametrize("fixtures", STYLES, ids=["easy", "real"])
def test_attribute_mat_has_the_real_structure(request, fixtures: tuple[str, str]) -> None:
    synth, plan = (request.getfixturevalue(f) for f in fixtures)
    mine = scipy.io.loadmat(synth / "market_attribute.mat")["market_attribute"]
    assert mine.shape == (1, 1) and set(mine.dtype.names) == {"train", "test"}
    real = scipy.io.loadmat(REAL_MAT)["market_attribute"] if REAL_MAT.exists() else None
    for split, pids in (("train", plan.train_pids), ("test", plan.test_pids)):
        s = mine[split][0, 0]
        assert set(s.dtype.names) == set(ATTRIBUTE_FIELDS) | {"image_index"}
        if real is not None:
            assert set(s.dtype.names) == set(real[split][0, 0].dtype.names)
        index = s["image_index"][0, 0]
        assert index.dtype == object and index.shape == (1, len(pids))
        assert [str(x[0]) for x in index[0]] == [f"{p:04d}" for p in pids]
        assert index[0, 0].dtype.kind == "U" and len(str(index[0, 0][0])) == 4
        for field in ATTRIBUTE_FIELDS:
            v = s[field][0, 0]
            assert v.dtype == np.uint8 and v.shape == (1, len(pids)), field
            if real is not None:
                assert real[split][0, 0][field][0, 0].dtype == v.dtype
            assert set(np.unique(v)) <= ({1, 2, 3, 4} if field == "age" else {1, 2}), field
            assert list(v[0]) == [plan.attributes[p][field] for p in pids]
        ups = np.stack([s["up" + c][0, 0][0] for c in UPPER_COLOURS])
        downs = np.stack([s["down" + c][0, 0][0] for c in LOWER_COLOURS])
        if plan.params["style"] == "easy":
            assert ((ups == 2).sum(0) == 1).all() and ((downs == 2).sum(0) == 1).all()
        else:  # as in the real files: one colour or none marked (a shade off Market's list), never two
            assert ((ups == 2).sum(0) <= 1).all() and ((downs == 2).sum(0) <= 1).all()
            carried = sum((s[f][0, 0][0] == 2).astype(int) for f in ("backpack", "bag", "handbag"))
            assert carried.max() <= 1
    header = (synth / "market_attribute.mat").read_bytes()[:64]
    assert f"sangal synthetic v{ {'easy': 1, 'real': 2}[plan.params['style']] }".encode() in header


def test_hat_mask_exactly_for_hat_ids(synth: Path, plan) -> None:
    hats = {p for p, a in plan.attributes.items() if a["hat"] == 2}
    assert hats and hats != set(plan.attributes), "fixture must contain ids with and without a hat"
    for im in _person_images(plan):
        has_mask = _masks(synth, im)["hat"].any()
        assert has_mask == (im.pid in hats), f"{im.name}: hat mask {has_mask}, hat attribute {im.pid in hats}"


def test_backpack_mask_only_for_backpack_ids_and_never_from_the_front(synth: Path, plan) -> None:
    packs = {p for p, a in plan.attributes.items() if a["backpack"] == 2}
    assert packs and packs != set(plan.attributes)
    seen_from_behind = []
    for im in _person_images(plan):
        visible = _masks(synth, im)["backpack"].any()
        if im.pid not in packs or im.shot.view == "front":
            assert not visible, f"{im.name}: backpack mask must be empty (view {im.shot.view})"
        elif im.shot.view == "back":
            seen_from_behind.append(visible)
    assert seen_from_behind and np.mean(seen_from_behind) > 0.8


def test_masks_line_up_with_the_drawn_colours(synth: Path, plan) -> None:
    """Inside the upper/lower masks the picture has the id's garment colour (times the camera's
    illumination), the nearest named colour is the labelled one, and it differs from the background."""
    errors, named_right, beats_background = [], [], []
    for im in _person_images(plan):
        rgb = np.asarray(Image.open(synth / SPLIT_DIRS[im.split] / im.name), np.float32)
        masks = _masks(synth, im)
        gain = np.asarray(plan.cameras[im.cam - 1].gain) * im.shot.brightness
        background = rgb[~np.any(list(masks.values()), axis=0)].mean(axis=0)
        for region, palette, prefix in (("upper", UPPER_COLOURS, "up"), ("lower", LOWER_COLOURS, "down")):
            inside = binary_erosion(masks[region])
            if inside.sum() < 20:
                continue
            seen = np.median(rgb[inside], axis=0)
            expected = np.clip(np.asarray(plan.looks[im.pid].colours[region]) * gain, 0, 255)
            errors.append(np.abs(seen - expected).max())
            beats_background.append(np.abs(seen - expected).sum() < np.abs(background - expected).sum())
            dist = {c: np.abs(seen - np.clip(np.asarray(rgb_) * gain, 0, 255)).sum() for c, rgb_ in palette.items()}
            named_right.append(plan.attributes[im.pid][prefix + min(dist, key=dist.get)] == 2)
    assert len(errors) > 50
    assert np.median(errors) < 12 and np.percentile(errors, 90) < 45
    assert np.mean(named_right) > 0.9 and np.mean(beats_background) > 0.9
    # and a mask shifted sideways by a few pixels no longer lines up
    im = next(i for i in _person_images(plan) if i.shot.view == "front")
    upper = _masks(synth, im)["upper"]
    assert (np.roll(upper, PARAMS["width"] // 4, axis=1) & upper).sum() < upper.sum()


def test_reuses_identical_output_and_rejects_other_parameters(synth: Path, tmp_path: Path) -> None:
    stamp = (synth / "synthetic.json").stat().st_mtime_ns
    assert generate_synthetic(synth, **PARAMS) == synth
    assert (synth / "synthetic.json").stat().st_mtime_ns == stamp
    with pytest.raises(DatasetError, match="different parameters.*num_ids"):
        generate_synthetic(synth, **dict(PARAMS, num_ids=10))
    other = tmp_path / "not_synthetic"
    other.mkdir()
    (other / "photo.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        generate_synthetic(other, num_ids=4)


@pytest.mark.parametrize("bad, what", [(dict(num_cams=1), "num_cams"), (dict(num_cams=10), "num_cams"),
                                       (dict(num_ids=1), "num_ids"), (dict(images_per_cam=1), "images_per_cam")])
def test_bad_parameters_raise_dataset_error(tmp_path: Path, bad: dict, what: str) -> None:
    with pytest.raises(DatasetError, match=what):
        generate_synthetic(tmp_path / "x", **bad)
    assert not (tmp_path / "x").exists()


def test_round_trip_through_the_dataset_and_attribute_readers(synth: Path, plan) -> None:
    from sangal.data import attributes, load_dataset

    ds = load_dataset("synthetic", synth)
    assert ds.num_train_pids == len(plan.train_pids)
    assert {r.raw_pid for r in ds.train} == set(plan.train_pids)
    assert {r.pid for r in ds.query} == set(plan.test_pids)
    assert {r.pid for r in ds.gallery} == set(plan.test_pids) | {0}  # junk dropped, distractors kept
    table = attributes.read_attribute_mat(synth / "market_attribute.mat")
    schema = table.schema
    for split, pids in (("train", plan.train_pids), ("test", plan.test_pids)):
        for pid in pids:
            want = [plan.attributes[pid][name] - 1 for name in schema.names]
            assert list(table.lookup(split, pid)) == want


def test_style_is_checked_and_old_easy_datasets_are_reused(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="style must be one of real, easy"):
        generate_synthetic(tmp_path / "x", num_ids=4, style="hard")
    # a dataset written before styles existed (version 1, no style) is the easy one
    old = tmp_path / "old"
    generate_synthetic(old, **dict(PARAMS, num_ids=4, height=64, width=32))
    meta = json.loads((old / "synthetic.json").read_text())
    del meta["style"], meta["params"]["style"]
    (old / "synthetic.json").write_text(json.dumps(meta))
    stamp = (old / "synthetic.json").stat().st_mtime_ns
    assert generate_synthetic(old, **dict(PARAMS, num_ids=4, height=64, width=32)) == old
    assert (old / "synthetic.json").stat().st_mtime_ns == stamp
    with pytest.raises(DatasetError, match="style='easy' \\(wanted 'real'\\)"):
        generate_synthetic(old, **dict(PARAMS, num_ids=4, height=64, width=32, style="real"))


def test_real_style_masks_follow_what_the_pictures_show(real_synth: Path, real_plan) -> None:
    """Masks come from the drawn look (hat, backpack), which differs from the written label only where the
    style makes the annotator disagree; cropped heads can hide a hat, never invent one."""
    shown_hat = {p for p, look in real_plan.looks.items() if look.hat is not None}
    seen = []
    for im in _person_images(real_plan):
        masks = _masks(real_synth, im)
        if masks["hat"].any():
            assert im.pid in shown_hat, f"{im.name}: a hat mask on an identity drawn without a hat"
        if im.pid in shown_hat:
            seen.append(masks["hat"].any())
        if not real_plan.looks[im.pid].backpack or im.shot.view == "front":
            assert not masks["backpack"].any(), im.name
    assert not shown_hat or np.mean(seen) > 0.6
    images = [np.asarray(Image.open(real_synth / SPLIT_DIRS[im.split] / im.name)) for im in _person_images(real_plan)]
    assert len({im.shape for im in images}) == 1 and images[0].shape == (PARAMS["height"], PARAMS["width"], 3)
