"""One-line notes on stderr for things a user should know but that are not errors (main rank only)."""
from __future__ import annotations

import sys

from surgery import dist


def note(message: str) -> None:
    """Print `surgery: MESSAGE` on stderr, once per job (rank 0)."""
    if dist.is_main():
        print(f"surgery: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
