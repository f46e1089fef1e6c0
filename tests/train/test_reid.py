"""Training end to end on the tiny synthetic set: commands, resume, stale caches, online mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sangal.config import load_config, with_overrides
from sangal.errors import CacheError, CheckpointError, ConfigError
from sangal.train.engine import Stopped


@pytest.fixture(scope="module")
def prepared(tiny_synth, tiny_overrides, tiny_attr_run, tmp_path_factory):
    """The offline mode's inputs: a copy of the session's attribute net and its heat maps (tests add caches)."""
    out = tiny_attr_run.copy_to(tmp_path_factory.mktemp("run"))
    caches = {split: out / "aah" / name for split, name in tiny_attr_run.caches.items()}
    return {"root": tiny_synth, "out": out, "attr_metrics": tiny_attr_run.attr_metrics, "caches": caches,
            "overrides": tiny_overrides, "runs": {}}


def cfg_for(prepared, out: Path, *extra: str):
    base = prepared["out"]
    return load_config(None, prepared["overrides"](prepared["root"], out) + [
        f"train.attr_checkpoint={base / 'attr' / 'checkpoints' / 'final'}", f"train.aah_cache={base / 'aah'}",
        *extra])


def default_run(prepared, mode: str) -> tuple[Path, dict]:
    """(out folder, metrics) of the uninterrupted run of ``mode`` with the tiny overrides, trained once per module:
    the tests of each mode, of resuming and of attention guidance compare with the same run."""
    from sangal.train.reid import train_reid

    if mode not in prepared["runs"]:
        out = prepared["out"] / f"default-{mode.replace('+', '_')}"
        prepared["runs"][mode] = out, train_reid(cfg_for(prepared, out, f"model.mode={mode}"))
    return prepared["runs"][mode]


def test_attribute_pretraining_writes_checkpoint_and_metrics(prepared):
    out = prepared["out"]
    assert (out / "attr" / "checkpoints" / "final" / "model.safetensors").is_file()
    assert 0.0 <= prepared["attr_metrics"]["mA"] <= 1.0
    assert len(prepared["attr_metrics"]["per_attribute"]) == 27
    history = json.loads((out / "attr" / "metrics.json").read_text())
    assert history["train"] and "attr" in history["train"][0]
    assert set(prepared["caches"]) == {"train", "query", "gallery"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["id", "id+attr", "san-gal"])
def test_each_mode_trains_logs_named_losses_and_evaluates(prepared, mode):
    out, metrics = default_run(prepared, mode)
    run = out / "reid" / mode
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_valid_queries"] > 0
    history = json.loads((run / "metrics.json").read_text())
    terms = set(history["train"][-1])
    assert {"id", "triplet", "total", "lr"} <= terms
    assert ("attr" in terms) == (mode != "id")
    per_epoch = [[e["step"] for e in history["train"] if e["epoch"] == ep] for ep in (0, 1)]
    assert per_epoch[0] == per_epoch[1] == list(range(len(per_epoch[0]))) and len(per_epoch[0]) >= 2
    assert history["eval"][-1]["rank1"] == metrics["rank1"]
    assert (run / "config.yaml").read_text().count(f"mode: {mode}") == 1
    state = json.loads((run / "checkpoints" / "final" / "state.json").read_text())
    assert state["arch"]["mode"] == mode and state["config"]["model"]["mode"] == mode
    assert list((run / "tensorboard").iterdir()), "TensorBoard event file expected"


@pytest.mark.slow
def test_resume_after_stop_mid_epoch_reproduces_uninterrupted_weights(prepared, tmp_path):
    from sangal.train.reid import train_reid

    full, _ = default_run(prepared, "san-gal")
    split = cfg_for(prepared, tmp_path / "split", "model.mode=san-gal")
    with pytest.raises(Stopped, match="at epoch 0 step 1.*resume with --resume"):  # mid-epoch 0 (2 steps per epoch)
        train_reid(split, stop_after_steps=1)
    state = json.loads((tmp_path / "split/reid/san-gal/checkpoints/last/state.json").read_text())
    assert (state["epoch"], state["step"]) == (0, 1)
    train_reid(split, resume=True)
    a = load_file(full / "reid/san-gal/checkpoints/final/model.safetensors")
    b = load_file(tmp_path / "split/reid/san-gal/checkpoints/final/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_adam_with_faster_heads_resumes_exactly(prepared, tmp_path):
    """optim.optimizer=adam with optim.head_lr_scale: two parameter groups, heads at the scaled lr, exact resume."""
    from sangal.train.reid import train_reid

    extra = ("model.mode=id+attr", "optim.optimizer=adam", "optim.lr=1e-3", "optim.warmup_start_lr=1e-4",
             "optim.head_lr_scale=4", "train.epochs=1")  # one epoch of 2 steps: stopped after the first
    full = cfg_for(prepared, tmp_path / "full", *extra)
    train_reid(full)
    split = cfg_for(prepared, tmp_path / "split", *extra)
    with pytest.raises(Stopped):
        train_reid(split, stop_after_steps=1)
    state = json.loads((tmp_path / "split/reid/id+attr/checkpoints/last/state.json").read_text())
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and [g["lr_scale"] for g in groups] == [1.0, 4.0]
    assert groups[1]["lr"] == pytest.approx(4 * groups[0]["lr"]) and "betas" in groups[0]  # Adam's
    train_reid(split, resume=True)
    a = load_file(tmp_path / "full/reid/id+attr/checkpoints/final/model.safetensors")
    b = load_file(tmp_path / "split/reid/id+attr/checkpoints/final/model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_weight_ema_is_evaluated_saved_and_resumed_bit_identically(prepared, tmp_path):
    """train.ema: the final checkpoint holds the averaged weights it was evaluated with; a run stopped
    mid-epoch and resumed continues the same average bit for bit."""
    from sangal.train.reid import train_reid

    extra = ("model.mode=san-gal", "train.ema=0.7", "train.epochs=1")  # one epoch of 2 steps: stopped after the first
    full = train_reid(cfg_for(prepared, tmp_path / "full", *extra))
    split = cfg_for(prepared, tmp_path / "split", *extra)
    with pytest.raises(Stopped):
        train_reid(split, stop_after_steps=1)
    assert json.loads((tmp_path / "split/reid/san-gal/checkpoints/last/state.json").read_text())["ema"] == \
        {"decay": 0.7, "updates": 1}
    resumed = train_reid(split, resume=True)
    assert resumed["rank1"] == full["rank1"] and resumed["mAP"] == full["mAP"]
    for name in ("model", "extra"):
        a = load_file(tmp_path / f"full/reid/san-gal/checkpoints/final/{name}.safetensors")
        b = load_file(tmp_path / f"split/reid/san-gal/checkpoints/final/{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the final weights are the average, not the last iterate (which the epoch-end "last" checkpoint holds)
    final = load_file(tmp_path / "full/reid/san-gal/checkpoints/final/model.safetensors")
    last = load_file(tmp_path / "full/reid/san-gal/checkpoints/last/model.safetensors")
    key = "backbone.layer4.1.conv2.weight"
    assert not torch.equal(final[key], last[key])
    # ... and a run without the EMA cannot be resumed with one (a changed config is refused first)
    plain = cfg_for(prepared, tmp_path / "plain", "model.mode=id")
    with pytest.raises(Stopped):
        train_reid(plain, stop_after_steps=1)
    with pytest.raises(ConfigError, match=r"another config \(train\.ema 0\.0 -> 0\.7\)"):
        train_reid(cfg_for(prepared, tmp_path / "plain", "model.mode=id", "train.ema=0.7"), resume=True)


def test_parameter_groups_split_backbone_from_new_layers():
    from sangal.models.reid_net import ReIDNet
    from sangal.train.reid import param_groups
    from sangal.train.run_parts import make_optimizer, set_lr

    net = ReIDNet(5, [2, 3], mode="id+attr", backbone="resnet18", pretrained=False)
    one = param_groups(net, None, 1.0)
    assert len(one) == 1 and len(one[0]["params"]) == len(list(net.parameters()))  # the layout of earlier versions
    backbone, heads = param_groups(net, None, 10.0)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in net.backbone.parameters()}
    assert len(heads["params"]) == len(list(net.parameters())) - len(backbone["params"]) > 0
    sgd = make_optimizer([backbone, heads], "sgd", 0.1, 5e-4)
    set_lr(sgd, 0.01)
    assert [g["lr"] for g in sgd.param_groups] == [0.01, pytest.approx(0.1)]
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        make_optimizer([backbone], "lamb", 0.1, 0.0)


@pytest.mark.parametrize("form", ["gated", "mixed"])
def test_learned_asam_weights_get_the_head_learning_rate(form):
    from sangal.models.reid_net import ReIDNet
    from sangal.train.reid import param_groups

    net = ReIDNet(5, [2, 3], mode="san-gal", backbone="resnet18", pretrained=False, asam_form=form)
    backbone, heads = param_groups(net, None, 10.0)
    asam = {id(p) for p in net.asam.parameters()}
    assert len(asam) == 3 and asam <= {id(p) for p in heads["params"]} and heads["lr_scale"] == 10.0
    assert not asam & {id(p) for p in backbone["params"]}


def test_a_gated_net_trains_its_gates_and_logs_them(prepared, tmp_path):
    from sangal.train.reid import train_reid

    train_reid(cfg_for(prepared, tmp_path, "model.mode=san-gal", "model.asam_form=gated", "optim.head_lr_scale=10"))
    run = tmp_path / "reid" / "san-gal"
    logged = json.loads((run / "metrics.json").read_text())["train"]
    gates = [{k: v for k, v in entry.items() if k.startswith("asam_gate_")} for entry in logged]
    assert set(gates[0]) == {"asam_gate_layer2", "asam_gate_layer3", "asam_gate_layer4"}
    final = load_file(run / "checkpoints" / "final" / "model.safetensors")
    assert all(float(final[f"asam.gate.{k[len('asam_gate_'):]}"]) == v for k, v in gates[-1].items())
    assert all(v != 0.0 for v in gates[-1].values())  # trained away from the identity it started as
    state = json.loads((run / "checkpoints" / "final" / "state.json").read_text())
    assert state["arch"]["asam_form"] == "gated"


def test_resume_refuses_checkpoint_of_another_architecture(prepared, tmp_path):
    from sangal.train.reid import train_reid

    with pytest.raises(Stopped):
        train_reid(cfg_for(prepared, tmp_path, "model.mode=id"), stop_after_steps=1)
    with pytest.raises(CheckpointError, match="backbone resnet18 but the model has resnet34"):
        train_reid(cfg_for(prepared, tmp_path, "model.mode=id", "model.backbone=resnet34"), resume=True)


def test_stale_cache_is_refused(prepared, tmp_path):
    """A cache built from other attribute weights must not be used silently."""
    import shutil

    from sangal.models.attribute_net import AttributeNet
    from sangal.store.checkpoint import load_checkpoint, save_checkpoint
    from sangal.train.reid import train_reid

    ckpt_dir = tmp_path / "attr_copy"
    shutil.copytree(prepared["out"] / "attr" / "checkpoints" / "final", ckpt_dir)
    cfg = cfg_for(prepared, tmp_path, "model.mode=san-gal", f"train.attr_checkpoint={ckpt_dir}")
    ckpt = load_checkpoint(ckpt_dir)
    net = AttributeNet(ckpt.arch["attr_classes"], backbone="resnet18", pretrained=False)
    net.load_state_dict(ckpt.weights)
    with torch.no_grad():
        next(net.parameters()).add_(0.01)  # "retrained" attribute net
    save_checkpoint(ckpt_dir, net, ckpt.arch, {"epoch": 1})
    with pytest.raises(CacheError, match="(?i)checkpoint"):
        train_reid(cfg)


@pytest.mark.slow
def test_online_dual_trace_mode_trains_attribute_branch(prepared, tmp_path):
    from sangal.train.reid import train_reid

    cfg = cfg_for(prepared, tmp_path, "model.mode=san-gal", "train.aah=online", "train.epochs=1",
                  "train.max_steps_per_epoch=2")
    before = load_file(prepared["out"] / "attr/checkpoints/final/model.safetensors")
    train_reid(cfg)
    history = json.loads((tmp_path / "reid/san-gal/metrics.json").read_text())
    assert "attr_branch" in history["train"][-1]
    after = load_file(tmp_path / "reid/san-gal/checkpoints/final_attr_branch/model.safetensors")
    changed = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert changed, "the attribute branch should be updated by the joint (dual-trace) training"


def _labels_run(prepared) -> Path:
    """The out folder of one label-guided san-gal run of one epoch (trained once for the module)."""
    from sangal.train.reid import train_reid

    out = prepared["out"] / "labels-1-epoch"
    if not (out / "reid" / "san-gal" / "checkpoints" / "final").exists():
        train_reid(cfg_for(prepared, out, "model.mode=san-gal", "train.epochs=1"))
    return out


def _trained_apart(out: Path, other: Path) -> bool:
    """Whether the final san-gal weights of two runs differ (paired runs differ only where their maps do)."""
    a = load_file(out / "reid/san-gal/checkpoints/final/model.safetensors")
    b = load_file(other / "reid/san-gal/checkpoints/final/model.safetensors")
    return a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_every_training_map_mode_reads_the_one_train_cache(prepared, tmp_path):
    """train.aah_targets=predicted and labels read the same train cache (every class's maps: one exact pass), each
    its own class: the predicted maps follow the attribute net's predictions, the label-guided ones the labels."""
    from sangal.aah.classes import maps_for_mode
    from sangal.data import setup
    from sangal.store.paths import default_paths
    from sangal.train.maps import AAHSource
    from sangal.train.reid import train_reid

    cfg = cfg_for(prepared, tmp_path, "model.mode=san-gal", "train.aah_targets=predicted", "train.epochs=1")
    labelled = cfg_for(prepared, tmp_path, "model.mode=san-gal", "train.aah_targets=labels")
    dataset = setup.load_reid_dataset(cfg)
    labels = setup.attribute_targets(setup.load_attributes(cfg, dataset), dataset.train, "train")  # (N, K)
    sources = [AAHSource(c, dataset.train, labels, torch.device("cpu"), default_paths(c)) for c in (cfg, labelled)]
    assert sources[0].cache.path == sources[1].cache.path == prepared["caches"]["train"]
    batch = {"index": torch.arange(len(dataset.train))}
    predicted, guided = (source(batch, None, None)[0] for source in sources)
    every = sources[0].cache.class_maps(batch["index"])
    want = maps_for_mode(every, "select", every.predicted())
    assert all(torch.equal(p, w) for p, w in zip(predicted, want))
    assert not torch.equal(predicted[2], guided[2])  # some labels differ from the predictions
    train_reid(cfg)  # nothing to build first
    assert _trained_apart(tmp_path, _labels_run(prepared))  # same seed and batches: only the maps differ


@pytest.mark.slow
def test_soft_training_maps_are_read_off_every_class_and_test_maps_are_soft_too(prepared, tmp_path):
    """train.aah_targets=soft: one `classes` train cache; soft query/gallery maps; the checkpoint records it."""
    from sangal.aah.cache import AAHCache
    from sangal.aah.classes import maps_for_mode
    from sangal.aah.job import build_caches
    from sangal.evaluate.predictor import Predictor
    from sangal.train.reid import train_reid

    cfg = cfg_for(prepared, tmp_path, "model.mode=san-gal", "train.aah_targets=soft", "train.epochs=1")
    caches = build_caches(cfg)
    assert [caches[s].name for s in ("train", "query", "gallery")] == ["train_classes", "query_soft", "gallery_soft"]
    every = AAHCache.open_path(caches["train"]).class_maps([0, 1])
    assert every.maps[0].shape[1] == sum(every.sizes) == 56  # 26 two-class heads and the 4-class age
    assert torch.allclose(every.probs.sum(1), torch.tensor(27.0), atol=0.05)  # one distribution per head
    soft = maps_for_mode(every, "soft")
    assert soft[0].shape[1] == 27 and float(soft[0].amax()) <= 1.0 + 1e-6
    train_reid(cfg)
    assert _trained_apart(tmp_path, _labels_run(prepared))  # same seed and batches: only the maps differ
    predictor = Predictor.from_checkpoint(tmp_path / "reid/san-gal/checkpoints/final")
    assert predictor.spec.targets == "soft" and predictor.spec.mode("query") == "soft"


@pytest.mark.slow
def test_noisy_training_maps_need_a_held_out_confusion_and_draw_from_it(prepared, tmp_path):
    from sangal.aah.job import build_caches
    from sangal.errors import ConfigError
    from sangal.train.attr import train_attribute_net
    from sangal.train.reid import train_reid

    cfg = cfg_for(prepared, tmp_path / "a", "model.mode=san-gal", "train.aah_targets=noisy", "train.epochs=1")
    build_caches(cfg, splits=["train"])
    with pytest.raises(ConfigError, match="attr_train.holdout > 0"):
        train_reid(cfg)
    held = load_config(None, prepared["overrides"](prepared["root"], tmp_path / "b") + [
        "attr_train.holdout=0.25", "model.mode=san-gal", "train.aah_targets=noisy", "train.epochs=1"])
    train_attribute_net(held)
    build_caches(held)
    b = tmp_path / "b"
    labels = with_overrides(held, [f"out={tmp_path / 'labels'}", "train.aah_targets=labels",
                                   f"train.aah_cache={b / 'aah'}", f"train.attr_checkpoint={b / 'attr/checkpoints/final'}"])
    build_caches(labels, splits=["train"])
    train_reid(held)
    train_reid(labels)
    assert _trained_apart(tmp_path / "b", tmp_path / "labels")  # the noisy draws changed the maps trained on


def test_attention_guidance_trains_an_id_net_from_the_cache_and_tests_like_id(prepared, tmp_path):
    """loss.guide > 0 in mode id: the training maps are a loss target only. The run starts from id's weights, sees
    id's batches, logs the guide term, ends elsewhere than id, and its checkpoint is a plain id model."""
    from sangal.evaluate.predictor import Predictor
    from sangal.train.reid import train_reid

    plain_out, plain = default_run(prepared, "id")
    guided = train_reid(cfg_for(prepared, tmp_path / "guided", "model.mode=id", "loss.guide=1000"))
    assert guided["pairing"] == plain["pairing"]  # same initial weights, same batches
    history = json.loads((tmp_path / "guided/reid/id/metrics.json").read_text())
    assert all(e["guide"] > 0 for e in history["train"])
    assert "guide" not in json.loads((plain_out / "reid/id/metrics.json").read_text())["train"][0]
    a = load_file(plain_out / "reid/id/checkpoints/final/model.safetensors")
    b = load_file(tmp_path / "guided/reid/id/checkpoints/final/model.safetensors")
    assert a.keys() == b.keys()  # no extra parameters
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("backbone."))
    predictor = Predictor.from_checkpoint(tmp_path / "guided/reid/id/checkpoints/final")
    assert predictor.mode == "id" and predictor.attr_net is None  # test time costs what id costs


