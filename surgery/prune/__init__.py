"""Pruning engine: Týr-style global structural sparsity search, sliced export."""
from surgery._lazy import lazy

_NAMES = {
    "PruneConfig": "config",
    "PruneResult": "engine",
    "SearchConfig": "config",
    "prune": "engine",
}
__getattr__, __dir__ = lazy(__name__, _NAMES)
__all__ = sorted(_NAMES)
