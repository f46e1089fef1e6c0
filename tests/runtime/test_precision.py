"""bf16 autocast + channels-last: heat-map caches agree with float32, training runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sangal.config import load_config
from sangal.runtime.precision import autocast, channels_last, native_bf16_cpu, numerics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_helpers() -> None:
    assert isinstance(native_bf16_cpu(), bool)
    x = torch.randn(2, 3, 8, 4)
    assert channels_last(x).is_contiguous(memory_format=torch.channels_last)
    assert channels_last(x, enabled=False) is x
    with autocast(torch.device("cpu"), True):
        assert torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), False):
        assert not torch.is_autocast_enabled("cpu")


def test_numerics_records_the_threads_and_kernels_that_decide_the_sums() -> None:
    first = numerics()
    assert first["threads"] == 1 and first["torch"] == torch.__version__  # the module's one_torch_thread
    assert first["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and ", L3 " in first["cpu"]
    torch.set_num_threads(2)
    try:
        assert numerics()["threads"] == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.slow
def test_bf16_channels_last_caches_match_float32_and_training_runs(tiny_synth, tiny_overrides, tmp_path) -> None:
    from sangal.aah.cache import AAHCache
    from sangal.aah.job import build_caches
    from sangal.train.attr import train_attribute_net
    from sangal.models.arch import build_model
    from sangal.store.checkpoint import load_model
    from sangal.train.reid import shared_init_digest, train_reid

    fast = ["train.amp=true", "train.channels_last=true"]
    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path / "a") + fast)
    train_attribute_net(cfg)
    f32 = tiny_overrides(tiny_synth, tmp_path / "f32") + ["train.channels_last=true"]  # same seed, float32
    train_attribute_net(load_config(None, f32))
    bf16_weights, f32_weights = (load_file(tmp_path / out / "attr/checkpoints/final/model.safetensors")
                                 for out in ("a", "f32"))
    assert any(not torch.equal(bf16_weights[k], f32_weights[k]) for k in f32_weights)  # train.amp reached the loop
    bf16 = build_caches(cfg)["query"]  # all splits: the san-gal run below trains on them
    ref_cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path / "a") + [f"train.aah_cache={tmp_path / 'fp32'}"])
    fp32 = build_caches(ref_cfg, splits=["query"])["query"]
    a, b = AAHCache.open_path(bf16), AAHCache.open_path(fp32)
    assert a.manifest["precision"] == "bf16" and a.manifest["channels_last"] is True and bf16.name == "query_bf16"
    assert b.manifest["precision"] == "float32" and fp32.name == "query"
    for stage_a, stage_b in zip(a.arrays, b.arrays):
        x, y = np.asarray(stage_a, dtype=np.float64).ravel(), np.asarray(stage_b, dtype=np.float64).ravel()
        # measured on this barely trained net, real-style data: r 0.939 / 0.944 / 0.957, mean |diff| 0.043 /
        # 0.039 / 0.020 (easy data: r 0.963 / 0.976 / 0.984); a broken bf16 or channels-last path gives r near 0
        assert np.corrcoef(x, y)[0, 1] > 0.9
        assert np.abs(x - y).mean() < 0.06  # max-normalised maps in [0, 1]
    metrics = train_reid(load_config(None, tiny_overrides(tiny_synth, tmp_path / "r") + fast + [
        "model.mode=san-gal", f"train.attr_checkpoint={tmp_path / 'a' / 'attr' / 'checkpoints' / 'final'}",
        f"train.aah_cache={tmp_path / 'a' / 'aah'}", "train.epochs=1"]))  # 2 bf16 steps train every layer
    final, ckpt = load_model(tmp_path / "r/reid/san-gal/checkpoints/final", expected_kind="reid")
    torch.manual_seed(0)  # train.seed: the run's initial weights, which its pairing hash names
    start = build_model(ckpt.arch)
    assert shared_init_digest(start) == metrics["pairing"]["init_sha256"]
    moved = [n for n, p in start.named_parameters() if not torch.equal(p, final.state_dict()[n])]
    assert len(moved) > len(list(start.parameters())) // 2  # the bf16 steps trained the parameters
    assert all(torch.isfinite(t).all() for t in final.state_dict().values() if t.is_floating_point())
    _evaluate_reads_only_maps_of_the_models_precision(
        cfg, tmp_path / "r" / "reid" / "san-gal" / "checkpoints" / "final", tmp_path / "a" / "aah", fp32)


def _evaluate_reads_only_maps_of_the_models_precision(cfg, checkpoint, aah, fp32) -> None:
    """A bf16 model (issue 26): its record says bf16; evaluate reads its bf16 cache, never the float32 one beside
    it, and without one the predictor computes the maps in bf16 itself (closer to the bf16 cache than to float32)."""
    import shutil

    from sangal.aah.cache import AAHCache
    from sangal.data import setup
    from sangal.data.dataset import read_image
    from sangal.evaluate.predictor import Predictor
    from sangal.evaluate.reid import cached_test_maps

    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.spec.precision == "bf16"
    dataset = setup.load_reid_dataset(cfg)
    batch = {"index": torch.tensor([0, 1])}
    read = cached_test_maps(predictor, dataset.query, "query", aah)
    bf16_cache = AAHCache.open_path(aah / "query_bf16").get([0, 1])
    assert all(torch.equal(m, c) for m, c in zip(read(batch), bf16_cache))
    shutil.rmtree(aah / "gallery_bf16")
    shutil.copytree(aah / "query_bf16", aah / "gallery")  # a cache of other maps under the float32 name
    assert cached_test_maps(predictor, dataset.gallery, "gallery", aah) is None  # not read: computed instead
    assert cached_test_maps(predictor, dataset.gallery, "gallery", None) is None
    images = torch.stack([predictor.transform(read_image(r.path)) for r in dataset.query[:2]])
    computed, f32_cache = predictor.maps(images), AAHCache.open_path(fp32).get([0, 1])
    for m, b, f in zip(computed, bf16_cache, f32_cache):
        assert m.dtype == torch.float32 and (m - b).abs().mean() < (m - f).abs().mean()


def test_gradcam_uses_channels_last_only_with_bf16() -> None:
    from sangal.runtime.precision import gradcam_channels_last

    assert gradcam_channels_last(amp=True, channels_last_enabled=True) is True
    assert gradcam_channels_last(amp=False, channels_last_enabled=True) is False  # slower in float32 (measured)
    assert gradcam_channels_last(amp=True, channels_last_enabled=False) is False
