"""`sangal <command>`: resolves the configuration once and calls the library.

Every command that trains or evaluates takes `--config FILE` plus dotted overrides
(`optim.lr=1e-3 data.root=/data/market`), so a run is described by one YAML file and
a few words. `sangal config show` prints what a command would run with.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import re
import sys
from collections.abc import Mapping

from sangal.cli import deploy, pipeline
from sangal.errors import ConfigError, SangalError, printable
from sangal.version import __version__

log = logging.getLogger("sangal")

#: Every command, in the order `sangal --help` lists them: each adds its parser and names its handler.
COMMANDS = (pipeline.add_demo, pipeline.add_synth, pipeline.add_train_attr, pipeline.add_aah, pipeline.add_train,
            pipeline.add_evaluate, pipeline.add_study, pipeline.add_label, pipeline.add_distill, deploy.add_export,
            pipeline.add_config, pipeline.add_weights, deploy.add_index, deploy.add_search, deploy.add_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sangal", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sangal {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def run(args) -> int:
    """Run the parsed command: its handler (``set_defaults(func=...)``) returns the exit status."""
    return args.func(args)


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


class _PrintableLog(logging.Formatter):
    """Log lines keep the library's own line breaks and tabs (its format strings); what fills a ``%s`` (a file
    name, a user's string, an error) passes :func:`sangal.errors.printable` whole, as everything the CLI prints."""

    def format(self, record: logging.LogRecord) -> str:
        if record.args:
            record = copy.copy(record)  # other handlers see the record as it was logged
            args = record.args
            record.args = ({k: _outside(v) for k, v in args.items()} if isinstance(args, Mapping)
                           else tuple(_outside(a) for a in args))
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record), keep="\n\t")


def _outside(value):
    """A log argument: numbers as they are (for %d, %.1f), anything else as escaped text (no call logs with %r)."""
    return value if isinstance(value, (int, float)) else printable(str(value))


class _PrintableOut:
    """stdout for a command: control characters escaped, newlines and tabs kept; the rest is the stream's."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text, keep="\n\t"))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _print_error(exc: BaseException, verbose: bool) -> None:
    """``error: ...`` on stderr: one line, or one per wrong value of a config."""
    text = _error_text(exc, verbose)
    for line in text.split("\n") if isinstance(exc, ConfigError) else [text]:
        print(f"error: {printable(line)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableLog("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        with contextlib.redirect_stdout(_PrintableOut(sys.stdout)):
            return run(args)
    except SangalError as exc:
        _print_error(exc, args.verbose)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from sangal.data.workers import worker_error

        if worker_error(exc) is None:
            raise
        _print_error(exc, args.verbose)
        return 1
