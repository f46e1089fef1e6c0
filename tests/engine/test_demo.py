"""The demo pipeline: Table-1 summary arithmetic and a tiny end-to-end run with its report."""

from __future__ import annotations

import re

import pytest

from sangal.engine.demo import DemoPlan, format_table, run_demo, summarise


def test_summarise_means_and_sample_std():
    runs = {"id": [{"rank1": 0.5, "rank5": 0.7, "rank10": 0.8, "mAP": 0.4, "mINP": 0.2, "cmc": [0.5]},
                   {"rank1": 0.7, "rank5": 0.9, "rank10": 1.0, "mAP": 0.6, "mINP": 0.4, "cmc": [0.7]}]}
    rows = summarise(runs, attr_mA=0.8)
    assert rows[0]["variant"] == "id" and rows[0]["seeds"] == 2
    assert rows[0]["rank1"] == pytest.approx(0.6) and rows[0]["rank1_std"] == pytest.approx(0.1414213, rel=1e-5)
    assert rows[0]["attr_mA"] is None
    assert rows[-1]["variant"] == "attribute net" and rows[-1]["attr_mA"] == 0.8
    text = format_table(rows)
    assert re.search(r"id\s+60\.0±14\.1", text) and "80.0" in text


def test_tiny_demo_runs_end_to_end(tmp_path, capsys):
    plan = DemoPlan(ids=12, cams=3, images_per_cam=2, height=64, width=32, attr_epochs=1, epochs=1, p=4, k=2)
    result = run_demo(tmp_path / "demo", seeds=1, plan=plan)
    printed = capsys.readouterr().out
    assert all(mode in printed for mode in ("id", "id+attr", "san-gal", "san-gal (pred. maps)", "attribute net"))
    rows = {r["variant"]: r for r in result["rows"]}
    for mode in ("id", "id+attr", "san-gal"):
        assert 0.0 <= rows[mode]["rank1"] <= 1.0 and 0.0 <= rows[mode]["mAP"] <= 1.0
    assert rows["id"]["attr_mA"] is None and rows["san-gal"]["attr_mA"] is not None
    html = result["report"].read_text()
    for section in ("Comparison", "CMC", "localisation", "Ranked", "heat map"):
        assert section.lower() in html.lower(), section
    assert html.count("<img") >= 5 and "data:image/png;base64," in html
    assert "san-gal" in html and "uniform" in html
