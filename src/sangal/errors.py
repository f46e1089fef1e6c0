"""User-facing errors: each message is one line naming the file and what is wrong."""


class SangalError(Exception):
    """Base for errors the CLI reports as one line (``error: ...``) instead of a traceback."""


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


def printable(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character (terminal control codes, ESC, BEL, CR, bidi overrides, ...)
    escaped as Python's repr does (``\\x1b``, ``\\u202e``), except those in ``keep`` (e.g. "\\n").

    The one rule for file names and messages the CLI prints: a name cannot move the cursor, retitle the window
    or clear the screen.
    """
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


class RequestError(SangalError):
    """A bad request to `sangal serve` (an upload, a gallery id); ``status`` is its HTTP status code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
