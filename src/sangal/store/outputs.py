"""Where a command may write: never onto one of its own inputs, and only where a write can succeed.

:func:`check_output` is the one check every command runs on each output before any work (export's ONNX file,
the search page, the index folder, pseudo-labels, a run folder, a synthetic dataset), so a mistyped path
costs one ``error:`` line instead of a checkpoint, an index or an image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sangal.errors import OutputError

__all__ = ["check_output"]


def check_output(out: str | Path, inputs: Mapping[str, str | Path | None] | None = None, flag: str = "output",
                 folder: bool = False) -> Path:
    """``out`` as a Path once it is safe to write; OutputError (one line) otherwise.

    ``inputs`` maps how each input is named (``"--checkpoint"``, ``"the query image"``) to its path (None: not
    given). Refused: an output that resolves (links followed) to an input, lies inside an input folder, or, a
    ``folder`` output (replaced whole), holds an input; a file output that is an existing folder (or a folder
    output an existing file); and an output whose nearest existing parent is a file or not writable.
    """
    out = Path(out).expanduser()
    target = out.resolve()
    for name, given in (inputs or {}).items():
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        if target == source:
            raise OutputError(f"{flag} {out} is {name} {given}, an input of this command; writing it would destroy "
                              f"it: choose another {flag}")
        if target.is_relative_to(source):
            raise OutputError(f"{flag} {out} lies inside {name} {given}, an input of this command; choose a "
                              f"{flag} outside it")
        if folder and source.is_relative_to(target):
            raise OutputError(f"{flag} {out} holds {name} {given}, which writing the folder would replace; choose "
                              f"another {flag}")
    _check_writable(out, flag, folder)
    return out


def _check_writable(out: Path, flag: str, folder: bool) -> None:
    """OutputError when ``out`` is of the wrong kind or its place cannot be written (checked as this user)."""
    if out.is_dir() and not folder:
        raise OutputError(f"{flag} {out} is a folder; name a file to write")
    if out.exists() and not out.is_dir() and folder:
        raise OutputError(f"{flag} {out} is a file; name a folder to write")
    places = [out] if folder and out.is_dir() else []
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    places += [parent] if parent is not None else []
    for place in places:
        if not place.is_dir():
            raise OutputError(f"{flag} {out} cannot be written: {place} is a file, not a folder; choose another "
                              f"{flag}")
        if not os.access(place, os.W_OK | os.X_OK):
            raise OutputError(f"{flag} {out} cannot be written: folder {place} is read-only for this user; choose "
                              f"another {flag}")
