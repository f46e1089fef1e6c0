"""``python -m sangal`` is the ``sangal`` command (also what torchrun launches)."""

from sangal.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
