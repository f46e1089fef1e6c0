"""User-facing errors: each message is one line naming the file and what is wrong."""

from __future__ import annotations

from pathlib import Path


class SangalError(Exception):
    """Base for errors the CLI reports as one line (``error: ...``) instead of a traceback."""

    exit_code = 2  # what the CLI exits with after printing the line


class DatasetError(SangalError):
    """Wrong dataset layout, unparseable file name or unreadable image."""


class AttributeFileError(SangalError):
    """Attribute .mat file that is malformed or does not match the images."""


class CheckpointError(SangalError):
    """Checkpoint that is corrupt or belongs to another model."""


class CacheError(SangalError):
    """Heat-map cache or gallery index that is stale, incomplete, corrupt or built for something else."""


class WeightsError(SangalError):
    """Pretrained weights that cannot be fetched or read."""


class ConfigError(SangalError):
    """Invalid configuration value or override (one line per value when several are wrong)."""


class BusyError(SangalError):
    """An output another live process is writing."""


class OutputError(SangalError):
    """An output that cannot be written where asked, or that would overwrite one of the command's own inputs."""


class NonFiniteError(SangalError, FloatingPointError):
    """Training produced a non-finite loss or weights; nothing after the last finite checkpoint is saved."""


def printable(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character (terminal control codes, ESC, BEL, CR, bidi overrides, ...)
    escaped as Python's repr does (``\\x1b``, ``\\u202e``), except those in ``keep`` (e.g. "\\n").

    The one rule for file names and messages the CLI prints: a name cannot move the cursor, retitle the window
    or clear the screen.
    """
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def read_text(path: str | Path, error: type[SangalError], what: str) -> str:
    """The UTF-8 text of a file the user named, else ``error`` in one line: missing, a folder, unreadable or binary.

    ``what`` names the file's role ("config file", "CSV dataset file"); the one reader of user text files.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                    "is it a binary file?") from None


class RequestError(SangalError):
    """A bad request to `sangal serve` (an upload, a gallery id); ``status`` is its HTTP status code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
