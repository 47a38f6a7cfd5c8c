"""One exception type for every user-facing failure.

The CLI turns a `SurgeryError` into a single line on stderr and a non-zero exit; library callers
can catch it. Anything else that escapes is a bug in `surgery`, not bad input.
"""
from __future__ import annotations


class SurgeryError(Exception):
    """Bad input or an unsupported situation, described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def require(condition: bool, message: str) -> None:
    """Raise `SurgeryError(message)` unless `condition` holds."""
    if not condition:
        raise SurgeryError(message)