def test_attention_guidance_refuses_a_missing_cache(prepared, tmp_path):
    from sangal.train.reid import train_reid

    with pytest.raises((CacheError, CheckpointError)):
        train_reid(cfg_for(prepared, tmp_path, "model.mode=id", "loss.guide=1", f"train.aah_cache={tmp_path / 'none'}"))


def test_a_diverging_run_stops_in_one_line_without_a_non_finite_checkpoint(prepared, tmp_path):
    """Issue 29 case 7 (optim.lr=1e10, now refused by the range check; lr 10 all along diverges too, at epoch 7 of
    the tiny run; a 100-fold ID loss makes it epoch 3): training stops at the first non-finite loss (or weights)
    naming the step, writes no final checkpoint and no checkpoint of non-finite weights; the last one before it
    loads."""
    from sangal.errors import NonFiniteError
    from sangal.store.checkpoint import load_checkpoint
    from sangal.train.reid import train_reid

    cfg = cfg_for(prepared, tmp_path, "model.mode=id", "optim.lr=10", "optim.warmup_epochs=0", "optim.milestones=[]",
                  "optim.milestone_lrs=[]", "train.checkpoint_every=1", "train.epochs=8", "loss.id=100")
    with pytest.raises(NonFiniteError, match=r"^training stopped at epoch \d step \d: ") as err:
        train_reid(cfg)
    assert "\n" not in str(err.value)
    checkpoints = tmp_path / "reid" / "id" / "checkpoints"
    assert not (checkpoints / "final").exists()
    last = load_checkpoint(checkpoints / "last")  # hash-checked; the weights of the last finite step
    assert all(torch.isfinite(t).all() for t in last.weights.values() if t.is_floating_point())


def test_attribute_guided_pooling_trains_and_reloads_through_the_predictor(prepared, tmp_path):
    from sangal.evaluate.predictor import Predictor
    from sangal.train.reid import train_reid

    metrics = train_reid(cfg_for(prepared, tmp_path, "model.mode=san-gal", "model.attr_pool=true"))
    assert metrics["num_valid_queries"] > 0
    predictor = Predictor.from_checkpoint(tmp_path / "reid/san-gal/checkpoints/final",
                                          prepared["out"] / "attr" / "checkpoints" / "final")
    assert predictor.reid.attr_pool and predictor.reid.feature_dim == 2 * 512
    with pytest.raises(ConfigError, match="attr_pool"):
        cfg_for(prepared, tmp_path / "x", "model.mode=id", "model.attr_pool=true")
