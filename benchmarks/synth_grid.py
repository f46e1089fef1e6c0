"""Draw a grid of synthetic identities across cameras (docs/synthetic_grid.png).

Rows are identities in pairs that share the same coarse attributes where the style
has such pairs (label: pid and attributes), so the grid shows that only details
tell them apart (``--style easy``; the real style rarely repeats a combination and
fills the rows with other identities); columns
are their images as written to disk (JPEG), one per camera first, with camera
and view (f/b/l/r) in the corner; the last column paints the region masks of the
row's first image over it (hat red, hair brown, upper green, lower blue,
backpack magenta, bag cyan, handbag yellow, shoes orange).

    .venv/bin/python benchmarks/synth_grid.py --out docs/synthetic_grid.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sangal.synthetic.generate import LOWER_COLOURS, UPPER_COLOURS, generate_synthetic, plan_synthetic

MASK_COLOURS = {"hat": (255, 0, 0), "hair": (120, 60, 0), "upper": (0, 200, 0), "lower": (0, 80, 255),
                "backpack": (255, 0, 255), "bag": (0, 255, 255), "handbag": (255, 255, 0), "shoes": (255, 128, 0)}


def describe(a: dict[str, int]) -> list[str]:
    """Two short lines of coarse attributes for a row label."""
    up = next((c for c in UPPER_COLOURS if a["up" + c] == 2), "other")
    down = next((c for c in LOWER_COLOURS if a["down" + c] == 2), "other")
    lower = {(1, 1): "long dress", (1, 2): "short dress", (2, 1): "trousers", (2, 2): "shorts"}[(a["clothes"], a["down"])]
    extras = [n for n in ("hat", "backpack", "bag", "handbag") if a[n] == 2]
    return [f"{'F' if a['gender'] == 2 else 'M'} age{a['age']} {'long' if a['hair'] == 2 else 'short'} hair",
            f"{up} {'short' if a['up'] == 2 else 'long'} slv",
            f"{down} {lower}", " ".join(extras) or "-"]


def pick_pairs(plan, by_pid: dict[int, list], rows: int) -> list[int]:
    """Pairs of identities with the same coarse attributes (adjacent rows), covering many attributes."""
    groups: dict[tuple, list[int]] = {}
    for pid in sorted(by_pid, key=lambda p: -len({im.cam for im in by_pid[p]})):
        groups.setdefault(tuple(plan.attributes[pid].items()), []).append(pid)
    pairs = [g[:2] for g in groups.values() if len(g) >= 2]
    chosen: list[list[int]] = []
    covered: set[tuple[str, int]] = set()
    while pairs and len(chosen) * 2 < rows:
        best = max(pairs, key=lambda g: len(set(plan.attributes[g[0]].items()) - covered))
        chosen.append(best)
        pairs.remove(best)
        covered |= set(plan.attributes[best[0]].items())
    picked = [p for g in chosen for p in g]
    rest = [p for g in groups.values() for p in g if p not in picked]  # the real style rarely repeats a combination
    return (picked + rest)[:rows]


def spread(ims: list, cols: int) -> list:
    """Up to ``cols`` images, one per camera first, then second images; sorted by camera."""
    first, rest, seen = [], [], set()
    for im in sorted(ims, key=lambda im: (im.cam, im.name)):
        (rest if im.cam in seen else first).append(im)
        seen.add(im.cam)
    return sorted((first + rest)[:cols], key=lambda im: (im.cam, im.name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/synthetic_grid.png"))
    parser.add_argument("--rows", type=int, default=8, help="identities to show")
    parser.add_argument("--cols", type=int, default=8, help="images per identity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=1, help="pixel upscaling of each 128x64 image")
    parser.add_argument("--style", choices=("real", "easy"), default="real", help="generator style")
    args = parser.parse_args()
    params = dict(num_ids=40, num_cams=6, seed=args.seed, height=128, width=64, style=args.style)
    plan = plan_synthetic(**params)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_synthetic(Path(tmp) / "synthetic", **params)
        by_pid: dict[int, list] = {}
        for im in plan.images:
            if im.pid > 0:
                by_pid.setdefault(im.pid, []).append(im)
        pids = pick_pairs(plan, by_pid, args.rows)
        h, w, label_w = 128 * args.scale, 64 * args.scale, 130
        grid = Image.new("RGB", (label_w + (args.cols + 1) * (w + 2), args.rows * (h + 2)), (255, 255, 255))
        draw = ImageDraw.Draw(grid)
        folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
        for r, pid in enumerate(pids):
            picked = spread(by_pid[pid], args.cols)
            y = r * (h + 2)
            lines = [f"id {pid:04d} ({'train' if pid in plan.train_pids else 'test'})"]
            for i, line in enumerate(lines + describe(plan.attributes[pid])):
                draw.text((4, y + 6 + 14 * i), line, fill=(0, 0, 0))
            for c, im in enumerate(picked):
                pic = Image.open(root / folders[im.split] / im.name).convert("RGB").resize((w, h), Image.NEAREST)
                grid.paste(pic, (label_w + c * (w + 2), y))
                draw.text((label_w + c * (w + 2) + 2, y + 2), f"c{im.cam} {im.shot.view[0]}", fill=(255, 255, 255))
            first = picked[0]
            pic = np.asarray(Image.open(root / folders[first.split] / first.name).convert("RGB"), np.float32)
            masks = np.load(root / "masks" / folders[first.split] / (Path(first.name).stem + ".npz"))
            for key, colour in MASK_COLOURS.items():
                m = masks[key]
                pic[m] = pic[m] * 0.35 + np.asarray(colour, np.float32) * 0.65
            over = Image.fromarray(pic.astype(np.uint8)).resize((w, h), Image.NEAREST)
            grid.paste(over, (label_w + args.cols * (w + 2), y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({grid.width}x{grid.height}), ids {', '.join(f'{p:04d}' for p in pids)}")


if __name__ == "__main__":
    main()
