"""What a Re-ID checkpoint records: finding its attribute checkpoint after the run folder moved."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from sangal.errors import CheckpointError
from sangal.store.checkpoint import MODEL_FILE, Checkpoint
from sangal.store.reid_info import find_attribute_checkpoint, run_folder


def _study(root: Path, weights: bytes = b"attr weights") -> tuple[Path, Path]:
    """A study folder as `sangal study` lays it out: <root>/attr/... and <root>/runs/v/seed0/reid/san-gal/..."""
    attr = root / "attr" / "checkpoints" / "final"
    attr.mkdir(parents=True)
    (attr / MODEL_FILE).write_bytes(weights)
    reid = root / "runs" / "v" / "seed0" / "reid" / "san-gal" / "checkpoints" / "final"
    reid.mkdir(parents=True)
    return attr, reid


def _ckpt(path: Path, out: Path, attr: Path, sha: str | None = None) -> Checkpoint:
    state = {"config": {"out": str(out)}, "attr_checkpoint": str(attr)}
    if sha:
        state["attr_checkpoint_sha256"] = sha
    return Checkpoint(path, {"kind": "reid", "mode": "san-gal"}, state, {})


def test_the_run_folder_of_a_checkpoint(tmp_path: Path) -> None:
    _, reid = _study(tmp_path)
    assert run_folder(_ckpt(reid, tmp_path, tmp_path)) == (tmp_path / "runs" / "v" / "seed0").resolve()
    assert run_folder(_ckpt(tmp_path, tmp_path, tmp_path)) is None  # not inside <out>/reid/<mode>/checkpoints


def test_a_copied_study_uses_its_own_attribute_checkpoint(tmp_path: Path) -> None:
    attr, reid = _study(tmp_path / "a")
    ckpt_out = tmp_path / "a" / "runs" / "v" / "seed0"
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copied = _ckpt(Path(str(reid).replace("/a/", "/b/")), ckpt_out, attr)
    assert find_attribute_checkpoint(copied) == (tmp_path / "b" / "attr" / "checkpoints" / "final").resolve()
    assert find_attribute_checkpoint(_ckpt(reid, ckpt_out, attr)).resolve() == attr.resolve()


def test_relative_records_resolve_from_the_new_place(tmp_path: Path) -> None:
    attr, reid = _study(tmp_path / "moved")  # trained as runs/demo/..., with relative paths
    ckpt = _ckpt(reid, Path("runs/demo/runs/v/seed0"), Path("runs/demo/attr/checkpoints/final"))
    assert find_attribute_checkpoint(ckpt).resolve() == attr.resolve()


def test_other_weights_at_the_recorded_place_are_passed_over(tmp_path: Path) -> None:
    attr, reid = _study(tmp_path / "a")
    sha = hashlib.sha256(b"attr weights").hexdigest()
    elsewhere = tmp_path / "retrained"
    elsewhere.mkdir()
    (elsewhere / MODEL_FILE).write_bytes(b"retrained weights")
    ckpt = _ckpt(reid, tmp_path / "old" / "runs" / "v" / "seed0", elsewhere, sha)  # relpath lands nowhere
    with pytest.raises(CheckpointError, match=r"retrained \(other weights than training used\)"):
        find_attribute_checkpoint(ckpt)
    ckpt = _ckpt(reid, tmp_path / "x" / "runs" / "v" / "seed0", tmp_path / "x" / "attr" / "checkpoints" / "final",
                 sha)
    assert find_attribute_checkpoint(ckpt).resolve() == attr.resolve()  # the one with the recorded weights


def test_the_error_names_every_place_it_looked(tmp_path: Path) -> None:
    attr, reid = _study(tmp_path / "a")
    shutil.rmtree(tmp_path / "a" / "attr")
    gone = tmp_path / "gone" / "attr" / "checkpoints" / "final"
    ckpt = _ckpt(reid, tmp_path / "gone" / "runs" / "v" / "seed0", gone)
    with pytest.raises(CheckpointError) as err:
        find_attribute_checkpoint(ckpt)
    message = str(err.value)
    assert f"{attr.resolve()} (missing)" in message and f"{gone} (missing)" in message
    assert "--attr-checkpoint" in message
    with pytest.raises(CheckpointError, match="does not exist"):
        find_attribute_checkpoint(ckpt, given=tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="records no attribute checkpoint"):
        find_attribute_checkpoint(Checkpoint(reid, {}, {}, {}))
