"""What every command shares: argument types, the config arguments and their resolution, metric printing."""

from __future__ import annotations

import argparse

OVERRIDE_HELP = "dotted overrides, e.g. optim.lr=1e-3 data.root=/data/Market-1501 train.epochs=20"
OVERWRITE_HELP = "replace the finished or interrupted run in the run folder (its checkpoints and logs are deleted)"


def at_least(minimum: int, maximum: int | None = None):
    """argparse type: an int >= ``minimum`` (and <= ``maximum``), so a bad count is a one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value
    return parse


def config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and the dotted overrides, for every command that reads a config."""
    p.add_argument("--config", "-c", help="YAML config (e.g. configs/market1501/san_gal.yaml); defaults otherwise")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)


def overrides(args) -> list[str]:
    """The dotted overrides of a command line, its shorthand flags (--mode, --aah, --rerank) included."""
    found = list(args.overrides)
    if getattr(args, "mode", None):
        found.append(f"model.mode={args.mode}")
    if getattr(args, "aah", None):
        found.append(f"train.aah={args.aah}")
    if getattr(args, "rerank", False):
        found.append("eval.rerank=true")
    return found


def device_arg(p: argparse.ArgumentParser) -> None:
    """``--device`` for the commands that take it instead of train.device (checked by :func:`device`)."""
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps, or auto (a GPU if there is one)")


def device(args) -> str:
    """The command's ``--device``, checked against this machine: a ConfigError line when it has no such device."""
    from sangal.runtime.distributed import resolve_device

    return str(resolve_device(args.device, setting="--device"))


def load_cfg(args, writes_out: bool = False):
    """The command's resolved Config: defaults, the YAML file, then the overrides.

    ``writes_out``: the command writes under ``out`` (a run folder), which is checked writable before any work.
    """
    from sangal.config import load_config
    from sangal.store.outputs import check_output

    cfg = load_config(args.config, overrides(args))
    if writes_out:
        check_output(cfg.out, flag="out", folder=True)
    return cfg


def print_metrics(title: str, metrics: dict) -> None:
    keys = [k for k in ("rank1", "rank5", "rank10", "mAP", "mINP", "mA", "reid_attr_mA") if k in metrics]
    skipped = metrics.get("num_skipped_queries", 0)
    total = skipped + metrics.get("num_valid_queries", 0)
    note = f"; {skipped} of {total} queries skipped (no true match in the gallery)" if skipped else ""
    print(title + ": " + "  ".join(f"{k} {100 * metrics[k]:.2f}%" for k in keys) + note)
