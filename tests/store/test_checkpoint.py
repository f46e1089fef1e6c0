"""Checkpoint directories: exact round trip, resume equivalence, refusals, atomicity."""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sangal.errors import CheckpointError
from sangal.store import checkpoint as ck
from sangal.store import files as storage

REID_ARCH = {"kind": "reid", "backbone": "resnet18", "last_stride": 1, "num_ids": 5,
             "attr_classes": [2, 3], "mode": "id+attr", "extra_sigmoid": False,
             "dataset": "market1501", "colour_mode": "binary", "height": 64, "width": 32}
ATTR_ARCH = {"kind": "attribute", "backbone": "resnet18", "last_stride": 1, "attr_classes": [2, 3],
             "dataset": "market1501", "colour_mode": "binary", "height": 64, "width": 32}


@pytest.fixture()
def reid_model() -> nn.Module:
    torch.manual_seed(0)
    return ck.build_model(REID_ARCH)


def _small_net() -> nn.Module:
    """Conv-BN-ReLU-pool-FC: parameters, BN buffers and momentum state, at a tiny cost."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 16, 8, generator=g)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_an_optimizer_without_state_round_trips(tmp_path: Path) -> None:
    """SGD without momentum keeps no per-parameter state: its checkpoint file is empty, and must still load."""
    model = _small_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _train_step(model, optimizer, seed=0)  # a step, and still no state to store
    path = ck.save_checkpoint(tmp_path / "ckpt", model, {"kind": "reid"}, {"epoch": 1}, optimizer=optimizer)
    loaded = ck.load_checkpoint(path)
    assert loaded.optimizer_tensors == {}
    again = torch.optim.SGD(model.parameters(), lr=0.5)
    ck.restore_optimizer(again, loaded)
    assert again.param_groups[0]["lr"] == 0.1


def test_round_trip_is_exact(tmp_path: Path, reid_model: nn.Module) -> None:
    state = {"epoch": 3, "step": 120, "config": {"lr": 0.1, "size": (64, 32)},
             "scheduler": {"milestones": Counter({30: 1, 60: 1}), "by_id": {1: "a"}}}
    path = ck.save_checkpoint(tmp_path / "ckpt", reid_model, REID_ARCH, state)
    loaded = ck.load_checkpoint(path, expected_kind="reid")
    expected = reid_model.state_dict()
    assert loaded.weights.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded.weights[key], value), key
    assert loaded.arch == REID_ARCH
    assert loaded.optimizer_tensors is None
    assert loaded.state["epoch"] == 3 and loaded.state["step"] == 120
    assert loaded.state["config"]["size"] == (64, 32)  # tuples survive
    assert loaded.state["scheduler"]["milestones"] == Counter({30: 1, 60: 1})  # int keys survive
    assert loaded.state["scheduler"]["by_id"] == {1: "a"}
    for key in ("git_commit", "sangal_version", "created", "rng", "model_sha256"):
        assert key in loaded.state
    assert loaded.state["model_sha256"] == ck.file_sha256(path / ck.MODEL_FILE)

    model, _ = ck.load_model(path, expected_kind="reid")
    assert not model.training
    reid_model.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(model(x).features, reid_model(x).features)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.8, 0.99)),
], ids=["sgd_momentum", "adam"])
def test_resumed_step_matches_uninterrupted(tmp_path: Path, make_opt) -> None:
    torch.manual_seed(0)
    model = _small_net().train()
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.5)
    for seed in (1, 2):
        _train_step(model, opt, seed)
        sched.step()
    ck.save_checkpoint(tmp_path / "last", model, REID_ARCH,
                       {"epoch": 0, "step": 2, "scheduler": sched.state_dict()}, optimizer=opt)
    _train_step(model, opt, seed=3)  # the uninterrupted run
    ckpt = ck.load_checkpoint(tmp_path / "last")
    torch.manual_seed(1)
    resumed = _small_net().train()
    ck.load_weights(resumed, ckpt, REID_ARCH)
    opt2 = make_opt(resumed.parameters())
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[1, 3], gamma=0.5)
    ck.restore_optimizer(opt2, ckpt)
    sched2.load_state_dict(ckpt.state["scheduler"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert sched2.milestones == sched.milestones
    _train_step(resumed, opt2, seed=3)
    after, expected = resumed.state_dict(), model.state_dict()
    for key in expected:
        assert torch.equal(after[key], expected[key]), key


def test_restore_optimizer_needs_saved_state(tmp_path: Path, reid_model: nn.Module) -> None:
    ck.save_checkpoint(tmp_path / "c", reid_model, REID_ARCH, {})
    opt = torch.optim.SGD(reid_model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        ck.restore_optimizer(opt, ck.load_checkpoint(tmp_path / "c"))


def test_rng_restore_reproduces_draws(tmp_path: Path) -> None:
    rng = ck.capture_rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    ck.restore_rng_state(rng)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first
    # and through state.json
    model = nn.Linear(2, 2)
    saved = ck.capture_rng_state()
    ck.save_checkpoint(tmp_path / "c", model, ATTR_ARCH, {"rng": saved})
    second = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    ck.restore_rng_state(json.loads(json.dumps(ck.load_checkpoint(tmp_path / "c").state["rng"])))
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == second
    assert second != first


def test_wrong_architecture_is_refused(tmp_path: Path, reid_model: nn.Module) -> None:
    path = ck.save_checkpoint(tmp_path / "runs" / "last", reid_model, REID_ARCH, {})
    with pytest.raises(CheckpointError, match="kind reid, expected attribute"):
        ck.load_checkpoint(path, expected_kind="attribute")
    ckpt = ck.load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"last has backbone resnet18 but the model has resnet34"):
        ck.load_weights(reid_model, ckpt, {**REID_ARCH, "backbone": "resnet34"})
    with pytest.raises(CheckpointError, match="num_ids 5 but the model has 7"):
        ck.load_weights(reid_model, ckpt, {**REID_ARCH, "num_ids": 7})
    with pytest.raises(CheckpointError, match="kind reid, expected attribute"):
        ck.load_weights(reid_model, ckpt, ATTR_ARCH)
    # arch agrees but the tensors do not: keys and shapes are named
    ckpt.weights.pop("classifier.weight")
    ckpt.weights["bottleneck.weight"] = torch.zeros(7)
    ckpt.weights["extra.bias"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        ck.load_weights(reid_model, ckpt, REID_ARCH)
    msg = str(err.value)
    assert "model.safetensors" in msg and "classifier.weight" in msg
    assert "extra.bias" in msg and "bottleneck.weight (7,) vs (512,)" in msg


def test_corrupt_or_missing_files_name_the_file(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    path = ck.save_checkpoint(tmp_path / "c", model, ATTR_ARCH, {})
    weights = path / ck.MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .* differs from the .* recorded"):
        ck.load_checkpoint(path)
    (path / ck.STATE_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state\.json is not valid JSON"):
        ck.load_checkpoint(path)
    (path / ck.STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"state\.json is missing"):
        ck.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nowhere")


def _flip(path: Path, offset: int) -> None:
    """Invert one byte in place, keeping the size and the modification time."""
    time.sleep(0.02)  # file timestamps tick in jiffies (a few ms): let the change get a later ctime
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("name", [ck.MODEL_FILE, ck.OPTIMIZER_FILE])
def test_a_flipped_byte_in_a_weight_file_is_refused(tmp_path: Path, name: str) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = ck.save_checkpoint(tmp_path / "c", model, ATTR_ARCH, {}, optimizer=opt)
    ck.load_checkpoint(path)  # verified once: its digest is cached by file stat
    _flip(path / name, -3)  # a weight's last bytes: safetensors itself would read it without complaint
    with pytest.raises(CheckpointError, match=rf"{name}: sha256 .* differs .* restore the checkpoint"):
        ck.load_checkpoint(path)


def test_an_edited_state_json_is_refused_and_an_unhashed_old_one_loads(tmp_path: Path) -> None:
    path = ck.save_checkpoint(tmp_path / "c", nn.Linear(3, 2), ATTR_ARCH, {"epoch": 3})
    doc = json.loads((path / ck.STATE_FILE).read_text())
    (path / ck.STATE_FILE).write_text(json.dumps({**doc, "epoch": 7}))
    with pytest.raises(CheckpointError, match=r"state\.json: its content does not match the sha256"):
        ck.load_checkpoint(path)
    old = {k: v for k, v in doc.items() if k not in ("document_sha256", "model_sha256")}  # as older versions wrote
    (path / ck.STATE_FILE).write_text(json.dumps({**old, "epoch": 7}))
    assert ck.load_checkpoint(path).state["epoch"] == 7


def test_shared_tensors_are_stored_once(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(4, 4)
            self.dec = nn.Linear(4, 4)
            self.dec.weight = self.enc.weight

    model = Tied()
    ckpt = ck.load_checkpoint(ck.save_checkpoint(tmp_path / "c", model, ATTR_ARCH, {}))
    assert ckpt.weights.keys() == model.state_dict().keys()
    assert torch.equal(ckpt.weights["dec.weight"], model.enc.weight.detach())
    Tied().load_state_dict(ckpt.weights, strict=True)


def _linear_with(value: float) -> nn.Module:
    model = nn.Linear(2, 2)
    nn.init.constant_(model.weight, value)
    return model


def test_existing_checkpoint_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last"
    ck.save_checkpoint(target, _linear_with(1.0), ATTR_ARCH, {"step": 1})
    ck.save_checkpoint(target, _linear_with(2.0), ATTR_ARCH, {"step": 2})
    ckpt = ck.load_checkpoint(target)
    assert ckpt.state["step"] == 2 and float(ckpt.weights["weight"][0, 0]) == 2.0
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]


def _failing_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the optimizer file write fail after model.safetensors has been written."""
    real = ck.save_safetensors

    def save(path, tensors, metadata):
        if path.name == ck.OPTIMIZER_FILE:
            path.write_bytes(b"half a file")
            raise OSError("disk full (simulated)")
        real(path, tensors, metadata)

    monkeypatch.setattr(ck, "save_safetensors", save)


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    ck.save_checkpoint(run / "checkpoints" / "last", _linear_with(1.0), ATTR_ARCH, {"step": 1})
    _failing_save(monkeypatch)
    model = _linear_with(2.0)
    with pytest.raises(OSError, match="simulated"):
        ck.save_checkpoint(run / "checkpoints" / "last", model, ATTR_ARCH, {"step": 2},
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    ckpt = ck.load_checkpoint(run / "checkpoints" / "last")
    assert ckpt.state["step"] == 1 and float(ckpt.weights["weight"][0, 0]) == 1.0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last"]  # temp dir cleaned up


def test_killed_save_leaves_temp_dir_that_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    ck.save_checkpoint(run / "checkpoints" / "epoch_001", _linear_with(1.0), ATTR_ARCH, {"epoch": 1, "step": 10})
    _failing_save(monkeypatch)
    monkeypatch.setattr(storage, "_remove_tree", lambda path: None)  # killed: no clean-up runs
    model = _linear_with(2.0)
    with pytest.raises(OSError):
        ck.save_checkpoint(run / "checkpoints" / "epoch_002", model, ATTR_ARCH, {"epoch": 2, "step": 20},
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".epoch_002.tmp-")]
    assert len(leftovers) == 1
    assert not (run / "checkpoints" / "epoch_002").exists()
    assert ck.latest_checkpoint(run) == run / "checkpoints" / "epoch_001"
    monkeypatch.undo()
    ck.save_checkpoint(run / "checkpoints" / "epoch_002", _linear_with(2.0), ATTR_ARCH, {"epoch": 2, "step": 20})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001", "epoch_002"]
    assert ck.latest_checkpoint(run) == run / "checkpoints" / "epoch_002"


