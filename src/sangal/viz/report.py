"""A self-contained HTML report of a run: tables, CMC curves, heat maps, ranked lists.

Everything is in one file -- images are embedded as base64 PNG data URIs and the
page uses no external CSS, JS or fonts -- so it can be mailed, archived next to
a checkpoint, or opened offline. A tiny inline script records, on window load,
how many images failed to decode (``data-broken-images`` on <body>) and how
many there are (``data-images``), which lets a headless browser check the page.

Metric values are fractions in [0, 1], as ``evaluate_rank`` and ``mean_accuracy``
return them; the report shows them as percentages.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sangal.viz.curves import cmc_figure
from sangal.viz.heatmap import heatmap_grid
from sangal.viz.ranklist import ranked_strip, side_by_side

logger = logging.getLogger(__name__)

METRIC_COLUMNS = (("rank1", "R-1"), ("rank5", "R-5"), ("rank10", "R-10"), ("mAP", "mAP"), ("mINP", "mINP"))
ATTR_COLUMN = ("attr_mA", "attr mA")


@dataclass
class ReportData:
    """Everything the report shows; empty fields leave their section out.

    table: rows {"variant", "rank1", "rank5", "rank10", "mAP", "mINP", "attr_mA"
        (or None), "seeds": int, optional "<metric>_std"} -- fractions, shown as % (± std).
    cmc: variant -> (R,) or (S, R) CMC fractions.
    attribute_table: rows {"name", "mA", "accuracy", ...extra columns}.
    heatmaps: {"image": (H, W, 3) uint8, "aah": (a2, a3, a4) each (K, h, w),
        "names": [K], "labels": [K] (optional), "caption": str}.
    ranked: {"query": image, "caption": str, "variants": {name: {"images": [...],
        "is_match": [...], "distances": [...] (optional)}}}.
    paired: rows {"variant", "metric", "diff", "ci95": [lo, hi], "n"} in percentage points:
        each variant minus the reference over paired seeds (``sangal.experiments.study``).
    localisation: rows from ``sangal.viz.localisation.localisation_scores`` (+ optional "stage").
    map_agreement: rows {"stage", "pearson", "argmax", "maps"}: held-out agreement of the forward-only
        (distilled) heat maps with exact Grad-CAM (``sangal.train.distill.map_agreement``).
    tables: ready-made text tables, one section each after the paired differences: {"id", "heading",
        "explain", "header": [str], "rows": [[str]]} (the study's noise, step-0 and leak tables).
    config: resolved config, shown in a collapsed block as YAML (JSON without PyYAML).
    """

    title: str
    summary: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    paired: list[dict] = field(default_factory=list)
    cmc: dict[str, np.ndarray] = field(default_factory=dict)
    attribute_table: list[dict] = field(default_factory=list)
    heatmaps: list[dict] = field(default_factory=list)
    ranked: list[dict] = field(default_factory=list)
    localisation: list[dict] = field(default_factory=list)
    map_agreement: list[dict] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict | None = None


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;padding:16px 24px;
max-width:1240px;color:#1a1a1a;background:#fff;line-height:1.45}
h1{font-size:1.6em;margin:.2em 0 .4em}h2{font-size:1.25em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
ul.summary{margin:.2em 0;padding-left:1.2em;color:#333}
nav{font-size:.92em;margin:.6em 0}nav a{margin-right:1em;color:#2a5db0;text-decoration:none}
table{border-collapse:collapse;margin:.4em 0 .8em;font-size:.92em}
th,td{border:1px solid #ccc;padding:3px 9px;text-align:right;white-space:nowrap}
th{background:#f2f4f7}th.text{text-align:left}td:first-child,th:first-child{text-align:left}
td.best{font-weight:700}td.text{text-align:left}tr.mean td{background:#f7f7f7;font-weight:600}
.muted{color:#666}.explain{font-size:.9em;color:#333;max-width:900px}
figure{margin:.8em 0 1.4em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.2em}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:.85em}
details summary{cursor:pointer;color:#2a5db0}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) { broken++; }
  }
  document.body.dataset.brokenImages = String(broken);
  document.body.dataset.images = String(imgs.length);
});
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_data_uri(image: Image.Image | np.ndarray | bytes) -> str:
    """A ``data:image/png;base64,...`` URI for a PIL image, (H, W, 3) uint8 array or PNG bytes."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_esc(alt)}">'


def _figure(uri: str, alt: str, caption: str) -> str:
    return f"<figure>{_img(uri, alt)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(value: Any, where: str) -> str:
    """A fraction shown as a percentage with one decimal; ValueError if it is not a fraction."""
    if _is_missing(value):
        return "–"
    v = float(value)
    if not -1e-9 <= v <= 1.0 + 1e-9:
        raise ValueError(f"{where} = {v:g} is not a fraction in [0, 1]; pass fractions (the report shows %)")
    return f"{100.0 * v:.1f}"


def _comparison_table(rows: list[dict]) -> str:
    """Table-1 style: one row per variant, mean ± std where std is given, best in bold."""
    cols = list(METRIC_COLUMNS)
    if any(not _is_missing(r.get(ATTR_COLUMN[0])) for r in rows):
        cols.append(ATTR_COLUMN)
    best = {}
    for key, _ in cols:
        vals = [float(r[key]) for r in rows if not _is_missing(r.get(key))]
        best[key] = max(vals) if vals and len(rows) > 1 else None
    head = "".join(f"<th>{_esc(label)}</th>" for _, label in cols)
    out = [f"<table class='comparison'><thead><tr><th>variant</th>{head}<th>seeds</th></tr></thead><tbody>"]
    for r in rows:
        name = r.get("variant", "?")
        cells = []
        for key, _ in cols:
            text = _pct(r.get(key), f"table row {name!r}: {key}")
            std = r.get(f"{key}_std")
            if not _is_missing(std) and not _is_missing(r.get(key)):
                text += f" ± {100.0 * float(std):.1f}"
            cls = " class='best'" if best[key] is not None and r.get(key) == best[key] else ""
            cells.append(f"<td{cls}>{_esc(text)}</td>")
        out.append(f"<tr><td>{_esc(name)}</td>{''.join(cells)}<td>{_esc(r.get('seeds', 1))}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _paired_table(rows: list[dict]) -> str:
    """Variant minus reference per metric: mean difference and its 95 % CI, in percentage points."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cell = {(r["variant"], r["metric"]): r for r in rows}
    head = "".join(f"<th>{_esc(dict(METRIC_COLUMNS).get(m, m))} diff [95% CI]</th>" for m in metrics)
    body = []
    for v in variants:
        cells = []
        for m in metrics:
            r = cell.get((v, m))
            if r is None:
                cells.append("<td>–</td>")
                continue
            lo, hi = r["ci95"]
            ci = "n/a" if _is_missing(lo) else f"{lo:+.1f}, {hi:+.1f}"
            sig = not _is_missing(lo) and (lo > 0 or hi < 0)
            cells.append(f"<td{' class=best' if sig else ''}>{r['diff']:+.1f} [{_esc(ci)}]</td>")
        n = next(r["n"] for r in rows if r["variant"] == v)
        body.append(f"<tr><td>{_esc(v)}</td>{''.join(cells)}<td>{n}</td></tr>")
    return (f"<p class='explain'>{_esc(_PAIRED_EXPLAIN)}</p><table class='paired'><thead><tr><th>variant</th>"
            f"{head}<th>seeds</th></tr></thead><tbody>{''.join(body)}</tbody></table>")


def _text_table(t: dict) -> str:
    """A table whose cells are already text: the first column left-aligned, the rest right-aligned."""
    head = "".join(f"<th{' class=text' if i == 0 else ''}>{_esc(h)}</th>" for i, h in enumerate(t["header"]))
    body = "".join("<tr>" + "".join(f"<td{' class=text' if i == 0 else ''}>{_esc(c)}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in t["rows"])
    return (f"<p class='explain'>{_esc(t.get('explain', ''))}</p><table class='{_esc(t['id'])}'><thead><tr>{head}"
            f"</tr></thead><tbody>{body}</tbody></table>")


def _attribute_table(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    keys = ["name"] + [k for k in keys if k != "name"]
    head = "".join(f"<th>{_esc(k)}{' (%)' if k in ('mA', 'accuracy') else ''}</th>" for k in keys)
    body = []
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            text = _pct(v, f"attribute {r.get('name')!r}: {k}") if k in ("mA", "accuracy") else (
                "–" if _is_missing(v) else (f"{v:.3f}" if isinstance(v, float) else str(v))
            )
            cells.append(f"<td>{_esc(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table class='attributes'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_LOC_EXPLAIN = (
    "Energy: share of an attribute's heat map (upsampled to the image, clipped at 0) that falls inside the "
    "ground-truth mask of the body region it describes. Pointing: share of images whose hottest pixel lies in "
    "that mask. Each score has its uniform baseline beside it — what a flat map (energy) or a random pixel "
    "(pointing) scores, i.e. the mean area of the mask — so a heat map localises when its score clearly "
    "exceeds the baseline. Only images where the region is visible count (n); attributes of the whole body "
    "(gender, age) have no mask. All-zero maps count as a miss."
)


_PAIRED_EXPLAIN = (
    "Each variant minus the reference (id) on the same seed, in percentage points: the mean over seeds and "
    "its 95% Student-t interval. Bold where the interval excludes 0."
)
_COMPARISON_EXPLAIN = (
    "<p class='explain'>Rank-k matching rates (CMC), mAP and mINP in %; attr mA is the attribute "
    "recognition mean accuracy where the variant has attribute heads. Mean ± std over seeds where "
    "several were run; the best value of each column is in bold.</p>"
)
_HEATMAP_EXPLAIN = (
    "Grad-CAM heat maps of every attribute head (columns; under each name the predicted / true class) "
    "at the three backbone stages that guide the Re-ID network (rows). Red is where the head looks."
)
_RANKED_EXPLAIN = (
    "The query (blue frame) and its top-ranked gallery images for each variant: green frame = same "
    "identity, red = a different one; numbers above are ranks, below are distances."
)


def _localisation_table(rows: list[dict]) -> str:
    head = (
        "<tr><th>attribute</th><th class='text'>region</th><th>n</th><th>energy (%)</th><th>uniform</th>"
        "<th>pointing (%)</th><th>chance</th></tr>"
    )
    body = []
    for r in rows:
        cls = " class='mean'" if r.get("attribute") == "mean" else ""
        name = r.get("attribute") if "stage" not in r else f"{r.get('attribute')} ({r['stage']})"
        vals = [_pct(r.get(k), f"localisation {name!r}: {k}") for k in ("energy", "energy_uniform", "pointing")]
        vals.append(_pct(r.get("pointing_uniform"), f"localisation {name!r}: pointing_uniform"))
        cells = "".join(
            f"<td{' class=muted' if i % 2 else ''}>{_esc(v)}</td>" for i, v in enumerate(vals)
        )
        body.append(
            f"<tr{cls}><td>{_esc(name)}</td><td class='text'>{_esc(r.get('region', ''))}</td>"
            f"<td>{_esc(r.get('n', ''))}</td>{cells}</tr>"
        )
    return (
        f"<p class='explain'>{_esc(_LOC_EXPLAIN)}</p>"
        f"<table class='localisation'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    )


def _agreement_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><td>{_esc(r['stage'])}</td><td>{r['pearson']:.3f}</td>"
                   f"<td>{_esc(_pct(r['argmax'], 'map agreement argmax'))}</td><td>{_esc(r.get('maps', ''))}</td></tr>"
                   for r in rows)
    return ("<p class='explain'>Forward-only heat maps (eval.aah=fast, what export and search use) against exact "
            "Grad-CAM on held-out training images: Pearson r per map and how often the peak cell agrees. "
            "layer4 is exact in closed form.</p><table class='agreement'><thead><tr><th>stage</th><th>Pearson r</th>"
            f"<th>same peak (%)</th><th>maps</th></tr></thead><tbody>{body}</tbody></table>")


def _heatmap_figures(items: list[dict]) -> str:
    out = []
    for i, item in enumerate(items):
        grid = heatmap_grid(item["image"], tuple(item["aah"]), item["names"], item.get("labels"))
        caption = item.get("caption") or f"sample {i + 1}"
        out.append(_figure(png_data_uri(grid), f"attribute heat maps (layer2/3/4): {caption}", caption))
    return "".join(out)


def _ranked_figures(items: list[dict]) -> str:
    out = []
    for i, item in enumerate(items):
        strips = {
            name: ranked_strip(item["query"], v["images"], v["is_match"], v.get("distances"))
            for name, v in item["variants"].items()
        }
        caption = item.get("caption") or f"query {i + 1}"
        alt = f"ranked lists ({', '.join(strips)}) for {caption}"
        out.append(_figure(png_data_uri(side_by_side(strips)), alt, caption))
    return "".join(out)


def _config_block(config: dict) -> str:
    plain = json.loads(json.dumps(config, default=str))  # numpy scalars, paths -> JSON types
    try:
        import yaml

        text, kind = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False), "YAML"
    except ImportError:
        text, kind = json.dumps(plain, indent=2), "JSON"
    return f"<details><summary>resolved config ({kind})</summary><pre>{_esc(text)}</pre></details>"


def render_report(data: ReportData) -> str:
    """The report's HTML text (what ``write_report`` writes)."""
    sections: list[tuple[str, str, str]] = []  # (id, heading, body html)
    if data.table:
        text = _COMPARISON_EXPLAIN + _comparison_table(data.table)
        sections.append(("comparison", "Comparison", text))
    if data.paired:
        sections.append(("paired", "Paired differences", _paired_table(data.paired)))
    for t in data.tables:
        sections.append((f"table-{t['id']}", t["heading"], _text_table(t)))
    if data.cmc:
        uri = png_data_uri(cmc_figure(data.cmc))
        text = "CMC curves; shaded bands span the min-max over seeds where several were run."
        sections.append(("cmc", "CMC curves", _figure(uri, "CMC curves: matching rate by rank per variant", text)))
    if data.attribute_table:
        sections.append(("attributes", "Attribute recognition", _attribute_table(data.attribute_table)))
    if data.localisation or data.map_agreement:
        text = _localisation_table(data.localisation) if data.localisation else ""
        sections.append(("localisation", "AAH localisation", text + _agreement_table(data.map_agreement)))
    if data.heatmaps:
        text = f"<p class='explain'>{_esc(_HEATMAP_EXPLAIN)}</p>" + _heatmap_figures(data.heatmaps)
        sections.append(("heatmaps", "Attribute heat maps (AAH)", text))
    if data.ranked:
        text = f"<p class='explain'>{_esc(_RANKED_EXPLAIN)}</p>" + _ranked_figures(data.ranked)
        sections.append(("ranked", "Ranked lists", text))
    if data.notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in data.notes)
        sections.append(("notes", "Notes", f"<ul>{items}</ul>"))
    if data.config is not None:
        sections.append(("config", "Config", _config_block(data.config)))

    summary = "".join(f"<li>{_esc(line)}</li>" for line in data.summary)
    nav = "".join(f"<a href='#{sid}'>{_esc(title)}</a>" for sid, title, _ in sections)
    body = "".join(f"<section id='{sid}'><h2>{_esc(title)}</h2>{html_}</section>" for sid, title, html_ in sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(data.title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>"
        f"<body><h1>{_esc(data.title)}</h1>"
        f"{'<ul class=summary>' + summary + '</ul>' if summary else ''}<nav>{nav}</nav>{body}</body></html>\n"
    )


def write_report(path: str | Path, data: ReportData) -> Path:
    """Write the report to ``path`` atomically (temporary file + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("report written: %s (%.1f kB)", path, len(text) / 1024)
    return path
