"""Files written before the package re-layout still load: checkpoints, the AAH cache and study.json.

The fixture ``tests/fixtures/legacy`` was written by commit 42326b3 (``written_by_42326b3.py``). Its
checkpoints carry no ``model.safetensors`` (45 MB each): the weights follow a fixed integer rule
(``weights.py``), so this test writes the file again with today's model classes and checks that its
sha256 equals the ``model_sha256`` the old code recorded: same keys, shapes, dtypes, values and
metadata, byte for byte. Then today's loaders read the old directories, and today's Grad-CAM
reproduces the maps the old cache holds.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sangal.aah.cache import AAHCache
from sangal.aah.gradcam import attribute_heatmaps
from sangal.aah.spec import Targets
from sangal.data import ImageDataset, build_transforms
from sangal.data.records import ImageRecord
from sangal.errors import CacheError
from sangal.experiments.study import format_study, markdown_study
from sangal.models.arch import build_model
from sangal.store.checkpoint import MODEL_FILE, STATE_FILE, _dedupe_shared, load_model
from sangal.store.files import file_sha256, save_safetensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
STUDY = LEGACY / "study.json"  # the hypothesis study of 2026-12-02, written by 42326b3


def _fill_deterministic():
    spec = importlib.util.spec_from_file_location("legacy_weights", LEGACY / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill_deterministic


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    """A copy of the fixture with both weight files written again by today's code."""
    root = tmp_path_factory.mktemp("legacy") / "legacy"
    shutil.copytree(LEGACY, root)
    fill = _fill_deterministic()
    for kind in ("attr", "reid"):
        ckpt = root / kind / "checkpoints" / "final"
        state = json.loads((ckpt / STATE_FILE).read_text())
        model = fill(build_model(state["arch"]))
        weights, aliases = _dedupe_shared(model.state_dict())
        save_safetensors(ckpt / MODEL_FILE, weights, {"aliases": json.dumps(aliases)})
    return root


@pytest.mark.parametrize("kind", ["attr", "reid"])
def test_todays_model_writes_the_legacy_weight_file_byte_for_byte(legacy: Path, kind: str) -> None:
    ckpt = legacy / kind / "checkpoints" / "final"
    recorded = json.loads((ckpt / STATE_FILE).read_text())["model_sha256"]
    assert file_sha256(ckpt / MODEL_FILE) == recorded


def test_legacy_checkpoints_load(legacy: Path) -> None:
    attr, attr_ckpt = load_model(legacy / "attr" / "checkpoints" / "final", expected_kind="attribute")
    reid, reid_ckpt = load_model(legacy / "reid" / "checkpoints" / "final", expected_kind="reid")
    assert attr_ckpt.state["sangal_version"] == "0.1.0" and attr_ckpt.state["git_commit"].startswith("42326b3")
    assert attr.num_attributes == 27 and reid.mode == "san-gal" and reid.num_ids == 2
    assert reid_ckpt.state["config"]["train"]["aah_targets"] == "labels"
    x = torch.zeros(1, 3, 64, 32)
    maps = [torch.zeros(1, 27, 8, 4), torch.zeros(1, 27, 4, 2), torch.zeros(1, 27, 4, 2)]
    assert reid(x, maps).features.shape == (1, 512)


def _records(root: Path) -> list[ImageRecord]:
    return [ImageRecord(path, pid=0, camid=0, raw_pid=int(path.name[:4]))
            for path in sorted((root / "images").glob("*.jpg"))]


