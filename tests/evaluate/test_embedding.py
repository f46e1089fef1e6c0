"""The test-time record: built from the config, written and read back, the legacy default, damaged records refused."""

from __future__ import annotations

import pytest
import torch

from sangal.aah.spec import MapSpec
from sangal.config import load_config
from sangal.errors import CheckpointError
from sangal.evaluate.embedding import LEGACY_FLIP, EmbedSpec
from sangal.models.reid_net import ReIDNet
from sangal.store.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> ReIDNet:
    torch.manual_seed(0)
    return ReIDNet(3, None, mode="id", backbone="resnet18", pretrained=False).eval()


def _saved(net, folder, state) -> object:
    return load_checkpoint(save_checkpoint(folder, net, {**net.arch_dict(), "height": 64, "width": 32}, state))


def test_the_record_a_config_trains_round_trips_through_a_checkpoint(net, tmp_path) -> None:
    cfg = load_config(None, ["eval.flip=false", "eval.aah=fast", "train.aah_targets=agnostic", "data.height=64",
                             "data.width=32"])
    record = EmbedSpec.from_config(cfg)
    assert record == EmbedSpec(MapSpec.from_config(cfg), False, 64, 32) and record.size == (64, 32)
    assert EmbedSpec.from_checkpoint(_saved(net, tmp_path / "c", {"embed_spec": record.to_dict()})) == record
    assert record.with_method("exact").maps.method == "exact" and record.with_method(None) == record
    assert record.differences(record.with_method("exact"), allowed=("method",)) == []
    assert record.differences(EmbedSpec(record.maps, True, 64, 32)) == ["flip=True (recorded: False)"]


@pytest.mark.parametrize(("config", "flip"), [({"eval": {"flip": False}}, False), ({}, LEGACY_FLIP), (None, True)])
def test_a_checkpoint_without_a_record_embeds_as_its_training_config_evaluated(net, tmp_path, config, flip) -> None:
    """Legacy default: its map spec and arch size, and the flip its training config evaluated with (else on)."""
    state = {"map_spec": MapSpec("agnostic").to_dict()} | ({} if config is None else {"config": config})
    record = EmbedSpec.from_checkpoint(_saved(net, tmp_path / "c", state))
    assert record == EmbedSpec(MapSpec("agnostic"), flip, 64, 32)


@pytest.mark.parametrize(("record", "message"), [
    ({"flip": True, "height": 64, "width": 32}, "is not a test-time record"),
    ({"map_spec": {}, "flip": "yes", "height": 64, "width": 32}, "flip must be true or false"),
    ({"map_spec": {}, "flip": True, "height": 128, "width": 32}, "not the 64x32 its arch records"),
])
def test_a_damaged_record_is_refused_in_one_line(net, tmp_path, record, message) -> None:
    ckpt = _saved(net, tmp_path / "c", {"embed_spec": record})
    with pytest.raises(CheckpointError, match=message) as info:
        EmbedSpec.from_checkpoint(ckpt)
    assert str(tmp_path / "c") in str(info.value) and "\n" not in str(info.value)
