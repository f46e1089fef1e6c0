"""study.json as text: Markdown tables (study.md) and the plain-text tables `sangal study` prints.

Besides the comparison and the paired differences: the two noise sources of each paired difference
(seed level, with the seeds a ±1/±2/±3 point interval needs; test sampling, the bootstrap over
query identities), the step-0 diagnostics and the label-leak check of the san-gal rows. Files
written before those existed lack them, and their tables are left out.
"""

from __future__ import annotations

NOISE_METRICS = (("rank1", "Rank-1"), ("mAP", "mAP"))


def _ci(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}]" if lo is not None else f"{entry['diff']:+.1f}"


def _f(x, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def diagnostic_tables(doc: dict) -> list[dict]:
    """The noise, step-0 and leak tables the document has: {"id", "heading", "explain", "header", "rows"},
    cells as text (what study.md, the printed tables and the demo report show)."""
    tables = []
    rows = []
    for name, p in doc.get("paired", {}).items():
        for key, label in NOISE_METRICS:
            e = p.get(key)
            if not e or "seeds_needed" not in e:
                continue
            needed = " / ".join(_f(e["seeds_needed"].get(h), "d") for h in ("1", "2", "3"))
            ts = e.get("test_sampling")
            sampled = f"{_f(ts['all_seeds']['sd'], '.2f')} ({_ci(ts['all_seeds'])})" if ts else "–"
            rows.append([name, label, _ci(e), _f(e["sd"], ".2f"), str(e["n"]), needed, sampled])
    if rows:
        tables.append(_table("noise", "Two sources of noise",
                             f"Each paired difference vs {doc['reference']} in percentage points. Training: the "
                             "seed-level 95 % t interval, the paired sd of one seed's difference and the paired "
                             "seeds a ±1 / ±2 / ±3 point interval would need at that sd; it is conditional on "
                             "this test set. Test sampling: sd and 95 % interval of a bootstrap over query "
                             "identities (the seeds' mean difference; another draw of as many test identities).",
                             ["variant", "metric", "diff [95% CI]", "paired sd", "seeds", "seeds for ±1 / ±2 / ±3",
                              "test sampling sd (95% interval)"], rows))
    rows = [[name, _f(s["mean"]["cosine_to_id"], ".3f"), _f(s["mean"]["rank1"]), _f(s["mean"]["mAP"]),
             _f(s["mean"]["id"]["rank1"]), _f(s["mean"]["id"]["mAP"]), str(len(s["per_seed"]))]
            for name, s in (doc.get("step0") or {}).items()]
    if rows:
        tables.append(_table("step0", "Step-0 diagnostics",
                             "Before any update, from the same initial weights as each seed's run: the mean cosine "
                             "between each test image's features from the row's net and from the id net, and both "
                             "nets' zero-shot Rank-1 and mAP (%), averaged over seeds.",
                             ["row", "cosine to id", "Rank-1", "mAP", "id Rank-1", "id mAP", "seeds"], rows))
    leak = doc.get("leak") or {}
    rows = [[name, r["maps"], f"{r['predicted']['rank1']:.1f} / {r['predicted']['mAP']:.1f}",
             f"{r['true labels']['rank1']:.1f} / {r['true labels']['mAP']:.1f}",
             f"{r['gap']['rank1']:+.1f} / {r['gap']['mAP']:+.1f}", str(r["seeds"])]
            for name, r in leak.get("rows", {}).items()]
    rows += [[name, "–", "–", "–", "none: maps follow no class", "–"] for name in leak.get("not_applicable", [])]
    if rows:
        seeds = ", ".join(str(s) for s in leak["seeds"])
        tables.append(_table("leak", "Label-leak check",
                             f"Each san-gal row evaluated (seeds {seeds}) with the test maps deployment allows "
                             "(predicted classes) and with maps guided by the test identities' true labels (an "
                             "oracle), made as the row's test maps are (maps: exact or fast); Rank-1 / mAP in %. "
                             "A large gap means the net reads identity from the label pattern of its maps; rows with "
                             "class-agnostic training maps have nothing to leak.",
                             ["row", "maps", "predicted", "true labels", "oracle gap", "seeds"], rows))
    return tables


def _table(key: str, heading: str, explain: str, header: list[str], rows: list[list[str]]) -> dict:
    return {"id": key, "heading": heading, "explain": explain, "header": header, "rows": rows}


def _markdown_table(t: dict) -> list[str]:
    return ["", f"**{t['heading']}.** {t['explain']}", "", "| " + " | ".join(t["header"]) + " |",
            "|" + "---|" * len(t["header"]), *("| " + " | ".join(r) + " |" for r in t["rows"])]


def _text_table(t: dict) -> list[str]:
    header, rows = t["header"], t["rows"]
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return ["", f"{t['heading'].lower()}:", line(header), *(line(r) for r in rows)]


def markdown_study(doc: dict) -> str:
    """study.json as Markdown tables (written beside it as study.md): what a README or a paper quotes."""
    ref = doc["reference"]
    lines = ["| variant | Rank-1 | Rank-5 | mAP | mINP | seeds |", "|---|---|---|---|---|---|"]
    for name, v in doc["variants"].items():
        if "mean" not in v:
            continue
        cells = [f"{v['mean'][k]:.1f}" + (f" ± {v['std'][k]:.1f}" if v["std"][k] is not None else "")
                 for k in ("rank1", "rank5", "mAP", "mINP")]
        lines.append(f"| {name} | {' | '.join(cells)} | {len(v['seeds'])} |")
    if doc["paired"]:
        lines += ["", f"| paired difference vs {ref} (95% CI) | Rank-1 | mAP | mINP |", "|---|---|---|---|"]
        for name, p in doc["paired"].items():
            lines.append(f"| {name} | {' | '.join(_ci(p[k]) for k in ('rank1', 'mAP', 'mINP'))} |")
    if doc.get("attributes"):
        a = doc["attributes"]
        lines += ["", f"Attribute net: mean accuracy {a['mean_accuracy']:.1f} %, mA {a['mA']:.1f} %."]
    if doc.get("localisation"):
        lines += ["", "| stage | energy in part | uniform | ratio | pointing | chance | ratio |", "|---|---|---|---|---|---|---|"]
        for stage, s in doc["localisation"].items():
            lines.append(f"| {stage} | {s['energy']:.1f} % | {s['energy_uniform']:.1f} % | "
                         f"{s['energy'] / s['energy_uniform']:.2f}× | {s['pointing']:.1f} % | "
                         f"{s['pointing_chance']:.1f} % | {s['pointing'] / s['pointing_chance']:.2f}× |")
    for table in diagnostic_tables(doc):
        lines += _markdown_table(table)
    return "\n".join(lines) + "\n"


def format_study(doc: dict) -> str:
    """Plain-text tables: mean ± std per variant, then the paired differences against the reference."""
    lines = [f"{'variant':<34}{'Rank-1':>13}{'Rank-5':>13}{'mAP':>13}{'mINP':>13}  seeds"]
    for name, v in doc["variants"].items():
        if "mean" not in v:
            continue
        cells = []
        for k in ("rank1", "rank5", "mAP", "mINP"):
            std = v["std"][k]
            cells.append((f"{v['mean'][k]:.1f}" + (f" ± {std:.1f}" if std is not None else "")).rjust(13))
        lines.append(f"{name:<34}{''.join(cells)}  {len(v['seeds'])}")
    ref = doc["reference"]
    lines += ["", f"paired difference against {ref!r} (mean, 95% CI), percentage points:",
              f"{'variant':<34}{'Rank-1':>22}{'mAP':>22}{'mINP':>22}"]
    for name, p in doc["paired"].items():
        cells = []
        for k in ("rank1", "mAP", "mINP"):
            lo, hi = p[k]["ci95"]
            ci = f"[{lo:+.1f}, {hi:+.1f}]" if lo is not None else "[n/a]"
            cells.append(f"{p[k]['diff']:+.1f} {ci}".rjust(22))
        lines.append(f"{name:<34}{''.join(cells)}")
    if doc.get("attributes"):
        a = doc["attributes"]
        lines += ["", f"attribute net: mean accuracy {a['mean_accuracy']:.1f}%, mA {a['mA']:.1f}%"]
    if doc.get("localisation"):
        lines.append("localisation (energy in part vs uniform; pointing vs chance):")
        for stage, s in doc["localisation"].items():
            lines.append(f"  {stage}: energy {s['energy']:.1f}% vs {s['energy_uniform']:.1f}% "
                         f"({s['energy'] / s['energy_uniform']:.1f}x); pointing {s['pointing']:.1f}% vs "
                         f"{s['pointing_chance']:.1f}% ({s['pointing'] / s['pointing_chance']:.1f}x)")
    for table in diagnostic_tables(doc):
        lines += _text_table(table)
    return "\n".join(lines)
