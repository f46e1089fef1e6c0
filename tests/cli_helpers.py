"""Running `sangal` in-process from a test and checking that it refused in one line (tests/ is on pytest's path)."""

from __future__ import annotations

from sangal.cli import main


def play(capsys, *argv) -> tuple[int, str, str]:
    """Run ``sangal argv`` in-process: (exit code, stdout, stderr); no traceback may escape."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help and usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def refused(result: tuple[int, str, str], *names) -> str:
    """Assert exit 2 and one ``error:`` line naming every one of ``names``; returns the line."""
    code, _, err = result
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(str(n) in lines[0] for n in names), (names, lines[0])
    return lines[0]


def refused_after_progress(result: tuple[int, str, str], *names) -> str:
    """As :func:`refused`, where a progress bar may come first: the one ``error:`` line is the last thing on stderr."""
    code, _, err = result
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and err.endswith(lines[0] + "\n"), err
    assert all(str(n) in lines[0] for n in names), (names, lines[0])
    return lines[0]
