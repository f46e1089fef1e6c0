"""The distilled fast-map network on disk (aah.fast_map_files): its record binds the file, loading refuses a
changed one or one without it."""

from __future__ import annotations

import json

import pytest
import torch

from sangal.aah.fast_map_files import FAST_MAP_NET_FILE, FAST_MAP_NET_RECORD, load_fast_map_net, save_fast_map_net
from sangal.errors import CheckpointError
from sangal.models.attribute_net import AttributeNet
from sangal.models.fast_map_net import FastMapNet
from sangal.store.checkpoint import save_checkpoint

CLASSES = [2, 2, 3]


@pytest.fixture
def attr_dir(tmp_path):
    torch.manual_seed(0)
    net = AttributeNet(CLASSES, backbone="resnet18", pretrained=False).eval()
    directory = save_checkpoint(tmp_path / "attr", net, {**net.arch_dict(), "height": 64, "width": 32}, {})
    save_fast_map_net(directory, FastMapNet(net.backbone.channels[1:3], sum(CLASSES), hidden=4), {})
    return directory


def test_a_saved_fast_map_net_loads_and_a_flipped_byte_is_refused(attr_dir):
    record = json.loads((attr_dir / FAST_MAP_NET_RECORD).read_text())
    assert record["file"] == FAST_MAP_NET_FILE and len(record["sha256"]) == 64
    assert load_fast_map_net(attr_dir).meta["config"]["hidden"] == 4
    path = attr_dir / FAST_MAP_NET_FILE
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x40  # a weight's byte: safetensors would load it without complaint
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{FAST_MAP_NET_FILE}: sha256 .* differs .*sangal distill"):
        load_fast_map_net(attr_dir)
    (attr_dir / FAST_MAP_NET_RECORD).unlink()  # without its record nothing says the bytes are the ones written
    with pytest.raises(CheckpointError,
                       match=rf"{FAST_MAP_NET_RECORD} is missing.*{FAST_MAP_NET_FILE}.*sangal distill"):
        load_fast_map_net(attr_dir)