def test_legacy_aah_cache_opens_with_every_check_and_todays_gradcam_reproduces_it(legacy: Path) -> None:
    attr_dir = legacy / "attr" / "checkpoints" / "final"
    labels = np.load(legacy / "aah_labels.npy")
    records = _records(legacy)
    # its precision is provenance there ({"bf16_autocast": false, ...}): read as the float32 it was computed in
    cache = AAHCache.open_path(legacy / "aah" / "train", attr_ckpt_dir=attr_dir, records=records, height=64, width=32,
                               targets=Targets("labels", labels), normalize="max", method="exact", precision="float32")
    assert len(cache) == 6 and cache.schema_names[0] == "gender"
    with pytest.raises(CacheError, match="computed in float32, not bf16"):
        AAHCache.open_path(legacy / "aah" / "train", precision="bf16")
    net, _ = load_model(attr_dir, expected_kind="attribute")
    images = torch.stack([ImageDataset(records, build_transforms(64, 32, train=False))[i]["image"]
                          for i in range(len(records))])
    now = attribute_heatmaps(net, images, torch.from_numpy(labels), normalize="max")
    for stage, (old, new) in enumerate(zip(cache.get(range(len(records))), now)):
        assert old.shape == new.shape, stage
        torch.testing.assert_close(new.float(), old, atol=2e-3, rtol=0)  # float16 storage
        assert float(old.max()) == pytest.approx(1.0, abs=1e-3)  # not an all-zero cache


def test_legacy_aah_cache_is_still_refused_when_stale(legacy: Path, tmp_path: Path) -> None:
    attr_dir = tmp_path / "attr"
    shutil.copytree(legacy / "attr" / "checkpoints" / "final", attr_dir)
    with open(attr_dir / MODEL_FILE, "r+b") as f:  # another attribute net: one byte of the weights changed
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(CacheError, match="is stale"):
        AAHCache.open_path(legacy / "aah" / "train", attr_ckpt_dir=attr_dir)


def test_a_study_json_written_before_the_move_still_reads() -> None:
    doc = json.loads(STUDY.read_text())
    table = format_study(doc)
    assert "san-gal, predicted-class maps" in table and "id" in table
    assert "| variant |" in markdown_study(doc)


def test_a_legacy_re_id_checkpoint_reads_its_map_spec_with_a_precision() -> None:
    """Written before map_spec existed, and before the precision joined it: both read from its config."""
    from sangal.aah.spec import MapSpec

    state = json.loads((LEGACY / "reid" / "checkpoints" / "final" / STATE_FILE).read_text())
    assert "map_spec" not in state and state["config"]["train"]["amp"] is False
    assert MapSpec.from_state(state) == MapSpec("labels", "exact", "max", "float32")


def test_legacy_checkpoint_and_index_give_their_test_time_record(legacy: Path) -> None:
    """Written before the record (no ``embed_spec``): a checkpoint embeds with its config's map spec and eval.flip at
    its arch's size; an index with its checkpoint's record, its own map method (``aah``) and flip (always on)."""
    from dataclasses import replace

    from sangal.aah.spec import MapSpec
    from sangal.evaluate.embedding import EmbedSpec
    from sangal.store.checkpoint import load_checkpoint

    ckpt = load_checkpoint(legacy / "reid" / "checkpoints" / "final")
    assert "embed_spec" not in ckpt.state and ckpt.state["config"]["eval"]["flip"] is True
    recorded = EmbedSpec.from_checkpoint(ckpt)
    assert recorded == EmbedSpec(MapSpec("labels", "exact", "max"), True, 64, 32)
    unflipped = EmbedSpec.from_checkpoint(replace(ckpt, state={**ckpt.state, "config": {"eval": {"flip": False}}}))
    assert unflipped.flip is False  # the flip its training evaluated with, not a constant
    old_index = {"features": {"flip": True, "normalized": True, "metric": "cosine"}, "aah": "fast",
                 "map_spec": recorded.maps.to_dict()}
    def from_index(meta: dict) -> EmbedSpec:
        return EmbedSpec.from_index(meta, unflipped, "index/meta.json")

    assert from_index(old_index) == EmbedSpec(MapSpec("labels", "fast", "max"), True, 64, 32)
    assert from_index({}) == EmbedSpec(MapSpec("labels", "exact", "max"), True, 64, 32)
    assert from_index({"embed_spec": recorded.to_dict()}) == recorded
