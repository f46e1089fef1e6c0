"""The commands that put a trained model to use: ONNX export, gallery indexing, search and the search page."""

from __future__ import annotations

import argparse
from pathlib import Path

from sangal.cli.common import at_least, device, device_arg


def add_export(sub) -> None:
    p = sub.add_parser("export", help="one ONNX graph: normalised image batch -> retrieval embedding (+ attributes)")
    p.add_argument("--checkpoint", required=True, help="Re-ID checkpoint directory (id, id+attr or san-gal)")
    p.add_argument("--out", required=True, help="ONNX file to write, e.g. model.onnx")
    p.add_argument("--attr-checkpoint", help="attribute checkpoint of a san-gal model (default: the one training "
                                             "used); it must hold the predictor of `sangal distill`")
    p.add_argument("--opset", type=at_least(14), default=17, help="ONNX opset (default 17)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="the checkpoint decides whether the graph averages with the mirrored image (eval.flip at "
                        "training); a value that contradicts it is refused")
    p.set_defaults(func=export)


def export(args) -> int:
    from sangal.export import export_onnx

    info = export_onnx(args.checkpoint, args.out, attr_checkpoint=args.attr_checkpoint, opset=args.opset,
                       flip=args.flip)
    check = ("" if info.get("max_abs_diff") is None
             else f"; onnxruntime vs PyTorch max abs diff {info['max_abs_diff']:.1e}")
    print(f"wrote {args.out}: {info['mode']} model, opset {info['opset']}, outputs {', '.join(info['outputs'])}"
          f"{check}")
    return 0


def add_index(sub) -> None:
    p = sub.add_parser("index", help="index a gallery folder for search")
    p.add_argument("gallery", help="folder of images (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="Re-ID checkpoint directory")
    p.add_argument("--attr-checkpoint", help="attribute checkpoint (san-gal models; default: the one training used)")
    p.add_argument("--out", default=None, help="index folder (default: <gallery>.sangal-index)")
    p.add_argument("--batch-size", type=at_least(1), default=64)
    device_arg(p)
    p.add_argument("--faiss-threshold", type=int, default=50000, help="use FAISS at or above this many images")
    p.add_argument("--num-workers", type=at_least(0), default=0, help="DataLoader workers decoding images")
    p.add_argument("--aah", choices=["exact", "fast"], default=None,
                   help="how san-gal heat maps are computed: exact Grad-CAM, or fast (forward only; needs "
                        "`sangal distill`); default: as the checkpoint records; searches of the index use the same")
    p.set_defaults(func=index)


def index(args) -> int:
    from sangal.search import build_index

    out = args.out or str(Path(args.gallery).resolve()) + ".sangal-index"
    built = build_index(args.gallery, args.checkpoint, out, attr_checkpoint=args.attr_checkpoint,
                        batch_size=args.batch_size, device=device(args), faiss_threshold=args.faiss_threshold,
                        num_workers=args.num_workers, aah=args.aah)
    print(f"indexed {len(built)} images into {out}")
    return 0


def add_search(sub) -> None:
    p = sub.add_parser("search", help="rank an index's gallery against a query image")
    p.add_argument("image", help="query image")
    p.add_argument("--index", required=True, help="index folder from `sangal index`")
    p.add_argument("-k", type=at_least(1), default=10, help="matches to return")
    p.add_argument("--where", default=None, help="attribute filter, e.g. upper_color=red,backpack=yes")
    p.add_argument("--html", default=None, help="also write an HTML page with the heat maps and matches")
    device_arg(p)
    p.set_defaults(func=search)


def search(args) -> int:
    from sangal.search import Searcher, format_matches, parse_where, search_html
    from sangal.store.outputs import check_output

    if args.html:  # the page never lands on the index, the query or (once the index names it) the gallery
        check_output(args.html, {"--index": args.index, "the query image": args.image}, "--html")
    searcher = Searcher(args.index, device=device(args))
    if args.html:
        check_output(args.html, {"the gallery": searcher.index.gallery_dir}, "--html")
    where = parse_where(args.where) if args.where else None
    matches = searcher.search(args.image, k=args.k, where=where)
    print(format_matches(matches))
    if args.html:
        print(f"wrote {search_html(searcher, args.image, matches, args.html)}")
    return 0


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="a local web page and JSON API to search an index by clicking")
    p.add_argument("--index", required=True, help="index folder from `sangal index`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only); requests "
                                                       "must name it, 127.0.0.1 or localhost in their Host header")
    p.add_argument("--port", type=at_least(1, 65535), default=8000, help="TCP port, 1 to 65535 (default 8000)")
    device_arg(p)
    p.set_defaults(func=serve)


def serve(args) -> int:
    from sangal.serve.app import serve as run_server  # ConfigError naming the `serve` extra when FastAPI is missing

    run_server(args.index, host=args.host, port=args.port, device=device(args))
    return 0
