"""The demo pipeline: a tiny end-to-end paired study with its study.json and report, then the README's
"What next" commands (export, index, search) run exactly as written on its output."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from sangal.cli import main
from sangal.config.schema import available_cores
from sangal.data import build_transforms, read_image
from sangal.experiments.demo import VARIANTS, DemoPlan, run_demo
from sangal.experiments.demo_deploy import BEST_LINK, QUERY_FILE
from sangal.experiments.demo_report import paired_rows, table_rows
from sangal.evaluate.predictor import Predictor
from sangal.store.checkpoint import load_checkpoint
from sangal.store.reid_info import find_attribute_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).resolve().parents[2] / "README.md"
TINY = DemoPlan(ids=12, cams=3, images_per_cam=2, height=64, width=32, attr_epochs=1, epochs=1, p=4, k=2,
                seeds=2, steps_per_epoch=2)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory, one_torch_thread) -> dict:
    """A tiny demo in <root>/runs/demo, so the README's relative paths hold with <root> as the working folder."""
    root = tmp_path_factory.mktemp("clone")
    result = run_demo(root / "runs" / "demo", plan=TINY)
    return {"root": root, "out": root / "runs" / "demo", "result": result}


def what_next_commands() -> list[list[str]]:
    """The command lines of the README's "What next" code block."""
    section = README.read_text(encoding="utf-8").split("\n## What next\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_study_rows_convert_percent_to_report_fractions():
    doc = {"variants": {"id": {"seeds": [{"seed": 0, "rank1": 50.0}, {"seed": 1, "rank1": 70.0}],
                               "mean": {"rank1": 60.0}, "std": {"rank1": 14.142}}},
           "paired": {"san-gal": {"rank1": {"diff": 2.0, "ci95": [-1.0, 5.0], "n": 2},
                                  "rank5": {"diff": 1.0, "ci95": [0.0, 2.0], "n": 2}}},
           "attributes": {"mA": 90.0}}
    rows = table_rows(doc)
    assert rows[0]["rank1"] == pytest.approx(0.6) and rows[0]["rank1_std"] == pytest.approx(0.14142)
    assert rows[0]["attr_mA"] is None and rows[-1] == {**rows[-1], "variant": "attribute net", "attr_mA": 0.9}
    assert paired_rows(doc) == [{"variant": "san-gal", "metric": "rank1", "diff": 2.0, "ci95": [-1.0, 5.0], "n": 2}]


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end(tiny_demo):
    result = tiny_demo["result"]
    doc = json.loads((tiny_demo["out"] / "study.json").read_text())
    assert doc["complete"] and set(doc["variants"]) == {v.name for v in VARIANTS}
    assert set(doc["paired"]) == {v.name for v in VARIANTS} - {"id"}
    assert all(p == {"init_equal": True, "batches_equal": True} for p in doc["pairing"].values())
    # the instrument's diagnostics of the san-gal row: step 0, and the leak check, which lists the default row
    # as not applicable (its training maps follow no class)
    assert doc["leak"]["seeds"] == [0, 1] and doc["leak"]["not_applicable"] == ["san-gal"]
    assert [r["init_equal_to_run"] for r in doc["step0"]["san-gal"]["per_seed"]] == [True, True]
    assert "test_sampling" in doc["paired"]["san-gal"]["rank1"]
    html = result["report"].read_text()
    for section in ("Comparison", "Paired differences", "CMC", "localisation", "Ranked", "heat map",
                    "Attribute recognition", "Forward-only heat maps", "Two sources of noise", "Step-0 diagnostics",
                    "Label-leak check"):
        assert section.lower() in html.lower(), section
    assert "(layer3)" in html and "(layer4)" in html  # localisation at every stage
    assert html.count("<img") >= 5 and "data:image/png;base64," in html
    env = doc["environment"]  # the demo's runs go side by side where there are cores for it (study.workers: 0)
    assert env["study_workers"] == min(2, available_cores()) and f"Re-ID runs {env['study_workers']} at a time" in html


def test_the_demo_leaves_a_deployable_model(tiny_demo):
    out, deploy = tiny_demo["out"], tiny_demo["result"]["deploy"]
    seeds = json.loads((out / "study.json").read_text())["variants"]["san-gal"]["seeds"]
    best = max(seeds, key=lambda r: r["mAP"])["seed"]
    link = out / BEST_LINK
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # a copied runs/demo keeps it
    assert deploy["best"]["seed"] == best and link.resolve().parts[-5] == f"seed{best}"
    assert (out / "attr" / "checkpoints" / "final" / "map_predictor.safetensors").is_file()
    assert set(deploy["distill"]["val"]) == {"layer2", "layer3"}
    assert (out / QUERY_FILE).read_bytes()[:2] == b"\xff\xd8"  # a JPEG


def test_what_next_commands_run_as_written(tiny_demo, monkeypatch, capsys):
    commands = what_next_commands()
    assert [c[:2] for c in commands] == [[".venv/bin/sangal", c] for c in ("export", "index", "search")]
    monkeypatch.chdir(tiny_demo["root"])
    for command in commands:
        assert main(command[1:]) == 0, command
    printed = capsys.readouterr().out
    out = Path("runs/demo")
    assert (out / "hits.html").is_file() and "hits.html" in printed
    # The exported graph embeds the query exactly as the index does (the checkpoint's record: forward-only maps).
    import onnxruntime as ort

    predictor = Predictor.from_checkpoint(out / BEST_LINK, method="fast")
    expected = predictor.embed_paths([out / QUERY_FILE]).feats  # (1, D)
    image = build_transforms(*predictor.size, train=False)(read_image(out / QUERY_FILE))
    session = ort.InferenceSession(str(out / "san-gal.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"images": image[None].numpy()})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_a_copied_or_moved_demo_still_finds_its_attribute_net(tiny_demo, tmp_path, monkeypatch):
    copy = tmp_path / "copy" / "demo"
    shutil.copytree(tiny_demo["out"], copy, symlinks=True)
    found = find_attribute_checkpoint(load_checkpoint(copy / BEST_LINK))
    assert found.resolve() == (copy / "attr" / "checkpoints" / "final").resolve()  # the copy's, not the original's
    original = tiny_demo["out"]
    moved = original.with_name("demo-moved")
    original.rename(moved)  # the recorded path no longer exists
    try:
        assert main(["export", "--checkpoint", str(moved / BEST_LINK), "--out", str(tmp_path / "m.onnx")]) == 0
        shutil.rmtree(copy / "attr")
        monkeypatch.chdir(tmp_path)
        assert main(["export", "--checkpoint", str(copy / BEST_LINK), "--out", "m2.onnx"]) == 2
    finally:
        moved.rename(original)
