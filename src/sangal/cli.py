"""Command-line entry point (filled in by the engine work)."""


def main(argv=None) -> int:
    raise SystemExit("sangal CLI not built yet")
