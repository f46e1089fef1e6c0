"""`sangal export`: one ONNX graph per Re-ID mode, run in onnxruntime against the PyTorch pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sangal.aah.fast_map_files import FAST_MAP_NET_FILE, save_fast_map_net
from sangal.cli import main
from sangal.errors import CheckpointError
from sangal.export import BF16_GRAPH_BOUND, export_onnx, load_predictor
from sangal.models.attribute_net import AttributeNet
from sangal.models.fast_map_net import FastMapNet
from sangal.models.reid_net import ReIDNet
from sangal.store.checkpoint import save_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = [2] * 9 + [4] + [2] * 17  # Market-1501 binary schema, K = 27
H, W = 64, 32
EXTRA = {"dataset": "market1501", "colour_mode": "binary", "height": H, "width": W}


def _calibrate_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Backbone BatchNorm statistics of one random batch, so eval-mode activations keep their scale.

    A random MobileNetV2 with the initial statistics (mean 0, var 1) shrinks its activations
    block after block until every image has nearly the same embedding.
    """
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # one pass sets the exact batch statistics
    with torch.no_grad():
        model.backbone.train()(torch.randn(8, 3, H, W, generator=torch.Generator().manual_seed(9)))
    return model.eval()


def _checkpoints(tmp: Path, backbone: str) -> dict[str, Path]:
    """Random-weight id / id+attr / san-gal checkpoints; the san-gal one's attribute net has a predictor."""
    torch.manual_seed(0)
    calibrate = _calibrate_bn if backbone == "mobilenet_v2" else (lambda model: model)
    attr = calibrate(AttributeNet(CLASSES, backbone=backbone, pretrained=False).eval())
    for head in attr.heads:  # predictions that vary between images
        torch.nn.init.normal_(head.fc.weight, std=0.05)
    attr_dir = save_checkpoint(tmp / "attr", attr, {**attr.arch_dict(), **EXTRA}, {})
    predictor = FastMapNet(attr.backbone.channels[1:3], sum(CLASSES), hidden=8)
    save_fast_map_net(attr_dir, predictor, {"normalize": "max"})
    bare_attr = save_checkpoint(tmp / "attr_bare", attr, {**attr.arch_dict(), **EXTRA}, {})
    out = {"attr": attr_dir, "attr_bare": bare_attr}
    for mode in ("id", "id+attr", "san-gal"):
        model = calibrate(ReIDNet(6, CLASSES, mode=mode, backbone=backbone, pretrained=False).eval())
        for m in model.modules():  # non-trivial BN statistics so the embedding is not near-constant
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
        out[mode] = save_checkpoint(tmp / mode.replace("+", "_"), model, {**model.arch_dict(), **EXTRA},
                                    {"attr_checkpoint": str(attr_dir)})
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    """resnet18 checkpoints of every mode."""
    return _checkpoints(tmp_path_factory.mktemp("export"), "resnet18")


