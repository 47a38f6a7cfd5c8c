"""llm-compressor's target vocabulary: a class name (`Linear`) or `re:<regex>` on module names."""
from __future__ import annotations

import re

from torch import nn

from surgery.errors import SurgeryError


def matches(name: str, module: nn.Module, patterns: list[str]) -> bool:
    """True if any pattern names the module's class or (with `re:`) matches its name."""
    for pat in patterns:
        if pat.startswith("re:"):
            try:
                if re.match(pat[3:], name):
                    return True
            except re.error as e:
                raise SurgeryError(f"bad target regex {pat!r}: {e}") from None
        elif type(module).__name__ == pat or any(c.__name__ == pat for c in type(module).__mro__):
            return True
    return False


def select(named: dict[str, nn.Module], targets: list[str], ignore: list[str]) -> list[str]:
    """Names (in the given order) matched by `targets` and not by `ignore`."""
    return [n for n, m in named.items() if matches(n, m, targets) and not matches(n, m, ignore)]
