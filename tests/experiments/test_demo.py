"""The demo pipeline: a tiny end-to-end paired study with its study.json and report."""

from __future__ import annotations

import json

import pytest

from sangal.experiments.demo import VARIANTS, DemoPlan, run_demo
from sangal.experiments.demo_report import paired_rows, table_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_tiny_demo_runs_end_to_end(tmp_path, capsys):
    plan = DemoPlan(ids=12, cams=3, images_per_cam=2, height=64, width=32, attr_epochs=1, epochs=1, p=4, k=2,
                    seeds=2, steps_per_epoch=2)
    result = run_demo(tmp_path / "demo", plan=plan)
    printed = capsys.readouterr().out
    assert all(v.name in printed for v in VARIANTS) and "paired difference against 'id'" in printed
    doc = json.loads((tmp_path / "demo" / "study.json").read_text())
    assert doc["complete"] and set(doc["variants"]) == {v.name for v in VARIANTS}
    assert set(doc["paired"]) == {v.name for v in VARIANTS} - {"id"}
    assert all(p == {"init_equal": True, "batches_equal": True} for p in doc["pairing"].values())
    html = result["report"].read_text()
    for section in ("Comparison", "Paired differences", "CMC", "localisation", "Ranked", "heat map",
                    "Attribute recognition"):
        assert section.lower() in html.lower(), section
    assert "(layer3)" in html and "(layer4)" in html  # localisation at every stage
    assert html.count("<img") >= 5 and "data:image/png;base64," in html
