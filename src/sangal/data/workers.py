"""DataLoader worker defaults, and turning a worker's wrapped exception back into its one-line message."""

from __future__ import annotations

import re

from sangal.config.schema import MAX_DEFAULT_WORKERS, default_num_workers  # the one core counter

__all__ = ["MAX_DEFAULT_WORKERS", "default_num_workers", "worker_error"]

_WRAPPED = re.compile(r"^Caught (?P<type>\w+) in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def worker_error(exc: BaseException) -> tuple[str, str] | None:
    """(original type name, original one-line message) of an exception re-raised from a DataLoader
    worker, whose text torch replaces with "Caught X in DataLoader worker process N" and the
    worker's traceback; None for any other exception."""
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else ""
    match = _WRAPPED.match(text)
    if match is None:
        return None
    name = match.group("type")
    lines = text.rstrip().splitlines()
    # the traceback ends with "<module.path.>Type: message" (a multi-line message continues below it)
    head = re.compile(rf"^(?:[\w.]+\.)?{re.escape(name)}: (?P<message>.*)$")
    for line in reversed(lines):
        found = head.match(line)
        if found:
            return name, found.group("message")
    return name, lines[-1].strip()