@pytest.fixture(scope="module")
def mobilenet_checkpoints(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    """mobilenet_v2 checkpoints of every mode (1280-d embedding; layer2 narrower than 2K)."""
    return _checkpoints(tmp_path_factory.mktemp("export_mobilenet"), "mobilenet_v2")


@pytest.mark.parametrize(("backbone", "mode"), [("resnet18", "id"), ("resnet18", "id+attr"), ("resnet18", "san-gal"),
                                                ("mobilenet_v2", "id"), ("mobilenet_v2", "san-gal")])
@pytest.mark.slow
def test_onnx_graph_matches_pytorch(request, tmp_path, backbone, mode) -> None:
    checkpoints = request.getfixturevalue("checkpoints" if backbone == "resnet18" else "mobilenet_checkpoints")
    dim = 512 if backbone == "resnet18" else 1280
    path = tmp_path / "model.onnx"
    info = export_onnx(checkpoints[mode], path)
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] <= 1e-4
    assert info["outputs"] == (["embedding"] if mode == "id" else ["embedding", "attr_probs"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph, _ = load_predictor(checkpoints[mode])
    for batch in (1, 5):  # dynamic batch: neither is the traced size (2)
        images = torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            want = graph(images)
        assert got[0].shape == (batch, dim)
        np.testing.assert_allclose(np.linalg.norm(got[0], axis=1), 1.0, atol=1e-5)  # L2-normalised
        assert np.abs(got[0] - want[0].numpy()).max() <= 1e-4
        if mode != "id":
            assert got[1].shape == (batch, sum(CLASSES))
            assert np.abs(got[1] - want[1].numpy()).max() <= 1e-4
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata["mode"] == f'"{mode}"' and metadata["opset"] == "17"


@pytest.mark.parametrize(("backbone", "form"), [("resnet18", "mean1"), ("resnet18", "residual"),
                                                ("resnet18", "gated"), ("resnet18", "mixed"),
                                                ("mobilenet_v2", "mixed")])  # mixed on a grouped stage
@pytest.mark.slow
def test_every_asam_form_exports(request, tmp_path, backbone, form) -> None:
    """The learned forms with non-zero (trained-like) gates: onnxruntime matches PyTorch."""
    checkpoints = request.getfixturevalue("checkpoints" if backbone == "resnet18" else "mobilenet_checkpoints")
    calibrate = _calibrate_bn if backbone == "mobilenet_v2" else (lambda model: model)
    torch.manual_seed(0)
    model = calibrate(ReIDNet(6, CLASSES, mode="san-gal", backbone=backbone, pretrained=False, asam_form=form).eval())
    with torch.no_grad():
        for p in model.asam.parameters():
            p.normal_(0.0, 0.5)
    ckpt = save_checkpoint(tmp_path / "reid", model, {**model.arch_dict(), **EXTRA},
                           {"attr_checkpoint": str(checkpoints["attr"])})
    info = export_onnx(ckpt, tmp_path / "model.onnx")
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    graph, _ = load_predictor(ckpt)
    images = torch.randn(3, 3, H, W, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = graph(images)
    got = session.run(None, {"images": images.numpy()})
    assert np.abs(got[0] - want[0].numpy()).max() <= 1e-4 and np.abs(got[1] - want[1].numpy()).max() <= 1e-4


def test_san_gal_graph_is_the_flip_averaged_fast_pipeline(checkpoints) -> None:
    """The graph's embedding, written out by hand: fast maps of the image, the Re-ID net on it and on its mirror
    (maps mirrored), averaged, L2-normalised."""
    from sangal.aah.fast import fast_attribute_heatmaps
    from sangal.aah.fast_map_files import load_fast_map_net
    from sangal.store.checkpoint import load_model

    graph, meta = load_predictor(checkpoints["san-gal"])  # a checkpoint without a record: flip-averaged
    assert meta["embed_spec"]["map_spec"]["method"] == "fast" and meta["embed_spec"]["flip"] is True
    reid, _ = load_model(checkpoints["san-gal"], expected_kind="reid")
    attr, _ = load_model(checkpoints["attr"], expected_kind="attribute")
    images = torch.randn(4, 3, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        maps = fast_attribute_heatmaps(attr, load_fast_map_net(checkpoints["attr"]), images)
        a = reid(images, maps).features
        b = reid(images.flip(-1), tuple(m.flip(-1) for m in maps)).features
        embedding = graph(images)[0]
    np.testing.assert_allclose(embedding.numpy(), torch.nn.functional.normalize((a + b) / 2).numpy(), atol=1e-6)


def test_san_gal_export_needs_the_distilled_predictor(checkpoints, tmp_path, capsys) -> None:
    with pytest.raises(CheckpointError, match=f"no distilled map predictor.*{FAST_MAP_NET_FILE}.*sangal distill"):
        export_onnx(checkpoints["san-gal"], tmp_path / "m.onnx", attr_checkpoint=checkpoints["attr_bare"])
    assert not (tmp_path / "m.onnx").exists()
    code = main(["export", "--checkpoint", str(checkpoints["san-gal"]), "--out", str(tmp_path / "m.onnx"),
                 "--attr-checkpoint", str(checkpoints["attr_bare"])])
    assert code == 2 and "sangal distill" in capsys.readouterr().err


def test_cli_export_prints_the_check(checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "id.onnx"
    assert main(["export", "--checkpoint", str(checkpoints["id"]), "--out", str(out), "--opset", "18"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "opset 18" in text and "max abs diff" in text


def _gallery(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_fast_index_records_its_maps_and_queries_use_them(request, tmp_path, backbone) -> None:
    from sangal.evaluate.predictor import Predictor
    from sangal.search import Searcher, build_index

    checkpoints = request.getfixturevalue("checkpoints" if backbone == "resnet18" else "mobilenet_checkpoints")
    gallery = _gallery(tmp_path / "gallery")
    index = build_index(gallery, checkpoints["san-gal"], tmp_path / "index", batch_size=4, aah="fast")
    assert index.meta["embed_spec"]["map_spec"]["method"] == "fast"
    searcher = Searcher(tmp_path / "index")
    assert searcher.predictor.spec.method == "fast" and searcher.predictor.fast_map_net is not None
    top = searcher.search(gallery / "3.jpg", k=1)[0]
    assert Path(top.path).name == "3.jpg" and top.distance == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(CheckpointError, match="no distilled map predictor"):
        Predictor.from_checkpoint(checkpoints["san-gal"], checkpoints["attr_bare"], method="fast")


def test_mobilenet_v2_exact_index_and_search_with_a_filter(mobilenet_checkpoints, tmp_path) -> None:
    """san-gal on MobileNetV2 with exact Grad-CAM maps: index, nearest match, attribute filter."""
    from sangal.search import Searcher, build_index, parse_where

    gallery = _gallery(tmp_path / "gallery")
    index = build_index(gallery, mobilenet_checkpoints["san-gal"], tmp_path / "index", batch_size=4)
    assert index.meta["embed_spec"]["map_spec"]["method"] == "exact" and len(index) == 5
    searcher = Searcher(tmp_path / "index")
    top = searcher.search(gallery / "2.jpg", k=5)
    assert Path(top[0].path).name == "2.jpg" and top[0].distance == pytest.approx(0.0, abs=1e-5)
    backpack = top[0].attributes["backpack"]  # what the model predicts for the query's own image
    filtered = searcher.search(gallery / "2.jpg", k=5, where=parse_where(f"backpack={backpack}"))
    assert Path(filtered[0].path).name == "2.jpg"
    assert all(m.attributes["backpack"] == backpack for m in filtered)
    assert [m.path for m in filtered] == [m.path for m in top if m.attributes["backpack"] == backpack]


class Agreement:
    """Gallery features of one checkpoint record through `sangal evaluate`, `sangal index` and the ONNX graph, each
    computed once per module (the rows share them): checkpoints, caches, indexes and graphs are memoised."""

    def __init__(self, checkpoints: dict[str, Path], root: Path, tmp: Path) -> None:
        from sangal.data import load_dataset

        self.checkpoints, self.root, self.tmp, self.memo = checkpoints, root, tmp, {}
        self.gallery = root / "bounding_box_test"
        self.order = [str(r.path.relative_to(self.gallery)) for r in load_dataset("synthetic", root).gallery]

    def _once(self, key: tuple, make):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def checkpoint(self, mode: str, method: str, flip: bool, precision: str = "float32") -> Path:
        """``mode``'s weights again, recording the test-time embedding (maps of ``method`` in ``precision``,
        ``flip``)."""
        from sangal.aah.spec import MapSpec
        from sangal.evaluate.embedding import EmbedSpec
        from sangal.store.checkpoint import load_model

        def make() -> Path:
            model, ckpt = load_model(self.checkpoints[mode], expected_kind="reid")
            record = EmbedSpec(MapSpec("labels", method, "max", precision), flip, H, W)
            return save_checkpoint(self.tmp / f"{mode.replace('+', '_')}-{method}-{flip}-{precision}", model,
                                   ckpt.arch, {"attr_checkpoint": str(self.checkpoints["attr"]),
                                               "embed_spec": record.to_dict()})
        return self._once(("checkpoint", mode, method, flip, precision), make)

    def _data(self, out: Path) -> list[str]:
        return ["data.dataset=synthetic", f"data.root={self.root}", "data.num_workers=0", "train.device=cpu",
                f"out={out}"]

    def cache(self, method: str, precision: str = "float32") -> Path:
        """A run folder whose query/gallery heat-map caches (`sangal aah`) hold the maps of ``method``, computed in
        ``precision`` (bf16: under train.amp, as its training would build them)."""
        from sangal.aah.job import build_caches
        from sangal.config import load_config

        def make() -> Path:
            out = self.tmp / f"cached-{method}-{precision}"
            build_caches(load_config(None, [*self._data(out), "data.height=64", "data.width=32", f"eval.aah={method}",
                                            f"train.attr_checkpoint={self.checkpoints['attr']}",
                                            "train.aah_targets=labels", f"train.amp={precision == 'bf16'}"]),
                         ["query", "gallery"])
            return out
        return self._once(("cache", method, precision), make)

    def evaluate(self, ckpt: Path, out: Path, monkeypatch) -> tuple[np.ndarray, bool]:
        """`sangal evaluate`'s gallery features (dataset order) and whether they were embedded with cached maps."""
        from sangal.evaluate import reid as module

        seen, score, cached = {}, module.evaluate_features, module.cached_test_maps
        monkeypatch.setattr(module, "evaluate_features",
                            lambda qf, gf, *a, **k: score(qf, seen.setdefault("gf", gf), *a, **k))
        monkeypatch.setattr(module, "cached_test_maps",
                            lambda *a: seen.setdefault(a[2], cached(*a)))  # split -> its MapsFn or None
        assert main(["evaluate", "--checkpoint", str(ckpt), *self._data(out)]) == 0
        return seen["gf"], seen["gallery"] is not None

    def index(self, ckpt: Path) -> np.ndarray:
        from sangal.search import build_index

        def make() -> np.ndarray:
            index = build_index(self.gallery, ckpt, ckpt.with_name(ckpt.name + ".index"), batch_size=16)
            return np.asarray(index.features)[[index.paths.index(p) for p in self.order]]
        return self._once(("index", ckpt), make)

    def query(self, ckpt: Path) -> np.ndarray:
        """The first gallery image as a query of the checkpoint's index (`sangal search` and `serve` embed so)."""
        from sangal.search import Searcher

        self.index(ckpt)
        index_dir = ckpt.with_name(ckpt.name + ".index")
        return self._once(("query", ckpt), lambda: Searcher(index_dir).embed_query(self.gallery / self.order[0])[0])

    def onnx(self, ckpt: Path, count: int = 6) -> np.ndarray:
        """The exported graph's embedding of the first ``count`` gallery images."""
        from sangal.data.dataset import read_image
        from sangal.data.transforms import build_transforms

        def make() -> np.ndarray:
            path = ckpt.with_name(ckpt.name + ".onnx")
            export_onnx(ckpt, path, check=False)
            transform = build_transforms(H, W, train=False)
            images = torch.stack([transform(read_image(self.gallery / p)) for p in self.order[:count]]).numpy()
            return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
        return self._once(("onnx", ckpt), make)


@pytest.fixture(scope="module")
def agreement(checkpoints, tiny_synth, tmp_path_factory) -> Agreement:
    return Agreement(checkpoints, tiny_synth, tmp_path_factory.mktemp("agreement"))


#: model mode x maps x flip x offline cache x map precision; maps and caches only exist for san-gal, bf16 maps only
#: for a model trained under train.amp (one flip: the flip's path is the float32 rows').
ROWS = [(mode, "exact", flip, False, "float32") for mode in ("id", "id+attr") for flip in (True, False)] + [
    ("san-gal", maps, flip, cache, "float32") for maps in ("exact", "fast") for flip in (True, False)
    for cache in (False, True)] + [("san-gal", maps, True, cache, "bf16") for maps in ("exact", "fast")
                                   for cache in (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "maps", "flip", "cache", "precision"), ROWS)
def test_evaluate_index_and_export_embed_alike(agreement, tmp_path, monkeypatch, mode, maps, flip, cache,
                                               precision) -> None:
    """One record, one vector: `sangal evaluate`, `sangal index`, a search of the index and the exported graph embed
    the gallery images of a checkpoint alike (1e-5); exact maps have no graph (no backward pass). Maps read from a
    float16 cache moved the features by at most 2.6e-6 here (computed maps: 4.5e-8), inside the same bound. A bf16
    model (train.amp) computes its maps in bf16 in evaluate (its bf16 cache or on the fly) and in the index alike:
    1.9e-6 with the cache, 3e-8 without, inside 1e-5, while float32 maps move them 1e-3; its graph has float32 maps
    (:data:`~sangal.export.BF16_GRAPH_BOUND`)."""
    ckpt = agreement.checkpoint(mode, maps, flip, precision)
    out = agreement.cache(maps, precision) if cache else tmp_path / "run"
    evaluated, used_cache = agreement.evaluate(ckpt, out, monkeypatch)
    assert used_cache == cache
    indexed = agreement.index(ckpt)
    np.testing.assert_allclose(indexed, evaluated, atol=1e-5)
    if cache:  # float16 maps: the features moved a little, so the cache was read, not computed maps
        assert 0 < np.abs(indexed - evaluated).max()
    np.testing.assert_allclose(agreement.query(ckpt), indexed[0], atol=1e-5)  # the index's record, at query time
    f32 = indexed if precision == "float32" else agreement.index(agreement.checkpoint(mode, maps, flip))
    if precision == "bf16":  # the maps were computed in bf16, not float32
        assert np.abs(f32 - indexed).max() > 1e-4
    if maps == "fast" or mode != "san-gal":  # the graph's maps are float32 (`sangal export` says so for bf16)
        graph = agreement.onnx(ckpt)
        np.testing.assert_allclose(graph, f32[:len(graph)], atol=1e-5)
        np.testing.assert_allclose(graph, indexed[:len(graph)], atol=BF16_GRAPH_BOUND)
    if precision == "float32":
        flipped = agreement.index(agreement.checkpoint(mode, maps, not flip))
        assert np.abs(flipped - indexed).max() > 1e-4  # the record's flip reaches the index


def test_evaluate_refuses_a_config_that_contradicts_the_checkpoint(checkpoints, tiny_synth, tmp_path, capsys) -> None:
    code = main(["evaluate", "--checkpoint", str(checkpoints["san-gal"]), "data.dataset=synthetic",
                 f"data.root={tiny_synth}", "data.height=128", "train.aah_targets=agnostic", "eval.flip=false",
                 f"out={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "data.height=128 (the checkpoint has 64)" in err[0] and "train.aah_targets=agnostic" in err[0]
    assert "eval.flip=False (the checkpoint has True)" in err[0]
    assert err[0].startswith(f"error: checkpoint {checkpoints['san-gal']} was trained with other settings than")


def test_export_refuses_a_flip_that_contradicts_the_record(checkpoints, tmp_path, capsys) -> None:
    """The checkpoint decides the flip; `--flip` that agrees is accepted, `--no-flip` that contradicts is refused."""
    out = tmp_path / "m.onnx"
    code = main(["export", "--checkpoint", str(checkpoints["id"]), "--out", str(out), "--no-flip"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "records flip=True" in err[0] and not out.exists()
    assert load_predictor(checkpoints["id"], flip=True)[1]["embed_spec"]["flip"] is True


@pytest.mark.slow
def test_a_soft_map_model_exports_with_its_soft_maps(checkpoints, tmp_path) -> None:
    """Soft test-time maps (sum_c p_c ReLU(S_c), forward only) trace to ONNX and match PyTorch."""
    from sangal.evaluate.predictor import Predictor
    from sangal.store.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoints["san-gal"])
    reid, _ = load_predictor(checkpoints["san-gal"])
    soft = save_checkpoint(tmp_path / "soft", reid.reid, ckpt.arch, {
        "attr_checkpoint": str(checkpoints["attr"]), "map_spec": {"targets": "soft", "method": "fast",
                                                                    "normalize": "max"}})
    meta = export_onnx(soft, tmp_path / "soft.onnx")
    assert meta["embed_spec"]["map_spec"]["targets"] == "soft" and meta["max_abs_diff"] < 1e-5
    predictor = Predictor.from_checkpoint(soft)
    images = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(predictor.maps(images)[1], load_predictor(checkpoints["san-gal"])[0].maps(images)[1])


def test_a_bf16_model_exports_float32_maps_and_says_so(agreement, caplog) -> None:
    """onnxruntime has no bf16 convolution on CPU: the graph's maps are float32, its metadata and one line say so."""
    with caplog.at_level("WARNING", logger="sangal.export"):
        predictor, meta = load_predictor(agreement.checkpoint("san-gal", "fast", True, "bf16"))
    assert predictor.spec.precision == "float32" and meta["embed_spec"]["map_spec"]["precision"] == "float32"
    (line,) = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    assert "\n" not in line and "float32" in line and f"{BF16_GRAPH_BOUND:g}" in line