def test_latest_checkpoint_orders_by_step(tmp_path: Path) -> None:
    assert ck.latest_checkpoint(tmp_path) is None
    folder = tmp_path / "checkpoints"
    for name, step in (("epoch_002", 20), ("step_000015", 15), ("epoch_001", 10)):
        ck.save_checkpoint(folder / name, _linear_with(0.0), ATTR_ARCH, {"step": step})
    ck.save_checkpoint(folder / "last_attr_branch", _linear_with(0.0), ATTR_ARCH, {"step": 99})
    (folder / "step_000030").mkdir()  # incomplete: no weights
    assert ck.latest_checkpoint(tmp_path) == folder / "epoch_002"


def test_interrupted_replacement_is_recovered(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last"
    ck.save_checkpoint(target, _linear_with(3.0), ATTR_ARCH, {"step": 5})
    target.rename(target.with_name(".last.old-deadbeef"))  # crash between the two renames
    assert ck.latest_checkpoint(tmp_path) == target
    assert float(ck.load_checkpoint(target).weights["weight"][0, 0]) == 3.0


def test_build_model_kinds() -> None:
    from sangal.models.attribute_net import AttributeNet
    from sangal.models.reid_net import ReIDNet

    assert isinstance(ck.build_model(ATTR_ARCH), AttributeNet)
    net = ck.build_model({**REID_ARCH, "mode": "id", "attr_classes": []})
    assert isinstance(net, ReIDNet) and net.mode == "id"
    from sangal.errors import ConfigError

    with pytest.raises(ConfigError, match="kind"):
        ck.build_model({"kind": "segmenter"})


@pytest.mark.parametrize("form", ["gated", "mixed"])
def test_learned_asam_forms_round_trip_and_a_form_mismatch_is_refused(tmp_path: Path, form: str) -> None:
    arch = {**REID_ARCH, "mode": "san-gal", "asam_form": form}
    torch.manual_seed(0)
    model = ck.build_model(arch).eval()
    with torch.no_grad():
        for p in model.asam.parameters():
            p.normal_()  # trained gates, not the zeros of a fresh net
    path = ck.save_checkpoint(tmp_path / "ckpt", model, model.arch_dict(), {})
    loaded, ckpt = ck.load_model(path, expected_kind="reid")
    assert loaded.asam_form == form and ckpt.arch["asam_form"] == form
    learned = [k for k in ckpt.weights if k.startswith("asam.")]
    assert len(learned) == 3 and all(torch.equal(ckpt.weights[k], model.state_dict()[k]) for k in learned)
    x = torch.randn(2, 3, 64, 32)
    maps = [torch.rand(2, 2, h, w) for h, w in ((8, 4), (4, 2), (4, 2))]
    with torch.no_grad():
        assert torch.equal(loaded(x, maps).features, model(x, maps).features)
    with pytest.raises(CheckpointError, match=f"asam_form {form} but the model has paper"):
        ck.load_weights(model, ckpt, {**arch, "asam_form": "paper"})


def test_a_checkpoint_written_before_asam_form_means_the_paper_form(tmp_path: Path) -> None:
    legacy = {**REID_ARCH, "mode": "san-gal"}  # no asam_form key, as every checkpoint before it
    torch.manual_seed(0)
    path = ck.save_checkpoint(tmp_path / "ckpt", ck.build_model(legacy), legacy, {})
    model, ckpt = ck.load_model(path)
    assert "asam_form" not in ckpt.arch and model.asam_form == "paper"
    ck.load_weights(model, ckpt, {**legacy, "asam_form": "paper"})  # today's arch of the same net fits
    gated = ck.build_model({**legacy, "asam_form": "gated"})
    with pytest.raises(CheckpointError, match="asam_form paper but the model has gated"):
        ck.load_weights(gated, ckpt, gated.arch_dict())


def test_extra_tensors_round_trip_exactly(tmp_path: Path, reid_model: nn.Module) -> None:
    """Named tensors beside the weights (a weight EMA's shadow): stored bit for bit, absent when not given."""
    extra = {"ema.a": torch.randn(3, 4, dtype=torch.float32), "ema.b": torch.randn(2, 3, 5, 5)[:, :, ::2]}
    path = ck.save_checkpoint(tmp_path / "with", reid_model, REID_ARCH, {"epoch": 0}, extra=extra)
    loaded = ck.load_checkpoint(path).extra_tensors
    assert loaded is not None and set(loaded) == set(extra)
    for name, tensor in extra.items():
        assert torch.equal(loaded[name], tensor), name
    plain = ck.save_checkpoint(tmp_path / "without", reid_model, REID_ARCH, {"epoch": 0})
    assert ck.load_checkpoint(plain).extra_tensors is None and not (plain / ck.EXTRA_FILE).exists()
    data = bytearray((path / ck.EXTRA_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / ck.EXTRA_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"extra\.safetensors"):  # its sha256 is checked like the others'
        ck.load_checkpoint(path)
