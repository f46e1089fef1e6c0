"""Gallery search: index build/reload, ranking, attribute filters, skipped images, FAISS, HTML.

One tiny Re-ID model (resnet18, mode id+attr, 64x32, random init) is trained for a few
dozen SGD steps on the train split of a synthetic dataset. The gallery is the training
images of cameras 2 and 3 laid out in nested folders, plus two unreadable files; the
queries are the training images of camera 1, whose identities the gallery also holds.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sangal.data import ImageDataset, build_transforms, get_schema, load_dataset, read_attribute_mat
from sangal.errors import CacheError, CheckpointError, ConfigError, DatasetError
from sangal.models import AttributeNet, ReIDNet
from sangal.search import Match, Searcher, build_index, format_matches, parse_where, search_html
from sangal.search import index as index_module
from sangal.search.searcher import top_k
from sangal.search.where import predicted_attributes, where_mask
from sangal.store.checkpoint import save_checkpoint
from sangal.synthetic.generate import generate_synthetic
from sangal.train.losses import reid_losses

H, W = 64, 32
SCHEMA = get_schema("market1501")
TRAIN_STEPS = 40


def _arch(model: torch.nn.Module) -> dict:
    return {**model.arch_dict(), "dataset": "market1501", "colour_mode": "binary", "height": H, "width": W}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    """Dataset, trained checkpoint, attribute checkpoint, gallery folder, index and searcher."""
    tmp = tmp_path_factory.mktemp("search")
    root = generate_synthetic(tmp / "synth", num_ids=20, num_cams=3, seed=0, height=H, width=W, images_per_cam=2)
    ds = load_dataset("synthetic", root)
    attrs = read_attribute_mat(root / "market_attribute.mat", "market1501").labels_for(ds.train, "train")

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = ReIDNet(ds.num_train_pids, SCHEMA.num_classes, mode="id+attr", backbone="resnet18", pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(
        ImageDataset(ds.train, build_transforms(H, W, train=True, erasing_p=0.0, pad=4), attrs),
        batch_size=16, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0),
    )
    model.train()
    step = 0
    while step < TRAIN_STEPS:
        for batch in loader:
            terms = reid_losses(model(batch["image"]), batch["pid"], batch["attrs"], {"id": 1, "triplet": 1, "attr": 1})
            optimizer.zero_grad()
            terms["total"].backward()
            optimizer.step()
            step += 1
            if step == TRAIN_STEPS:
                break
    ckpt = save_checkpoint(tmp / "ckpt", model, _arch(model), {"step": step})
    attr_net = AttributeNet(SCHEMA.num_classes, backbone="resnet18", pretrained=False)
    attr_ckpt = save_checkpoint(tmp / "attr_ckpt", attr_net, {**_arch(attr_net)}, {"step": 0})

    gallery = tmp / "gallery"
    pid_of: dict[str, int] = {}
    for r in ds.train:
        if r.camid == 0:
            continue
        sub = gallery / f"cam{r.camid + 1}" / ("deep" if r.camid == 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, sub / r.path.name)
        pid_of[(sub / r.path.name).relative_to(gallery).as_posix()] = r.pid
    (gallery / "cam2" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (gallery / "empty.jpg").write_bytes(b"")
    (gallery / "notes.txt").write_text("not an image")
    queries = [r for r in ds.train if r.camid == 0 and r.pid in set(pid_of.values())]

    index = build_index(gallery, ckpt, tmp / "index", batch_size=16)
    return {
        "tmp": tmp, "ds": ds, "ckpt": ckpt, "attr_ckpt": attr_ckpt, "model": model, "gallery": gallery,
        "pid_of": pid_of, "queries": queries, "index": index, "searcher": Searcher(tmp / "index"),
    }


def _rel(world, match: Match) -> str:
    return Path(match.path).relative_to(world["gallery"]).as_posix()


@pytest.mark.slow
def test_index_files_and_meta(world):
    idx_dir = world["tmp"] / "index"
    meta = json.loads((idx_dir / "meta.json").read_text())
    feats = np.load(idx_dir / "features.npy")
    assert sorted(meta["paths"]) == sorted(world["pid_of"])  # nested folders found, bad files and .txt left out
    assert feats.dtype == np.float32 and feats.shape == (len(world["pid_of"]), 512)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert meta["gallery_dir"] == str(world["gallery"].resolve())
    assert meta["checkpoint"]["path"] == str(Path(world["ckpt"]).resolve())
    assert re.fullmatch(r"[0-9a-f]{64}", meta["checkpoint"]["sha256"])
    assert meta["arch"]["mode"] == "id+attr" and meta["arch"]["height"] == H
    assert meta["backend"] == "exact" and not (idx_dir / "faiss.index").exists()
    assert meta["attributes"]["source"] == "reid"
    assert [a["name"] for a in meta["attributes"]["schema"]] == SCHEMA.names
    assert meta["sangal_version"] and meta["created"]
    assert len(world["index"]) == len(world["pid_of"])
    assert not list(idx_dir.parent.glob(".index.tmp-*"))  # atomic write cleaned up


def test_unreadable_images_are_listed_in_meta(world):
    skipped = {s["path"]: s["reason"] for s in world["index"].meta["skipped"]}
    assert set(skipped) == {"cam2/corrupt.jpg", "empty.jpg"}
    assert all(reason.strip() for reason in skipped.values())


def test_unreadable_images_are_logged(world, tmp_path, caplog):
    gallery = tmp_path / "g"
    gallery.mkdir()
    for r in world["ds"].train[:3]:
        shutil.copy(r.path, gallery / r.path.name)
    (gallery / "broken.jpg").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (gallery / "zero.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="sangal.search"):
        index = build_index(gallery, world["ckpt"], tmp_path / "idx")
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "broken.jpg" in warned and "zero.png" in warned
    assert sorted(s["path"] for s in index.meta["skipped"]) == ["broken.jpg", "zero.png"]
    assert len(index) == 3


def test_query_in_index_finds_itself(world):
    searcher = world["searcher"]
    for rel in sorted(world["pid_of"])[:4]:
        matches = searcher.search(world["gallery"] / rel, k=5)
        assert _rel(world, matches[0]) == rel
        assert matches[0].rank == 1 and matches[0].distance == pytest.approx(0.0, abs=1e-4)
        assert [m.rank for m in matches] == [1, 2, 3, 4, 5]
        assert all(a.distance <= b.distance for a, b in zip(matches, matches[1:]))


def test_top1_identity_beats_chance(world):
    hits, chance = [], []
    gallery_pids = np.array(list(world["pid_of"].values()))
    for q in world["queries"]:
        top = world["searcher"].search(q.path, k=1)[0]
        hits.append(world["pid_of"][_rel(world, top)] == q.pid)
        chance.append(np.mean(gallery_pids == q.pid))
    assert len(hits) >= 10
    assert np.mean(chance) < 0.15  # ~1 in 10 identities
    assert np.mean(hits) >= 0.5, f"top-1 identity rate {np.mean(hits):.2f} over {len(hits)} queries"


def test_reloaded_index_gives_identical_results(world):
    fresh = Searcher(world["tmp"] / "index", checkpoint=world["ckpt"])
    for q in world["queries"][:3]:
        assert fresh.search(q.path, k=8) == world["searcher"].search(q.path, k=8)


def _satisfies(match: Match, where: dict[str, str]) -> bool:
    aliases = {"upper_color": "upper_colour", "lower_color": "lower_colour"}
    return all(match.attributes[aliases.get(k, k)] == v for k, v in where.items())


def test_filters_equal_brute_force(world):
    searcher, q = world["searcher"], world["queries"][0].path
    full = searcher.search(q, k=len(searcher))
    assert len(full) == len(searcher)
    first = full[len(full) // 2].attributes  # a combination that at least one gallery image has
    for where in ({"gender": first["gender"]}, {"upper_color": first["upper_colour"]},
                  {"lower_colour": first["lower_colour"], "backpack": first["backpack"]}):
        expected = [m for m in full if _satisfies(m, where)]
        assert 0 < len(expected)
        got = searcher.search(q, k=5, where=where)
        assert len(got) == min(5, len(expected))  # filtering happens before the top-k
        assert all(_satisfies(m, where) for m in got)
        assert [(m.path, m.distance) for m in got] == [(m.path, m.distance) for m in expected[:5]]
        assert [m.rank for m in got] == list(range(1, len(got) + 1))


def test_colour_alias_is_most_probable_binary_colour_head(world):
    index = world["index"]
    probs = index.attr_probs
    names = SCHEMA.names
    up = [n for n in names if n.startswith("up") and n != "up"]
    yes = np.stack([probs[names.index(n)][:, 1] for n in up], axis=1)
    described = predicted_attributes(SCHEMA, probs)
    assert [d["upper_colour"] for d in described] == [up[i][2:] for i in yes.argmax(axis=1)]


def test_unknown_filter_names_and_classes(world):
    searcher, q = world["searcher"], world["queries"][0].path
    with pytest.raises(ConfigError) as err:
        searcher.search(q, where={"umbrella": "yes"})
    assert "umbrella" in str(err.value) and "backpack" in str(err.value) and "upper_color" in str(err.value)
    with pytest.raises(ConfigError, match="no, yes"):
        searcher.search(q, where={"backpack": "maybe"})
    with pytest.raises(ConfigError, match="black"):
        searcher.search(q, where={"upper_colour": "turquoise"})


def _probs(schema, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for a in schema.attributes:
        p = rng.random((n, a.num_classes)).astype(np.float32)
        out.append(p / p.sum(axis=1, keepdims=True))
    return out


def test_binary_colour_alias_takes_the_most_probable_colour_even_below_half():
    probs = _probs(SCHEMA, 3)
    up = [k for k, n in enumerate(SCHEMA.names) if n.startswith("up") and n != "up"]
    for k in up:
        probs[k][:] = [0.9, 0.1]  # every colour head says "no" ...
    red = SCHEMA.names.index("upred")
    probs[red][1] = [0.6, 0.4]  # ... but image 1 is most likely red
    mask = where_mask({"upper_color": "RED"}, SCHEMA, probs)
    assert mask.tolist() == [False, True, False]
    assert predicted_attributes(SCHEMA, probs)[1]["upper_colour"] == "red"


def test_merged_schema_colour_alias_uses_the_colour_head():
    schema = get_schema("dukemtmc", "merged")
    probs = _probs(schema, 50, seed=1)
    head = schema.names.index("lower_colour")
    blue = schema.attributes[head].classes.index("blue")
    expected = probs[head].argmax(axis=1) == blue
    assert 0 < expected.sum() < 50
    assert where_mask({"lower_color": "blue"}, schema, probs).tolist() == expected.tolist()
    assert where_mask({"lower_colour": "blue"}, schema, probs).tolist() == expected.tolist()
    with pytest.raises(ConfigError, match="lower_color"):
        where_mask({"down": "long"}, schema, probs)  # Market-only name: the error lists Duke's names


def test_parse_where():
    assert parse_where("upper_color=red, backpack=yes") == {"upper_color": "red", "backpack": "yes"}
    assert parse_where("up=long sleeve") == {"up": "long sleeve"}
    assert parse_where("") == {}
    for bad in ("backpack", "=yes", "backpack=", "bag=yes,bag=no"):
        with pytest.raises(ConfigError):
            parse_where(bad)


def test_top_k_matches_stable_sort_with_ties():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.5, 0.7])
    for k in range(1, 9):
        assert top_k(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist()


def test_faiss_gives_same_top_k_as_exact(world, tmp_path):
    pytest.importorskip("faiss")
    fi = build_index(world["gallery"], world["ckpt"], tmp_path / "fidx", faiss_threshold=1)
    assert fi.meta["backend"] == "faiss-hnsw" and (tmp_path / "fidx" / "faiss.index").is_file()
    fs = Searcher(tmp_path / "fidx")
    assert fs.index.backend == "faiss-hnsw"
    for q in world["queries"][:4]:
        exact = world["searcher"].search(q.path, k=5)
        approx = fs.search(q.path, k=5)
        assert [m.path for m in approx] == [m.path for m in exact]
        np.testing.assert_allclose([m.distance for m in approx], [m.distance for m in exact], atol=1e-5)


def test_faiss_missing_falls_back_to_exact(world, tmp_path, monkeypatch, caplog):
    gallery = tmp_path / "g"
    gallery.mkdir()
    for r in world["ds"].train[:3]:
        shutil.copy(r.path, gallery / r.path.name)
    monkeypatch.setattr(index_module, "load_faiss", lambda: None)
    with caplog.at_level(logging.WARNING, logger="sangal.search"):
        index = build_index(gallery, world["ckpt"], tmp_path / "idx", faiss_threshold=2)
    assert index.meta["backend"] == "exact" and not (tmp_path / "idx" / "faiss.index").exists()
    assert any("faiss" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_other_checkpoint_is_refused(world, tmp_path):
    other = ReIDNet(world["ds"].num_train_pids, SCHEMA.num_classes, mode="id+attr", backbone="resnet18",
                    pretrained=False)
    other.load_state_dict(world["model"].state_dict())
    with torch.no_grad():
        other.bottleneck.weight.mul_(1.01)
    save_checkpoint(tmp_path / "other", other, _arch(other), {"step": 1})
    with pytest.raises(CheckpointError, match="not comparable"):
        Searcher(world["tmp"] / "index", checkpoint=tmp_path / "other")


def test_san_gal_needs_attribute_checkpoint(world, tmp_path):
    gallery = tmp_path / "g"
    gallery.mkdir()
    for r in world["ds"].train[:2]:
        shutil.copy(r.path, gallery / r.path.name)
    torch.manual_seed(0)
    net = ReIDNet(3, SCHEMA.num_classes, mode="san-gal", backbone="resnet18", pretrained=False)
    ckpt = save_checkpoint(tmp_path / "sg", net, _arch(net), {"step": 0})
    with pytest.raises(CheckpointError, match="attr_checkpoint"):
        build_index(gallery, ckpt, tmp_path / "idx")
    index = build_index(gallery, ckpt, tmp_path / "idx", attr_checkpoint=world["attr_ckpt"])
    assert index.meta["attr_checkpoint"]["path"] == str(Path(world["attr_ckpt"]).resolve())
    other_attr = AttributeNet(SCHEMA.num_classes, backbone="resnet18", pretrained=False)  # other weights
    save_checkpoint(tmp_path / "other_attr", other_attr, _arch(other_attr), {"step": 0})
    with pytest.raises(CheckpointError, match="attribute checkpoint .* not comparable"):
        Searcher(tmp_path / "idx", attr_checkpoint=tmp_path / "other_attr")  # its heat maps shape the features
    searcher = Searcher(tmp_path / "idx")  # attribute checkpoint taken from the index
    top = searcher.search(gallery / world["ds"].train[1].path.name, k=2)[0]
    assert Path(top.path).name == world["ds"].train[1].path.name and top.distance < 1e-4


def test_output_folder_that_is_not_an_index_is_refused(world, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not a sangal index"):
        build_index(world["gallery"], world["ckpt"], tmp_path / "busy")
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "precious"


def test_bad_inputs_name_the_file(world, tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        build_index(tmp_path / "nowhere", world["ckpt"], tmp_path / "idx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .jpg"):
        build_index(tmp_path / "empty", world["ckpt"], tmp_path / "idx")
    with pytest.raises(DatasetError, match="missing.jpg"):
        world["searcher"].search(tmp_path / "missing.jpg")


def test_format_matches(world):
    matches = world["searcher"].search(world["queries"][0].path, k=3)
    text = format_matches(matches).splitlines()
    assert text[0].split()[:3] == ["rank", "distance", "path"]
    assert len(text) == 4
    for line, m in zip(text[1:], matches):
        assert line.split()[0] == str(m.rank) and m.path in line and f"gender={m.attributes['gender']}" in line


def test_search_html_embeds_every_image(world, tmp_path):
    searcher = Searcher(world["tmp"] / "index", attr_checkpoint=world["attr_ckpt"])
    q = world["queries"][0].path
    matches = searcher.search(q, k=4)
    out = search_html(searcher, q, matches, tmp_path / "page" / "results.html")
    page = out.read_text()
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(srcs) == 1 + 1 + len(matches)  # query, heat-map grid, matches
    assert all(s.startswith("data:image/") for s in srcs)
    assert "heat maps" in page and all(m.path in page for m in matches)
    assert f"{matches[0].distance:.4f}" in page


def test_a_flipped_byte_in_any_index_file_is_refused(world, tmp_path):
    pytest.importorskip("faiss")
    build_index(world["gallery"], world["ckpt"], tmp_path / "fidx", faiss_threshold=1)
    for name in ("features.npy", "attributes.npz", "faiss.index"):
        copy = Path(shutil.copytree(tmp_path / "fidx", tmp_path / f"copy-{name}"))
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(CacheError, match=rf"{re.escape(name)}: sha256 .* differs .*rebuild the index"):
            Searcher(copy)


def test_features_a_search_could_not_rank_are_never_written(world, tmp_path, monkeypatch):
    from sangal.evaluate.predictor import Predictor

    real = Predictor.embed_paths

    def broken(self, paths, **kwargs):
        emb = real(self, paths, **kwargs)
        emb.feats[2] = np.nan  # what broken weights give
        return emb

    monkeypatch.setattr(Predictor, "embed_paths", broken)
    with pytest.raises(CheckpointError, match=r"non-finite or zero features .* for 1 of \d+ images \(first: .*\.jpg\)"):
        build_index(world["gallery"], world["ckpt"], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
