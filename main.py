"""Incremental versus full reprocessing benchmark (not built yet: see issue 3)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Say plainly that the benchmark does not exist yet, and fail."""
    print("main.py: error: the benchmark is not built yet (issue 3)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
