"""The HTML report: content, self-containment, and a headless-browser render check."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sangal.viz.curves import cmc_figure
from sangal.viz.report import ReportData, render_report, write_report

IMG_SRC = re.compile(r'<img src="([^"]*)" alt="([^"]*)">')


def _image(rng: np.random.Generator, h: int = 64, w: int = 32) -> np.ndarray:
    """A random 'pedestrian': a few coloured vertical bands, (H, W, 3) uint8."""
    bands = rng.integers(0, 255, (4, 1, 3))
    img = np.repeat(np.repeat(bands, h // 4, axis=0), w, axis=1)
    return np.clip(img + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def make_data(seed: int = 0) -> ReportData:
    rng = np.random.default_rng(seed)
    k = 4
    names = ["hat", "upblack", "downblue", "backpack"]
    heat = {
        "image": _image(rng),
        "aah": (rng.random((k, 16, 8)), rng.random((k, 8, 4)), rng.random((k, 8, 4))),
        "names": names,
        "labels": ["pred yes / true yes", "pred no / true no", "pred yes / true no", "pred no / true no"],
        "caption": "query 0001_c1s1",
    }
    variants = {
        v: {
            "images": [_image(rng) for _ in range(5)],
            "is_match": list(rng.random(5) > 0.5),
            "distances": sorted(rng.random(5)),
        }
        for v in ("id", "san-gal")
    }
    cmc = {
        "id": np.sort(rng.uniform(0.5, 1.0, (3, 20)), axis=1),
        "san-gal": np.sort(rng.uniform(0.6, 1.0, 20)),
    }
    return ReportData(
        title="sangal demo — synthetic",
        summary=["dataset: synthetic, 40 ids, 800 images", "budget: 2 epochs", "time: 31 s"],
        table=[
            {"variant": "id", "rank1": 0.852, "rank5": 0.93, "rank10": 0.95, "mAP": 0.671, "mINP": 0.31,
             "attr_mA": None, "seeds": 3, "rank1_std": 0.004, "mAP_std": 0.012},
            {"variant": "san-gal", "rank1": 0.874, "rank5": 0.941, "rank10": 0.962, "mAP": 0.702, "mINP": 0.35,
             "attr_mA": 0.81, "seeds": 1},
        ],
        cmc=cmc,
        attribute_table=[{"name": n, "mA": 0.7 + 0.05 * i, "accuracy": 0.8 + 0.02 * i} for i, n in enumerate(names)],
        heatmaps=[heat, dict(heat, caption="second sample", labels=None)],
        ranked=[{"query": _image(rng), "caption": "query 0002_c2s1", "variants": variants}],
        localisation=[
            {"attribute": "hat", "region": "hat", "n": 12, "energy": 0.61, "energy_uniform": 0.05,
             "pointing": 0.75, "pointing_uniform": 0.05, "n_zero": 0},
            {"attribute": "mean", "region": "all", "n": 12, "energy": 0.61, "energy_uniform": 0.05,
             "pointing": 0.75, "pointing_uniform": 0.05, "n_zero": 0},
        ],
        notes=["Tiny budget: numbers are a smoke test, not the paper's."],
        config={"train": {"epochs": 2, "lr": 3.5e-4}, "data": {"root": Path("/tmp/x")}},
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "out" / "report.html", make_data())


def test_sections_and_values_are_rendered(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    for sid in ("comparison", "cmc", "attributes", "localisation", "heatmaps", "ranked", "notes", "config"):
        assert f"<section id='{sid}'>" in text
    assert "85.2 ± 0.4" in text and "67.1 ± 1.2" in text  # mean ± std, in percent
    assert "<td class='best'>87.4</td>" in text  # best rank-1 in bold
    assert "81.0" in text and "–" in text  # attr mA present for san-gal, missing for id
    assert "61.0" in text and "5.0" in text  # localisation score and its uniform baseline
    assert "lr: 0.00035" in text and "/tmp/x" in text  # config as YAML
    assert "sangal demo — synthetic" in text and "Tiny budget" in text


def test_every_image_is_an_embedded_png_with_alt_text(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    imgs = IMG_SRC.findall(text)
    assert len(imgs) == text.count("<img") == 1 + 2 + 1  # CMC, two heat-map grids, one ranked list
    for src, alt in imgs:
        assert src.startswith("data:image/png;base64,") and alt.strip()
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r"(src|href)=[\"'](https?:|//)", text)  # nothing fetched from outside
    assert "<link" not in text and "@import" not in text and "url(" not in text


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    path.write_text("old")
    data = ReportData(title="small", summary=["one line"])
    assert write_report(path, data) == path
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temp file left
    assert "<section" not in path.read_text(encoding="utf-8")  # empty sections are left out


def test_percentages_must_be_fractions() -> None:
    data = make_data()
    data.table[0]["rank1"] = 85.2
    with pytest.raises(ValueError, match="rank1"):
        render_report(data)


def test_cmc_figure_draws_lines_and_seed_bands_and_rejects_percentages() -> None:
    ranks = np.linspace(0.5, 1.0, 30)
    one = Image.open(io.BytesIO(cmc_figure({"id": ranks}, size=(4.0, 3.0), dpi=50)))
    assert one.format == "PNG" and one.size == (200, 150)
    seeds = np.stack([ranks - 0.1, ranks, np.minimum(ranks + 0.05, 1.0)])  # (S=3, R)
    plain = np.asarray(Image.open(io.BytesIO(cmc_figure({"id": ranks}))).convert("RGB")).astype(int)
    band = np.asarray(Image.open(io.BytesIO(cmc_figure({"id": seeds}))).convert("RGB")).astype(int)

    def pale_blue(a: np.ndarray) -> int:  # the band's tab:blue at alpha 0.2; grid lines are grey
        return int(((a[:, :, 2] - a[:, :, 0] > 20) & (a[:, :, 0] > 150)).sum())

    assert pale_blue(band) > 10 * max(1, pale_blue(plain))  # the shaded min-max band
    with pytest.raises(ValueError, match="fractions"):
        cmc_figure({"id": ranks * 100})
    with pytest.raises(ValueError, match="shape"):
        cmc_figure({"id": np.zeros((2, 3, 4))})


# --- headless browser -------------------------------------------------------------------

def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        reason = "headless Chromium not installed (Debian: apt-get install chromium; `make test` does this)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{reason}; required when CI is set")
        pytest.skip(reason)
    return exe


def _run_chromium(exe: str, tmp: Path, *args: str) -> str:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--hide-scrollbars",
    ]
    proc = subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _body_counts(exe: str, tmp: Path, page: Path) -> tuple[int, int]:
    dom = _run_chromium(exe, tmp, "--dump-dom", "--virtual-time-budget=5000", page.as_uri())
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    broken = re.search(r'data-broken-images="(\d+)"', body.group(0))
    total = re.search(r'data-images="(\d+)"', body.group(0))
    assert broken and total, f"load script did not run: {body.group(0)}"
    return int(broken.group(1)), int(total.group(1))


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    exe = _chromium()
    shot = tmp_path / "report.png"
    _run_chromium(exe, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))  # (2400, 1280, 3)
    assert pixels.shape[:2] == (2400, 1280)
    white = np.all(pixels > 245, axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert pixels.std() > 20 and colours > 2000 and white < 0.95, (pixels.std(), colours, white)
    broken, total = _body_counts(exe, tmp_path, report)
    assert total == report.read_text(encoding="utf-8").count("<img") and broken == 0


def test_browser_check_detects_a_corrupted_image(report: Path, tmp_path: Path) -> None:
    exe = _chromium()
    text = report.read_text(encoding="utf-8")
    bad = tmp_path / "bad.html"
    not_png = 'src="data:image/png;base64,bm90IGEgcG5n"'  # base64 of "not a png"
    bad.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', not_png, text, count=1))
    broken, total = _body_counts(exe, tmp_path, bad)
    assert (broken, total) == (1, text.count("<img"))


def test_ready_made_text_tables_get_a_section_each_after_the_paired_differences() -> None:
    data = ReportData(title="t", paired=[{"variant": "san-gal", "metric": "rank1", "diff": 1.0, "ci95": [-1.0, 3.0],
                                          "n": 2}],
                      tables=[{"id": "noise", "heading": "Two sources of noise", "explain": "sd <and> seeds",
                               "header": ["variant", "paired sd"], "rows": [["san-gal", "2.50"]]}])
    text = render_report(data)
    assert "<section id='table-noise'><h2>Two sources of noise</h2>" in text
    assert text.index("id='paired'") < text.index("id='table-noise'")
    assert "sd &lt;and&gt; seeds" in text and "<td class=text>san-gal</td><td>2.50</td>" in text
    assert "<a href='#table-noise'>Two sources of noise</a>" in text
