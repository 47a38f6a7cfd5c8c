"""Pruning engine: Týr-style global structural sparsity search, sliced export."""
from surgery._lazy import lazy

__getattr__, __dir__ = lazy(
    __name__,
    config="PruneConfig SearchConfig",
    engine="PruneResult prune",
)
__all__ = __dir__()
